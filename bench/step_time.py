"""Time of one training step: the library's VAE vs the same step hand-written in PyTorch.

Four steps on the same networks (784-300-300 -> 40+40, 40-300-300-784, Bernoulli, Adam
lr 1e-3) and the same batch of 128 real binarized MNIST training images:

* ``torch``: the hand-written step of ``reference_vae.py`` (analytic KL, BCE-with-logits).
* ``library``: ``vae`` + ``make_guide("normal")`` + the ``ELBO`` objective, stepped exactly as
  :class:`pyro_gen.infer.trainer.Trainer` steps (its ``_step_loss`` and parameter list, then
  ``loss.item(); zero_grad(set_to_none=True); backward(); step()``) inside the Trainer's
  ``pyro.settings.context(module_local_params=True)`` and ``pyro.validation_enabled(False)``, and
  like the Trainer it validates the data once and steps inside ``checked_dataset()`` (the model
  keeps its per-batch shape check but does not re-scan every value of a tensor already checked).
* ``library, traced``: the same step inside :func:`pyro_gen.infer.traces.traced_only`, i.e. the model and
  guide run under Pyro's trace / replay / plate handlers instead of the direct path (the library's step
  before issue #12 item 4; both give the same loss and gradients, ``tests/infer/test_direct_path.py``).
* ``library + loop``: the same plus the rest of the Trainer's per-step loop body (the finiteness
  check and the per-batch accumulation of ``objective.last_metrics``).
* ``Pyro SVI``: context only: a tutorial-style Pyro VAE (``pyro.module`` + plates) on the same
  networks with plain ``Trace_ELBO`` (Monte Carlo KL), ``pyro.optim.Adam`` and ``SVI.step``.

Each variant owns its parameters (all start from the same weights). After a warm-up the
variants are timed interleaved, one step each per round in a shuffled order, so drifts in
machine load hit all of them alike. The table gives median and IQR per step and the ratio of
medians to ``torch`` with a bootstrap 95% interval. Target: library / torch <= 1.10 (issue #12 item 4;
it was 1.15 for issue #2).

Run (from the repository root)::

    python bench/step_time.py --threads 1 --rounds 1000                 # quiet machine: wall clock
    python bench/step_time.py --threads 1 --rounds 1000 --clock thread  # busy machine: per-thread CPU time
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import math
import random
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO

try:  # imported as bench.step_time
    from . import common, reference_vae
except ImportError:  # run as a script: python bench/step_time.py
    import common
    import reference_vae

TARGET = 1.10
TRAIN_SIZE = 50000  # data_size the Trainer passes for the full static-MNIST training set


def library_step_fn(seed: int, x: torch.Tensor, bookkeeping: bool = False, traced: bool = False):
    """The library's training step, built and run the way the Trainer does it (``traced``: without the direct path)."""
    from pyro_gen.infer.trainer import Trainer, initialize
    from pyro_gen.models.checks import checked_dataset

    model, guide = common.library_vae(seed)
    trainer = Trainer(model, guide, "elbo", lr=common.LR, batch_size=common.BATCH_SIZE, progress=False, seed=seed)
    initialize(model, guide, x)
    trainer.optimizer = torch.optim.Adam(trainer.parameters(), lr=trainer.lr)
    optimizer, objective = trainer.optimizer, trainer.objective
    sums: dict = {}

    # the Trainer validates the training tensor once and then steps inside checked_dataset() (untransformed
    # slices of a checked tensor are not re-checked value by value); do the same with this batch
    model.check_data(x)

    from pyro_gen.infer.traces import traced_only

    def step():
        with checked_dataset(), traced_only() if traced else contextlib.nullcontext():
            loss = trainer._step_loss(x, TRAIN_SIZE)
        value = loss.item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return value

    def step_and_loop():
        value = step()
        if not math.isfinite(value):
            raise RuntimeError("loss is not finite")
        for k, v in objective.last_metrics.items():
            sums[k] = sums.get(k, 0.0) + v * len(x)
        return value

    return (step_and_loop if bookkeeping else step), model, guide


def torch_step_fn(ref: reference_vae.ReferenceVAE, x: torch.Tensor):
    optimizer = reference_vae.make_optimizer(ref, common.LR)
    return lambda: reference_vae.train_step(ref, optimizer, x)


def pyro_svi_step_fn(ref: reference_vae.ReferenceVAE, x: torch.Tensor):
    """A tutorial-style Pyro VAE on the reference networks: Trace_ELBO + pyro.optim.Adam + SVI."""
    encoder, decoder, d = ref.encoder, ref.decoder, ref.latent_dim

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(d), 1.0).expand([d]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = ref.encode(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    pyro.clear_param_store()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": common.LR}), loss=Trace_ELBO())
    return lambda: svi.step(x)


def loss_agreement(seed: int, x: torch.Tensor) -> float:
    """|library loss - torch loss| for identical weights and identical noise (a correctness check)."""
    x_img = x.view(len(x), *common.DATA_SHAPE)
    _, model, guide = library_step_fn(seed, x_img)
    ref = reference_vae.ReferenceVAE(latent_dim=common.LATENT_DIM, hidden=common.HIDDEN)
    common.copy_library_weights(ref, model, guide)
    from pyro_gen.infer import make_objective

    with torch.no_grad():
        torch.manual_seed(seed + 123)
        lib = make_objective("elbo")(model, guide, x_img, data_size=TRAIN_SIZE).item()
        torch.manual_seed(seed + 123)
        ref_loss = ref.loss(x).item()
    return abs(lib - ref_loss), lib, ref_loss


CLOCKS = {
    # wall time: what a user waits for, on a quiet machine
    "wall": time.perf_counter,
    # CPU time of the calling thread: with one torch thread every step's work runs on it, so time
    # spent descheduled (other processes on a busy machine) is not counted
    "thread": time.thread_time,
}


def time_interleaved(steps: dict, warmup: int, rounds: int, seed: int, clock_name: str = "wall") -> dict:
    for _ in range(warmup):
        for f in steps.values():
            f()
    times = {k: [] for k in steps}
    order = list(steps)
    rng = random.Random(seed)
    gc.collect()
    clock = CLOCKS[clock_name]
    for _ in range(rounds):
        rng.shuffle(order)
        for k in order:
            f = steps[k]
            t0 = clock()
            f()
            times[k].append(clock() - t0)
    return times


def run(threads: int, args) -> dict:
    torch.set_num_threads(threads)
    x_flat, source = common.load_binarized_mnist("train", common.BATCH_SIZE, seed=args.seed, data_dir=args.data_dir)
    x_img = x_flat.view(len(x_flat), *common.DATA_SHAPE)
    with pyro.settings.context(module_local_params=True), pyro.validation_enabled(False):
        diff, lib_loss, ref_loss = loss_agreement(args.seed, x_flat)
        lib, model, guide = library_step_fn(args.seed, x_img)
        lib_loop, model2, guide2 = library_step_fn(args.seed, x_img, bookkeeping=True)
        lib_traced, _, _ = library_step_fn(args.seed, x_img, traced=True)
        ref = reference_vae.ReferenceVAE(latent_dim=common.LATENT_DIM, hidden=common.HIDDEN)
        common.copy_library_weights(ref, model, guide)
        ref_svi = copy.deepcopy(ref)
        steps = {
            "torch": torch_step_fn(ref, x_flat),
            "library": lib,
            "library + loop": lib_loop,
            "library, traced": lib_traced,
            "Pyro SVI": pyro_svi_step_fn(ref_svi, x_flat),
        }
        times = time_interleaved(steps, args.warmup, args.rounds, args.seed, args.clock)
    return {"threads": threads, "times": times, "agreement": (diff, lib_loss, ref_loss), "source": source}


def table_row(result: dict, seed: int) -> list:
    t = result["times"]
    s = {k: common.summarize(v) for k, v in t.items()}

    def cell(k):
        return f"{s[k]['median_ms']:.3f} ({s[k]['iqr_ms']:.3f})"

    def ratio(k):
        lo, hi = common.bootstrap_ratio_ci(t[k], t["torch"], seed=seed)
        return f"{s[k]['median_ms'] / s['torch']['median_ms']:.3f} [{lo:.3f}, {hi:.3f}]"

    lib_ratio = s["library"]["median_ms"] / s["torch"]["median_ms"]
    return [
        result["threads"],
        cell("torch"),
        cell("library"),
        ratio("library"),
        ratio("library + loop"),
        ratio("library, traced"),
        cell("Pyro SVI"),
        ratio("Pyro SVI"),
        "yes" if lib_ratio <= TARGET else "**no**",
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="torch.set_num_threads value(s); one table row each")
    p.add_argument("--rounds", type=int, default=1000, help="timed rounds (one step of every variant per round)")
    p.add_argument("--warmup", type=int, default=50, help="untimed rounds first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time (use on a quiet machine); thread: the calling thread's CPU time (robust to other load; needs --threads 1)",
    )
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    if args.clock == "thread" and args.threads != [1]:
        p.error("--clock thread measures one thread's CPU time; use it with --threads 1")

    results = [run(t, args) for t in args.threads]

    print(common.header("Training-step time: library VAE vs hand-written PyTorch"))
    rows = [table_row(r, args.seed) for r in results]
    print(
        common.markdown_table(
            [
                "threads",
                "torch ms (IQR)",
                "library ms (IQR)",
                "library / torch [95% CI]",
                "library + Trainer loop body / torch",
                "library traced (no direct path) / torch",
                "Pyro SVI ms (IQR)",
                "Pyro SVI / torch",
                f"library / torch <= {TARGET}",
            ],
            rows,
        )
    )
    first = results[0]
    print(
        f"\nBatch: {common.BATCH_SIZE} binarized MNIST training images (seeded draw, data via {first['source']}); "
        f"{args.rounds} interleaved rounds after {args.warmup} warm-up rounds; medians per step in milliseconds, "
        f"IQR in parentheses; ratios are ratios of medians with a bootstrap 95% interval; clock: {args.clock} "
        f"({'elapsed time' if args.clock == 'wall' else 'CPU time of the calling thread'})."
    )
    diff, lib_loss, ref_loss = first["agreement"]
    print(f"Same weights and noise: library loss {lib_loss:.4f}, torch loss {ref_loss:.4f}, |difference| {diff:.2e} nats.")
    return results


if __name__ == "__main__":
    main()
