"""Semi-supervised M2 (Kingma et al. 2014) on scikit-learn's 8x8 digits with 10% of the labels, declared in pyro_gen.

The model is declared in a few lines: ``y ~ Categorical(uniform 10)``, ``z ~ N(0, I_16)``,
``x ~ Bernoulli(decoder(onehot(y), z))``; the guide ``q(y | x) q(z | x, y)`` is built by
``make_guide("normal", model)``; the ELBO sums ``y`` out exactly where it is unknown and adds M2's
``alpha * log q(y | x)`` on the labelled points (``classification_weight``). Data: the library's
``digits`` splits (train 1397 / valid 200 / test 200, seeded), dynamically binarized in training,
binarized once with the data seed for validation and test; labels kept for a seeded 10% of the
training images (140), the rest marked -1.

Reported (test split): the classification accuracy of ``q(y | x)``; the same for a logistic
regression (scikit-learn, C chosen on the validation split) trained on the same 140 labelled images;
the marginal test NLL with ``y`` summed out exactly and ``z`` importance-sampled (K draws per value).
``alpha`` is chosen on the validation accuracy. Published M2 figures for scale (MNIST, not digits):
11.97% error with 100 labels, 3.60% with 3000 (Kingma et al. 2014, table 1).

Run::

    python bench/m2_digits.py --epochs 300 --alphas 1,10,50 --seed 0
"""

from __future__ import annotations

import argparse
import time

import pyro.distributions as dist
import torch
from torch import nn

from pyro_gen import Latent, LatentModel, TensorBatches, Trainer, evaluate, make_guide, make_likelihood
from pyro_gen.data import load_dataset
from pyro_gen.infer import make_objective
from pyro_gen.nn import MLP

CLASSES, LATENT = 10, 16


class M2Decoder(nn.Module):
    """p(x | y, z): an MLP of [onehot(y), z]."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = MLP(CLASSES + LATENT, [hidden], 64)

    def forward(self, y, z):
        onehot = nn.functional.one_hot(y, CLASSES).to(z.dtype).expand(z.shape[:-1] + (CLASSES,))
        return self.net(torch.cat([onehot, z], -1))


def m2(hidden: int) -> LatentModel:
    return LatentModel(
        [Latent("y", prior=dist.Categorical(logits=torch.zeros(CLASSES))), Latent("z", shape=(LATENT,))],
        M2Decoder(hidden),
        make_likelihood("bernoulli"),
        data_shape=(64,),
    )


def fixed(split, seed: int) -> torch.Tensor:
    return split.transform_batch(split.x, generator=torch.Generator().manual_seed(seed)).reshape(len(split.x), -1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--alphas", default="1,10,50", help="classification weights tried (chosen on the validation split)")
    p.add_argument("--label-fraction", type=float, default=0.1)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--nll-samples", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)

    splits = {s: load_dataset("digits", s, binarize="dynamic") for s in ("train", "valid", "test")}
    train = splits["train"]
    x_train = train.x.reshape(len(train.x), -1)
    y_train = train.y.long()
    g = torch.Generator().manual_seed(args.seed)
    labelled = torch.randperm(len(y_train), generator=g)[: round(args.label_fraction * len(y_train))]
    labels = torch.full_like(y_train, -1)
    labels[labelled] = y_train[labelled]
    x_valid, x_test = fixed(splits["valid"], args.seed), fixed(splits["test"], args.seed)
    y_valid, y_test = splits["valid"].y.long(), splits["test"].y.long()

    def transform(batch, generator):
        return torch.bernoulli(batch, generator=generator)

    results = []
    for alpha in [float(a) for a in args.alphas.split(",")]:
        torch.manual_seed(args.seed)
        model = m2(args.hidden)
        guide = make_guide("normal", model, hidden=(args.hidden,))
        objective = make_objective("elbo", classification_weight=alpha)
        batches = TensorBatches(x_train, 100, seed=args.seed, transform=transform, y=labels)
        start = time.perf_counter()
        Trainer(model, guide, objective, epochs=args.epochs, lr=1e-3, progress=False, seed=args.seed).fit(batches)
        seconds = time.perf_counter() - start
        model.eval(), guide.eval()
        with torch.no_grad():
            valid_acc = (guide.discrete_log_probs(x_valid).argmax(-1) == y_valid).double().mean().item()
            test_acc = (guide.discrete_log_probs(x_test).argmax(-1) == y_test).double().mean().item()
        results.append((valid_acc, alpha, test_acc, model, guide, seconds))
        print(f"alpha {alpha:g}: valid accuracy {valid_acc:.3f}, test accuracy {test_acc:.3f} ({seconds:.0f} s)", flush=True)
    valid_acc, alpha, test_acc, model, guide, seconds = max(results, key=lambda r: (r[0], -r[1]))
    nll = evaluate(model, guide, x_test, num_samples=args.nll_samples, seed=args.seed)["nll"]

    from sklearn.linear_model import LogisticRegression

    x_l, y_l = fixed(train, args.seed)[labelled].numpy(), y_train[labelled].numpy()
    best = max(
        ((LogisticRegression(C=c, max_iter=5000).fit(x_l, y_l), c) for c in (0.01, 0.1, 1.0, 10.0)),
        key=lambda m: m[0].score(x_valid.numpy(), y_valid.numpy()),
    )
    baseline = best[0].score(x_test.numpy(), y_test.numpy())

    print()
    print(f"| model | labels | test accuracy | test NLL (nats, y summed out, K={args.nll_samples} per value) | chosen on valid |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| M2 (pyro_gen, {args.epochs} epochs, {seconds:.0f} s) | {len(labelled)} of {len(y_train)} | {test_acc:.3f} | {nll:.2f} | alpha {alpha:g} |"
    )
    print(f"| logistic regression on the labelled images | {len(labelled)} | {baseline:.3f} | | C {best[1]:g} |")


if __name__ == "__main__":
    main()
