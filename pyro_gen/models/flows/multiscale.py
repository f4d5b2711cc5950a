"""The multi-scale architecture of Real NVP (Dinh et al. 2017, section 3.6) and Glow: squeeze, factor-out, flatten.

In the normalizing direction (data to latent) a scale applies coupling layers, *squeezes* each
2x2 block of pixels into channels (``(C, H, W) -> (4C, H/2, W/2)``), applies more layers and
*factors out* half of the channels: they go straight to the latent code (a standard normal), and
only the other half is transformed by the next scales. The flow's latent code is one flat vector
of the data's dimension. Every layer here has log-det 0 except what :class:`FactorOut` runs inside.

Squeezing needs an even height and width at every scale; an odd size is refused when the flow is
built (:func:`check_squeezable`), naming the scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pyro_gen.errors import ConfigError
from pyro_gen.models.flows.base import FlowLayer, is_module, run_chain


def check_squeezable(shape, squeezes: int, what: str = "the flow") -> None:
    """Refuse images whose height or width becomes odd before the ``squeezes``-th squeeze."""
    _, height, width = shape
    for k in range(squeezes):
        if height % 2 or width % 2:
            raise ConfigError(
                f"{what} squeezes images {squeezes} time(s) (2x2 blocks of pixels into channels), but the "
                f"{shape[1]}x{shape[2]} images are {height}x{width} (odd) before squeeze {k + 1}; use at most {k} squeeze(s) "
                "(fewer scales) or pad the images to an even size"
            )
        height, width = height // 2, width // 2


class Squeeze(FlowLayer):
    """Data side ``(C, H, W)``, latent side ``(4C, H/2, W/2)``: each 2x2 block of pixels becomes 4 channels."""

    def __init__(self, shape):
        check_squeezable(shape, 1, "a squeeze layer")
        channels, height, width = shape
        super().__init__(shape, (4 * channels, height // 2, width // 2))

    def generate(self, z):
        x = F.pixel_shuffle(z, 2)
        return x, torch.zeros(self.batch_shape_of(x), dtype=z.dtype, device=z.device)

    def normalize(self, x):
        return F.pixel_unshuffle(x, 2), torch.zeros(self.batch_shape_of(x), dtype=x.dtype, device=x.device)


class Flatten(FlowLayer):
    """Data side ``shape``, latent side ``(prod(shape),)``."""

    def __init__(self, shape):
        super().__init__(shape, (math.prod(shape),))

    def generate(self, z):
        x = z.reshape(*z.shape[:-1], *self.data_shape)
        return x, torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)

    def normalize(self, x):
        z = x.flatten(-len(self.data_shape))
        return z, torch.zeros(z.shape[:-1], dtype=x.dtype, device=x.device)


class FactorOut(FlowLayer):
    """Data side ``(C, H, W)``, latent side a flat vector: the first ``C // 2`` channels go to the latent code as
    they are; ``inner`` (transforms in the generating order, from a flat latent to ``(C - C // 2, H, W)``)
    maps the rest. Latent layout: ``[factored-out channels, flattened; inner latent]``."""

    def __init__(self, shape, inner: list):
        channels, height, width = shape
        super().__init__(shape, (math.prod(shape),))
        self.out_channels = channels // 2
        self.inner = list(inner)
        # the inner layers' parameters are this module's (Pyro's Permute etc. are already modules here)
        self.inner_modules = nn.ModuleList([t for t in self.inner if is_module(t)])

    def generate(self, z):
        c, h, w = self.data_shape
        n_out = self.out_channels * h * w
        z_out = z[..., :n_out].reshape(*z.shape[:-1], self.out_channels, h, w)
        kept, logdet = run_chain(self.inner, z[..., n_out:], 1)
        return torch.cat([z_out, kept], dim=-3), logdet

    def normalize(self, x):
        x_out, kept = x.split([self.out_channels, self.data_shape[0] - self.out_channels], dim=-3)
        z_kept, logdet = run_chain(self.inner, kept, 3, inverse=True)
        return torch.cat([x_out.flatten(-3), z_kept], dim=-1), logdet
