"""Time of the importance-sampled log-likelihood: the library's evaluator against a hand-written chunked estimator.

Both score the same test images with the same K draws per image from the reference VAE's guide
(784-300-300 encoder, latent 40, 40-300-300-784 decoder, Bernoulli; the library's weights copied into
the hand-written one) and compute the same per-image outputs:

* ``library``: :func:`pyro_gen.evaluation.log_likelihood` (``seed``, ``num_samples=K``, ``chunk_size``):
  ``log p(x)``, the ELBO, its reconstruction and KL parts and the posterior means (active units).
* ``torch``: :func:`hand_written`, the same estimator in plain PyTorch: the images in the evaluator's blocks
  (as many as one chunk of ``min(K, chunk_size)`` draws allows), ``z = loc + scale * eps`` with ``eps``
  drawn per block from the same seeded generator, ``log w = log p(x | z) + log p(z) - log q(z | x)``,
  ``logsumexp`` over the draws, and the same four by-products.

With the same seed both draw the same noise, so the numbers agree to float rounding (printed). The two
run alternately, ``--rounds`` times each after one warm-up call, timed by ``--clock``; the table gives
the medians and the library / torch ratio of medians with a bootstrap 95% interval. Target: <= 1.10.

Run (from the repository root)::

    python bench/evaluator_ratio.py --n 64 --k 1000 --rounds 7 --clock thread
"""

from __future__ import annotations

import argparse
import math
import random

import pyro
import torch
from torch.nn import functional as F

try:  # imported as bench.evaluator_ratio
    from . import common, reference_vae, step_time
except ImportError:  # run as a script
    import common
    import reference_vae
    import step_time

TARGET = 1.10
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@torch.no_grad()
def hand_written(ref: reference_vae.ReferenceVAE, x: torch.Tensor, k: int, chunk_size: int, seed: int) -> dict:
    """``log p(x) ~ logsumexp_k log w_k - log K`` per image, in the evaluator's blocks and draw order."""
    n = len(x)
    per_chunk = min(k, chunk_size)
    batch = max(1, min(n, chunk_size // per_chunk))
    out = {name: torch.empty(n) for name in ("log_px", "elbo", "reconstruction", "kl")}
    means = torch.empty(n, ref.latent_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, n, batch):
            xb = x[start : start + batch]
            loc, scale = ref.encode(xb)
            log_scale = scale.log()
            acc = torch.full((len(xb),), -math.inf)
            lw_sum, rec_sum, kl_sum, z_sum = 0.0, 0.0, 0.0, 0.0
            for done in range(0, k, per_chunk):
                m = min(per_chunk, k - done)
                eps = torch.randn((m, *loc.shape))
                z = loc + eps * scale
                rec = -F.binary_cross_entropy_with_logits(ref.decode(z), xb.expand(m, *xb.shape), reduction="none").sum(-1)
                log_q = (-0.5 * eps.pow(2) - log_scale - LOG_SQRT_2PI).sum(-1)
                log_p = (-0.5 * z.pow(2) - LOG_SQRT_2PI).sum(-1)
                lw = rec + log_p - log_q
                acc = torch.logaddexp(acc, torch.logsumexp(lw, 0))
                lw_sum, rec_sum, kl_sum = lw_sum + lw.sum(0), rec_sum + rec.sum(0), kl_sum + (log_q - log_p).sum(0)
                z_sum = z_sum + z.sum(0)
            rows = slice(start, start + len(xb))
            out["log_px"][rows] = acc - math.log(k)
            out["elbo"][rows], out["reconstruction"][rows], out["kl"][rows] = lw_sum / k, rec_sum / k, kl_sum / k
            means[rows] = z_sum / k
    out["posterior_mean"] = means
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=64, help="test images")
    p.add_argument("--k", type=int, default=1000, help="importance samples per image")
    p.add_argument("--chunk-size", type=int, default=2**15)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", choices=sorted(step_time.CLOCKS), default="thread")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from pyro_gen.evaluation import log_likelihood

    x_flat, source = common.load_binarized_mnist("test", args.n, seed=args.seed, data_dir=args.data_dir)
    x_img = x_flat.view(len(x_flat), *common.DATA_SHAPE)
    model, guide = common.library_vae(args.seed)
    model.eval(), guide.eval()
    ref = reference_vae.ReferenceVAE(latent_dim=common.LATENT_DIM, hidden=common.HIDDEN)
    common.copy_library_weights(ref, model, guide)
    ref.eval()

    def library():
        return log_likelihood(model, guide, x_img, num_samples=args.k, chunk_size=args.chunk_size, seed=args.seed)

    def torch_version():
        return hand_written(ref, x_flat, args.k, args.chunk_size, args.seed)

    lib, hand = library(), torch_version()  # warm-up, and the agreement check
    diffs = {f: float((getattr(lib, f) - hand[f]).abs().max()) for f in ("log_px", "elbo", "reconstruction", "kl", "posterior_mean")}
    clock = step_time.CLOCKS[args.clock]
    times = {"library": [], "torch": []}
    order = list(times)
    rng = random.Random(args.seed)
    for _ in range(args.rounds):
        rng.shuffle(order)
        for name in order:
            f = library if name == "library" else torch_version
            t0 = clock()
            f()
            times[name].append(clock() - t0)
    s = {k: common.summarize(v) for k, v in times.items()}
    lo, hi = common.bootstrap_ratio_ci(times["library"], times["torch"], seed=args.seed)
    ratio = s["library"]["median_ms"] / s["torch"]["median_ms"]
    print(common.header("Importance-sampled log-likelihood: library evaluator vs hand-written chunked estimator"))
    print(
        common.markdown_table(
            ["images", "K", "torch s (IQR)", "library s (IQR)", "library / torch [95% CI]", f"<= {TARGET}", "max |diff| log p(x)"],
            [
                [
                    args.n,
                    args.k,
                    f"{s['torch']['median_ms'] / 1e3:.3f} ({s['torch']['iqr_ms'] / 1e3:.3f})",
                    f"{s['library']['median_ms'] / 1e3:.3f} ({s['library']['iqr_ms'] / 1e3:.3f})",
                    f"{ratio:.3f} [{lo:.3f}, {hi:.3f}]",
                    "yes" if ratio <= TARGET else "**no**",
                    f"{diffs['log_px']:.1e}",
                ]
            ],
        )
    )
    print(
        f"\nTest images via {source}; chunk_size {args.chunk_size}; {args.rounds} alternating rounds after one warm-up call; "
        f"clock: {args.clock}. Max |library - torch| per output on the same draws: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
    )


if __name__ == "__main__":
    with pyro.settings.context(module_local_params=True):
        main()
