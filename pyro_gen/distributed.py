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
import threading
import time

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


def shutdown(handshake: bool = True) -> None:
    """Leave the process group (if any); ``handshake``: first agree with every rank that all have finished communicating
    (a clean end: every rank calls it at the same point; not after a failure, when the others may be anywhere)."""
    if is_initialized():
        if handshake and active() and dist.get_backend() == "gloo":
            # a rank that tears its connections down while a peer still reads from them can abort that peer
            # (pytorch/gloo issue 155; seen as a rare SIGABRT at exit). A last all-reduce alone does not settle it:
            # it can return on one rank while the other still waits for its final bytes. So the ranks also meet in
            # the process group's store, where each arrives only after its all-reduce has returned
            all_reduce_(torch.zeros(1))
            _store_barrier("pyro_gen/shutdown")
        dist.destroy_process_group()


def _store_barrier(name: str, timeout_s: float = 60.0) -> None:
    """Wait until every rank has reached this point, through the process group's key-value store (no collective).

    Two counters: every rank adds to ``arrived`` and waits for all; then to ``left``, and rank 0, whose process serves
    the store under torchrun, waits for all of those too, so that no rank is still asking when the server goes.
    """
    try:
        store = dist.distributed_c10d._get_default_store()
    except Exception:  # a torch without the helper: the all-reduce before this is all there is
        return
    world, deadline = world_size(), time.monotonic() + timeout_s
    for key, everyone in ((f"{name}/arrived", True), (f"{name}/left", rank() == 0)):
        store.add(key, 1)
        while everyone and int(store.add(key, 0)) < world:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every rank reached the end of the run within {timeout_s:g} s (store key {key})")
            time.sleep(0.001)


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


class GradientBuckets:
    """Gradients averaged over the ranks *while the backward pass runs*: bucketed asynchronous all-reduces.

    The plain way (one flat all-reduce after ``loss.backward()``) leaves the communication on the critical
    path: the step waits for it after all its arithmetic. PyTorch's DDP overlaps the two (Li et al., "PyTorch
    Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020): parameters are grouped into
    buckets in reverse order of registration (roughly the order their gradients become ready), and a bucket's
    all-reduce starts as soon as its last gradient is accumulated. This does the same with
    ``register_post_accumulate_grad_hook`` and ``async_op`` all-reduces, keeping what
    :meth:`~pyro_gen.infer.trainer.Trainer` needs that DDP does not give: each rank's gradient weighted by its
    number of datapoints ``n_r`` (an uneven last batch), parameters without a gradient on every rank left
    without one, the loss and a stop flag in the same round.

    Buckets are launched strictly in index order on every rank (a ready bucket waits for the ones before it),
    so the sequence of collectives is the same on every rank even when a parameter is unused on one of them;
    whatever is not launched during the backward pass is launched by :meth:`finish`, zeros standing in for
    missing gradients.

    :param params: the parameters whose gradients are averaged.
    :param bucket_bytes: the size of a bucket (DDP's default first bucket is 1 MiB, later ones 25 MiB; on CPU
        gloo smaller buckets start earlier and overlap more).
    """

    def __init__(self, params, bucket_bytes: int = 1 << 20):
        self.params = list(params)
        order = list(range(len(self.params)))[::-1]
        self.buckets: list[list[int]] = []
        current, size = [], 0
        for i in order:
            current.append(i)
            size += self.params[i].numel() * self.params[i].element_size()
            if size >= bucket_bytes:
                self.buckets.append(current)
                current, size = [], 0
        if current:
            self.buckets.append(current)
        self.bucket_of = {i: b for b, members in enumerate(self.buckets) for i in members}
        self._armed = False
        self._hooks = [p.register_post_accumulate_grad_hook(self._make_hook(i)) for i, p in enumerate(self.params) if p.requires_grad]

    def _make_hook(self, index: int):
        def hook(param):
            if self._armed:
                self._ready[self.bucket_of[index]] += 1
                self._present[index] = True
                self._launch_ready()

        return hook

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def share(self, optimizer) -> bool:
        """Nothing to share across machines: every rank keeps its own parameters and optimizer (False)."""
        return False

    def step(self, optimizer) -> None:
        """The optimizer step after :meth:`finish`: every rank steps all its parameters."""
        optimizer.step()

    def arm(self, n: int) -> None:
        """Before ``backward``: this rank's datapoint count ``n`` weights its gradients."""
        self._n = float(n)
        self._ready = [0] * len(self.buckets)
        self._present = [False] * len(self.params)
        self._launched: list = []  # (flat buffer, work handle) per launched bucket, in order
        self._armed = True

    def _launch(self, b: int) -> None:
        members = self.buckets[b]
        dtype = self.params[members[0]].dtype
        parts = [
            self.params[i].grad.reshape(-1).to(dtype) * self._n
            if self._present[i] and self.params[i].grad is not None
            else torch.zeros(self.params[i].numel(), dtype=dtype, device=self.params[i].device)
            for i in members
        ]
        flat = torch.cat(parts)
        work = dist.all_reduce(flat, async_op=True) if active() else None
        self._launched.append((flat, work))

    def _launch_ready(self) -> None:
        while len(self._launched) < len(self.buckets):
            b = len(self._launched)
            if self._ready[b] < len(self.buckets[b]):
                return
            self._launch(b)

    def finish(self, loss, stop: bool, private: bool = True) -> tuple[float, float, bool]:
        """After ``backward``: launch what is left, reduce the presence flags, ``n_r * loss_r``, ``n_r`` and the stop flag,
        wait, and set each gradient to ``sum_r n_r g_r / sum_r n_r`` (``None`` where no rank had one).

        Returns ``(global mean loss, global count, any rank stopping)``. The gradients are always this rank's own
        (``private`` is there for the interface :class:`SharedMemoryGradients` shares).
        """
        self._armed = False
        while len(self._launched) < len(self.buckets):
            self._launch(len(self._launched))
        dtype = self.params[0].dtype if self.params else torch.float32
        device = self.params[0].device if self.params else _comm_device()
        flags = torch.tensor([float(p) for p in self._present], dtype=dtype, device=device)
        loss_sum = loss.detach().reshape(1).to(dtype) * self._n if loss is not None else torch.zeros(1, dtype=dtype, device=device)
        tail = torch.cat([flags, loss_sum, torch.tensor([self._n, float(stop)], dtype=dtype, device=device)])
        all_reduce_(tail)
        present = tail[: len(self.params)].tolist()
        loss_total, total, stops = tail[len(self.params) :].tolist()
        for b, (flat, work) in enumerate(self._launched):
            if work is not None:
                work.wait()
            offset = 0
            for i in self.buckets[b]:
                p, k = self.params[i], self.params[i].numel()
                p.grad = (flat[offset : offset + k] / total).view_as(p).to(p.dtype) if present[i] > 0 else None
                offset += k
        return loss_total / total, total, stops > 0


#: Shared memory may take at most this share of /dev/shm's free space (containers often give it only 64 MiB).
SHM_SHARE = 0.5


class SharedMemoryGradients:
    """Gradients averaged over ranks that share one machine, through shared memory instead of gloo's sockets, and
    (with an Adam optimizer) the optimizer step split between them.

    On one machine gloo's all-reduce moves every gradient through the loopback network stack: for the MNIST MLP VAE's
    688k gradients that is ~6 ms of CPU time per step on the cores the ranks compute on (BENCHMARKS.md section 9).
    Here the ranks share memory-mapped files in ``/dev/shm``. :meth:`finish` starts a step: each rank writes
    ``n_r g_r`` into its row, and its presence flags, ``n_r * loss_r``, ``n_r`` and stop flag into its tail, publishes
    the phase in its own counter and waits until every rank's counter has reached it. Then, in one of two modes:

    - **sharded** (after :meth:`share` with an Adam optimizer; what the trainer uses): the parameters and Adam's
      state live in shared memory, one copy for all ranks, and each rank owns a share of the parameters (balanced by
      size). A rank writes into its row only the gradients of the parameters others own; it averages its own
      gradients and the others' rows over its own parameters only, and :meth:`step` runs Adam on them alone, in
      place, then waits for every rank's step: each rank writes ``(world - 1) / world`` of its gradients and does
      ``1 / world`` of the averaging and of the optimizer's work, and nothing is gathered, since every rank reads
      the same weights. (ZeRO stage 1's partitioned optimizer,
      Rajbhandari et al., SC 2020, with shared memory in place of the all-gather.)
    - **replicated** (no :meth:`share`): each rank averages the rows over its slice of the elements into a shared
      mean and waits for the others: every rank's gradients are then views of the whole mean, and each rank's own
      optimizer steps its own parameters.

    Waiting is a spin on the other ranks' counters (a few microseconds), falling back to short sleeps after a few
    milliseconds (a rank saving a checkpoint, a slow rank), to an error within 0.1 s naming a rank whose process has
    exited (each rank's process id sits beside its counter; no socket would tell), and to an error naming the ranks
    that never arrived after ``timeout_s``. That a rank sees another's writes once it sees its counter rests on x86's store order (TSO: stores
    become visible in program order; a locked instruction before each publication also orders streaming stores);
    elsewhere the wait is a 4-byte gloo all-reduce instead, whose socket round trip orders the memory. Rows, tails
    and means come in two sets that alternate between steps, so a rank may write the next step's while another still
    reads this one's. The files are unlinked as soon as every rank has mapped them, so nothing is left behind even
    if a rank dies.

    The same results as :class:`GradientBuckets` (``sum_r n_r g_r / sum_r n_r``, ``None`` where no rank had a
    gradient, the global mean loss, count and stop flag, and the same Adam step); the sums run over the ranks in
    rank order. Built by :func:`gradient_reducer` when every rank is on this machine and the gradients are CPU
    tensors of one dtype. Nothing may change shared gradients in place: ``finish(private=True)`` (the trainer asks
    for it when it clips gradient norms) gives every rank the whole mean in a buffer of its own.
    """

    #: spin this long on the counters before sleeping between looks (seconds)
    SPIN_S = 0.002
    #: the optimizer state :meth:`share` puts in shared memory (``torch.optim.Adam`` without amsgrad)
    ADAM_STATE = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, paths: dict, timeout_s: float = 1800.0):
        self.params = list(params)
        self.sizes = [p.numel() for p in self.params]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.numel = sum(self.sizes)
        self.world, self.rank = world_size(), rank()
        self.timeout_s = timeout_s
        dtype = self.params[0].dtype
        layout = shared_memory_layout(len(self.params), self.numel, self.world, dtype)
        raw = torch.from_file(paths["exchange"], shared=True, size=layout["nbytes"], dtype=torch.uint8)

        def region(name, dtype, shape):
            offset, nbytes = layout[name]
            return raw[offset : offset + nbytes].view(dtype).view(shape)

        # each rank's counter on its own cache line: a rank polling the others' does not slow down its owner's writes;
        # beside it the rank's process id, so that a long wait can tell a slow rank from a dead one
        slots = region("counters", torch.int64, (self.world, 8)).numpy()
        self.counters, self.pids = slots[:, 0], slots[:, 1]
        self.pids[self.rank] = os.getpid()  # read by the others after gradient_reducer's closing all-reduce
        self.tails = region("tails", torch.float64, (2, self.world, len(self.params) + 3))
        self.rows = region("rows", dtype, (2, self.world, self.numel))
        self.means = region("means", dtype, (2, self.numel))
        # the sharded mode's weights and Adam state, each in a file of its own (a checkpoint saves a tensor's whole
        # storage), mapped now so that the files can go at once
        self.weights = self.moments = self.step_counts = None
        if "weights" in paths:
            self.weights = torch.from_file(paths["weights"], shared=True, size=self.numel, dtype=dtype)
            self.moments = {k: torch.from_file(paths[k], shared=True, size=self.numel, dtype=dtype) for k in self.ADAM_STATE}
            self.step_counts = torch.from_file(paths["steps"], shared=True, size=len(self.params), dtype=torch.float32)
        self.lo, self.hi = shard_bounds(self.numel, self.world, self.rank)
        self.own = None  # this rank's copy of the gradients (finish(private=True), and the sharded mode's averages)
        self.phase, self.steps = 0, 0
        self.spin = _stores_in_order()
        self.optimizer = None  # set by share(): the sharded mode
        self.owned = [True] * len(self.params)
        self.installed = [False] * len(self.params)

    # -- the sharded mode ---------------------------------------------------------------------------------------
    @classmethod
    def can_share(cls, optimizer) -> bool:
        """Whether :meth:`share` takes ``optimizer``: a ``torch.optim.Adam`` without amsgrad, fused or capturable steps."""
        return type(optimizer) is torch.optim.Adam and not any(
            g.get("amsgrad") or g.get("fused") or g.get("capturable") or g.get("differentiable") for g in optimizer.param_groups
        )

    def share(self, optimizer) -> bool:
        """Put the parameters and ``optimizer``'s state in shared memory and split the optimizer's work between the ranks.

        Every rank must hold the same parameters and optimizer state (the trainer broadcasts rank 0's and restores
        the same checkpoint everywhere); rank 0's are copied. Returns False, and changes nothing, for an optimizer
        that :meth:`can_share` refuses, or when :func:`gradient_reducer` made no state files.
        """
        ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if not (self.weights is not None and self.can_share(optimizer) and ids == {id(p) for p in self.params}):
            return False
        if self.rank == 0:
            with torch.no_grad():
                for i, (p, o, k) in enumerate(zip(self.params, self.offsets, self.sizes)):
                    self.weights[o : o + k].copy_(p.detach().reshape(-1))
                    state = optimizer.state.get(p, {})
                    for key in self.ADAM_STATE:
                        source = state.get(key)
                        self.moments[key][o : o + k].copy_(source.reshape(-1) if source is not None else torch.zeros(k))
                    self.step_counts[i] = float(state["step"]) if "step" in state else 0.0
        self._arrive()  # rank 0's copies are in place
        had_state = [bool(optimizer.state.get(p)) for p in self.params]
        for p, o, k in zip(self.params, self.offsets, self.sizes):
            p.data = self.weights[o : o + k].view_as(p)
        self.optimizer = optimizer
        for i, had in enumerate(had_state):
            if had:
                self._install(i)
        self.owned = _balanced_owners(self.sizes, self.world, self.rank)
        self._arrive()  # nobody steps before every rank points at the shared weights
        return True

    def _install(self, i: int) -> None:
        """Parameter ``i``'s optimizer state: views of the shared state, on every rank (rank 0's checkpoints hold it all)."""
        p, o, k = self.params[i], self.offsets[i], self.sizes[i]
        state = {key: self.moments[key][o : o + k].view_as(p) for key in self.ADAM_STATE}
        self.optimizer.state[p] = {"step": self.step_counts[i], **state}
        self.installed[i] = True

    def _unshare(self) -> None:
        """Give every parameter and optimizer state back a private copy (after the fit, the ranks go separate ways)."""
        if self.optimizer is None:
            return
        for i, p in enumerate(self.params):
            p.data = p.data.clone()
            if self.installed[i]:
                self.optimizer.state[p] = {key: value.clone() for key, value in self.optimizer.state[p].items()}
        self.optimizer = None

    def step(self, optimizer) -> None:
        """The optimizer step after :meth:`finish`: in the sharded mode this rank's parameters only, then wait for
        every rank's (the weights are whole again); else ``optimizer.step()``."""
        if self.optimizer is None:
            optimizer.step()
            return
        for p, mine in zip(self.params, self.owned):
            if not mine:
                p.grad = None
        optimizer.step()
        self._arrive()

    # -- the exchange -------------------------------------------------------------------------------------------
    def remove(self) -> None:
        self._unshare()
        self.counters = self.tails = self.rows = self.means = None

    def arm(self, n: int) -> None:
        """Before ``backward``: this rank's datapoint count ``n`` weights its gradients."""
        self._n = float(n)

    def _arrive(self) -> None:
        """Publish the next phase and wait until every rank has published it."""
        self.phase += 1
        if not self.spin:
            all_reduce_(torch.zeros(1))
            return
        counters, target = self.counters, self.phase
        _fence()
        counters[self.rank] = target
        if counters.min() >= target:
            return
        start = time.monotonic()
        looks, checked = 0, 0.0
        while counters.min() < target:
            looks += 1
            if looks % 256 == 0:
                waited = time.monotonic() - start
                if waited > self.timeout_s:
                    late = [r for r in range(self.world) if counters[r] < target]
                    raise RuntimeError(
                        f"rank(s) {late} did not reach step phase {target} of the shared-memory gradient exchange in "
                        f"{self.timeout_s:g} s: a rank died or hangs; see its log"
                    )
                if waited > self.SPIN_S:
                    time.sleep(1e-4)  # a long wait (a rank saving a checkpoint): stop holding a core
                if waited - checked > 0.1:  # no socket tells a spinning rank that a peer died: look for it
                    checked = waited
                    self._check_alive(target)

    def _check_alive(self, target: int) -> None:
        for r in range(self.world):
            if self.counters[r] < target:
                try:
                    os.kill(int(self.pids[r]), 0)
                except ProcessLookupError:
                    raise RuntimeError(
                        f"rank {r} (process {int(self.pids[r])}) exited during the shared-memory gradient exchange: see its log"
                    ) from None
                except PermissionError:  # alive, another user's
                    pass

    def finish(self, loss, stop: bool, private: bool = False) -> tuple[float, float, bool]:
        """After ``backward``: see :meth:`GradientBuckets.finish`; then :meth:`step`. ``private``: every gradient, in
        this rank's own buffer (for code that changes them in place, e.g. norm clipping)."""
        parity = self.steps % 2
        self.steps += 1
        row = self.rows[parity, self.rank]
        # sharded: the other ranks read only the gradients of the parameters they own; this rank's own it keeps
        sharded = self.optimizer is not None and not private
        with torch.no_grad():
            for p, o, k, mine in zip(self.params, self.offsets, self.sizes, self.owned):
                if sharded and mine:
                    continue
                if p.grad is None:
                    row[o : o + k].zero_()
                else:
                    torch.mul(p.grad.reshape(-1), self._n, out=row[o : o + k])
        flags = [0.0 if p.grad is None else 1.0 for p in self.params]
        n_loss = float(loss.detach()) * self._n if loss is not None else 0.0
        self.tails[parity, self.rank] = torch.tensor([*flags, n_loss, self._n, float(stop)], dtype=torch.float64)
        self._arrive()  # every rank's row and tail are written
        tail = self.tails[parity].sum(0).tolist()
        present, (loss_total, total, stops) = tail[: len(self.params)], tail[len(self.params) :]
        rows = self.rows[parity]
        if private or self.optimizer is not None:
            if self.own is None:
                self.own = torch.empty_like(self.means[0])
            means = self.own
            if private:  # the whole mean
                torch.sum(rows, 0, out=means).div_(total)
            else:  # the mean over this rank's parameters, which it alone steps: its gradient and the others' rows
                with torch.no_grad():
                    for p, o, k, mine, seen in zip(self.params, self.offsets, self.sizes, self.owned, present):
                        if mine and seen > 0:
                            others = [rows[r, o : o + k] for r in range(self.world) if r != self.rank]
                            part = means[o : o + k]
                            if p.grad is None:
                                part.copy_(others[0])
                            else:
                                torch.add(others[0], p.grad.reshape(-1), alpha=self._n, out=part)
                            for other in others[1:]:
                                part.add_(other)
                            part.div_(total)
        else:  # replicated: this rank's slice of the shared mean; the others write theirs
            means = self.means[parity]
            torch.sum(rows[:, self.lo : self.hi], 0, out=means[self.lo : self.hi]).div_(total)
            self._arrive()  # every slice of the mean is written
        for i, (p, o, k, seen) in enumerate(zip(self.params, self.offsets, self.sizes, present)):
            p.grad = means[o : o + k].view_as(p) if seen > 0 and (private or self.owned[i]) else None
            if seen > 0 and self.optimizer is not None and not self.installed[i]:
                self._install(i)  # the first step that moves it: every rank adds its state, as Adam would, owner or not
        return loss_total / total, total, stops > 0


def _balanced_owners(sizes: list[int], world: int, which: int) -> list[bool]:
    """Which parameters rank ``which`` steps: the largest first, each to the rank with the fewest elements so far."""
    load = [0] * world
    owner = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += sizes[i]
    return [o == which for o in owner]


def shared_memory_layout(n_params: int, numel: int, world: int, dtype: torch.dtype) -> dict:
    """Byte ranges ``(offset, nbytes)`` of :class:`SharedMemoryGradients`'s regions in its file, and the file's size
    ``nbytes``: per-rank counters (a cache line each), tails (float64), rows and means (``dtype``), 64-byte aligned."""
    item = torch.empty(0, dtype=dtype).element_size()
    sizes = {"counters": world * 64, "tails": 2 * world * (n_params + 3) * 8, "rows": 2 * world * numel * item, "means": 2 * numel * item}
    layout, offset = {}, 0
    for name, nbytes in sizes.items():
        layout[name] = (offset, nbytes)
        offset += -(-nbytes // 64) * 64
    layout["nbytes"] = offset
    return layout


def _stores_in_order() -> bool:
    """True on x86 (total store order), where a spin on the counters is a correct wait; see :class:`SharedMemoryGradients`."""
    import platform

    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


_FENCE_LOCK = threading.Lock()


def _fence() -> None:
    # a locked instruction (the lock's compare-and-swap) is a full memory barrier on x86: whatever the gradient kernels
    # stored is visible before the counter that announces it, even if a kernel used streaming stores
    with _FENCE_LOCK:
        pass


def gradient_reducer(params, optimizer=None):
    """The gradient averager of a data-parallel step: :class:`SharedMemoryGradients` when every rank is on this
    machine with CPU gradients of one dtype and ``/dev/shm`` has room (with room for ``optimizer``'s state too when
    :meth:`SharedMemoryGradients.can_share` takes it: call :meth:`~SharedMemoryGradients.share` once the state is
    final; without that room, its replicated mode), else :class:`GradientBuckets` (gloo across machines, NCCL on GPUs). Rank 0 decides and tells the others,
    so every rank takes the same one."""
    import secrets
    from pathlib import Path

    params = list(params)
    paths = None
    wanted = os.environ.get("PYRO_GEN_SHM_GRADIENTS", "1") != "0"  # 0: always the gloo buckets
    if wanted and rank() == 0 and params and local_world_size() == world_size() and dist.get_backend() == "gloo":
        one_kind = all(p.device.type == "cpu" and p.dtype == params[0].dtype and p.dtype.is_floating_point for p in params)
        numel, item = sum(p.numel() for p in params), params[0].element_size()
        sizes = {"exchange": shared_memory_layout(len(params), numel, world_size(), params[0].dtype)["nbytes"]}
        if optimizer is not None and SharedMemoryGradients.can_share(optimizer):
            sizes.update({"weights": numel * item, "steps": len(params) * 4})
            sizes.update({k: numel * item for k in SharedMemoryGradients.ADAM_STATE})
        shm = Path("/dev/shm")
        try:
            stat = os.statvfs(shm)
            room = stat.f_bavail * stat.f_frsize * SHM_SHARE
        except OSError:
            room = 0
        if sum(sizes.values()) > room:  # no room for the shared optimizer state: the replicated mode, if it fits
            sizes = {"exchange": sizes["exchange"]}
        if one_kind and sum(sizes.values()) <= room:
            prefix = shm / f"pyro_gen_grads_{secrets.token_hex(8)}"
            paths = {k: f"{prefix}.{k}" for k in sizes}
            try:
                for k, nbytes in sizes.items():
                    with open(paths[k], "wb") as f:
                        f.truncate(nbytes)
            except OSError:
                for path in paths.values():
                    Path(path).unlink(missing_ok=True)
                paths = None
    paths = broadcast_object(paths)
    if paths is None:
        return GradientBuckets(params)
    try:
        reducer = SharedMemoryGradients(params, paths)
    finally:
        # every rank has mapped the files (or failed to): they can go. An all-reduce, not barrier(): a gloo barrier soon
        # followed by the end of the process group can abort a peer (pytorch/gloo issue 155)
        all_reduce_(torch.zeros(1))
        if rank() == 0:
            for path in paths.values():
                os.unlink(path)
    return reducer
