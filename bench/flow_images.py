"""Real NVP on offline image sets: test bits/dim against a full-covariance Gaussian computed the same way.

For scikit-learn's digits (8x8, 17 levels) and Frey faces (28x20, 256 levels), on the standard
splits (``load_dataset(name, split)``):

* the flow family is trained with ``configs/realnvp_<data>.yaml`` into a resumable run directory
  ``OUT/<data>`` (starting the script again resumes a killed run; a complete run is only scored);
  ``evaluate`` scores each test image at one seeded dequantization draw ``k + u`` on the level
  scale: ``nll = -log p(k + u)`` in nats, ``bpd = nll / (D ln 2)``;
* the reference is a **full-covariance Gaussian fitted in closed form** in the flow's own
  pre-transformed space (``w = logit(alpha + (1 - 2 alpha) v / L)``, the same alpha; also, for
  information, Glow's centred ``w = v / L - 1/2``): the maximum-likelihood mean and covariance of the
  training images' ``w`` (one dequantization draw each), with a ridge ``lambda * mean variance * I``
  chosen on the validation split from 1e-4 ... 1 (Frey faces have 560 dims for 1565 images). It is
  scored as a :class:`~pyro_gen.models.flow_density.FlowDensity` whose one layer is Pyro's
  ``LowerCholeskyAffine``: the same pre-transform log-dets, the same seeded test draws, the same code.

Run (from the repository root; tens of minutes on one core)::

    OMP_NUM_THREADS=1 PYRO_GEN_DATA=../shared/data python bench/flow_images.py --out /root/pyro_gen_runs/flow/images
    python bench/flow_images.py --smoke --out /tmp/flow_images_smoke   # tiny: checks that the script runs
    # another length than the config's (a linear schedule over the new length: use a fresh --out)
    OMP_NUM_THREADS=1 PYRO_GEN_DATA=../shared/data python bench/flow_images.py --data frey_faces --epochs 60 --out /root/pyro_gen_runs/flow/images_frey60

Results go to ``OUT/results.json`` and a markdown table on stdout; the digits' sample grid and
interpolation are copied to ``docs/images/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("digits", "frey_faces")
RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def train_flow(name: str, out: Path, overrides: dict):
    from pyro_gen.config import load_config
    from pyro_gen.run import RunDir, train
    from pyro_gen.run.commands import evaluate_run

    config = load_config(REPO / "configs" / f"realnvp_{name}.yaml")
    config.train.progress = False
    for key, value in overrides.items():
        section, field = key.split(".")
        setattr(getattr(config, section), field, value)
    run_dir = out / name
    start = time.perf_counter()
    if (run_dir / "training.json").exists() and RunDir(run_dir).is_complete(config):
        scores = evaluate_run(run_dir, figures=True)
    elif (run_dir / "config.yaml").exists():
        scores = train(None, run_dir, resume=True)
    else:
        scores = train(config, run_dir)
    return run_dir, scores, time.perf_counter() - start


def gaussian_flow(shape, levels: int, logit: bool, alpha: float, loc: torch.Tensor, cov: torch.Tensor):
    """A FlowDensity whose one layer is Pyro's LowerCholeskyAffine: a full-covariance Gaussian in the pre-transformed space."""
    from pyro.distributions.transforms import LowerCholeskyAffine

    from pyro_gen.models.flow_density import FlowDensity
    from pyro_gen.models.flows import Flatten

    chol = torch.linalg.cholesky(cov)
    return FlowDensity(shape, [LowerCholeskyAffine(loc, chol), Flatten(shape)], levels=levels, logit=logit, alpha=alpha).double().eval()


def gaussian_reference(config, splits: dict, logit: bool, seed: int) -> dict:
    """Closed-form Gaussian in the flow's pre-transformed space, ridge chosen on the validation split; test NLL and bpd."""
    import math

    from pyro_gen.families.flow import per_point_nll
    from pyro_gen.models.flows import dequantize, run_chain
    from pyro_gen.models.flows.preprocess import output_transforms
    from pyro_gen.rng import seeded
    from pyro_gen.run.data import fixed_test_data, image_levels

    m = config.model
    levels = image_levels(config)
    shape = tuple(splits["train"].event_shape)
    dims = math.prod(shape)
    x = splits["train"].x.double()
    with seeded(seed + 1):  # the training images' own dequantization draw
        v = dequantize(x, levels)
    w = run_chain(output_transforms(levels, logit, m.alpha), v, 3, inverse=True)[0].reshape(len(x), -1)
    loc = w.mean(0)
    centred = w - loc
    cov = centred.T @ centred / len(w)
    scale = cov.diagonal().mean()
    eye = torch.eye(dims, dtype=torch.float64)
    valid = fixed_test_data(splits["valid"], config.data.seed).double()
    best = None
    for ridge in RIDGES:
        model = gaussian_flow(shape, levels, logit, m.alpha, loc, cov + ridge * scale * eye)
        nll = per_point_nll(model, valid, seed).mean().item()
        if best is None or nll < best[1]:
            best = (ridge, nll)
    model = gaussian_flow(shape, levels, logit, m.alpha, loc, cov + best[0] * scale * eye)
    test = fixed_test_data(splits["test"], config.data.seed).double()
    nll = per_point_nll(model, test, seed).mean().item()
    return {"test_nll": nll, "bits_per_dim": nll / (dims * math.log(2)), "ridge": best[0], "valid_nll": best[1]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/root/pyro_gen_runs/flow/images"))
    parser.add_argument("--data", default=",".join(DATASETS))
    parser.add_argument("--smoke", action="store_true", help="tiny runs: checks that the script works; the numbers mean nothing")
    parser.add_argument("--images", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--epochs", type=int, help="train for this many epochs instead of the config's (use a fresh --out)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    overrides = {"train.epochs": 1, "data.train_size": 128, "model.channels": 4, "model.blocks": 1} if args.smoke else {}
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in [n.strip() for n in args.data.split(",") if n.strip()]:
        run_dir, scores, seconds = train_flow(name, args.out, overrides)
        from pyro_gen.run.rundir import RunDir

        config = RunDir(run_dir).config()
        splits = config.family.load_data(config)
        refs = {
            f"gaussian_{'logit' if logit else 'centred'}": gaussian_reference(config, splits, logit, config.train.seed)
            for logit in (True, False)
        }
        results[name] = {
            "flow": {
                k: scores[k] for k in ("test_nll", "bits_per_dim", "nll_method", "epochs", "seconds_per_epoch", "parameters", "model")
            },
            **refs,
            "wall_seconds": seconds,
            "test_images": scores["test_points"],
        }
        print(json.dumps({name: results[name]}), flush=True)
        results_path.write_text(json.dumps(results, indent=1))
        if not args.smoke:
            args.images.mkdir(parents=True, exist_ok=True)
            for figure in ("samples.png", "interpolation.png"):
                shutil.copyfile(run_dir / figure, args.images / f"realnvp_{name}_{figure}")
    print("\n| data | Real NVP bits/dim (nats) | full-cov Gaussian, logit space | full-cov Gaussian, centred | epochs | s/epoch |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        f, g, c = r["flow"], r["gaussian_logit"], r["gaussian_centred"]
        print(
            f"| {name} | {f['bits_per_dim']:.4f} ({f['test_nll']:.2f}) | {g['bits_per_dim']:.4f} ({g['test_nll']:.2f}, ridge {g['ridge']:g}) | "
            f"{c['bits_per_dim']:.4f} ({c['test_nll']:.2f}, ridge {c['ridge']:g}) | {f['epochs']} | {f['seconds_per_epoch']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
