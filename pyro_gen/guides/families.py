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

import math

import pyro.distributions as dist
import torch
from pyro.distributions import transforms as T
from pyro.nn import ConditionalAutoRegressiveNN, ConditionalDenseNN
from torch import nn
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
                self.register_buffer(f"perm_{len(self._plan)}", t.permutation.clone(), persistent=False)
                self._plan.append(("perm", f"perm_{len(self._plan)}"))
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
            if kind == "perm":
                steps.append(T.Permute(getattr(self, item)))
            else:
                steps.append(item.condition(h) if hasattr(item, "condition") else item)
        return dist.TransformedDistribution(self.base(h), steps)


def _reverse(dim: int) -> T.Permute:
    return T.Permute(torch.arange(dim - 1, -1, -1))


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
    return Flow(context_dim, dim, [T.ConditionalPlanar(_planar_hypernet(context_dim, dim)) for _ in range(num_layers)], lr_scale)


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
        transforms.append(T.ConditionalAffineCoupling(split, net))
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
        transforms.append(T.ConditionalAffineAutoregressive(arn))
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
