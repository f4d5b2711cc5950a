"""Images for a continuous density: uniform dequantization, the logit pre-transform, bits per dimension.

**Dequantization** (Theis et al. 2016; Dinh et al. 2017, section 4.1). An image of ``L`` levels holds
integers ``k`` in ``{0, ..., L-1}`` (stored as ``k / (L - 1)``). A continuous density ``p`` on
``[0, L)^D`` scored at ``v = k + u``, ``u ~ U[0, 1)^D``, bounds the discrete likelihood:
``log P(k) = log int_{[0,1)^D} p(k + u) du >= E_u log p(k + u)``. So the flow's observed value is
``v`` on the *level scale* ``[0, L)``, and its ``-log p(v)`` in nats is an (upper-bound, one-draw)
estimate of the discrete negative log-likelihood: the number a PixelCNN's exact NLL is compared with.

**Bits per dimension.** ``bpd = -log p(v) / (D ln 2)`` on the level scale. Flows often model
``y = v / L`` in ``[0, 1)`` instead (FFJORD's ``train_cnf.py``, Real NVP); then
``log p(v) = log p(y) - D log L`` and ``bpd = (nll_y + D log L) / (D ln 2)``, the same number
(:func:`bits_per_dim` takes the level-scale NLL; :func:`unit_to_level_nll` converts).

**Logit pre-transform** (Dinh et al. 2017, section 4.1). The flow models
``w = logit(alpha + (1 - 2 alpha) v / L)`` (``alpha = 0.05``): unbounded values, away from the
edges of ``[0, 1)`` where the logit's slope explodes. We use the symmetric form of the public Real
NVP reimplementations (the paper writes ``alpha + (1 - alpha) x``), which keeps both ends finite for
any ``u``. In the generating direction it is Pyro's ``SigmoidTransform`` followed by an
``AffineTransform`` to the level scale; their log-dets are counted by the ``TransformedDistribution``
like any layer's. Without the logit (Glow), ``w = v / L - 1/2``.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions.transforms import AffineTransform, SigmoidTransform

from pyro_gen.data.levels import to_levels
from pyro_gen.errors import ConfigError


def dequantize(x: torch.Tensor, levels: int, noise: torch.Tensor | None = None) -> torch.Tensor:
    """``v = k + u`` on the level scale ``[0, L)``: ``k`` the levels of ``x = k / (L - 1)``, ``u`` uniform noise.

    :param noise: ``u`` (same shape as ``x``, in ``[0, 1)``); ``None`` draws it from torch's generator.
    :raises DataError: ``x`` is not on the grid of ``levels`` values in [0, 1] (e.g. 8-bit images given as continuous floats).
    """
    k = to_levels(x, levels)
    u = torch.rand_like(x) if noise is None else noise
    return k.to(x.dtype) + u


def quantize(v: torch.Tensor, levels: int) -> torch.Tensor:
    """Images ``k / (L - 1)`` of level-scale values ``v``: ``k = floor(v)``, clamped to ``{0, ..., L-1}``."""
    return v.floor().clamp(0, levels - 1) / (levels - 1)


def output_transforms(levels: int, logit: bool = True, alpha: float = 0.05, event_dim: int = 3) -> list:
    """The generating-direction transforms from the flow's space ``w`` to the level scale ``v`` in ``[0, L)``."""
    if not 0 < alpha < 0.5:
        raise ConfigError(f"the logit pre-transform's alpha must be in (0, 0.5), got {alpha}")
    if logit:
        # v = L * (sigmoid(w) - alpha) / (1 - 2 alpha)
        scale = levels / (1 - 2 * alpha)
        return [SigmoidTransform(), AffineTransform(-alpha * scale, scale, event_dim=event_dim)]
    return [AffineTransform(levels / 2, float(levels), event_dim=event_dim)]


def unit_to_level_nll(nll_unit: torch.Tensor | float, dims: int, levels: int):
    """The level-scale NLL of a density on ``y = v / L`` in ``[0, 1)^D``: ``nll_y + D log L``."""
    return nll_unit + dims * math.log(levels)


def bits_per_dim(nll: torch.Tensor | float, dims: int):
    """Bits per dimension of a level-scale (dequantized) negative log-likelihood in nats: ``nll / (D ln 2)``."""
    return nll / (dims * math.log(2))
