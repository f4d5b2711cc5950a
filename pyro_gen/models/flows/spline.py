"""Rational-quadratic spline couplings for vectors (Neural Spline Flows, Durkan et al. 2019).

A spline coupling moves the last ``dim - d`` entries (``d = dim // 2``) through a monotonic
**rational-quadratic spline** whose knots are functions of the first ``d``: ``x_b = g(z_b; theta(z_a))``,
a triangular Jacobian whose log-det is the sum of the splines' log-slopes. Pyro's :class:`~pyro.distributions.transforms.SplineCoupling` does it
(``order="quadratic"`` is Durkan et al.'s rational-quadratic spline; Pyro's default ``"linear"`` is
Dolatabadi et al.'s rational-linear one), and with ``identity=False`` it also moves the first part
through an unconditional element-wise spline (a learned marginal), which a 2-D flow needs: each
coupling then shapes both coordinates.

Each spline has ``bins`` bins on the box ``[-bound, bound]^2`` (knot widths and heights from a softmax,
inner derivatives from a softplus, each floored at 1e-3) and is the **identity outside the box**; its
value is continuous at the ends and its slope there is 0.999 (Pyro pads the end derivatives after adding
its floor), so the map is a bijection of the whole line with a kink of 1e-3 in slope at ``+-bound``.
Data far outside the box are therefore only shifted and scaled by whatever else is in the chain: a
spline flow standardizes its data first (the family puts an actnorm, initialized from the data's
mean and standard deviation, at the data end).

Every spline starts as (nearly, to 1e-3: the ends' slope) the **identity** (equal bins, inner
derivatives 1), as the affine couplings do
(:mod:`~pyro_gen.models.flows.coupling`): the hypernet's last layer is zero with the derivative
outputs' bias at ``softplus^-1(1 - 1e-3)``, and the unconditional spline's parameters are set the same way.

References: C. Durkan, A. Bekasov, I. Murray, G. Papamakarios, "Neural Spline Flows", NeurIPS 2019;
H. M. Dolatabadi, S. Erfani, C. Leckie, "Invertible Generative Modeling using Linear Rational
Splines", AISTATS 2020.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions.transforms import SplineCoupling
from torch import nn

from pyro_gen.errors import ConfigError

#: Pyro's floor on a spline's inner derivatives (``softplus(raw) + MIN_DERIVATIVE``)
MIN_DERIVATIVE = 1e-3
#: the raw derivative whose floored softplus is exactly 1: the slope of the identity
IDENTITY_DERIVATIVE = math.log(math.expm1(1.0 - MIN_DERIVATIVE))


class SplineNet(nn.Module):
    """The hypernet of a spline coupling: an MLP ``(..., fixed) -> (widths, heights, derivatives)``.

    The outputs are unnormalized, ``(..., moved * bins)``, ``(..., moved * bins)`` and
    ``(..., moved * (bins - 1))``, the layout Pyro's ``ConditionalSpline(order="quadratic")`` reshapes to
    ``(moved, bins)``. The last layer starts at zero and the derivatives' bias at the identity's slope,
    so a fresh spline is the identity.
    """

    def __init__(self, fixed: int, moved: int, bins: int, hidden=(64, 64)):
        super().__init__()
        layers, width = [], fixed
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.sizes = (moved * bins, moved * bins, moved * (bins - 1))
        self.head = nn.Linear(width, sum(self.sizes))
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.zero_()
            self.head.bias[-self.sizes[2] :] = IDENTITY_DERIVATIVE

    def forward(self, h):
        return tuple(self.head(self.body(h)).split(self.sizes, dim=-1))


def vector_spline_coupling(dim: int, hidden=(64, 64), bins: int = 8, bound: float = 3.0) -> SplineCoupling:
    """Pyro's :class:`~pyro.distributions.transforms.SplineCoupling` (rational-quadratic, ``identity=False``) on
    vectors of ``dim`` entries: an element-wise spline on the first ``dim // 2``, and on the rest a spline
    whose knots an MLP of ``hidden`` sizes reads from the first part; ``bins`` bins on ``[-bound, bound]``.
    """
    if dim < 2:
        raise ConfigError(f"a spline coupling needs vectors of at least 2 entries, got {dim}")
    if not isinstance(bins, int) or isinstance(bins, bool) or not 2 <= bins <= 1000:
        # Pyro floors each bin at 1e-3 of the box, so more than 1000 bins cannot fit
        raise ConfigError(f"a spline needs between 2 and 1000 bins, got {bins!r}")
    if not bound > 0:
        raise ConfigError(f"a spline's bound must be positive (its box is [-bound, bound]), got {bound!r}")
    fixed = dim // 2
    layer = SplineCoupling(
        dim, fixed, SplineNet(fixed, dim - fixed, bins, hidden), count_bins=bins, bound=float(bound), order="quadratic", identity=False
    )
    lower = layer.lower_spline  # Pyro draws its parameters at random: start it at the identity too
    with torch.no_grad():
        lower.unnormalized_widths.zero_()
        lower.unnormalized_heights.zero_()
        lower.unnormalized_derivatives.fill_(IDENTITY_DERIVATIVE)
    return layer
