"""Mode coverage of GANs on the 2-D mixtures ring8 and grid25, fitted by the library's one trainer.

For every dataset x loss x pack size x seed: an MLP generator ``z (2) -> 128 -> 128 -> 2`` and an
MLP critic ``2 * pack -> 128 -> 128 -> 1`` (``pyro_gen.models.gan``), the
``pyro_gen.infer.adversarial.Adversarial`` objective, ``pyro_gen.Trainer`` on the toy's training
split; then 2500 samples scored with the VEEGAN protocol (``pyro_gen.evaluation.toy_mode_coverage``):
modes covered (a mode needs ``--min-count`` high-quality samples nearest to it; VEEGAN 1,
PacGAN 20), the percentage of high-quality samples (within 3 standard deviations of their
nearest mode) and the reverse KL of the high-quality samples' mode histogram to uniform.
The table gives mean +- standard deviation over seeds (reverse KL over the runs where it is
defined, i.e. with at least one high-quality sample).

Packing (``--pack 1,2,4``; Lin et al. 2018) lets the critic see several samples at once, which
penalizes a generator that collapses onto few modes; grid25 usually needs it.

Run (from the repository root; the full study)::

    python bench/gan_toy.py --seeds 5 --steps 10000 --pack 1,4 --threads 1

Smoke test::

    python bench/gan_toy.py --seeds 1 --steps 300 --datasets ring8 --losses non_saturating,wgan_gp
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pyro_gen.infer.trainer import LR_SCHEDULES
from pyro_gen.models.gan import PRIORS

try:  # imported as bench.gan_toy
    from . import common
except ImportError:  # run as a script: python bench/gan_toy.py
    import common

#: Per-loss defaults: critic steps per generator step, Adam learning rate and betas.
#: WGAN-GP follows Gulrajani et al. (n_critic 5, Adam(1e-4, 0, 0.9)); the others Radford et al. (betas 0.5, 0.999).
DEFAULTS = {
    "minimax": {"n_critic": 1, "lr": 1e-3},
    "non_saturating": {"n_critic": 1, "lr": 1e-3},
    "wgan_gp": {"n_critic": 5, "lr": 1e-4},
    "hinge": {"n_critic": 1, "lr": 1e-3},
}


def run_one(dataset: str, loss: str, pack: int, seed: int, args) -> dict:
    """Fit one GAN and score 2500 of its samples; returns a flat record."""
    from pyro_gen import Adversarial, Trainer, gan, gan_critic
    from pyro_gen.data.toy import load
    from pyro_gen.evaluation.sample_quality import NUM_SAMPLES, toy_mode_coverage
    from pyro_gen.infer.trainer import TensorBatches
    from pyro_gen.models.gan import latent_prior

    n_critic = args.n_critic or DEFAULTS[loss]["n_critic"]
    lr = args.lr or DEFAULTS[loss]["lr"]
    train = load(dataset, "train", n=args.train_size, seed=seed)
    batches = TensorBatches(train.x, args.batch_size, shuffle=True, seed=seed, drop_last=True)
    epochs = max(1, math.ceil(args.steps * n_critic / len(batches)))

    torch.manual_seed(seed)  # the networks' initialization
    generator = gan((2,), latent_dim=args.latent_dim, hidden=args.hidden, prior=latent_prior(args.prior, args.latent_dim))
    critic = gan_critic((2,), hidden=args.hidden, pack=pack, spectral_norm=args.spectral_norm)
    objective = Adversarial(critic, loss, n_critic=n_critic, lr_critic=lr, lr_generator=lr, ema_decay=args.ema_decay)
    t0 = time.perf_counter()
    trainer = Trainer(
        generator, None, objective, batch_size=args.batch_size, epochs=epochs, seed=seed, progress=False, lr_schedule=args.lr_schedule
    )
    history = trainer.fit(batches)
    seconds = time.perf_counter() - t0

    sampler = objective.ema if objective.ema is not None else generator
    sampler.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(10_000 + seed)
        samples = sampler(batch_size=NUM_SAMPLES)
    cov = toy_mode_coverage(samples, dataset, min_count=args.min_count)
    return {
        "dataset": dataset,
        "loss": loss,
        "pack": pack,
        "seed": seed,
        "n_critic": n_critic,
        "lr": lr,
        "generator_steps": epochs * len(batches) // n_critic,
        "seconds": seconds,
        "final_critic_loss": history[-1]["train_critic_loss"],
        **cov.as_dict(),
    }


def mean_sd(values, fmt: str) -> str:
    a = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if len(a) == 0:
        return "n/a"
    out = f"{format(a.mean(), fmt)} ± {format(a.std(ddof=1), fmt)}" if len(a) > 1 else format(a[0], fmt)
    return out if len(a) == len(values) else f"{out} ({len(a)}/{len(values)} defined)"


def table(records: list[dict]) -> str:
    groups: dict = {}
    for r in records:
        groups.setdefault((r["dataset"], r["loss"], r["pack"]), []).append(r)
    rows = []
    for (dataset, loss, pack), rs in groups.items():
        rows.append(
            [
                dataset,
                loss,
                pack,
                len(rs),
                rs[0]["generator_steps"],
                f"{mean_sd([r['modes_covered'] for r in rs], '.1f')} / {rs[0]['num_modes']}",
                mean_sd([100 * r["high_quality"] for r in rs], ".1f"),
                mean_sd([r["reverse_kl"] for r in rs], ".3f"),
                f"{np.mean([r['seconds'] for r in rs]):.0f}",
            ]
        )
    head = ["data", "loss", "pack", "seeds", "G steps", "modes covered", "% high quality", "reverse KL", "s / run"]
    return common.markdown_table(head, rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--datasets", default="ring8,grid25")
    p.add_argument("--losses", default="minimax,non_saturating,wgan_gp")
    p.add_argument("--pack", default="1", help="comma-separated pack sizes (PacGAN); 1 = no packing")
    p.add_argument("--seeds", type=int, default=3, help="seeds first..first+N-1 per configuration")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=10000, help="generator steps (rounded up to whole epochs)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--train-size", type=int, default=100000)
    p.add_argument("--latent-dim", type=int, default=2)
    p.add_argument("--prior", default="normal", choices=PRIORS, help="the distribution of z")
    p.add_argument("--hidden", default="128,128")
    p.add_argument("--n-critic", type=int, default=None, help="default: 5 for wgan_gp, else 1")
    p.add_argument("--lr", type=float, default=None, help="both players' Adam learning rate; default: 1e-4 for wgan_gp, else 1e-3")
    p.add_argument("--ema-decay", type=float, default=None, help="sample from a moving average of the generator's weights")
    p.add_argument("--spectral-norm", action="store_true")
    p.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES, help="linear: both rates fall to 0 over the run")
    p.add_argument("--min-count", type=int, default=1, help="high-quality samples a mode needs to count as covered")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write per-run records as JSON lines here")
    args = p.parse_args(argv)
    args.hidden = tuple(int(h) for h in args.hidden.split(","))
    torch.set_num_threads(args.threads)

    records = []
    for dataset in args.datasets.split(","):
        for loss in args.losses.split(","):
            for pack in (int(m) for m in args.pack.split(",")):
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    r = run_one(dataset, loss, pack, seed, args)
                    records.append(r)
                    print(json.dumps(r), file=sys.stderr, flush=True)
                    if args.out is not None:
                        with open(args.out, "a") as f:
                            f.write(json.dumps(r) + "\n")
    print(common.header("GAN mode coverage on 2-D mixtures (VEEGAN protocol, 2500 samples)"))
    print(table(records))
    print(
        f"\nz ~ {args.prior}; networks: generator {args.latent_dim}-{'-'.join(map(str, args.hidden))}-2, critic 2·pack-{'-'.join(map(str, args.hidden))}-1; "
        f"batch {args.batch_size}; train split {args.train_size} points; a mode counts from {args.min_count} high-quality sample(s)"
        + (f"; EMA {args.ema_decay}" if args.ema_decay else "")
        + (f"; learning rates {args.lr_schedule} to 0" if args.lr_schedule != "constant" else "")
        + ("; spectral norm" if args.spectral_norm else "")
    )


if __name__ == "__main__":
    main()
