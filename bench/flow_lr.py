"""The flow layers' learning rate: validation -ELBO per epoch of a flow guide at a given lr scale.

Trains the seed experiment's VAE (static binarized MNIST, full training set, MLP 300-300, latent
40, Adam 1e-3, batch 128, seed 0) with the given guide, its flow layers' parameters at
``scale`` x lr (one Adam parameter group), and prints the validation loss of every epoch
(BENCHMARKS.md, section 6).

Run (from the repository root; about 10-20 s per epoch on one core)::

    python bench/flow_lr.py --scale 0.1 --guide planar:10 --epochs 15
"""

import argparse
import sys

import pyro
import torch


def main(argv=None) -> int:
    from pyro_gen import Trainer, make_guide, vae
    from pyro_gen.data import load_dataset

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, required=True, help="flow layers' learning rate / lr")
    p.add_argument("--guide", default="planar:10")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    train, valid = load_dataset("binarized_mnist", "train"), load_dataset("binarized_mnist", "valid")
    pyro.set_rng_seed(args.seed)
    model = vae((1, 28, 28), 40, [300, 300])
    guide = make_guide(args.guide, model, hidden=[300, 300], flow_lr_scale=args.scale)
    history = Trainer(model, guide, "elbo", epochs=args.epochs, batch_size=128, lr=1e-3, progress=False, seed=args.seed).fit(train, valid)
    print(f"{args.guide}, flow layers at {args.scale} x lr: valid -ELBO per epoch", [round(r["valid_loss"], 2) for r in history])
    return 0


if __name__ == "__main__":
    sys.exit(main())
