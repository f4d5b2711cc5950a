"""Time of one training step with a flow guide: the library against the same flows hand-written in PyTorch.

For each guide (``planar:10``, ``coupling:10``, ``iaf:4`` by default) on the reference VAE
(784-300-300 encoder, latent 40, 40-300-300-784 decoder, Bernoulli, Adam 1e-3 with the flow layers
at ``1 / K`` of it as the Trainer sets them, batch 128 of binarized MNIST):

* ``library``: ``vae`` + ``make_guide(name)`` + the ``ELBO`` objective, stepped as
  :class:`pyro_gen.infer.trainer.Trainer` steps (``_step_loss``, ``item``, ``zero_grad``, ``backward``,
  ``step``, inside ``checked_dataset()``), as ``step_time.py`` does for the normal guide.
* ``torch``: :class:`ReferenceFlowVAE`, the same networks and flows written out with ``F.linear``
  (planar: Rezende & Mohamed 2015 with Pyro's invertibility fix for ``u``; affine coupling: Dinh et
  al. 2017, Pyro's clamped log-scale; IAF: Kingma et al. 2016, masked MADE layers, ``exp(s) z + m``;
  the order reversed between coupling / IAF layers) and the estimator the ``ELBO`` objective uses for a
  flow: ``KL = mc + c * cv`` with ``mc = log q0(z0) - sum log|det J| - log p(z)``, the control variate
  ``cv = KL(q0 || p) - (log q0(z0) - log p(z0))`` and ``c`` the variance-minimising coefficient on the
  batch, clipped to [0, 1] and detached (:func:`pyro_gen.infer.objectives.flow_kl`).

The reference starts from the library's weights (every parameter copied) and owns them. Before timing,
the two losses on the same weights and the same noise are printed with the largest relative gradient
difference over all parameters. Then all variants are timed interleaved (one step of each per round,
shuffled), and each library / torch ratio of medians gets a bootstrap 95% interval. Target: <= 1.15.

Run (from the repository root)::

    python bench/step_time_flows.py --rounds 300 --clock thread --flush-denormal
"""

from __future__ import annotations

import argparse
import math

import pyro
import torch
from torch import nn
from torch.nn import functional as F

try:  # imported as bench.step_time_flows
    from . import common, step_time
except ImportError:  # run as a script
    import common
    import step_time

TARGET = 1.15
GUIDES = ["planar:10", "coupling:10", "iaf:4"]
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def library(name: str, seed: int):
    from pyro_gen.guides import make_guide
    from pyro_gen.models import vae

    pyro.set_rng_seed(seed)
    model = vae(common.DATA_SHAPE, latent_dim=common.LATENT_DIM, hidden=common.HIDDEN, net="mlp", likelihood="bernoulli")
    guide = make_guide(name, model, hidden=common.HIDDEN)
    perturb_flows(guide, seed)
    return model, guide


@torch.no_grad()
def perturb_flows(guide, seed: int) -> None:
    """Fresh flow layers are the identity (zero output layers): move them, so both sides compute a real flow."""
    g = torch.Generator().manual_seed(seed + 1)
    for p in guide.families[0].transforms.parameters():
        p.add_(0.01 * torch.randn(p.shape, generator=g))


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone())


class ReferenceFlowVAE(nn.Module):
    """The library's flow-guide VAE in plain PyTorch: its own parameters, copied from ``(model, guide)``."""

    def __init__(self, model, guide, kind: str):
        super().__init__()
        self.kind = kind
        enc = [m for m in guide.encoder.modules() if isinstance(m, nn.Linear)]
        dec = [m for m in model.decoder.modules() if isinstance(m, nn.Linear)]
        flow = guide.families[0]
        self.enc_w = nn.ParameterList([_param(m.weight) for m in enc])
        self.enc_b = nn.ParameterList([_param(m.bias) for m in enc])
        self.base_w, self.base_b = _param(flow.base.linear.weight), _param(flow.base.linear.bias)
        self.dec_w = nn.ParameterList([_param(m.weight) for m in dec])
        self.dec_b = nn.ParameterList([_param(m.bias) for m in dec])
        self.dim = flow.dim
        self.layers = nn.ModuleList()
        for t in flow.transforms:
            layer = nn.Module()
            if kind == "planar":  # the hypernet: one linear layer, outputs (b, u, w)
                layer.w, layer.b = _param(t.nn.linear.weight), _param(t.nn.linear.bias)
            elif kind == "coupling":  # ConditionalDenseNN: [h, z1] -> hidden -> (shift, log-scale)
                layer.split = t.split_dim
                layer.ws = nn.ParameterList([_param(m.weight) for m in t.nn.layers])
                layer.bs = nn.ParameterList([_param(m.bias) for m in t.nn.layers])
            elif kind == "iaf":  # ConditionalAutoRegressiveNN: masked layers, [h, z] -> hidden -> (shift, log-scale)
                layer.ws = nn.ParameterList([_param(m.weight) for m in t.nn.layers])
                layer.bs = nn.ParameterList([_param(m.bias) for m in t.nn.layers])
                for i, m in enumerate(t.nn.layers):
                    layer.register_buffer(f"mask{i}", m.mask.detach().clone())
            else:
                raise ValueError(f"no hand-written {kind} flow")
            self.layers.append(layer)

    def flow_parameters(self) -> list[nn.Parameter]:
        return list(self.layers.parameters())

    def _planar(self, layer, z, h):
        d = self.dim
        b, u, w = F.linear(h, layer.w, layer.b).split([1, d, d], dim=-1)
        alpha = (u * w).sum(-1, keepdim=True)
        u_hat = u + (F.softplus(alpha) - 1.0 - alpha) * w / w.pow(2).sum(-1, keepdim=True)
        act = torch.tanh((w * z).sum(-1, keepdim=True) + b)
        log_det = torch.log(torch.abs(1.0 + ((1.0 - act.pow(2)) * w * u_hat).sum(-1)))
        return z + u_hat * act, log_det

    @staticmethod
    def _clamp(log_scale):
        # Pyro's clamp_preserve_gradients: the clamped value, the identity's gradient
        return log_scale + (log_scale.clamp(-5.0, 3.0) - log_scale).detach()

    def _coupling(self, layer, z, h):
        s = layer.split
        z1, z2 = z[:, :s], z[:, s:]
        hidden = F.relu(F.linear(torch.cat([h, z1], -1), layer.ws[0], layer.bs[0]))
        shift, log_scale = F.linear(hidden, layer.ws[1], layer.bs[1]).chunk(2, dim=-1)
        log_scale = self._clamp(log_scale)
        return torch.cat([z1, torch.exp(log_scale) * z2 + shift], -1), log_scale.sum(-1)

    def _iaf(self, layer, z, h):
        hidden = F.relu(F.linear(torch.cat([h, z], -1), layer.ws[0] * layer.mask0, layer.bs[0]))
        out = F.linear(hidden, layer.ws[1] * layer.mask1, layer.bs[1]).reshape(len(z), 2, self.dim)
        shift, log_scale = out[:, 0], self._clamp(out[:, 1])
        return torch.exp(log_scale) * z + shift, log_scale.sum(-1)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(len(x), -1)
        h = F.relu(F.linear(F.relu(F.linear(x, self.enc_w[0], self.enc_b[0])), self.enc_w[1], self.enc_b[1]))
        loc, raw = F.linear(h, self.base_w, self.base_b).chunk(2, dim=-1)
        scale = F.softplus(raw) + 1e-5
        eps = torch.randn_like(loc)
        z0 = loc + eps * scale
        z, log_det = z0, 0.0
        step = {"planar": self._planar, "coupling": self._coupling, "iaf": self._iaf}[self.kind]
        for i, layer in enumerate(self.layers):
            z, ld = step(layer, z, h)
            log_det = log_det + ld
            if self.kind != "planar" and i < len(self.layers) - 1:
                z = z.flip(-1)  # the reversal between layers
        logits = z
        for i, (w, b) in enumerate(zip(self.dec_w, self.dec_b)):
            logits = F.linear(logits, w, b)
            if i < len(self.dec_w) - 1:
                logits = F.relu(logits)
        rec = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        log_scale = scale.log()
        log_q0 = (-0.5 * eps.pow(2) - log_scale - LOG_SQRT_2PI).sum(-1)
        log_p_z = (-0.5 * z.pow(2) - LOG_SQRT_2PI).sum(-1)
        log_p_z0 = (-0.5 * z0.pow(2) - LOG_SQRT_2PI).sum(-1)
        base_kl = 0.5 * (scale.pow(2) + loc.pow(2) - 1.0).sum(-1) - log_scale.sum(-1)
        mc = log_q0 - log_det - log_p_z
        cv = base_kl - (log_q0 - log_p_z0)
        with torch.no_grad():  # the fitted coefficient, clipped to [0, 1]
            dc = cv - cv.mean()
            c = (-((mc - mc.mean()) * dc).mean() / dc.pow(2).mean()).clamp(0.0, 1.0)
        kl = mc + c * cv
        return (kl - rec).mean()


def reference_step_fn(ref: ReferenceFlowVAE, x: torch.Tensor, lr_scale: float):
    flow = {id(p) for p in ref.flow_parameters()}
    groups = [{"params": [p for p in ref.parameters() if id(p) not in flow]}, {"params": ref.flow_parameters(), "lr": common.LR * lr_scale}]
    optimizer = torch.optim.Adam(groups, lr=common.LR)

    def step():
        loss = ref.loss(x)
        value = loss.item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return value

    return step


def library_step_fn(model, guide, x: torch.Tensor):
    """The Trainer's single-player step on this model and guide (as ``step_time.library_step_fn``)."""
    from pyro_gen.infer.trainer import Trainer, initialize
    from pyro_gen.models.checks import checked_dataset

    trainer = Trainer(model, guide, "elbo", lr=common.LR, batch_size=common.BATCH_SIZE, progress=False)
    initialize(model, guide, x)
    optimizer = torch.optim.Adam(trainer._param_groups(), lr=common.LR)
    model.check_data(x)

    def step():
        with checked_dataset():
            loss = trainer._step_loss(x, step_time.TRAIN_SIZE)
        value = loss.item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return value

    return step


def agreement(name: str, seed: int, x_img: torch.Tensor) -> dict:
    """Loss and gradients of the library and the reference on the same weights and noise."""
    from pyro_gen.infer import make_objective

    model, guide = library(name, seed)
    ref = ReferenceFlowVAE(model, guide, name.split(":")[0])
    torch.manual_seed(seed + 5)
    lib = make_objective("elbo")(model, guide, x_img, data_size=step_time.TRAIN_SIZE)
    torch.manual_seed(seed + 5)
    hand = ref.loss(x_img)
    lib_params = [m for m in (guide, model) for m in m.parameters()]
    lib_grads = dict(zip(map(id, lib_params), torch.autograd.grad(lib, lib_params)))
    ref_grads = torch.autograd.grad(hand, list(ref.parameters()))
    # the reference's parameters were copied in a fixed order; match them by value to the library's
    by_value = {}
    for p in lib_params:
        by_value.setdefault((tuple(p.shape), float(p.detach().double().sum())), []).append(p)
    worst = 0.0
    for p, g in zip(ref.parameters(), ref_grads):
        twin = by_value[(tuple(p.shape), float(p.detach().double().sum()))][0]
        gl = lib_grads[id(twin)]
        worst = max(worst, float((g - gl).abs().max() / gl.abs().max().clamp(min=1e-12)))
    return {"library": lib.item(), "torch": hand.item(), "difference": abs(lib.item() - hand.item()), "max_rel_grad_diff": worst}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--guides", nargs="+", default=GUIDES)
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", choices=sorted(step_time.CLOCKS), default="thread")
    p.add_argument("--flush-denormal", action="store_true", help="torch.set_flush_denormal(True) (BENCHMARKS.md section 11)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.flush_denormal and not torch.set_flush_denormal(True):
        raise SystemExit("--flush-denormal: this CPU cannot flush subnormal floats")
    x_flat, source = common.load_binarized_mnist("train", common.BATCH_SIZE, seed=args.seed, data_dir=args.data_dir)
    x_img = x_flat.view(len(x_flat), *common.DATA_SHAPE)
    steps, checks = {}, {}
    with pyro.settings.context(module_local_params=True), pyro.validation_enabled(False):
        for name in args.guides:
            checks[name] = agreement(name, args.seed, x_img)
            model, guide = library(name, args.seed)
            ref = ReferenceFlowVAE(model, guide, name.split(":")[0])
            steps[f"{name} torch"] = reference_step_fn(ref, x_img, guide.families[0].lr_scale)
            steps[f"{name} library"] = library_step_fn(model, guide, x_img)
        times = step_time.time_interleaved(steps, args.warmup, args.rounds, args.seed, args.clock)
    print(common.header("Training-step time with flow guides: library vs hand-written PyTorch"))
    rows = []
    for name in args.guides:
        t_ref, t_lib = times[f"{name} torch"], times[f"{name} library"]
        s_ref, s_lib = common.summarize(t_ref), common.summarize(t_lib)
        lo, hi = common.bootstrap_ratio_ci(t_lib, t_ref, seed=args.seed)
        ratio = s_lib["median_ms"] / s_ref["median_ms"]
        c = checks[name]
        rows.append(
            [
                name,
                f"{s_ref['median_ms']:.3f} ({s_ref['iqr_ms']:.3f})",
                f"{s_lib['median_ms']:.3f} ({s_lib['iqr_ms']:.3f})",
                f"{ratio:.3f} [{lo:.3f}, {hi:.3f}]",
                "yes" if ratio <= TARGET else "**no**",
                f"{c['library']:.4f} / {c['torch']:.4f} ({c['difference']:.1e})",
                f"{c['max_rel_grad_diff']:.1e}",
            ]
        )
    print(
        common.markdown_table(
            [
                "guide",
                "torch ms (IQR)",
                "library ms (IQR)",
                "library / torch [95% CI]",
                f"<= {TARGET}",
                "loss library / torch (|diff|)",
                "max rel. grad diff",
            ],
            rows,
        )
    )
    print(
        f"\nBatch {common.BATCH_SIZE} (data via {source}); {args.rounds} interleaved rounds after {args.warmup} warm-up rounds; "
        f"clock: {args.clock}; flush denormal: {args.flush_denormal}. Losses and gradients on the same weights and noise."
    )


if __name__ == "__main__":
    main()
