"""What every flow layer shares: the direction convention, the log-det cache, running a chain of layers.

**Direction.** A layer is a Pyro :class:`~pyro.distributions.torch_transform.TransformModule` used
the way :class:`~pyro.distributions.TransformedDistribution` uses transforms: ``_call`` maps the
latent side to the data side (the direction of *sampling*), ``_inverse`` maps data to latent (the
direction ``log_prob`` and :meth:`~pyro_gen.models.flow_density.FlowDensity.encode` run), and
``log_abs_det_jacobian(z, x)`` is ``log |det dx/dz|`` summed over the layer's event dims, so that
``log p(x) = log p(z) - sum of the layers' log_abs_det_jacobian``. Pyro's own ``AffineCoupling``,
``BatchNorm`` and ``Permute`` follow the same convention and are used as they are.

**Shapes.** A layer knows the event shape on its data side (``data_shape``) and on its latent side
(``latent_shape``); they differ for the layers of the multi-scale architecture (squeeze, factor-out,
flatten, Dinh et al. 2017, section 3.6), which also declare ``forward_shape`` / ``inverse_shape`` so
that a ``TransformedDistribution`` can place them in its chain.
"""

from __future__ import annotations

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule
from pyro.distributions.util import sum_rightmost


class FlowLayer(TransformModule):
    """A bijection between a latent-side event of ``latent_shape`` and a data-side event of ``data_shape``.

    Subclasses implement :meth:`generate` (``z -> (x, log|det dx/dz|)``) and :meth:`normalize`
    (``x -> (z, log|det dx/dz|)``, the log-det of the *generating* direction again), both with the
    log-det summed over the event dims. The pair last computed is cached, so a
    ``TransformedDistribution`` scoring ``x`` runs each layer once (as Pyro's ``AffineCoupling`` does).
    """

    bijective = True

    def __init__(self, data_shape, latent_shape=None):
        super().__init__(cache_size=1)
        self.data_shape = tuple(data_shape)
        self.latent_shape = tuple(latent_shape if latent_shape is not None else data_shape)
        self._cached_pair = None

    @constraints.dependent_property(is_discrete=False)
    def domain(self):
        return constraints.independent(constraints.real, len(self.latent_shape))

    @constraints.dependent_property(is_discrete=False)
    def codomain(self):
        return constraints.independent(constraints.real, len(self.data_shape))

    def forward_shape(self, shape):
        return tuple(shape[: len(shape) - len(self.latent_shape)]) + self.data_shape

    def inverse_shape(self, shape):
        return tuple(shape[: len(shape) - len(self.data_shape)]) + self.latent_shape

    def generate(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - every layer defines it
        raise NotImplementedError

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - every layer defines it
        raise NotImplementedError

    def _call(self, z):
        x, logdet = self.generate(z)
        self._cached_pair = (z, x, logdet)
        return x

    def _inverse(self, x):
        z, logdet = self.normalize(x)
        self._cached_pair = (z, x, logdet)
        return z

    def log_abs_det_jacobian(self, z, x):
        cached = self._cached_pair
        if cached is not None and cached[0] is z and cached[1] is x:
            return cached[2]
        return self.generate(z)[1]

    def batch_shape_of(self, x: torch.Tensor) -> torch.Size:
        """The leading (batch) dims of a data-side tensor."""
        return x.shape[: x.dim() - len(self.data_shape)]


def is_module(transform) -> bool:
    return isinstance(transform, torch.nn.Module)


def run_chain(transforms, value: torch.Tensor, event_rank: int, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Push ``value`` through transforms listed in the generating order; returns ``(result, log|det d data / d latent|)``.

    ``inverse=False`` maps a latent-side value of event rank ``event_rank`` to the data side;
    ``inverse=True`` maps a data-side value (of that event rank) back to the latent side. Each
    transform's log-det is expanded and summed down to the batch shape (an element-wise transform such as
    Pyro's ``BatchNorm`` or ``SigmoidTransform`` returns one value per element), so the total has the batch
    shape: the sum ``TransformedDistribution.log_prob`` subtracts, computed without it.
    """
    batch_ndim = value.dim() - event_rank
    total = torch.zeros((), dtype=value.dtype, device=value.device)
    for t in reversed(transforms) if inverse else transforms:
        if inverse:
            x = value
            value = t.inv(x)
            logdet = t.log_abs_det_jacobian(value, x)
        else:
            x = t(value)
            logdet = t.log_abs_det_jacobian(value, x)
            value = x
        # torch's contract: broadcastable to the data side's shape without the transform's own event dims
        logdet = logdet.expand(x.shape[: x.dim() - t.codomain.event_dim])
        if logdet.dim() > batch_ndim:
            logdet = sum_rightmost(logdet, logdet.dim() - batch_ndim)
        total = total + logdet
    return value, total.expand(value.shape[:batch_ndim])
