"""Time of one training step of a two-level hierarchical VAE: the library's vs the same step hand-written in PyTorch.

The model is ``language_mnist.build("hvae")`` (issue #10 c), imported from there: ``z2`` (20) ~ N(0, I),
``z1`` (40) ~ N(mu(z2), sigma(z2)) with ``GaussianPrior(20, 40, hidden=(300,))`` (20-300-80), the decoder
``Select(1, MLP(40, [300, 300], 784))`` reading ``z1``, Bernoulli likelihood; the guide is
``make_guide("normal", model, hidden=[300, 300])``, top-down: encoder 784-300-300 (ReLU) giving ``h``,
``q(z2 | x) = N(.)`` from a 300-40 head on ``h``, ``q(z1 | x, z2) = N(.)`` from a 320-80 head on
``cat(h, z2)``; scales ``softplus(raw) + 1e-5``. Adam 1e-3, a batch of 128 real binarized MNIST
training images, one torch thread.

Steps, each owning its parameters, all starting from the same weights:

* ``torch``: :class:`ReferenceHVAE` below, stepped by ``reference_vae.train_step``. Its loss is the
  estimator the library's ``ELBO`` objective uses for this model: one reparameterized draw of
  ``z2`` then ``z1`` (in that order, so the same noise), the Bernoulli log-likelihood as
  BCE-with-logits, and *both* KL terms analytic, since ``kl_divergence`` knows each (guide, prior)
  pair (diagonal Normals): ``KL(q(z2 | x) || N(0, I))`` and ``KL(q(z1 | x, z2) || p(z1 | z2))`` at
  the drawn ``z2``; averaged over the batch.
* ``library``: ``step_time.library_step_fn``'s step (the Trainer's ``_step_loss``, ``loss.item()``,
  ``zero_grad(set_to_none=True)``, ``backward()``, ``step()``, inside ``checked_dataset()`` after one
  data check), here run on the hierarchical model and guide.
* ``library + loop``: the same plus the rest of the Trainer's per-step loop body.
* ``flat torch`` / ``flat library``: ``step_time.py``'s flat VAE pair (BENCHMARKS.md section 2),
  timed in the same interleaved rounds, so the two ratios are measured under the same conditions.

Before timing, the two hierarchical losses and their gradients are compared on the same weights
and the same noise. Timing: ``step_time.time_interleaved`` (warm-up, then rounds of one step of
every variant in a shuffled order), medians, IQRs, ratios of medians with a bootstrap 95% interval.

Subnormal floats. Every variant trains on the same batch, round after round, and after a few hundred
steps the hierarchical VAE's decoder drives the logits of many pixels that are 0 (about half of them
0 in every image of the batch) below about -87, so that ``sigmoid(logits) - x`` and the last layer's
gradient hold subnormal floats, which the CPU handles slowly: both hierarchical steps then slow down alike (10.6 -> 21 ms for torch over
600 rounds in one run), the IQRs blow up and the ratio's interval widens. The script prints each
variant's drift (median of the last 100 timed rounds over the first 100); ``--flush-denormal``
(``torch.set_flush_denormal(True)``) flushes subnormals to zero, which removes the drift and
measures the step in the state it has before.

Run (from the repository root)::

    python bench/step_time_hvae.py --threads 1 --rounds 600 --clock thread  # busy machine: per-thread CPU time
    python bench/step_time_hvae.py --threads 1 --rounds 1000               # quiet machine: wall clock
"""

from __future__ import annotations

import argparse
import copy
from unittest import mock

import numpy as np
import pyro
import torch
from torch import nn
from torch.nn import functional as F

try:  # imported as bench.step_time_hvae
    from . import common, language_mnist, reference_vae, step_time
except ImportError:  # run as a script: python bench/step_time_hvae.py
    import common
    import language_mnist
    import reference_vae
    import step_time

MIN_SCALE = reference_vae.MIN_SCALE  # the library's families and GaussianPrior use the same 1e-5
Z2, Z1 = 20, 40
PRIOR_HIDDEN = 300


def library_hvae(seed: int = 0):
    """The declared two-level VAE of ``language_mnist.py`` and its top-down mean-field guide."""
    from pyro_gen import make_guide

    pyro.set_rng_seed(seed)
    model = language_mnist.build("hvae")
    guide = make_guide("normal", model, hidden=language_mnist.HIDDEN)
    return model, guide


class ReferenceHVAE(nn.Module):
    """p(z2) p(z1 | z2) p(x | z1) and q(z2 | x) q(z1 | x, z2), written with plain torch modules."""

    def __init__(self, x_dim: int = common.X_DIM, hidden=tuple(language_mnist.HIDDEN)):
        super().__init__()
        h1, h2 = hidden
        self.encoder = nn.Sequential(nn.Linear(x_dim, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU())
        self.q_z2 = nn.Linear(h2, 2 * Z2)
        self.q_z1 = nn.Linear(h2 + Z2, 2 * Z1)
        self.prior_z1 = nn.Sequential(nn.Linear(Z2, PRIOR_HIDDEN), nn.ReLU(), nn.Linear(PRIOR_HIDDEN, 2 * Z1))
        self.decoder = nn.Sequential(nn.Linear(Z1, h2), nn.ReLU(), nn.Linear(h2, h1), nn.ReLU(), nn.Linear(h1, x_dim))

    @staticmethod
    def _normal(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = out.chunk(2, dim=-1)
        return loc, F.softplus(raw) + MIN_SCALE

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO per datapoint (mean over the batch): one draw of z2 then z1, both KLs analytic."""
        h = self.encoder(x)
        loc2, scale2 = self._normal(self.q_z2(h))
        z2 = loc2 + torch.randn_like(loc2) * scale2
        loc1, scale1 = self._normal(self.q_z1(torch.cat([h, z2], dim=-1)))
        z1 = loc1 + torch.randn_like(loc1) * scale1
        prior_loc, prior_scale = self._normal(self.prior_z1(z2))
        logits = self.decoder(z1)
        log_px_z = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        kl2 = 0.5 * (loc2.pow(2) + scale2.pow(2) - 1.0).sum(-1) - scale2.log().sum(-1)
        # KL(N(m, s) || N(mp, sp)) = log sp - log s + (s^2 + (m - mp)^2) / (2 sp^2) - 1/2, per coordinate
        kl1 = (prior_scale.log() - scale1.log() + (scale1.pow(2) + (loc1 - prior_loc).pow(2)) / (2 * prior_scale.pow(2)) - 0.5).sum(-1)
        return (kl2 + kl1 - log_px_z).mean()


def _one_linear(module: nn.Module) -> list[nn.Linear]:
    return [module] if isinstance(module, nn.Linear) else common._linears(module)


@torch.no_grad()
def copy_library_weights(ref: ReferenceHVAE, model, guide) -> None:
    """Copy every weight of the library's model and guide into ``ref``, network by network (shapes checked)."""
    pairs = [
        (guide.encoder, ref.encoder),
        (guide.families[0].linear, ref.q_z2),  # families follow the declaration order: z2, then z1
        (guide.families[1].linear, ref.q_z1),
        (model.priors["z1"].net, ref.prior_z1),
        (model.decoder, ref.decoder),
    ]
    for src, dst in pairs:
        common._copy_linears(_one_linear(src), _one_linear(dst))
    n_lib = sum(p.numel() for p in [*model.parameters(), *guide.parameters()])
    n_ref = sum(p.numel() for p in ref.parameters())
    if n_lib != n_ref:
        raise ValueError(f"the library's model and guide hold {n_lib} parameters, the reference {n_ref}: a network was left out")


def library_step_fn(seed: int, x: torch.Tensor, bookkeeping: bool = False):
    """``step_time.library_step_fn`` (the Trainer's step, as that script builds and runs it) on the hierarchical VAE."""
    with mock.patch.object(step_time.common, "library_vae", library_hvae):
        return step_time.library_step_fn(seed, x, bookkeeping=bookkeeping)


def loss_agreement(seed: int, x: torch.Tensor) -> dict:
    """The library's ELBO loss and the reference loss, and their gradients, on identical weights and noise."""
    from pyro_gen.infer import make_objective

    model, guide = library_hvae(seed)
    ref = ReferenceHVAE()
    copy_library_weights(ref, model, guide)
    objective = make_objective("elbo")
    torch.manual_seed(seed + 123)
    lib = objective(model, guide, x, data_size=step_time.TRAIN_SIZE)
    torch.manual_seed(seed + 123)
    ref_loss = ref.loss(x)
    if objective._no_analytic:
        raise RuntimeError(f"the library fell back to a Monte Carlo KL for {objective._no_analytic}; the reference assumes analytic KLs")
    lib.backward()
    ref_loss.backward()
    # gradients layer by layer, in the order the weights were copied
    lib_linears = [
        *common._linears(guide.encoder),
        guide.families[0].linear,
        guide.families[1].linear,
        *common._linears(model.priors["z1"].net),
        *common._linears(model.decoder),
    ]
    ref_linears = [*common._linears(ref.encoder), ref.q_z2, ref.q_z1, *common._linears(ref.prior_z1), *common._linears(ref.decoder)]
    rel = 0.0
    for a, b in zip(lib_linears, ref_linears):
        for pa, pb in ((a.weight, b.weight), (a.bias, b.bias)):
            rel = max(rel, ((pa.grad - pb.grad).norm() / pb.grad.norm().clamp(min=1e-30)).item())
    return {"library": lib.item(), "torch": ref_loss.item(), "diff": abs(lib.item() - ref_loss.item()), "grad_rel": rel}


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    if args.flush_denormal and not torch.set_flush_denormal(True):
        raise SystemExit("--flush-denormal: this CPU does not support flushing subnormal floats (torch.set_flush_denormal)")
    x_flat, source = common.load_binarized_mnist("train", common.BATCH_SIZE, seed=args.seed, data_dir=args.data_dir)
    x_img = x_flat.view(len(x_flat), *common.DATA_SHAPE)  # the flat VAE's data shape
    with pyro.settings.context(module_local_params=True), pyro.validation_enabled(False):
        agreement = loss_agreement(args.seed, x_flat)
        lib, model, guide = library_step_fn(args.seed, x_flat)
        lib_loop, _, _ = library_step_fn(args.seed, x_flat, bookkeeping=True)
        ref = ReferenceHVAE()
        copy_library_weights(ref, model, guide)
        ref_opt = reference_vae.make_optimizer(ref, common.LR)
        steps = {
            "torch": lambda: reference_vae.train_step(ref, ref_opt, x_flat),
            "library": lib,
            "library + loop": lib_loop,
        }
        if not args.no_flat:
            flat_lib, flat_model, flat_guide = step_time.library_step_fn(args.seed, x_img)
            flat_ref = reference_vae.ReferenceVAE(latent_dim=common.LATENT_DIM, hidden=common.HIDDEN)
            common.copy_library_weights(flat_ref, flat_model, flat_guide)
            steps["flat torch"] = step_time.torch_step_fn(copy.deepcopy(flat_ref), x_flat)
            steps["flat library"] = flat_lib
        times = step_time.time_interleaved(steps, args.warmup, args.rounds, args.seed, args.clock)
    return {"times": times, "agreement": agreement, "source": source}


def table(result: dict, seed: int) -> str:
    t = result["times"]
    s = {k: common.summarize(v) for k, v in t.items()}

    def cell(k):
        return f"{s[k]['median_ms']:.3f} ({s[k]['iqr_ms']:.3f})"

    def ratio(k, den):
        lo, hi = common.bootstrap_ratio_ci(t[k], t[den], seed=seed)
        return f"{s[k]['median_ms'] / s[den]['median_ms']:.3f} [{lo:.3f}, {hi:.3f}]"

    rows = [["hierarchical (z2 20, z1 40)", cell("torch"), cell("library"), ratio("library", "torch"), ratio("library + loop", "torch")]]
    if "flat torch" in t:
        rows.append(["flat (z 40), same rounds", cell("flat torch"), cell("flat library"), ratio("flat library", "flat torch"), ""])
    header = ["VAE", "torch ms (IQR)", "library ms (IQR)", "library / torch [95% CI]", "library + Trainer loop body / torch [95% CI]"]
    out = common.markdown_table(header, rows)
    if "flat torch" in t:
        out += (
            f"\n\nHierarchical / flat step: torch {ratio('torch', 'flat torch')}, library {ratio('library', 'flat library')}."
            f"\nLibrary overhead per step (median difference): hierarchical "
            f"{s['library']['median_ms'] - s['torch']['median_ms']:.3f} ms, flat "
            f"{s['flat library']['median_ms'] - s['flat torch']['median_ms']:.3f} ms."
        )
    n = min(100, len(t["torch"]) // 3)
    drift = ", ".join(f"{k} {np.median(v[-n:]) / np.median(v[:n]):.2f}" for k, v in t.items())
    return out + f"\nDrift (median of the last {n} timed rounds / the first {n}): {drift}."


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads value")
    p.add_argument("--rounds", type=int, default=1000, help="timed rounds (one step of every variant per round)")
    p.add_argument("--warmup", type=int, default=50, help="untimed rounds first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--clock",
        choices=sorted(step_time.CLOCKS),
        default="wall",
        help="wall: elapsed time (use on a quiet machine); thread: the calling thread's CPU time (robust to other load; needs --threads 1)",
    )
    p.add_argument("--flush-denormal", action="store_true", help="flush subnormal floats to zero (see the module docstring)")
    p.add_argument("--no-flat", action="store_true", help="leave out the flat VAE pair timed alongside for comparison")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    if args.clock == "thread" and args.threads != 1:
        p.error("--clock thread measures one thread's CPU time; use it with --threads 1")

    result = run(args)
    print(common.header("Training-step time: library hierarchical VAE vs hand-written PyTorch"))
    print(table(result, args.seed))
    print(
        f"\nBatch: {common.BATCH_SIZE} binarized MNIST training images (seeded draw, data via {result['source']}); "
        f"{args.rounds} interleaved rounds after {args.warmup} warm-up rounds; medians per step in milliseconds, "
        f"IQR in parentheses; ratios are ratios of medians with a bootstrap 95% interval; clock: {args.clock} "
        f"({'elapsed time' if args.clock == 'wall' else 'CPU time of the calling thread'}); subnormal floats "
        f"{'flushed to zero' if args.flush_denormal else 'kept (the default arithmetic)'}."
    )
    a = result["agreement"]
    print(
        f"Same weights and noise (hierarchical): library loss {a['library']:.4f}, torch loss {a['torch']:.4f}, "
        f"|difference| {a['diff']:.2e} nats; largest relative gradient difference over the layers {a['grad_rel']:.2e}."
    )
    return result


if __name__ == "__main__":
    main()
