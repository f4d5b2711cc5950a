"""Data-parallel throughput: 2 ranks against 1 on this machine (issue #12 d).

The library's VAE on binarized-MNIST-shaped data (784-300-300-40 MLPs, ELBO, Adam), trained by the one
``Trainer`` with the same *per-rank* batch (``--batch``) and one intra-op thread per rank: 1 rank takes
global batches of ``batch``, 2 ranks global batches of ``2 * batch``, each rank its half, and the gradients
averaged by the trainer's reducer (on one machine: shared memory, each rank stepping its share of the shared
weights; ``PYRO_GEN_SHM_GRADIENTS=0`` for gloo's all-reduces). The ranks are started by ``torch.multiprocessing.spawn`` with
torchrun's environment variables (what ``torchrun --nproc_per_node N`` gives them). Throughput is
training samples per second over one epoch of ``--steps`` steps (the epoch time the trainer records,
which excludes start-up); 1-rank and 2-rank runs alternate ``--reps`` times.

    python bench/ddp_throughput.py [--steps 100] [--batch 128] [--reps 3] [--net mlp|conv] [--ceiling] [--bind]

``--net conv`` trains the convolutional VAE instead (32 channels): more arithmetic per parameter, so the
exchange is a smaller share of a step. Both are the library's models; say which one a figure is for.
``--ceiling`` also times two independent 1-rank runs at once (what two processes get from the machine at
all); ``--bind`` sets ``train.bind_cpus: true``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import sys
import tempfile
from pathlib import Path

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(
    rank: int, world: int, port: int, steps: int, batch: int, out: str, net: str = "mlp", independent: bool = False, bind: bool = False
) -> None:
    if independent:  # the machine's ceiling: ``world`` single-process runs at once, no process group, no all-reduce
        _rank(0, 1, 0, steps, batch, f"{out}.{rank}", net)
        return
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )  # fmt: skip
    torch.set_num_threads(1)
    from pyro_gen import Trainer, distributed, make_guide, vae

    if world > 1:
        distributed.setup("cpu")
    torch.manual_seed(0)
    hidden = (300, 300) if net == "mlp" else (32,)
    model = vae((1, 28, 28), 40, hidden=hidden, net=net)
    guide = make_guide("normal", model, hidden=hidden, net=net)
    n = steps * batch * world
    x = torch.bernoulli(torch.full((n, 1, 28, 28), 0.13), generator=torch.Generator().manual_seed(0))
    trainer = Trainer(model, guide, "elbo", lr=1e-3, batch_size=batch * world, epochs=1, progress=False, threads=1, bind_cpus=bind)
    history = trainer.fit(x)
    if rank == 0:
        Path(out).write_text(json.dumps({"seconds": history[0]["seconds"], "samples": n, "threads": history[0]["threads"]}))
    distributed.shutdown()


def run(world: int, steps: int, batch: int, net: str = "mlp", independent: bool = False, bind: bool = False) -> float:
    """Samples per second: of one run over ``world`` ranks, or (``independent``) summed over ``world`` 1-rank runs at once."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        # the 1-rank run is a fresh process too, like each of the ranks: this process has run the others before it
        args = (world, _free_port(), steps, batch, out, net, independent, bind)
        torch.multiprocessing.spawn(_rank, args=args, nprocs=world, join=True)
        if independent:
            results = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]
            return sum(r["samples"] / r["seconds"] for r in results)
        result = json.loads(Path(out).read_text())
    return result["samples"] / result["seconds"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=128, help="per-rank batch")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--net", choices=("mlp", "conv"), default="mlp", help="the VAE's networks")
    p.add_argument("--ceiling", action="store_true", help="also time 2 independent 1-rank runs at once: the machine's ceiling")
    p.add_argument("--bind", action="store_true", help="bind each rank to its own CPUs (train.bind_cpus: true)")
    args = p.parse_args(argv)
    print(f"# {' '.join(['python', *sys.argv])}  ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)")
    print(f"usable CPUs: {len(os.sched_getaffinity(0))}, load average before: {os.getloadavg()}")
    rates = {1: [], 2: [], "ceiling": []}
    for rep in range(args.reps):
        for world in (1, 2):
            rates[world].append(run(world, args.steps, args.batch, args.net, bind=args.bind))
            print(f"rep {rep + 1}: {world} rank(s): {rates[world][-1]:.0f} samples/s", flush=True)
        if args.ceiling:
            rates["ceiling"].append(run(2, args.steps, args.batch, args.net, independent=True))
            print(f"rep {rep + 1}: 2 independent 1-rank runs at once: {rates['ceiling'][-1]:.0f} samples/s in all", flush=True)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    ratios = [b / a for a, b in zip(rates[1], rates[2])]
    print(
        f"median: 1 rank {one:.0f} samples/s, 2 ranks {two:.0f} samples/s: {two / one:.2f}x (per-rep ratios {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    if args.ceiling:
        ceiling = statistics.median(rates["ceiling"])
        print(
            f"ceiling: 2 independent runs {ceiling:.0f} samples/s: {ceiling / one:.2f}x of 1 rank; 2 ranks reach {two / ceiling:.0%} of it"
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
