"""Are flow guides better importance proposals? PSIS k-hat of guides fitted to one frozen decoder.

``pyro-gen analyze`` scores each run's guide against its *own* decoder, so a flow guide and a
mean-field guide from two runs are judged on two different posteriors: a run whose decoder ended
worse (a larger ELBO gap) gets the worse k-hat whatever its guide family. Here the decoder is held
fixed and only the guides differ, which isolates the variational family:

1. load a trained run (default: the seed experiment's mean-field VAE, ``best.pt``) and freeze
   its decoder (``requires_grad = False``);
2. for each guide name, build a fresh amortized guide of the run's encoder size and fit it with the
   library's Trainer (ELBO, Adam, the run's batch size and learning rate) on the training split for
   ``--epochs`` epochs, early-stopped on the validation split; the decoder does not move;
3. score every guide on the same test points (the ``pyro-gen analyze`` draw: ``--points`` points,
   seed 0): PSIS k-hat of ``log p(x, z) - log q(z | x)`` with K draws per point, the share above
   0.7, the K-sample importance estimate of ``log p(x)`` (a lower bound whose tightness measures
   the proposal too) and the ELBO.

The run's own guide is scored as a reference row. Run (from the repository root; minutes)::

    python bench/khat_frozen_decoder.py --run runs/seed/normal --guides normal,planar:10,iaf:4 --epochs 10
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

try:  # imported as bench.khat_frozen_decoder
    from . import common
except ImportError:  # run as a script
    import common


def score(model, guide, x: torch.Tensor, k: int, seed: int) -> dict:
    """k-hat, log p(x) estimate and ELBO of ``guide`` as a proposal for ``model`` on ``x``."""
    from pyro_gen.analysis.psis import KHAT_THRESHOLD, psis_khat
    from pyro_gen.evaluation.likelihood import log_weights

    lw = log_weights(model, guide, x, num_samples=k, seed=seed).double()  # (K, N)
    khat = psis_khat(lw)
    return {
        "khat_mean": float(khat[torch.isfinite(khat)].mean()),
        "khat_median": float(khat.median()),
        "share_above_0.7": float((khat > KHAT_THRESHOLD).double().mean()),
        "log_px": float((lw.logsumexp(0) - math.log(k)).mean()),
        "elbo": float(lw.mean(0).mean()),
    }


def fit_guide(name: str, model, config, splits, epochs: int, seed: int, progress: bool):
    import pyro

    from pyro_gen import Trainer, make_guide

    pyro.set_rng_seed(seed)
    guide = make_guide(name, model, hidden=config.model.hidden, net=config.model.net)
    trainer = Trainer(
        model, guide, "elbo", epochs=epochs, batch_size=config.train.batch_size, lr=config.train.lr,
        patience=3, progress=progress, seed=seed,
    )  # fmt: skip
    t0 = time.perf_counter()
    history = trainer.fit(splits["train"], splits.get("valid"))
    best = min(history, key=lambda r: r.get("valid_loss", r["train_loss"]))
    # the Trainer keeps the last weights; reload the best epoch's only when a run_dir is used, so
    # with early stopping on patience 3 the last weights are at most 3 epochs past the best
    return guide, {"epochs": len(history), "best_valid_elbo": -best.get("valid_loss", math.nan), "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    from pyro_gen.run import fixed_test_data, load_run

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", default="runs/seed/normal", help="trained VAE run directory whose decoder is frozen")
    p.add_argument("--guides", default="normal,planar:10,iaf:4", help="guides to fit to the frozen decoder")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--points", type=int, default=100, help="test points scored (the pyro-gen analyze draw)")
    p.add_argument("--k", type=int, default=1000, help="importance draws per point")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    config, model, own_guide, splits = load_run(args.run)
    for prm in model.parameters():
        prm.requires_grad_(False)
    x = fixed_test_data(splits["test"], config.data.seed)
    index = np.sort(np.random.default_rng(args.seed).choice(len(x), size=min(args.points, len(x)), replace=False))
    chosen = x[torch.as_tensor(index)]
    decoder_before = [prm.clone() for prm in model.parameters()]

    rows = []
    own = score(model, own_guide, chosen, args.k, args.seed)
    rows.append([f"{config.guide.name} (the run's own guide, {config.train.epochs} epochs with the decoder)", "-", "-", own])
    for name in args.guides.split(","):
        guide, info = fit_guide(name.strip(), model, config, splits, args.epochs, args.seed, args.progress)
        guide.eval()
        rows.append([name, str(info["epochs"]), f"{info['best_valid_elbo']:.2f}", score(model, guide, chosen, args.k, args.seed)])
        print(f"{name}: {info}", file=sys.stderr, flush=True)
    assert all(torch.equal(a, b) for a, b in zip(decoder_before, model.parameters())), "the decoder moved"

    table = [
        [
            label,
            ep,
            ve,
            f"{s['khat_mean']:.3f}",
            f"{s['khat_median']:.3f}",
            f"{s['share_above_0.7']:.2f}",
            f"{s['log_px']:.2f}",
            f"{s['elbo']:.2f}",
        ]
        for label, ep, ve, s in rows
    ]
    print(common.header("PSIS k-hat of guides fitted to one frozen decoder"))
    print(
        f"Decoder: `{args.run}` ({config.guide.name} run, frozen). {len(chosen)} test points (seed {args.seed}), "
        f"K={args.k} importance draws per point. Guides fitted for at most {args.epochs} epochs (early stopping, patience 3).\n"
    )
    print(
        common.markdown_table(
            ["guide", "epochs", "valid ELBO", "mean k-hat", "median k-hat", "share k-hat > 0.7", "log p(x) (K-sample)", "ELBO"], table
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
