"""Data-parallel runs under ``torchrun``: the process group, this process's rank, and the few collectives pyro_gen needs.

``torchrun --nproc_per_node N -m pyro_gen train CONFIG --run-dir D`` starts N processes with the
environment variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``
and ``MASTER_PORT``; :func:`setup` reads them and joins the process group (``gloo`` for a CPU
device, ``nccl`` for CUDA, where each process takes the GPU ``cuda:LOCAL_RANK``). Outside torchrun
(or with one process) nothing is initialized and every helper here is the one-process identity:
:func:`rank` is 0, :func:`world_size` 1, :func:`is_main` True, the reductions return their input.

Who uses it: the :class:`~pyro_gen.infer.trainer.Trainer` (sharded batches, gradients averaged by an
explicit all-reduce, rank 0 alone writing) and :func:`~pyro_gen.evaluation.log_likelihood` (test shards
per rank, gathered); the commands in :mod:`pyro_gen.run.commands` let rank 0 alone write a run directory.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """True when this process was started by torchrun (or the like) as one of several: ``WORLD_SIZE`` > 1."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and all(k in os.environ for k in _ENV)
    except ValueError:
        return False


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def active() -> bool:
    """True inside an initialized process group of more than one process: the collectives here communicate."""
    return is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 outside a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 outside a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """This process's rank on its machine (torchrun's ``LOCAL_RANK``; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if is_initialized() else 0


def local_world_size() -> int:
    """Processes of the group on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 outside a process group)."""
    if not is_initialized():
        return 1
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size())))


def is_main() -> bool:
    """True on rank 0, the one process that writes files and shows progress (always True in one process)."""
    return rank() == 0


def backend_for(device) -> str:
    """``nccl`` for a CUDA device, ``gloo`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def setup(device="cpu", timeout_s: float = 1800.0) -> bool:
    """Join the process group that torchrun's environment describes (once); True when running on several processes.

    The backend follows ``device``: NCCL for CUDA (this process then uses ``cuda:LOCAL_RANK``), gloo for the
    CPU. A group already initialized (by the caller, or an earlier call) is used as it is. Without
    torchrun's variables (``WORLD_SIZE`` > 1) nothing happens and False is returned.
    """
    if is_initialized():
        return dist.get_world_size() > 1
    if not launched():
        return False
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_world_size() > 1


def shutdown() -> None:
    """Leave the process group (if any)."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (nothing in one process)."""
    if active():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce ``tensor`` in place over the ranks (``op``: ``sum``, ``max``, ``min``) and return it; the identity in one process."""
    if active():
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return tensor


def all_reduce_sum(values) -> list[float]:
    """The sums over the ranks of a list of floats (one collective, in float64)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=_comm_device())
    return all_reduce_(t).tolist()


def all_mean(value: float) -> float:
    """The mean of a float over the ranks."""
    return all_reduce_sum([value])[0] / world_size()


def all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (same shape and dtype on every rank), in rank order; ``[tensor]`` in one process."""
    if not active():
        return [tensor]
    out = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(out, tensor.contiguous())
    return out


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` with rank ``src``'s, in place."""
    if active():
        dist.broadcast(tensor, src)
    return tensor


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s picklable ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def broadcast_module_(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s parameters and buffers of ``module`` (in place)."""
    if not active():
        return
    with torch.no_grad():
        for t in module.state_dict(keep_vars=True).values():
            if torch.is_tensor(t):
                dist.broadcast(t.data, src)


def _comm_device() -> torch.device:
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_bounds(n: int, world: int | None = None, which: int | None = None) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of ``n`` that rank ``which`` (default: this rank) of ``world`` takes: contiguous, sizes differing by at most one."""
    world = world_size() if world is None else world
    which = rank() if which is None else which
    return n * which // world, n * (which + 1) // world
