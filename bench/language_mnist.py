"""Declared models on static binarized MNIST with the seed experiment's networks and budget (issue #10 c).

Models (declared with ``pyro_gen.Latent`` / ``LatentModel``), each with a guide named on the command line:

* ``vamp``: the seed experiment's VAE (784-300-300-40 encoder, 40-300-300-784 decoder, Bernoulli) with a
  VampPrior of 500 pseudo-inputs (Tomczak & Welling 2018) instead of N(0, I);
* ``hvae``: a two-level hierarchical VAE, ``z2`` (20) ~ N(0, I), ``z1`` (40) ~ N(mu(z2), sigma(z2)) with a
  300-unit MLP, the decoder reading ``z1``; the guide top-down ``q(z2 | x) q(z1 | x, z2)``.

Training: Adam 1e-3, batch 128, ``--epochs`` (100 in the seed experiment), the validation split for
``best.pt``; each (model, guide) trains in its own run directory under ``--out`` with the Trainer's
checkpoints, so an interrupted run continues exactly when the command is run again. Scored: test NLL
with K importance draws on the full (or ``--test-size`` seeded) test split, ELBO, active units.
The standard-prior rows to compare with are BENCHMARKS.md section 1 (mean field 92.33, planar:10 90.37).

Run::

    python bench/language_mnist.py --models vamp,hvae --guides normal,planar:10 --epochs 100 --nll-samples 1000 --out runs/language
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pyro_gen import Latent, LatentModel, Trainer, evaluate, make_guide, make_likelihood
from pyro_gen.data import load_dataset
from pyro_gen.models.priors import GaussianPrior, VampPrior
from pyro_gen.nn import MLP, Select

HIDDEN = [300, 300]


def build(name: str) -> LatentModel:
    if name == "vamp":
        return LatentModel(
            [Latent("z", shape=(40,), prior=VampPrior(500, (784,)))], MLP(40, HIDDEN[::-1], 784), make_likelihood("bernoulli"), (784,)
        )
    if name == "hvae":
        return LatentModel(
            [Latent("z2", shape=(20,)), Latent("z1", shape=(40,), prior=GaussianPrior(20, 40, hidden=(300,)), parents=("z2",))],
            Select(1, MLP(40, HIDDEN[::-1], 784)),
            make_likelihood("bernoulli"),
            (784,),
        )
    raise SystemExit(f"unknown model {name!r}: choose vamp or hvae")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vamp,hvae")
    p.add_argument("--guides", default="normal,planar:10")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--test-size", type=int, default=None)
    p.add_argument("--nll-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/language")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = {s: load_dataset("binarized_mnist", s, n=getattr(args, f"{s}_size", None), seed=args.seed) for s in ("train", "test")}
    valid = load_dataset("binarized_mnist", "valid")
    x_train, x_valid, x_test = (d.x.reshape(len(d.x), -1) for d in (data["train"], valid, data["test"]))
    rows = []
    for model_name in args.models.split(","):
        for guide_name in args.guides.split(","):
            run_dir = Path(args.out) / f"{model_name}-{guide_name.replace(':', '-')}"
            torch.manual_seed(args.seed)
            model = build(model_name)
            guide = make_guide(guide_name, model, hidden=HIDDEN)
            trainer = Trainer(
                model, guide, "elbo", lr=1e-3, batch_size=128, epochs=args.epochs, seed=args.seed, run_dir=run_dir, progress=False
            )
            start = time.perf_counter()
            history = trainer.fit(x_train, x_valid, resume=(run_dir / "last.pt").exists())
            seconds = time.perf_counter() - start
            ckpt = torch.load(run_dir / "best.pt", weights_only=True) if (run_dir / "best.pt").exists() else None
            if ckpt is not None:
                model.load_state_dict(ckpt["model"]), guide.load_state_dict(ckpt["guide"])
            scores = evaluate(model, guide, x_test, num_samples=args.nll_samples, seed=args.seed)
            row = {
                "model": model_name,
                "guide": guide_name,
                "test_nll": scores["nll"],
                "test_elbo": scores["elbo"],
                "active_units": scores["active_units"],
                "epochs": len(history),
                "train_seconds_this_call": seconds,
                "nll_samples": args.nll_samples,
                "test_points": len(x_test),
            }
            rows.append(row)
            (run_dir / "scores.json").write_text(json.dumps(row, indent=2) + "\n")
            print(json.dumps(row), flush=True)
    print()
    print(f"| model | guide | test NLL (K={args.nll_samples}) | test ELBO | active units | epochs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['guide']} | {r['test_nll']:.2f} | {r['test_elbo']:.2f} | {r['active_units']} | {r['epochs']} |")


if __name__ == "__main__":
    main()
