"""A gated PixelCNN on static binarized MNIST: exact test NLL on the full test set (issue #11 c).

The run is the PixelCNN family's (``model.kind: pixelcnn``) with the shipped config
``configs/pixelcnn_binarized_mnist.yaml``: Bernoulli pixels, 32 channels per stack, 6 gated layers (a 7x7
mask-A first layer, then 3x3 mask B; van den Oord et al. 2016b), fitted by exact maximum likelihood with the
one :class:`~pyro_gen.Trainer` (no guide): Adam at 2e-3 decayed linearly to 0 over 6 epochs (the budget),
batch 64, ``best.pt`` chosen on the validation split. It trains in ``--out/pixelcnn`` (a run directory:
``pyro-gen evaluate`` / ``sample`` work on it); running the command again after a kill resumes the run
exactly, and on a complete run only scores it again.

Scored by the family: the exact test NLL in nats per image over all 10,000 test images and bits per dimension
(``nll / (784 ln 2)``) in ``RUN/metrics.json`` (``nll_method: exact``); a grid of 64 samples (the windowed
autoregressive sampler) to ``RUN/samples.png`` and ``--grid``. The row to beat: the best VAE of BENCHMARKS.md
section 1, 88.76 nats (IS, K=1000); published: PixelCNN 81.30 (van den Oord et al. 2016a).

Run::

    OMP_NUM_THREADS=1 python bench/pixelcnn_mnist.py --out /root/pyro_gen_runs --grid docs/images/pixelcnn_binarized_mnist_samples.png
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from pyro_gen.config import load_config
from pyro_gen.run import RunDir, evaluate_run, train

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "pixelcnn_binarized_mnist.yaml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("--out", type=Path, default=Path("/root/pyro_gen_runs"))
    p.add_argument("--grid", type=Path, default=None, help="also copy the 64-sample grid here (e.g. docs/images/...)")
    p.add_argument("--peek", action="store_true", help="score the current best.pt of a run still training (read-only, no lock)")
    p.add_argument("--peek-grid", type=Path, default=None, help="with --peek: also draw 64 samples of that best.pt here")
    p.add_argument("--peek-size", type=int, default=None, help="with --peek: every k-th test image so that N remain (an estimate)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for a smoke test, e.g. train.epochs=1 data.train_size=256")
    args = p.parse_args()
    run_dir = args.out / "pixelcnn"
    run = RunDir(run_dir)
    if args.peek:
        peek(run, args.peek_grid, args.peek_size)
        return
    if (run_dir / "config.yaml").exists():
        # resume a killed run with its own config; a complete one is scored again
        scores = evaluate_run(run_dir) if run.is_complete(run.config()) else train(None, run_dir, resume=True)
    else:
        overrides = ["train.threads=1", "train.progress=false", *args.overrides]
        scores = train(load_config(args.config, overrides), run_dir)
    print(scores.summary(), flush=True)
    print(json.dumps(scores.to_json(), indent=1), flush=True)
    if args.grid:
        shutil.copyfile(run_dir / "samples.png", args.grid)
        print(f"wrote {args.grid}", flush=True)


def peek(run: RunDir, grid: Path | None, size: int | None = None) -> None:
    """The exact test NLL of a training run's current ``best.pt``, written nowhere (checkpoints are replaced
    atomically, so reading one while the trainer writes the next is safe)."""
    import torch

    from pyro_gen.families.base import restore, save_sample_grid
    from pyro_gen.families.pixelcnn import PixelCNNFamily, draw_images, exact_test_nll
    from pyro_gen.models.pixelcnn import bits_per_dim
    from pyro_gen.run.data import fixed_test_data

    torch.set_num_threads(1)
    config, family = run.config(), PixelCNNFamily()
    splits = family.load_data(config, ("train", "test"))
    ckpt, name = run.load_checkpoint(run.BEST)
    model = family.build(config, splits)
    restore(model, None, ckpt, run.path / name)  # the family's own loading: eval mode, broken weights refused
    test = fixed_test_data(splits["test"], config.data.seed)
    if size:  # strided: the binarized test set is sorted by digit
        test = test[:: max(1, len(test) // size)][:size]
    nll = exact_test_nll(model, test).mean().item()
    print(f"{name} after {ckpt['epoch']} of {config.train.epochs} epochs: exact test NLL {nll:.3f} nats, "
          f"{bits_per_dim(nll, 784):.4f} bits/dim ({len(test)} test images)", flush=True)  # fmt: skip
    if grid is not None:
        print(
            f"wrote {save_sample_grid(*draw_images(model, 64, config.train.seed), config.data.name, config.train.seed, grid)}", flush=True
        )


if __name__ == "__main__":
    main()
