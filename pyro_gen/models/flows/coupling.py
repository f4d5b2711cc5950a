"""Affine coupling layers (Real NVP, Dinh et al. 2017): checkerboard, channel and vector splits.

A coupling layer leaves one part of its input unchanged and moves the other part by an affine map
whose log-scale ``s`` and shift ``t`` are functions of the unchanged part:
``x_b = z_b * exp(s(z_a)) + t(z_a)``, ``x_a = z_a``, so the Jacobian is triangular and
``log |det dx/dz| = sum s``. The split is

* a **checkerboard** mask over the pixels (:class:`MaskedAffineCoupling`, written here: Pyro has no
  masked coupling), alternating its parity from layer to layer;
* a **channel** split (:func:`channel_coupling`) and a **vector** split (:func:`vector_coupling`):
  Pyro's :class:`~pyro.distributions.transforms.AffineCoupling`, which keeps the first ``split_dim``
  entries of a dimension fixed, with a convolutional / MLP hypernet; a
  :class:`~pyro_gen.models.flows.permutation.Permutation` between layers changes which part is fixed.

The log-scale is ``exp(a) * tanh(raw)`` with a learned per-channel ``a`` (Real NVP's tanh-bounded
scale), and every network's last layer starts at zero, so a fresh coupling layer is the identity
(as in Glow, Kingma & Dhariwal 2018): a deep flow starts as its base distribution and its
early gradients are well scaled.

References: L. Dinh, J. Sohl-Dickstein, S. Bengio, "Density estimation using Real NVP", ICLR 2017;
D. P. Kingma, P. Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018.
"""

from __future__ import annotations

import torch
from pyro.distributions.transforms import AffineCoupling
from torch import nn

from pyro_gen.errors import ConfigError
from pyro_gen.models.flows.base import FlowLayer


def _zero(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1)
        )

    def forward(self, h):
        return h + self.body(h)


class ConvNet(nn.Module):
    """Real NVP's scale-and-shift network for images: a small ResNet of 3x3 convolutions.

    Maps ``(..., in_channels, H, W)`` to ``(log_scale, shift)``, each ``(..., out_channels, H, W)``;
    any leading batch dims. The output convolution starts at zero (the coupling starts as the identity).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, blocks: int = 2):
        super().__init__()
        self.out_channels = out_channels
        self.body = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), *[_ResidualBlock(hidden) for _ in range(blocks)], nn.ReLU())
        self.head = _zero(nn.Conv2d(hidden, 2 * out_channels, 3, padding=1))
        self.scale = nn.Parameter(torch.zeros(out_channels, 1, 1))  # log of the tanh's range, per channel

    def forward(self, h):
        lead = h.shape[:-3]
        out = self.head(self.body(h.reshape(-1, *h.shape[-3:])))
        raw_scale, shift = out.reshape(*lead, 2 * self.out_channels, *out.shape[-2:]).chunk(2, dim=-3)
        return self.scale.exp() * torch.tanh(raw_scale), shift


class MLPNet(nn.Module):
    """The scale-and-shift network of a vector coupling: an MLP ``(..., d_in) -> (shift, log_scale)``, each ``(..., d_out)``.

    Returns ``(shift, log_scale)`` in that order, which is what Pyro's ``AffineCoupling`` expects of its hypernet.
    """

    def __init__(self, d_in: int, d_out: int, hidden=(64, 64)):
        super().__init__()
        layers, width = [], d_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = _zero(nn.Linear(width, 2 * d_out))
        self.scale = nn.Parameter(torch.zeros(d_out))

    def forward(self, h):
        raw_scale, shift = self.head(self.body(h)).chunk(2, dim=-1)
        return shift, self.scale.exp() * torch.tanh(raw_scale)


class ChannelHypernet(nn.Module):
    """Adapts :class:`ConvNet` to Pyro's ``AffineCoupling(dim=-3)``, which hands its hypernet the fixed channels
    flattened to ``(..., C_a * H * W)`` and wants ``(shift, log_scale)`` flattened to ``(..., C_b * H * W)``."""

    def __init__(self, fixed: int, moved: int, height: int, width: int, hidden: int, blocks: int):
        super().__init__()
        self.fixed_shape = (fixed, height, width)
        self.net = ConvNet(fixed, moved, hidden, blocks)

    def forward(self, flat):
        log_scale, shift = self.net(flat.reshape(*flat.shape[:-1], *self.fixed_shape))
        return shift.flatten(-3), log_scale.flatten(-3)


def checkerboard(shape, parity: int) -> torch.Tensor:
    """The ``(1, H, W)`` checkerboard mask: 1 where ``(i + j) % 2 == parity`` (those pixels stay fixed)."""
    _, height, width = shape
    i = torch.arange(height).view(-1, 1)
    j = torch.arange(width).view(1, -1)
    return ((i + j) % 2 == parity).float().unsqueeze(0)


class MaskedAffineCoupling(FlowLayer):
    """An affine coupling layer with a binary mask (Real NVP's checkerboard for images).

    ``x = m * z + (1 - m) * (z * exp(s) + t)`` with ``(s, t) = net(m * z)`` (masked to ``1 - m``);
    ``log |det dx/dz| = sum (1 - m) s``. ``mask`` broadcasts against the event shape.

    :param shape: the event shape ``(C, H, W)`` (or ``(D,)`` with an MLP ``net`` returning ``(log_scale, shift)``).
    :param mask: 1 for the entries that stay fixed.
    :param net: maps the masked input to ``(log_scale, shift)`` of the event shape.
    """

    def __init__(self, shape, mask: torch.Tensor, net: nn.Module):
        super().__init__(shape)
        self.register_buffer("mask", mask)
        self.net = net

    def _scale_shift(self, fixed):
        log_scale, shift = self.net(fixed)
        moved = 1 - self.mask
        return log_scale * moved, shift * moved

    def _logdet(self, log_scale):
        return log_scale.flatten(-len(self.data_shape)).sum(-1)

    def generate(self, z):
        log_scale, shift = self._scale_shift(z * self.mask)
        return z * log_scale.exp() + shift, self._logdet(log_scale)

    def normalize(self, x):
        log_scale, shift = self._scale_shift(x * self.mask)
        return (x - shift) * (-log_scale).exp(), self._logdet(log_scale)


def checkerboard_coupling(shape, parity: int, hidden: int = 64, blocks: int = 2) -> MaskedAffineCoupling:
    """A checkerboard coupling layer on images of ``shape`` ``(C, H, W)`` (``parity``: which squares stay fixed)."""
    if len(shape) != 3:
        raise ConfigError(f"a checkerboard coupling needs images (C, H, W), got event shape {tuple(shape)}")
    return MaskedAffineCoupling(shape, checkerboard(shape, parity), ConvNet(shape[0], shape[0], hidden, blocks))


def channel_coupling(shape, hidden: int = 64, blocks: int = 2) -> AffineCoupling:
    """Pyro's :class:`~pyro.distributions.transforms.AffineCoupling` over the channels of ``(C, H, W)`` images:
    the first ``C // 2`` channels stay fixed and set the scale and shift of the others."""
    channels, height, width = shape
    if channels < 2:
        raise ConfigError(f"a channel coupling needs at least 2 channels, got images of shape {tuple(shape)}: squeeze them first")
    fixed = channels // 2
    hypernet = ChannelHypernet(fixed, channels - fixed, height, width, hidden, blocks)
    return AffineCoupling(fixed, hypernet, dim=-3)


def vector_coupling(dim: int, hidden=(64, 64)) -> AffineCoupling:
    """Pyro's :class:`~pyro.distributions.transforms.AffineCoupling` on vectors of ``dim`` entries: the first
    ``dim // 2`` stay fixed (at least one) and set the scale and shift of the rest through an MLP."""
    if dim < 2:
        raise ConfigError(f"a coupling layer needs vectors of at least 2 entries, got {dim}")
    fixed = dim // 2
    return AffineCoupling(fixed, MLPNet(fixed, dim - fixed, hidden))
