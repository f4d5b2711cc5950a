"""PixelVAE on static binarized MNIST: a VAE whose likelihood is a small PixelCNN, and its active units (issue #11 c, item 4).

The model is declared like any :class:`~pyro_gen.LatentModel`: ``z`` (40) ~ N(0, I), an MLP decoder
(40-300-300) whose output is a ``--cond-channels`` x 28 x 28 feature map, and
``make_likelihood("pixelcnn", ...)``: a gated PixelCNN with ``--layers`` layers of ``--channels`` channels
conditioned on that map (Gulrajani et al. 2017). A PixelCNN can model MNIST on its own (the latents then
collapse, Chen et al. 2017); a *weak* decoder (few layers, a ``--first-kernel`` of 5: it sees 2-3 rows
above the pixel) leaves the global shape to ``z``, and free bits (``--free-bits`` nats per latent
dimension, Kingma et al. 2016) keep the KL from being optimized away. The guide is the mean-field
Gaussian with the seed experiment's MLP encoder (300, 300).

Training: Adam ``--lr`` decayed linearly to 0 over ``--epochs``, batch ``--batch-size``, ``best.pt`` chosen on
every fifth validation image (the unmodified ELBO), in ``--out/pixelvae-<variant>`` with the Trainer's
checkpoints (running the command again continues a killed run). Scored on every ``N/--test-size``-th test
image (the test set is sorted by digit): importance-sampled NLL with ``--nll-samples`` draws, ELBO, KL and
active units (posterior-mean variance > 0.01; also from the guide's analytic means, see
:func:`posterior_loc_units`), written to ``RUN/result.json``.

Run::

    OMP_NUM_THREADS=1 python bench/pixelvae_mnist.py --epochs 3 --free-bits 0 --out /root/pyro_gen_runs
    OMP_NUM_THREADS=1 python bench/pixelvae_mnist.py --epochs 3 --free-bits 0.25 --out /root/pyro_gen_runs
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from pyro_gen import Latent, LatentModel, Trainer, evaluate, make_guide, make_likelihood
from pyro_gen.data import load_dataset
from pyro_gen.infer import ELBO
from pyro_gen.infer.trainer import TensorBatches, load_checkpoint
from pyro_gen.nn import MLP


def build(args) -> LatentModel:
    likelihood = make_likelihood(
        "pixelcnn", data_shape=(1, 28, 28), levels=2, cond_channels=args.cond_channels, channels=args.channels,
        layers=args.layers, first_kernel=args.first_kernel,
    )  # fmt: skip
    decoder = MLP(40, [300, 300], args.cond_channels * 784)
    return LatentModel([Latent("z", shape=(40,))], decoder, likelihood, (1, 28, 28))


@torch.no_grad()
def posterior_loc_units(guide, x: torch.Tensor) -> dict:
    """Active units from the guide's *analytic* posterior means (its Gaussian's loc), and the KL per dimension.

    ``evaluate``'s ``active_units`` takes the mean of the K importance draws, whose Monte Carlo variance
    ``s^2 / K`` alone exceeds the 0.01 threshold of Burda et al. (2016) when K < 100 and the posterior is the
    prior (s = 1): with K = 50 a collapsed dimension counts as active. These use the loc instead.
    """
    q = guide.posterior(x)[0]
    while hasattr(q, "base_dist"):
        q = q.base_dist
    var = q.loc.var(0)
    kl = (0.5 * (q.loc**2 + q.scale**2 - 1) - q.scale.log()).mean(0)
    return {
        "active_units_loc": int((var > 0.01).sum()),
        "active_units_loc_0.1": int((var > 0.1).sum()),
        "posterior_mean_variance_min_median_max": [var.min().item(), var.median().item(), var.max().item()],
        "kl_per_dim_min_median_max": [kl.min().item(), kl.median().item(), kl.max().item()],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cond-channels", type=int, default=4)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--first-kernel", type=int, default=5)
    p.add_argument("--free-bits", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--nll-samples", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("/root/pyro_gen_runs"))
    args = p.parse_args()
    torch.set_num_threads(1)

    variant = f"pixelvae-c{args.channels}x{args.layers}k{args.first_kernel}-fb{args.free_bits:g}"
    run = args.out / variant
    run.mkdir(parents=True, exist_ok=True)
    train = load_dataset("binarized_mnist", "train").x
    if args.train_size:
        train = train[: args.train_size]
    valid = load_dataset("binarized_mnist", "valid").x[::5]
    test = load_dataset("binarized_mnist", "test").x
    test = test[:: max(1, len(test) // args.test_size)][: args.test_size]

    torch.manual_seed(args.seed)
    model = build(args)
    guide = make_guide("normal", model, hidden=[300, 300])
    trainer = Trainer(
        model, guide, ELBO(free_bits=args.free_bits), lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
        run_dir=run, lr_schedule="linear", threads=1, progress=False,
    )  # fmt: skip
    history = trainer.fit(
        TensorBatches(train, args.batch_size, seed=args.seed), TensorBatches(valid, 500, shuffle=False), resume=(run / "last.pt").exists()
    )
    for h in history:
        print(
            f"epoch {h['epoch']}: train {h['train_loss']:.3f}, valid -ELBO {h.get('valid_loss', math.nan):.3f}, {h['seconds']:.0f} s",
            flush=True,
        )

    checkpoint = "best.pt" if (run / "best.pt").exists() else "last.pt"
    ckpt = load_checkpoint(run / checkpoint)
    model.load_state_dict(ckpt["model"]), guide.load_state_dict(ckpt["guide"])
    start = time.time()
    scores = evaluate(model, guide, test, num_samples=args.nll_samples, chunk_size=2000, seed=args.seed)
    result = {
        "test_nll": scores["nll"],
        "nll_method": f"importance sampling, K={args.nll_samples}",
        "test_elbo": scores["elbo"],
        "test_kl": scores["kl"],
        "active_units": scores["active_units"],
        "active_units_note": f"evaluate's count, from the mean of K={args.nll_samples} draws (inflated when K < 100)",
        **posterior_loc_units(guide, test),
        "test_images": len(test),
        "checkpoint": checkpoint,
        "epochs": len(history),
        "seconds_per_epoch": sum(h["seconds"] for h in history) / max(len(history), 1),
        "valid_losses": [h.get("valid_loss") for h in history],
        "scoring_seconds": time.time() - start,
        "parameters": sum(p.numel() for p in [*model.parameters(), *guide.parameters()]),
        "settings": vars(args) | {"out": str(args.out)},
    }
    print(json.dumps(result, indent=1), flush=True)
    (run / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
