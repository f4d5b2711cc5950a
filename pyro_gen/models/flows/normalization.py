"""Normalization layers of flows: activation normalization (Glow) and batch normalization (Real NVP).

* :class:`ActNorm` (Kingma & Dhariwal 2018, section 3.1): a per-channel affine map whose scale and
  bias are set from the first batch it normalizes in training mode (*data-dependent
  initialization*: that batch leaves it with zero mean and unit variance per channel), then trained
  as ordinary parameters. Unlike batch norm it does not depend on the batch afterwards, so it is an
  exact bijection at training and test time and works with batches of one.
* :func:`batch_norm`: Pyro's :class:`~pyro.distributions.transforms.BatchNorm` (Dinh et al. 2017,
  section 3.7): batch statistics in training mode, their moving averages in eval mode; its log-det is
  that of the statistics it used.

The initialized flag is a buffer, so a checkpoint restores an initialized layer and a resumed run
does not initialize it again.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions.transforms import BatchNorm
from torch import nn

from pyro_gen.models.flows.base import FlowLayer


class ActNorm(FlowLayer):
    """``x = z * exp(log_scale) + bias`` per channel (images ``(C, H, W)``) or per entry (vectors ``(D,)``).

    ``log |det dx/dz| = H * W * sum(log_scale)``. The first :meth:`normalize` in training mode sets
    ``bias`` to the batch's per-channel mean and ``log_scale`` to the log of its standard deviation.
    """

    def __init__(self, shape):
        super().__init__(shape)
        param_shape = (shape[0],) + (1,) * (len(shape) - 1)
        self.log_scale = nn.Parameter(torch.zeros(param_shape))
        self.bias = nn.Parameter(torch.zeros(param_shape))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        self._pixels = math.prod(shape[1:])

    def _logdet(self, x):
        return (self.log_scale.sum() * self._pixels).expand(self.batch_shape_of(x))

    def initialize(self, x: torch.Tensor) -> None:
        """Set the scale and bias so that ``x`` (data side) is normalized per channel; mark the layer initialized."""
        with torch.no_grad():
            channels_last = x.movedim(x.dim() - len(self.data_shape), -1).reshape(-1, self.data_shape[0])
            mean, std = channels_last.mean(0), channels_last.std(0, unbiased=False) if len(channels_last) > 1 else None
            self.bias.copy_(mean.view_as(self.bias))
            if std is not None:
                self.log_scale.copy_(std.clamp_min(1e-6).log().view_as(self.log_scale))
            self.initialized.fill_(1)

    def generate(self, z):
        return z * self.log_scale.exp() + self.bias, self._logdet(z)

    def normalize(self, x):
        if self.training and not bool(self.initialized):
            self.initialize(x)
        return (x - self.bias) * (-self.log_scale).exp(), self._logdet(x)


def batch_norm(shape, momentum: float = 0.1) -> BatchNorm:
    """Pyro's :class:`~pyro.distributions.transforms.BatchNorm` over events of ``shape`` (statistics per entry)."""
    return BatchNorm(tuple(shape) if len(shape) > 1 else shape[0], momentum=momentum)
