"""PixelCNN bits per dimension on quantized grayscale images: scikit-learn's digits (17 levels) and Frey faces (256).

The PixelCNN family (``model.kind: pixelcnn``) with a softmax over the dataset's levels, trained through
``pyro_gen.run.train`` on the library's standard splits (``load_dataset(name, split)``: digits 1397 / 200 /
200, Frey faces 1565 / 200 / 200 after the seeded shuffle), ``best.pt`` chosen on the validation split, scored
on the whole test split. This is the PixelCNN reference of issue #11 d, beside the flow family and a
full-covariance Gaussian on the same splits.

Convention: the exact discrete NLL ``-log2 P(k)`` of the integer levels, divided by the number of pixels
(bits per pixel, each pixel's alphabet being the dataset's ``L`` levels). A flow trained on uniformly
dequantized ``(k + u) / L`` gives ``-log2 p`` of the continuous density *in the units of the [0, 1] grid*
plus ``log2 L`` per pixel, a bound on the same discrete quantity: both are comparable when they use the same L.

Each dataset trains in ``--out/pixelcnn-<dataset>`` (run it again to resume a killed run; a complete run is
scored again). Run::

    OMP_NUM_THREADS=1 python bench/pixelcnn_levels.py --data digits,frey_faces --out /root/pyro_gen_runs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pyro_gen.config import from_dict
from pyro_gen.run import RunDir, evaluate_run, train

SETTINGS = {
    # 8x8 images: a 5x5 first kernel and 4 layers see the whole past (reach 2 + 3 = 5 rows)
    "digits": {"model": {"channels": 32, "layers": 4, "first_kernel": 5}, "train": {"epochs": 60, "batch_size": 64, "lr": 0.002}},
    "frey_faces": {"model": {"channels": 32, "layers": 5, "first_kernel": 7}, "train": {"epochs": 15, "batch_size": 32, "lr": 0.001}},
}


def config_for(name: str, epochs: int | None, seed: int) -> dict:
    s = SETTINGS[name]
    train_section = {**s["train"], "lr_schedule": "linear", "seed": seed, "threads": 1, "progress": False}
    if epochs:
        train_section["epochs"] = epochs
    return {"data": {"name": name}, "model": {"kind": "pixelcnn", **s["model"]}, "train": train_section}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits,frey_faces")
    p.add_argument("--epochs", type=int, default=None, help="override every dataset's epochs (a smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("/root/pyro_gen_runs"))
    args = p.parse_args()
    rows = {}
    for name in (n.strip() for n in args.data.split(",") if n.strip()):
        run_dir = args.out / f"pixelcnn-{name}"
        run = RunDir(run_dir)
        if run.is_complete(run.config()) if (run_dir / "config.yaml").exists() else False:
            scores = evaluate_run(run_dir, figures=True)
        elif (run_dir / "config.yaml").exists():
            scores = train(None, run_dir, resume=True)
        else:
            scores = train(from_dict(config_for(name, args.epochs, args.seed)), run_dir)
        rows[name] = {
            k: scores[k] for k in ("test_nll", "bits_per_dim", "nll_method", "levels", "test_images", "epochs", "seconds_per_epoch")
        }
        rows[name]["checkpoint"] = scores["checkpoint"]
        print(name, json.dumps(rows[name]), flush=True)
    (args.out / "pixelcnn_levels.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
