"""A hand-written plain-PyTorch VAE with the reference networks, written independently of pyro_gen.

It is the yardstick for the library's speed (``step_time.py``) and numbers
(``evaluator.py``): Bernoulli likelihood, latent 40, encoder 784-300-300 -> (loc, scale),
decoder 40-300-300-784 logits, ReLU, ``nn.Linear`` layers with torch's default
initialization, scale ``softplus(raw) + 1e-5``. The training loss is the
reparameterized negative ELBO with the analytic Gaussian KL and the Bernoulli
log-likelihood as BCE-with-logits summed over pixels, averaged over the batch; the
test log-likelihood is the importance-sampled estimate with K draws from q(z | x)
(Burda et al. 2016), combined with a running logsumexp over chunks.

Run (from the repository root)::

    python bench/reference_vae.py --epochs 1 --train-size 10000 --test-size 500 \
        --nll-samples 1000 --seed 0 --out runs/reference.json

Sizes left out mean the whole split (train 50000, test 10000).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

try:  # imported as bench.reference_vae
    from . import common
except ImportError:  # run as a script: python bench/reference_vae.py
    import common

MIN_SCALE = 1e-5
LOG_2PI = math.log(2 * math.pi)


class ReferenceVAE(nn.Module):
    """q(z | x) = N(loc(x), diag scale(x)^2), p(z) = N(0, I), p(x | z) = Bernoulli(logits(z))."""

    def __init__(self, x_dim: int = 784, latent_dim: int = 40, hidden=(300, 300)):
        super().__init__()
        h = list(hidden)
        self.x_dim, self.latent_dim = x_dim, latent_dim
        enc, sizes = [], [x_dim, *h]
        for a, b in zip(sizes[:-1], sizes[1:]):
            enc += [nn.Linear(a, b), nn.ReLU()]
        enc.append(nn.Linear(sizes[-1], 2 * latent_dim))
        self.encoder = nn.Sequential(*enc)
        dec, sizes = [], [latent_dim, *h[::-1]]
        for a, b in zip(sizes[:-1], sizes[1:]):
            dec += [nn.Linear(a, b), nn.ReLU()]
        dec.append(nn.Linear(sizes[-1], x_dim))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.encoder(x).chunk(2, dim=-1)
        return loc, F.softplus(raw) + MIN_SCALE

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO per datapoint (mean over the batch), one reparameterized draw, analytic KL."""
        loc, scale = self.encode(x)
        z = loc + torch.randn_like(loc) * scale
        logits = self.decode(z)
        log_px_z = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1.0).sum(-1) - scale.log().sum(-1)
        return (kl - log_px_z).mean()


def make_optimizer(model: nn.Module, lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=lr)


def train_step(model: ReferenceVAE, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> float:
    """One Adam step on a batch; the same order of operations as a typical training loop."""
    loss = model.loss(x)
    value = loss.item()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return value


def train_epoch(model, optimizer, x: torch.Tensor, batch_size: int, generator: torch.Generator) -> float:
    """One pass over ``x`` in a shuffled order drawn from ``generator``; returns the mean loss."""
    order = torch.randperm(len(x), generator=generator)
    total = 0.0
    for start in range(0, len(x), batch_size):
        xb = x[order[start : start + batch_size]]
        total += train_step(model, optimizer, xb) * len(xb)
    return total / len(x)


@torch.no_grad()
def validation_loss(model: ReferenceVAE, x: torch.Tensor, batch_size: int) -> float:
    """Mean negative ELBO (one draw per image) over ``x``, in evaluation mode."""
    was_training = model.training
    model.eval()
    total = sum(model.loss(x[i : i + batch_size]).item() * len(x[i : i + batch_size]) for i in range(0, len(x), batch_size))
    model.train(was_training)
    return total / len(x)


@torch.no_grad()
def importance_log_px(
    model: ReferenceVAE,
    x: torch.Tensor,
    num_samples: int = 1000,
    chunk_size: int = 2**15,
    seed: int | None = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p(x) ~= logsumexp_k log w_k - log K`` with ``w_k = p(x, z_k) / q(z_k | x)``, ``z_k ~ q``.

    At most ``chunk_size`` (sample, datapoint) pairs are decoded per pass; a running
    ``logaddexp`` combines the passes, so memory is bounded by the chunk, not by K.

    :returns: ``(log_px, elbo)`` per datapoint; ``elbo`` is the mean log-weight over the K draws.
    """
    was_training = model.training
    model.eval()
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    n = len(x)
    batch = min(n, chunk_size)
    per_pass = max(1, chunk_size // batch)
    d = model.latent_dim
    log_px, elbo = torch.empty(n), torch.empty(n)
    for start in range(0, n, batch):
        xb = x[start : start + batch]
        loc, scale = model.encode(xb)
        log_det = scale.log().sum(-1)  # (b,)
        running = torch.full((len(xb),), -math.inf)
        weight_sum = torch.zeros(len(xb))
        drawn = 0
        while drawn < num_samples:
            k = min(per_pass, num_samples - drawn)
            eps = torch.randn((k, *loc.shape), generator=g)
            z = loc + eps * scale
            logits = model.decode(z)
            log_px_z = -F.binary_cross_entropy_with_logits(logits, xb.expand_as(logits), reduction="none").sum(-1)
            log_pz = -0.5 * (z.pow(2).sum(-1) + d * LOG_2PI)
            log_qz = -0.5 * (eps.pow(2).sum(-1) + d * LOG_2PI) - log_det
            log_w = log_px_z + log_pz - log_qz  # (k, b)
            running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))
            weight_sum += log_w.sum(0)
            drawn += k
        log_px[start : start + batch] = running - math.log(num_samples)
        elbo[start : start + batch] = weight_sum / num_samples
    model.train(was_training)
    return log_px, elbo


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-size", type=int, default=None, help="seeded random training subset (default: all 50000)")
    p.add_argument("--test-size", type=int, default=None, help="seeded random test subset (default: all 10000)")
    p.add_argument("--nll-samples", type=int, default=100, help="importance samples K per test image")
    p.add_argument("--chunk-size", type=int, default=2**15, help="(sample, datapoint) pairs per NLL pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=common.BATCH_SIZE)
    p.add_argument("--lr", type=float, default=common.LR)
    p.add_argument("--latent-dim", type=int, default=common.LATENT_DIM)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--data-dir", default=None, help="folder holding binarized_mnist.npz (default $PYRO_GEN_DATA or /work/shared/data)")
    p.add_argument("--no-valid", action="store_true", help="score the last epoch instead of the best on the validation split")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    x_train, source = common.load_binarized_mnist("train", args.train_size, seed=args.seed, data_dir=args.data_dir)
    # a different stream for the test subset (the test set is sorted by digit)
    x_test, _ = common.load_binarized_mnist("test", args.test_size, seed=args.seed + 1, data_dir=args.data_dir)

    # the validation split picks the epoch whose weights are scored, as the library's trainer does (best.pt)
    x_valid = None if args.no_valid else common.load_binarized_mnist("valid", None, seed=args.seed, data_dir=args.data_dir)[0]

    torch.manual_seed(args.seed)
    model = ReferenceVAE(latent_dim=args.latent_dim, hidden=common.HIDDEN)
    optimizer = make_optimizer(model, args.lr)
    history, seconds, valid_history = [], [], []
    best_valid, best_state, best_epoch = math.inf, None, args.epochs
    for epoch in range(args.epochs):
        shuffle = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch)
        t0 = time.perf_counter()
        loss = train_epoch(model, optimizer, x_train, args.batch_size, shuffle)
        seconds.append(time.perf_counter() - t0)
        history.append(loss)
        line = f"epoch {epoch + 1}/{args.epochs}: train loss {loss:.3f} nats, {seconds[-1]:.1f} s"
        if x_valid is not None:
            valid_loss = validation_loss(model, x_valid, args.batch_size)
            valid_history.append(valid_loss)
            line += f", valid loss {valid_loss:.3f}"
            if valid_loss < best_valid:
                best_valid, best_epoch = valid_loss, epoch + 1
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
        print(line, flush=True)
    if best_state is not None:
        model.load_state_dict(best_state)

    t0 = time.perf_counter()
    log_px, elbo = importance_log_px(model, x_test, args.nll_samples, args.chunk_size, seed=args.seed)
    nll_seconds = time.perf_counter() - t0
    result = {
        "test_nll": -log_px.mean().item(),
        "test_nll_sem": (log_px.std() / math.sqrt(len(log_px))).item() if len(log_px) > 1 else float("nan"),
        "test_elbo": elbo.mean().item(),
        "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else float("nan"),
        "epochs": args.epochs,
        "nll_samples": args.nll_samples,
        "seed": args.seed,
        "train_size": len(x_train),
        "test_size": len(x_test),
        "train_loss": history,
        "valid_loss": valid_history,
        "scored_epoch": best_epoch,
        "nll_seconds": nll_seconds,
        "chunk_size": args.chunk_size,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "latent_dim": args.latent_dim,
        "hidden": list(common.HIDDEN),
        "threads": args.threads,
        "data_source": source,
        "torch": torch.__version__,
        "command": common.command_line(),
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    print()
    print(common.header("Reference plain-PyTorch VAE (static binarized MNIST)"))
    print(
        common.markdown_table(
            ["epochs", "train / test images", "K", "test NLL (nats)", "test ELBO (nats)", "s / epoch", "NLL eval (s)"],
            [
                [
                    args.epochs,
                    f"{len(x_train)} / {len(x_test)}",
                    args.nll_samples,
                    f"{result['test_nll']:.2f} ± {result['test_nll_sem']:.2f}",
                    f"{result['test_elbo']:.2f}",
                    f"{result['seconds_per_epoch']:.2f}",
                    f"{nll_seconds:.1f}",
                ]
            ],
        )
    )
    print("\nNLL = -mean log p(x) (± standard error over test images); ELBO = mean importance log-weight.")
    if args.out:
        print(f"Results written to {args.out}")
    return result


if __name__ == "__main__":
    main()
