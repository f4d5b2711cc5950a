"""Priors as modules: learned, conditional on parent latents, or built from the guide (VampPrior).

A :class:`~pyro_gen.models.Latent` takes as ``prior`` a fixed distribution, or a module (or any
callable) that maps the values of the latents it names as ``parents`` to a distribution whose
event shape is the latent's shape. Module priors are part of the model: registered, trained with
it, moved by ``.to(device)`` and saved in its checkpoints.

* :class:`GaussianPrior`: ``p(z | parents) = N(mu(parents), sigma(parents))`` with an MLP: the
  top-down prior of a hierarchical (ladder) VAE (Sonderby et al. 2016).
* :class:`LearnedNormal`: a diagonal Normal with trainable location and scale.
* :class:`ClassNormal`: ``p(z | y) = N(mu_y, sigma_y)``, one trainable Normal per class label: the
  label-conditional prior of a conditional VAE (``parents=("y",)`` in a ``num_classes`` model).
* :class:`MixturePrior`: a mixture of ``K`` diagonal Gaussians with trainable weights, means and
  scales (e.g. Dilokthanakul et al. 2016; Tomczak & Welling 2018 compare it with the VampPrior).
* :class:`VampPrior`: ``p(z) = 1/K sum_k q(z | u_k)`` with trainable pseudo-inputs ``u_k`` passed
  through the guide's own encoder (Tomczak & Welling, "VAE with a VampPrior", AISTATS 2018). The
  components are the guide's *base* Gaussians ``q0(z | u_k)``, so it works with every guide family
  (planar and radial flows have no inverse, and an IAF's costs D passes); with the ``normal`` guide
  that is exactly the paper's prior. :func:`~pyro_gen.guides.make_guide` binds it to the guide.

References:
  Sonderby et al., Ladder Variational Autoencoders, NeurIPS 2016.
  Tomczak & Welling, VAE with a VampPrior, AISTATS 2018.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyro_gen.errors import ConfigError

_MIN_SCALE = 1e-5


def _as_shape(shape) -> tuple[int, ...]:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if not shape or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in shape):
        raise ConfigError(f"a prior's shape must be positive integers, e.g. (16,); got {shape}")
    return shape


class Prior(nn.Module):
    """Base of module priors: ``forward(*parent_values)`` returns a distribution over the latent.

    Subclasses return a distribution whose event shape is ``shape`` and whose batch shape is the
    parents' batch shape (``()`` for a prior without parents: the model expands it).
    """

    shape: tuple[int, ...] = ()


class LearnedNormal(Prior):
    """A diagonal Normal prior with trainable location and (softplus) scale, started at N(0, I)."""

    def __init__(self, shape):
        super().__init__()
        self.shape = _as_shape(shape)
        self.loc = nn.Parameter(torch.zeros(self.shape))
        self.raw_scale = nn.Parameter(torch.full(self.shape, math.log(math.e - 1)))  # softplus -> 1

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, F.softplus(self.raw_scale) + _MIN_SCALE).to_event(len(self.shape))


class ClassNormal(Prior):
    """``p(z | y) = N(mu_y, diag sigma_y^2)``: one trainable diagonal Normal per class label, started at N(0, I).

    The prior of a latent declared with ``parents=("y",)`` in a model conditioned on labels
    (``LatentModel(..., num_classes=K)``): it reads the integer labels (Sohn et al., "Learning
    Structured Output Representation using Deep Conditional Generative Models", NeurIPS 2015, learn
    a prior network of the condition).
    """

    def __init__(self, num_classes: int, shape):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"num_classes must be an integer of at least 2, got {num_classes!r}")
        self.shape = _as_shape(shape)
        self.loc = nn.Parameter(torch.zeros((num_classes,) + self.shape))
        self.raw_scale = nn.Parameter(torch.full((num_classes,) + self.shape, math.log(math.e - 1)))

    def forward(self, y: torch.Tensor) -> dist.TorchDistribution:
        if not torch.is_tensor(y) or y.dtype.is_floating_point:
            raise ConfigError(f"ClassNormal reads integer class labels; got {getattr(y, 'dtype', type(y).__name__)}")
        return dist.Normal(self.loc[y], F.softplus(self.raw_scale[y]) + _MIN_SCALE).to_event(len(self.shape))


class GaussianPrior(Prior):
    """``p(z | parents) = N(mu, sigma)`` with ``(mu, sigma)`` an MLP of the concatenated (flattened) parents.

    :param parent_dim: total size of the parents' values.
    :param dim: size of the latent.
    :param hidden: the MLP's hidden widths.
    """

    def __init__(self, parent_dim: int, dim: int, hidden=(64,)):
        super().__init__()
        from pyro_gen.nn import MLP

        self.shape = (int(dim),)
        self.net = MLP(int(parent_dim), list(hidden), 2 * int(dim))

    def forward(self, *parents: torch.Tensor) -> dist.TorchDistribution:
        context = torch.cat([p.reshape(p.shape[: p.dim() - 1] + (-1,)) if p.dim() else p for p in parents], dim=-1)
        loc, raw = self.net(context).chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(raw) + _MIN_SCALE).to_event(1)


class MixturePrior(Prior):
    """A mixture of ``components`` diagonal Gaussians over a vector latent, every parameter trainable.

    Means start spread by a seeded N(0, I) draw (so the components are not interchangeable at
    the start), scales at 1, weights uniform.
    """

    def __init__(self, components: int, dim: int, seed: int = 0):
        super().__init__()
        if components < 1:
            raise ConfigError(f"a mixture prior needs at least one component, got {components}")
        self.shape = (int(dim),)
        generator = torch.Generator().manual_seed(seed)
        self.logits = nn.Parameter(torch.zeros(components))
        self.locs = nn.Parameter(torch.randn(components, int(dim), generator=generator))
        self.raw_scales = nn.Parameter(torch.full((components, int(dim)), math.log(math.e - 1)))

    def forward(self) -> dist.TorchDistribution:
        return DiagonalNormalMixture(self.logits, self.locs, F.softplus(self.raw_scales) + _MIN_SCALE)


class VampPrior(Prior):
    """``p(z) = 1/K sum_k q0(z | u_k)``: the guide's base Gaussian at ``K`` trainable pseudo-inputs.

    Built unbound (``VampPrior(K, data_shape)``); :func:`~pyro_gen.guides.make_guide` calls
    :meth:`bind` with the guide's encoder and the latent's family. Pseudo-inputs start as seeded
    uniform draws in [0, 1] (the range of image data), as in the paper.
    """

    def __init__(self, num_pseudo: int, data_shape, seed: int = 0):
        super().__init__()
        if num_pseudo < 1:
            raise ConfigError(f"a VampPrior needs at least one pseudo-input, got {num_pseudo}")
        self.data_shape = _as_shape(data_shape)
        generator = torch.Generator().manual_seed(seed)
        self.pseudo_inputs = nn.Parameter(torch.rand((num_pseudo, *self.data_shape), generator=generator))
        self._bound: list = []  # [(encoder, family)], a list so that the guide's modules are not registered twice

    def bind(self, encoder: nn.Module, family: nn.Module, shape) -> None:
        """Use ``family(encoder(u))``'s base Gaussian as the components (done by ``make_guide``)."""
        self.shape = _as_shape(shape)
        self._bound[:] = [(encoder, family)]

    def forward(self) -> dist.TorchDistribution:
        if not self._bound:
            raise ConfigError(
                "this VampPrior is not bound to a guide yet: build the guide with pyro_gen.make_guide(name, model), "
                "which binds it to the guide's encoder"
            )
        encoder, family = self._bound[0]
        q = family(encoder(self.pseudo_inputs))
        base = getattr(q, "base_dist", q)  # a flow's base Gaussian; the normal family's q itself
        if not isinstance(base, dist.Independent):
            base = base.to_event(1)
        k = self.pseudo_inputs.shape[0]
        if len(self.shape) != 1:
            raise ConfigError(f"a VampPrior is for vector latents, got shape {self.shape}")
        normal = base.base_dist  # Independent(Normal(loc (K, D), scale (K, D)), 1)
        return DiagonalNormalMixture(torch.zeros(k, device=self.pseudo_inputs.device), normal.loc, normal.scale)


class DiagonalNormalMixture(dist.TorchDistribution):
    """``sum_k w_k N(z | mu_k, diag sigma_k^2)`` over vectors, with a ``log_prob`` that never forms a ``(N, K, D)`` tensor.

    ``MixtureSameFamily`` scores every point against every component elementwise: for a VampPrior
    (K = 500, D = 40) on an importance-sampling chunk of 32,000 draws that is 640M values per
    intermediate, gigabytes of memory traffic per chunk. Expanding the square,
    ``sum_d (z_d - mu_kd)^2 / s_kd^2 = z^2 . (1/s_k^2) - 2 z . (mu_k/s_k^2) + sum_d mu_kd^2/s_kd^2``, turns it
    into two ``(N, D) x (D, K)`` matrix products. They run in float64, since the expanded terms are large
    and nearly cancel where z is close to a component (the result is cast back to the input's dtype).

    :param logits: ``(K,)`` mixing logits.
    :param locs: ``(K, D)`` component means.
    :param scales: ``(K, D)`` component standard deviations.
    """

    arg_constraints = {}
    support = dist.constraints.real_vector
    has_rsample = False

    def __init__(self, logits: torch.Tensor, locs: torch.Tensor, scales: torch.Tensor, validate_args=None):
        self.logits, self.locs, self.scales = logits, locs, scales
        super().__init__(torch.Size(), torch.Size(locs.shape[-1:]), validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        z = value.reshape(-1, value.shape[-1]).double()
        precision = self.scales.double().pow(-2)  # (K, D)
        scaled_locs = self.locs.double() * precision
        quadratic = z.square() @ precision.T - 2 * z @ scaled_locs.T + (self.locs.double() * scaled_locs).sum(-1)
        log_norm = -self.scales.double().log().sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)
        per_component = self.logits.double().log_softmax(-1) + log_norm - 0.5 * quadratic  # (N, K)
        return per_component.logsumexp(-1).to(value.dtype).reshape(value.shape[:-1])

    def sample(self, sample_shape=()) -> torch.Tensor:
        with torch.no_grad():
            k = dist.Categorical(logits=self.logits).sample(torch.Size(sample_shape))
            return self.locs[k] + self.scales[k] * torch.randn_like(self.locs[k])

    def expand(self, batch_shape, _instance=None):
        if tuple(batch_shape) == ():
            return self
        return dist.ExpandedDistribution(self, batch_shape)


def parameter_tensors(d) -> list[torch.Tensor]:
    """The tensors of a distribution (nested ones included) that require a gradient."""
    found, stack, seen = [], [d], set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        for value in vars(obj).values():
            if torch.is_tensor(value) and value.requires_grad:
                found.append(value)
            elif isinstance(value, torch.distributions.Distribution):
                stack.append(value)
            elif isinstance(value, (list, tuple)):
                stack.extend(v for v in value if isinstance(v, torch.distributions.Distribution))
    return found


#: Prior names for :func:`make_prior` (and a VAE config's ``model.prior``).
PRIOR_NAMES = ("normal", "learned", "mog:K", "vamp:K")


def make_prior(name: str, dim: int, data_shape):
    """A prior over a ``(dim,)`` latent by name: ``None`` (the standard Normal N(0, I)) for ``"normal"``,
    :class:`LearnedNormal` for ``"learned"``, :class:`MixturePrior` with ``K`` components for ``"mog:K"``,
    :class:`VampPrior` with ``K`` pseudo-inputs of ``data_shape`` for ``"vamp:K"``.

    :raises ConfigError: an unknown name, or a ``K`` that is not a positive integer.
    """
    if name == "normal":
        return None
    if name == "learned":
        return LearnedNormal((dim,))
    kind, _, count = str(name).partition(":")
    if kind in ("mog", "vamp") and count.isdigit() and 0 < int(count) <= 100_000:
        return MixturePrior(int(count), dim) if kind == "mog" else VampPrior(int(count), tuple(data_shape))
    raise ConfigError(f"unknown prior {name!r}; choose one of {', '.join(PRIOR_NAMES)} (K a positive integer, e.g. 'vamp:500')")
