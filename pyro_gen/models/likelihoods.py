"""Observation likelihoods p(x | decoder output) for declarative models.

A likelihood turns the decoder's output into a distribution over one datapoint (its
event shape is the model's ``data_shape``) and validates data before it is scored, so
that, e.g., grey-level images never reach a Bernoulli likelihood silently.
"""

import math

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyro_gen.data.registry import VALUE_KINDS
from pyro_gen.errors import ConfigError, DataError
from pyro_gen.models.checks import check_finite


class Likelihood(nn.Module):
    """Base class. Subclasses set :attr:`params_per_value` and implement :meth:`forward`.

    :attr:`params_per_value` is how many decoder outputs each data value needs (1 for
    Bernoulli logits, 2 for a Gaussian whose scale the decoder also predicts). When it
    is larger than 1, the decoder's output reaches :meth:`forward` shaped
    ``(params_per_value,) + batch + data_shape``: ``params[0]``, ``params[1]``, ... are
    the parameters (see :meth:`LatentModel.decode <pyro_gen.models.LatentModel.decode>`).
    """

    params_per_value = 1
    #: How an amortized guide's encoder should see data of this likelihood before its first layer
    #: (:class:`pyro_gen.guides.amortized.InputTransform`): ``None`` (as they are), ``"log1p"``
    #: (counts, whose raw values span orders of magnitude) or ``"standardize"`` (real values).
    encoder_input: str | None = None
    #: Whether :meth:`mean` is closed-form; pictures of a model whose likelihood has none (autoregressive pixels)
    #: show one draw of x instead (:meth:`LatentModel.picture <pyro_gen.models.LatentModel.picture>`).
    has_mean = True

    def validate(self, x: torch.Tensor) -> None:
        """Raise :class:`~pyro_gen.errors.DataError` when ``x`` has NaN / inf or is outside the support.

        Subclasses that check their support call :func:`check_finite` first (or, like
        :class:`Bernoulli`, run one fused check that NaN also fails and call it on failure).
        """
        check_finite(x)

    def forward(self, params: torch.Tensor, data_ndim: int) -> dist.TorchDistribution:
        raise NotImplementedError

    def mean(self, params: torch.Tensor, data_ndim: int) -> torch.Tensor:
        """The mean of p(x | params), used for sample grids and reconstructions."""
        return self(params, data_ndim).mean


class Bernoulli(Likelihood):
    """Bernoulli likelihood over binary data; the decoder outputs logits."""

    def validate(self, x):
        # this runs on every training batch, so it is one cheap fused test: x (1 - x) is zero exactly
        # for 0 and 1, and NaN or +-inf for NaN and +-inf (3.5x faster than (x != 0) & (x != 1))
        if torch.count_nonzero(x * (1 - x)):
            check_finite(x)  # name NaN / inf as such
            bad = (x != 0) & (x != 1)
            values = x[bad]
            raise DataError(
                f"the Bernoulli likelihood needs binary data (0 or 1), but the data have {int(bad.sum())} "
                f"other values (e.g. {values[0].item():.4g}). Binarize the data (dataset option "
                "binarize='dynamic' or 'threshold') or choose likelihood='gaussian' or 'continuous_bernoulli'."
            )

    def forward(self, params, data_ndim):
        return _IndependentBernoulli(dist.Bernoulli(logits=params, validate_args=False), data_ndim)

    def mean(self, params, data_ndim):
        return torch.sigmoid(params)


class _IndependentBernoulli(dist.Independent):
    """``Bernoulli(logits).to_event(n)`` whose ``log_prob`` sums the per-value terms *before* negating them.

    Same value as the generic ``Independent``; it saves a negation of every pixel (and its
    backward) on each training step, which is measurable next to a hand-written PyTorch VAE.
    """

    def __init__(self, base, reinterpreted_batch_ndims: int):
        super().__init__(base, reinterpreted_batch_ndims, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        # Pyro's plates expand every sampled distribution, usually to the shape it already has
        if _instance is None and torch.Size(batch_shape) == self.batch_shape:
            return self
        new = self._get_checked_instance(_IndependentBernoulli, _instance)
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value):
        logits = self.base_dist.logits
        if not (torch.is_tensor(value) and value.shape == logits.shape):  # every training step has equal shapes: no op
            logits, value = torch.distributions.utils.broadcast_all(logits, value)
        per_value = F.binary_cross_entropy_with_logits(logits, value, reduction="none")
        dims = tuple(range(-self.reinterpreted_batch_ndims, 0))
        return -(per_value.sum(dims) if dims else per_value)


class ContinuousBernoulli(Likelihood):
    """Continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019) for data in [0, 1]; logits from the decoder."""

    def validate(self, x):
        check_finite(x)
        if ((x < 0) | (x > 1)).any():
            raise DataError(
                f"the continuous Bernoulli likelihood needs data in [0, 1]; got values in "
                f"[{x.min().item():.4g}, {x.max().item():.4g}]. Rescale the data first."
            )

    def forward(self, params, data_ndim):
        return dist.ContinuousBernoulli(logits=params, validate_args=False).to_event(data_ndim)


class _LocationScale(Likelihood):
    """Shared logic of location-scale likelihoods with a fixed, learned or predicted scale."""

    encoder_input = "standardize"

    family: type

    def __init__(self, scale="learned", data_shape=None, min_scale: float = 1e-3):
        super().__init__()
        self.min_scale = min_scale
        if scale == "learned":
            if data_shape is None:
                raise ConfigError("a learned likelihood scale needs data_shape (one scale per data value)")
            self.log_scale = nn.Parameter(torch.zeros(data_shape))
        elif scale == "decoder":
            self.params_per_value = 2
        elif isinstance(scale, (int, float)) and scale > 0:
            self.register_buffer("fixed_scale", torch.tensor(float(scale)))
        else:
            raise ConfigError(f"likelihood scale must be a positive number, 'learned' or 'decoder'; got {scale!r}")
        self.scale_kind = scale if isinstance(scale, str) else "fixed"

    def _scale(self, params):
        if self.scale_kind == "learned":
            return F.softplus(self.log_scale + math.log(math.e - 1)) + self.min_scale
        if self.scale_kind == "decoder":
            return F.softplus(params[1]) + self.min_scale
        return self.fixed_scale

    def forward(self, params, data_ndim):
        loc = params[0] if self.scale_kind == "decoder" else params
        return self.family(loc, self._scale(params), validate_args=False).to_event(data_ndim)

    def mean(self, params, data_ndim):
        return params[0] if self.scale_kind == "decoder" else params


class Gaussian(_LocationScale):
    """Gaussian likelihood: the decoder outputs the mean; the scale is fixed, learned per value, or predicted."""

    family = dist.Normal


class Laplace(_LocationScale):
    """Laplace likelihood (robust to outliers); same scale options as :class:`Gaussian`."""

    family = dist.Laplace


class Poisson(Likelihood):
    """Poisson likelihood for count data; the decoder outputs log rates."""

    encoder_input = "log1p"

    def validate(self, x):
        check_finite(x)
        if ((x < 0) | (x != torch.round(x))).any():
            raise DataError("the Poisson likelihood needs non-negative integer counts; the data have other values")

    def forward(self, params, data_ndim):
        return dist.Poisson(params.exp(), validate_args=False).to_event(data_ndim)


_LIKELIHOODS = {
    "bernoulli": Bernoulli,
    "continuous_bernoulli": ContinuousBernoulli,
    "gaussian": Gaussian,
    "laplace": Laplace,
    "poisson": Poisson,
}


def likelihood_names() -> list[str]:
    return sorted(_LIKELIHOODS)


def make_likelihood(name: str, data_shape=None, scale="learned", **options) -> Likelihood:
    """Build a likelihood by name (``bernoulli``, ``gaussian``, ``laplace``, ``continuous_bernoulli``, ``poisson``,
    ``pixelcnn``).

    ``scale`` applies to ``gaussian`` and ``laplace``: a positive number (fixed), ``"learned"``
    (one learned scale per data value) or ``"decoder"`` (the decoder predicts it).
    ``pixelcnn`` is an autoregressive likelihood conditioned on the decoder's output (PixelVAE,
    Gulrajani et al. 2017): ``data_shape=(1, H, W)`` and the ``options`` of
    :class:`~pyro_gen.models.pixelcnn.PixelCNNLikelihood` (``levels``, ``cond_channels``, ``channels``, ``layers``, ...).
    """
    if name == "pixelcnn":  # imported here: models.pixelcnn builds on this module
        from pyro_gen.models.pixelcnn import PixelCNNLikelihood

        if data_shape is None:
            raise ConfigError("make_likelihood('pixelcnn') needs data_shape=(1, H, W), the images' shape")
        return PixelCNNLikelihood(data_shape, **options)
    if options:
        raise ConfigError(f"likelihood {name!r} takes no options {sorted(options)} (they are the pixelcnn likelihood's)")
    try:
        cls = _LIKELIHOODS[name]
    except KeyError:
        raise ConfigError(f"unknown likelihood {name!r}; choose one of {[*likelihood_names(), 'pixelcnn']}") from None
    if issubclass(cls, _LocationScale):
        return cls(scale=scale, data_shape=data_shape)
    return cls()


#: The likelihood each kind of data values (:data:`pyro_gen.data.VALUE_KINDS`) gets by default, and why.
_DEFAULTS = {
    "binary": ("bernoulli", "binary (0/1) values: the Bernoulli likelihood, logits from the decoder"),
    "unit_interval": (
        "continuous_bernoulli",
        "continuous values in [0, 1]: the continuous Bernoulli, a normalized density on [0, 1] "
        "(Loaiza-Ganem & Cunningham 2019); a Bernoulli on grey levels is not a proper likelihood",
    ),
    "counts": ("poisson", "non-negative integer counts: the Poisson likelihood, log rates from the decoder"),
    "real": ("gaussian", "real values: a Gaussian likelihood with one learned scale per value (scale='learned')"),
}


def default_likelihood(values: str) -> tuple[str, str]:
    """The default likelihood for a kind of data values: ``(name for make_likelihood, one-line reason)``.

    ``binary`` -> ``bernoulli``; ``unit_interval`` -> ``continuous_bernoulli``; ``counts`` -> ``poisson``;
    ``real`` -> ``gaussian`` (scale learned, the default of :func:`make_likelihood`). Typically
    ``default_likelihood(pyro_gen.data.dataset_info(name, binarize).values)``.

    :raises ConfigError: ``values`` is not one of :data:`pyro_gen.data.VALUE_KINDS`.
    """
    if not isinstance(values, str) or values not in VALUE_KINDS:
        raise ConfigError(f"unknown kind of data values {values!r}; choose one of {', '.join(VALUE_KINDS)}")
    return _DEFAULTS[values]
