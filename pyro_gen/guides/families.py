"""Amortized variational families: modules mapping encoder features h(x) to q(z | x).

Read the zuko way, a family is a module whose ``forward(h)`` returns a distribution.
Every family starts from a diagonal Normal whose location and scale are linear
functions of ``h``; flow families push it through ``K`` transforms whose parameters
are *also* functions of ``h`` (fully amortized flows, as in Rezende & Mohamed 2015
and Kingma et al. 2016):

* ``planar``: :math:`f(z) = z + \\hat u \\tanh(w^T z + b)`, with ``(u, w, b)`` a linear
  function of ``h`` (Pyro's :class:`~pyro.distributions.transforms.ConditionalPlanar`).
* ``radial``: :math:`f(z) = z + \\beta (z - z_0) / (\\alpha + |z - z_0|)`, ``(z_0, \\alpha, \\beta)`` linear in ``h``.
* ``coupling``: affine coupling layers (Real NVP, Dinh et al. 2017) whose scale and
  shift networks read the untouched half of ``z`` and ``h``, with a permutation
  (reversal) between layers so every coordinate is transformed.
* ``iaf``: inverse autoregressive flow (Kingma et al. 2016): MADE networks read ``z``
  and ``h``; layers alternate the variable order.

Planar and radial transforms have no closed-form inverse; that is fine in a guide,
which only scores its own samples (Pyro caches the forward pass).

References:
  Rezende & Mohamed, Variational Inference with Normalizing Flows, ICML 2015.
  Dinh, Sohl-Dickstein & Bengio, Density estimation using Real NVP, ICLR 2017.
  Kingma et al., Improved Variational Inference with Inverse Autoregressive Flow, NeurIPS 2016.
"""

import functools
import math

import pyro.distributions as dist
import torch
from pyro.distributions import transforms as T
from pyro.distributions.transforms.planar import ConditionedPlanar
from pyro.nn import ConditionalAutoRegressiveNN, ConditionalDenseNN
from torch import nn
from torch.distributions import Transform, constraints
from torch.nn import functional as F

_MIN_SCALE = 1e-5


class LinearHypernet(nn.Module):
    """Maps context ``h`` to a tuple of parameter tensors of sizes ``param_dims`` (one linear layer)."""

    def __init__(self, context_dim: int, param_dims: list[int]):
        super().__init__()
        self.param_dims = list(param_dims)
        self.linear = nn.Linear(context_dim, sum(param_dims))
        # start every flow near the identity: small parameters
        nn.init.normal_(self.linear.weight, std=1e-3)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor):
        return tuple(self.linear(h).split(self.param_dims, dim=-1))


class DiagonalNormal(nn.Module):
    """q(z | x) = Normal(loc(h), scale(h)) with independent coordinates."""

    def __init__(self, context_dim: int, dim: int):
        super().__init__()
        self.dim = dim
        self.linear = nn.Linear(context_dim, 2 * dim)

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        loc, raw = self.linear(h).chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(raw) + _MIN_SCALE, validate_args=False).to_event(1)


class Flow(nn.Module):
    """A diagonal Normal pushed through amortized transforms: ``forward(h)`` returns q(z | x).

    :param context_dim: size of the encoder features ``h``.
    :param dim: size of the latent vector.
    :param transforms: ``ConditionalTransformModule`` s (conditioned on ``h``) and plain
        transforms (permutations), applied in order.
    """

    def __init__(self, context_dim: int, dim: int, transforms: list, lr_scale: float | None = None):
        super().__init__()
        self.dim = dim
        self.base = DiagonalNormal(context_dim, dim)
        self.transforms = nn.ModuleList([t for t in transforms if isinstance(t, nn.Module)])
        if lr_scale is not None and not lr_scale > 0:
            raise ValueError(f"lr_scale must be positive, got {lr_scale}")
        self.lr_scale = lr_scale if lr_scale is not None else 1.0 / max(len(self.transforms), 1)
        # permutations are plain transforms, not modules: keep their indices as buffers so that
        # .to(device) moves them, and rebuild the (cheap) Permute objects on each call
        self._plan: list = []
        for t in transforms:
            if isinstance(t, T.Permute):
                reverse = torch.equal(t.permutation.cpu(), torch.arange(dim - 1, -1, -1))
                self.register_buffer(f"perm_{len(self._plan)}", t.permutation.clone(), persistent=False)
                self._plan.append(("reverse" if reverse else "perm", f"perm_{len(self._plan)}"))
            elif isinstance(t, nn.Module):
                self._plan.append(("module", t))
            else:
                raise TypeError(f"Flow takes conditional transform modules and Permute transforms, got {type(t).__name__}")

    def lr_scaled_parameters(self) -> list[tuple[float, list[nn.Parameter]]]:
        """The transforms' parameters train at ``lr_scale`` times the optimizer's learning rate.

        Every layer's parameters are functions of ``h`` through its own hypernet, and the layers'
        effects on ``z`` add up (trained planar layers are largely saturated, i.e. per-datapoint
        translations of q's location). Under Adam each weight moves about ``lr`` per step whatever
        its gradient's scale, so K layers move q about K times as fast as the base's location
        layer alone does: optimizer noise that left planar:10 3.3 nats behind mean field after 14
        epochs on MNIST, and 1.6 nats *ahead* of it with the flow at 0.1 lr (BENCHMARKS.md, section 6).
        The default ``1 / K`` keeps the flow as a whole at the base's rate. The
        :class:`~pyro_gen.infer.trainer.Trainer` reads this from every submodule that defines it.
        """
        return [(self.lr_scale, list(self.transforms.parameters()))]

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        steps = []
        for kind, item in self._plan:
            if kind == "reverse":
                steps.append(_Reverse(getattr(self, item)))
            elif kind == "perm":
                steps.append(T.Permute(getattr(self, item)))
            else:
                steps.append(item.condition(h) if hasattr(item, "condition") else item)
        return dist.TransformedDistribution(self.base(h), steps)


def _reverse(dim: int) -> T.Permute:
    return T.Permute(torch.arange(dim - 1, -1, -1))


class _ConditionedPlanar(ConditionedPlanar):
    """Pyro's planar layer with its batched dot products written as elementwise products and sums.

    Pyro computes ``w^T x``, ``w^T u`` and ``psi^T u_hat`` as ``matmul`` of unsqueezed ``(..., 1, D)``
    and ``(..., D, 1)`` views: one batched matrix product per datapoint and six views a layer, which
    made a planar:10 guide's training step 1.2x the same flow written with ``(a * b).sum(-1)``
    (``bench/step_time_flows.py``). Same map, same log-determinant, same cache (a planar layer has
    no inverse: it scores only its own samples).
    """

    def u_hat(self, u, w):
        alpha = (u * w).sum(-1, keepdim=True)
        return u + (F.softplus(alpha) - 1.0 - alpha) * w / w.pow(2).sum(-1, keepdim=True)

    def _call(self, x):
        bias, u, w = self._params() if callable(self._params) else self._params
        act = torch.tanh((w * x).sum(-1, keepdim=True) + bias)
        u_hat = self.u_hat(u, w)
        # log |det J| = log |1 + u_hat^T psi(x)|, psi = (1 - tanh^2) w (Rezende & Mohamed 2015, eq. 12)
        self._cached_logDetJ = torch.log(torch.abs(1.0 + ((1.0 - act.pow(2)) * w * u_hat).sum(-1)))
        return x + u_hat * act


class ConditionalPlanar(T.ConditionalPlanar):
    """:class:`pyro.distributions.transforms.ConditionalPlanar` conditioned into :class:`_ConditionedPlanar`
    (same hypernet, parameters and state dict)."""

    def condition(self, context):
        return _ConditionedPlanar(functools.partial(self._params, context))


class _ConditionedAffineCoupling(Transform):
    """Pyro's affine coupling layer conditioned on ``h``, as a plain transform.

    Pyro conditions a :class:`~pyro.distributions.transforms.ConditionalAffineCoupling` into an
    ``AffineCoupling``, an ``nn.Module`` built afresh for every batch (its ``__init__`` and attribute
    bookkeeping), whose ``domain`` is a property building new constraint objects on every access:
    together about a fifth of a coupling:10 guide's training step (``bench/step_time_flows.py``).
    This class runs Pyro's own ``_call``, ``_inverse`` and ``log_abs_det_jacobian`` on the same
    conditioned network, with a vector domain fixed once (the layer splits the last dimension).
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    _call = T.AffineCoupling._call
    _inverse = T.AffineCoupling._inverse
    log_abs_det_jacobian = T.AffineCoupling.log_abs_det_jacobian

    def __init__(self, split_dim: int, hypernet, log_scale_min_clip: float = -5.0, log_scale_max_clip: float = 3.0):
        super().__init__(cache_size=1)
        self.split_dim, self.nn, self.dim = split_dim, hypernet, -1
        self._cached_log_scale = None
        self.log_scale_min_clip, self.log_scale_max_clip = log_scale_min_clip, log_scale_max_clip


def _dense_forward(net: ConditionalDenseNN, x: torch.Tensor, context: torch.Tensor):
    """``ConditionalDenseNN.forward(x, context)`` for its two-parameter output, without its per-call costs.

    Pyro's forward slices its ``ModuleList`` (``layers[:-1]`` builds a new ``nn.Module`` on every call)
    and indexes the output with a list of slices; the same layers and activation in a loop and one
    ``split`` give the same values.
    """
    h = torch.cat([context.expand(x.shape[:-1] + context.shape[-1:]), x], dim=-1)
    last = len(net.layers) - 1
    for i, layer in enumerate(net.layers):
        h = layer(h)
        if i < last:
            h = net.f(h)
    return h.split([s.stop - s.start for s in net.param_slices], dim=-1)


class ConditionalAffineCoupling(T.ConditionalAffineCoupling):
    """:class:`pyro.distributions.transforms.ConditionalAffineCoupling` conditioned into :class:`_ConditionedAffineCoupling`
    (same network, parameters and state dict)."""

    def condition(self, context):
        if self.kwargs.get("dim", -1) != -1:
            return super().condition(context)
        kwargs = {k: v for k, v in self.kwargs.items() if k != "dim"}
        net = self.nn
        if (
            type(net) is ConditionalDenseNN
            and net.count_params == 2
            and net.output_multiplier == sum(s.stop - s.start for s in net.param_slices)
        ):
            return _ConditionedAffineCoupling(self.split_dim, functools.partial(_dense_forward, net, context=context), **kwargs)
        return _ConditionedAffineCoupling(self.split_dim, functools.partial(net, context=context), **kwargs)


class _ConditionedAffineAutoregressive(Transform):
    """Pyro's affine autoregressive (IAF) layer conditioned on ``h``, as a plain transform: Pyro's own
    ``_call``, ``_inverse`` and ``log_abs_det_jacobian`` without building an ``nn.Module`` per batch
    (see :class:`_ConditionedAffineCoupling`). Only the affine update ``exp(s) z + m`` (not the gated one)."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1
    autoregressive = True
    _call = T.AffineAutoregressive._call
    _inverse = T.AffineAutoregressive._inverse
    log_abs_det_jacobian = T.AffineAutoregressive.log_abs_det_jacobian

    def __init__(self, arn, log_scale_min_clip: float = -5.0, log_scale_max_clip: float = 3.0):
        super().__init__(cache_size=1)
        self.arn = arn
        self._cached_log_scale = None
        self.log_scale_min_clip, self.log_scale_max_clip = log_scale_min_clip, log_scale_max_clip
        self.stable = False


class ConditionalAffineAutoregressive(T.ConditionalAffineAutoregressive):
    """:class:`pyro.distributions.transforms.ConditionalAffineAutoregressive` conditioned into
    :class:`_ConditionedAffineAutoregressive` (same network, parameters and state dict)."""

    def condition(self, context):
        if self.kwargs.get("stable", False) or set(self.kwargs) - {"log_scale_min_clip", "log_scale_max_clip", "stable"}:
            return super().condition(context)
        cond_nn = functools.partial(self.nn, context=context)
        cond_nn.permutation = self.nn.permutation
        cond_nn.get_permutation = self.nn.get_permutation
        kwargs = {k: v for k, v in self.kwargs.items() if k != "stable"}
        return _ConditionedAffineAutoregressive(cond_nn, **kwargs)


class _Reverse(T.Permute):
    """The permutation that reverses the last dimension, applied as ``flip``: no index tensor to gather with
    and scatter back, and a fixed vector domain (``Permute``'s is a property building new constraints per access)."""

    domain = constraints.real_vector
    codomain = constraints.real_vector

    def _call(self, x):
        return x.flip(-1)

    def _inverse(self, y):
        return y.flip(-1)


def _planar_hypernet(context_dim: int, dim: int) -> LinearHypernet:
    """A planar layer's hypernet, started at the identity map.

    Pyro's planar layer uses :math:`\\hat u = u + (m(w^T u) - w^T u)\\, w / |w|^2` with
    :math:`m(a) = -1 + \\mathrm{softplus}(a)` (invertibility). With ``u, w`` near 0, as a plain
    small init gives, :math:`w^T \\hat u = m(0) = -0.31`: every fresh layer *contracts* z by ~0.69
    along a random direction, and ten of them start the posterior far from its base. Here the
    output bias puts ``|w| ~ 1`` (a random direction, so layers differ) and
    :math:`w^T u = \\log(e - 1)`, where :math:`m = 0` and so :math:`\\hat u = 0`: each fresh layer
    is exactly the identity, and training moves it only where that helps the bound
    (BENCHMARKS.md, section 6: 1.2 nats better after 10 epochs on MNIST).
    """
    net = LinearHypernet(context_dim, [1, dim, dim])  # Pyro's order: (b, u, w)
    with torch.no_grad():
        w0 = torch.randn(dim) / math.sqrt(dim)
        u0 = math.log(math.e - 1) * w0 / w0.pow(2).sum()
        net.linear.bias.zero_()
        net.linear.bias[1 : 1 + dim] = u0
        net.linear.bias[1 + dim :] = w0
    return net


def planar_flow(context_dim: int, dim: int, num_layers: int, lr_scale: float | None = None) -> Flow:
    """K planar transforms with parameters linear in ``h`` (Rezende & Mohamed 2015), each starting as the identity."""
    return Flow(context_dim, dim, [ConditionalPlanar(_planar_hypernet(context_dim, dim)) for _ in range(num_layers)], lr_scale)


def radial_flow(context_dim: int, dim: int, num_layers: int, lr_scale: float | None = None) -> Flow:
    """K radial transforms with parameters linear in ``h`` (Rezende & Mohamed 2015)."""
    return Flow(context_dim, dim, [T.ConditionalRadial(LinearHypernet(context_dim, [dim, 1, 1])) for _ in range(num_layers)], lr_scale)


def coupling_flow(context_dim: int, dim: int, num_layers: int, lr_scale: float | None = None, hidden: int | None = None) -> Flow:
    """K affine coupling layers (Real NVP) conditioned on ``h``, reversing the order between layers; each starts as the identity."""
    if dim < 2:
        raise ValueError("affine coupling needs a latent of at least 2 dimensions")
    hidden = hidden or max(4 * dim, 64)
    split = dim // 2
    transforms: list = []
    for i in range(num_layers):
        net = ConditionalDenseNN(split, context_dim, [hidden], param_dims=[dim - split, dim - split])
        # zero output layer (as in Glow): shift 0, log-scale 0, so every fresh layer is the identity
        nn.init.zeros_(net.layers[-1].weight)
        nn.init.zeros_(net.layers[-1].bias)
        transforms.append(ConditionalAffineCoupling(split, net))
        if i < num_layers - 1:
            transforms.append(_reverse(dim))
    return Flow(context_dim, dim, transforms, lr_scale)


def iaf_flow(context_dim: int, dim: int, num_layers: int, lr_scale: float | None = None, hidden: int | None = None) -> Flow:
    """K inverse autoregressive flow layers conditioned on ``h``, reversing the order between layers."""
    hidden = hidden or max(4 * dim, 64)
    transforms: list = []
    for i in range(num_layers):
        arn = ConditionalAutoRegressiveNN(dim, context_dim, [hidden])
        # affine update y = exp(s) * z + m with a zero output layer: s = m = 0, so every fresh layer is the
        # identity (Pyro's "stable" sigmoid-gated variant starts as a 0.88 contraction per layer instead)
        nn.init.zeros_(arn.layers[-1].weight)
        nn.init.zeros_(arn.layers[-1].bias)
        transforms.append(ConditionalAffineAutoregressive(arn))
        if i < num_layers - 1:
            transforms.append(_reverse(dim))
    return Flow(context_dim, dim, transforms, lr_scale)


FAMILIES = {
    "normal": None,  # no layers
    "planar": planar_flow,
    "radial": radial_flow,
    "coupling": coupling_flow,
    "iaf": iaf_flow,
}


def make_family(kind: str, context_dim: int, dim: int, num_layers: int = 0, lr_scale: float | None = None) -> nn.Module:
    """Build a family by kind and number of flow layers (``normal`` takes none).

    :param lr_scale: learning-rate multiplier of the flow's transforms (default ``1 / num_layers``;
        see :meth:`Flow.lr_scaled_parameters`).
    """
    if kind == "normal":
        return DiagonalNormal(context_dim, dim)
    return FAMILIES[kind](context_dim, dim, num_layers, lr_scale)
