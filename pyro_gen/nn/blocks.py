"""Multilayer perceptrons and convolutional encoders / decoders."""

import math
from collections.abc import Sequence

import torch
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "softplus": nn.Softplus, "leaky_relu": nn.LeakyReLU}


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module by name (``relu``, ``tanh``, ``elu``, ``softplus``, ``leaky_relu``)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None


class Flatten(nn.Module):
    """Flatten the trailing ``ndims`` dimensions, keeping any number of leading batch dimensions."""

    def __init__(self, ndims: int):
        super().__init__()
        self.ndims = ndims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[: x.dim() - self.ndims] + (-1,))


class Unflatten(nn.Module):
    """Reshape the last dimension into ``shape``, keeping leading batch dimensions."""

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[:-1] + self.shape)


class MLP(nn.Sequential):
    """A fully connected network ``in_features -> hidden... -> out_features``.

    Inputs may carry any number of leading batch dimensions (e.g. particles and data),
    which is what vectorized importance sampling needs. If ``in_shape`` is given the
    input's trailing ``len(in_shape)`` dimensions are flattened first (images).

    :param int in_features: size of the (flattened) input.
    :param hidden: sizes of the hidden layers.
    :param int out_features: size of the output.
    :param str activation: hidden nonlinearity.
    :param in_shape: optional trailing input shape to flatten, e.g. ``(1, 28, 28)``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "relu",
        in_shape: Sequence[int] | None = None,
    ):
        layers: list[nn.Module] = []
        if in_shape is not None:
            if math.prod(in_shape) != in_features:
                raise ValueError(f"in_shape {tuple(in_shape)} has {math.prod(in_shape)} values, not in_features={in_features}")
            layers.append(Flatten(len(in_shape)))
        sizes = [in_features, *hidden]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), make_activation(activation)]
        layers.append(nn.Linear(sizes[-1], out_features))
        super().__init__(*layers)
        self.in_features, self.out_features = in_features, out_features


def _conv_stack_sizes(height: int, width: int, num_layers: int) -> list[tuple[int, int]]:
    sizes = [(height, width)]
    for _ in range(num_layers):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


class ConvEncoder(nn.Module):
    """Strided convolutions (stride 2, kernel 4 / padding 1 style) then a linear head.

    Maps images ``(..., C, H, W)`` to features ``(..., out_features)``; leading batch
    dimensions are folded for the convolutions and restored afterwards.

    :param in_shape: ``(C, H, W)`` of the input images.
    :param int out_features: size of the output.
    :param channels: output channels of each stride-2 convolution.
    """

    def __init__(self, in_shape: Sequence[int], out_features: int, channels: Sequence[int] = (32, 64), hidden: int = 256):
        super().__init__()
        c, h, w = in_shape
        self.in_shape = tuple(in_shape)
        layers: list[nn.Module] = []
        for cin, cout in zip([c, *channels[:-1]], channels):
            layers += [nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        fh, fw = _conv_stack_sizes(h, w, len(channels))[-1]
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels[-1] * fh * fw, hidden), nn.ReLU(), nn.Linear(hidden, out_features))
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-3]
        y = self.head(self.convs(x.reshape((-1,) + self.in_shape)))
        return y.reshape(batch + (-1,))


class ConvDecoder(nn.Module):
    """A linear layer then transposed convolutions back to ``out_shape``.

    Maps codes ``(..., in_features)`` to ``(..., C * params_per_pixel, H, W)`` logits /
    means; with ``params_per_pixel=2`` a Gaussian likelihood gets a location and a scale
    per pixel. Odd sizes (e.g. 28 x 20 Frey faces) are handled by cropping.
    """

    def __init__(
        self,
        in_features: int,
        out_shape: Sequence[int],
        channels: Sequence[int] = (64, 32),
        hidden: int = 256,
        params_per_pixel: int = 1,
    ):
        super().__init__()
        c, h, w = out_shape
        self.out_shape = (c * params_per_pixel, h, w)
        sizes = _conv_stack_sizes(h, w, len(channels))
        self.start = (channels[0], *sizes[-1])
        self.head = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, math.prod(self.start)), nn.ReLU())
        layers: list[nn.Module] = []
        outs = [*channels[1:], c * params_per_pixel]
        for i, (cin, cout) in enumerate(zip(channels, outs)):
            layers.append(nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1))
            if i < len(channels) - 1:
                layers.append(nn.ReLU())
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        y = self.head(z.reshape(-1, z.shape[-1])).reshape((-1,) + self.start)
        y = self.deconvs(y)[..., : self.out_shape[1], : self.out_shape[2]]
        return y.reshape(batch + self.out_shape)


class Select(nn.Module):
    """``module(args[index])``: a decoder that reads one of the latents it is given.

    A :class:`~pyro_gen.models.LatentModel` calls its decoder with every latent's value in
    declaration order; a hierarchical model's decoder usually reads the bottom one only:
    ``Select(1, MLP(32, [300], 784))`` for latents ``(z2, z1)``. Being a module, the network's
    parameters are registered with the model (a ``lambda`` closing over a module would hide them).
    """

    def __init__(self, index: int, module: nn.Module):
        super().__init__()
        self.index, self.module = index, module

    def forward(self, *args):
        return self.module(args[self.index])
