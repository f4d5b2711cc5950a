"""A gated PixelCNN on static binarized MNIST: exact test NLL on the full test set (issue #11 c).

The model is :func:`pyro_gen.models.pixelcnn.pixelcnn` (Bernoulli pixels, a 7x7 mask-A first layer and
3x3 mask-B gated layers, van den Oord et al. 2016b), fitted by exact maximum likelihood with the one
:class:`~pyro_gen.Trainer` (``objective="mle"``, no guide): Adam at ``--lr`` decayed linearly to 0 over the
``--epochs`` (a fixed budget), batch ``--batch-size``, ``best.pt`` chosen on every second validation image.
Training runs in ``--out/pixelcnn`` with the Trainer's checkpoints, so running the same command again
after a kill continues exactly where it stopped (and only scores once training is complete).

Scored: the exact test NLL in nats per image over all 10,000 test images and bits per dimension
(``nll / (784 ln 2)``), written to ``--out/pixelcnn/result.json``; a grid of 64 samples (the windowed
autoregressive sampler) to ``--grid``. The row to beat: the best VAE of BENCHMARKS.md section 1,
88.76 nats (IS, K=1000); published: PixelCNN 81.30 (van den Oord et al. 2016a).

Run::

    OMP_NUM_THREADS=1 python bench/pixelcnn_mnist.py --channels 32 --layers 6 --epochs 6 --out /root/pyro_gen_runs/pixelcnn
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from pyro_gen import Trainer
from pyro_gen.data import load_dataset
from pyro_gen.infer.trainer import TensorBatches, load_checkpoint
from pyro_gen.models.pixelcnn import bits_per_dim, pixelcnn


@torch.no_grad()
def exact_nll(model, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """``-log p(x)`` in nats of every image (exact: the sum of the pixels' conditionals)."""
    model.eval()
    dist = model.distribution
    return torch.cat([-dist(batch_shape=(len(b),)).log_prob(b) for b in x.split(batch)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--train-size", type=int, default=None, help="first N training images (a smoke test); default all 50,000")
    p.add_argument("--test-size", type=int, default=None, help="every k-th test image so that N remain (smoke test); default all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("/root/pyro_gen_runs"))
    p.add_argument("--grid", type=Path, default=None, help="PNG of 64 samples (default: RUN/samples.png)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    run = args.out / "pixelcnn"
    run.mkdir(parents=True, exist_ok=True)
    train = load_dataset("binarized_mnist", "train").x
    valid = load_dataset("binarized_mnist", "valid").x[::2]
    test = load_dataset("binarized_mnist", "test").x
    if args.train_size:
        train = train[: args.train_size]
    if args.test_size:
        test = test[:: max(1, len(test) // args.test_size)][: args.test_size]  # strided: the test set is sorted by digit

    torch.manual_seed(args.seed)
    model = pixelcnn((1, 28, 28), levels=2, channels=args.channels, layers=args.layers)
    trainer = Trainer(
        model, None, "mle", lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed, run_dir=run,
        lr_schedule="linear", threads=args.threads, progress=False,
    )  # fmt: skip
    start = time.time()
    history = trainer.fit(
        TensorBatches(train, args.batch_size, seed=args.seed), TensorBatches(valid, 500, shuffle=False), resume=(run / "last.pt").exists()
    )
    trained = time.time() - start
    for h in history:
        print(
            f"epoch {h['epoch']}: train {h['train_loss']:.3f}, valid {h.get('valid_loss', math.nan):.3f}, {h['seconds']:.0f} s", flush=True
        )

    checkpoint = "best.pt" if (run / "best.pt").exists() else "last.pt"
    model.load_state_dict(load_checkpoint(run / checkpoint)["model"])
    start = time.time()
    nll = exact_nll(model, test)
    scored = time.time() - start
    mean = nll.mean().item()
    result = {
        "test_nll": mean,
        "test_nll_stderr": (nll.std() / math.sqrt(len(nll))).item(),
        "bits_per_dim": bits_per_dim(mean, 784),
        "nll_method": "exact",
        "test_images": len(test),
        "checkpoint": checkpoint,
        "epochs": len(history),
        "seconds_per_epoch": sum(h["seconds"] for h in history) / max(len(history), 1),
        "valid_losses": [h.get("valid_loss") for h in history],
        "seconds_this_call": {"training": trained, "scoring": scored},
        "parameters": sum(p.numel() for p in model.parameters()),
        "settings": vars(args) | {"out": str(args.out), "grid": str(args.grid)},
    }
    print(json.dumps(result, indent=1), flush=True)
    (run / "result.json").write_text(json.dumps(result, indent=1))

    from pyro_gen.analysis import save_image_grid

    torch.manual_seed(args.seed)
    start = time.time()
    with torch.no_grad():
        samples = model.distribution(batch_shape=(64,)).sample()
    print(f"64 samples in {time.time() - start:.1f} s", flush=True)
    grid = args.grid or run / "samples.png"
    save_image_grid(samples, grid, nrow=8)
    print(f"wrote {grid}", flush=True)


if __name__ == "__main__":
    main()
