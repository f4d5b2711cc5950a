"""Generator and critic networks for GANs: plain torch, no Pyro inside.

* :class:`MLPGenerator` / :class:`MLPCritic` for vectors (the 2-D toy mixtures);
* :class:`DCGANGenerator` / :class:`DCGANCritic` for images whose height and width are
  ``start * 2**L`` (28 = 7 * 4, 32 = 4 * 8, 64 = 4 * 16, ...): a projection then ``L``
  stride-2 transposed convolutions with batch norm in the generator (Radford et al. 2016),
  ``L`` stride-2 convolutions with leaky ReLUs and no batch norm in the critic (batch norm
  couples the samples of a batch, which the gradient penalty forbids; Gulrajani et al. 2017).

Class conditioning: generators concatenate a learned label embedding to ``z`` (Mirza &
Osindero 2014); critics use the projection discriminator ``f(x, y) = psi(phi(x)) +
embed(y) . phi(x)`` (Miyato & Koyama 2018). Critics can be spectrally normalized
(Miyato et al. 2018) and can score ``pack`` samples at once (PacGAN, Lin et al. 2018): a
packed critic's input is ``pack`` samples concatenated along the features (vectors) or the
channels (images); the objective does the packing.

Generators map ``(N, latent_dim)`` codes to ``(N, ...)`` samples and critics map ``(N, ...)``
inputs to ``(N,)`` scores; leading particle dimensions are folded by the Pyro program
(:class:`~pyro_gen.models.gan.GANGenerator`), not here.

References:
  Radford, Metz & Chintala, Unsupervised Representation Learning with Deep Convolutional GANs, ICLR 2016.
  Mirza & Osindero, Conditional Generative Adversarial Nets, 2014.
  Miyato & Koyama, cGANs with Projection Discriminator, ICLR 2018.
  Miyato, Kataoka, Koyama & Yoshida, Spectral Normalization for Generative Adversarial Networks, ICLR 2018.
  Lin, Khetan, Fanti & Oh, PacGAN: The power of two samples in generative adversarial networks, NeurIPS 2018.
"""

from collections.abc import Sequence

import torch
from torch import nn

from pyro_gen.errors import ConfigError, DataError
from pyro_gen.nn.blocks import MLP, Unflatten, make_activation

_OUTPUTS = {None: nn.Identity, "identity": nn.Identity, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def _output(name) -> nn.Module:
    try:
        return _OUTPUTS[name]()
    except KeyError:
        raise ConfigError(f"unknown output activation {name!r}; choose one of {[k for k in _OUTPUTS if k]} or None") from None


def check_labels(y: torch.Tensor, num_classes: int, batch_size: int | None = None) -> None:
    """Raise :class:`DataError` unless ``y`` holds ``batch_size`` integer labels in ``[0, num_classes)``."""
    if not torch.is_tensor(y) or y.dtype.is_floating_point or y.dtype == torch.bool or y.dim() != 1:
        shape = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
        raise DataError(f"class labels must be a 1-D integer tensor, one label per sample; got {shape}")
    if batch_size is not None and len(y) != batch_size:
        raise DataError(f"got {len(y)} class labels for {batch_size} samples: give exactly one label per sample")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(
            f"class labels must lie in [0, {num_classes}) for a model of {num_classes} classes; got labels in [{int(y.min())}, {int(y.max())}]"
        )


def _check_pack(pack: int) -> None:
    """PacGAN packing: the critic sees ``pack`` samples at once (1: no packing)."""
    if isinstance(pack, bool) or not isinstance(pack, int) or pack < 1:
        raise ConfigError(f"pack must be an integer >= 1 (1: no packing), got {pack!r}")


def _conditioned(y: torch.Tensor | None, num_classes: int | None, batch_size: int, owner: str) -> bool:
    """Whether a network with ``num_classes`` (``None``: unconditional) is given valid labels ``y``; raise on a mismatch."""
    if not num_classes:
        if y is not None:
            raise DataError(f"this {owner} is unconditional (num_classes=None) but was given class labels")
        return False
    if y is None:
        raise DataError(f"this {owner} is conditional ({num_classes} classes) and needs class labels y")
    check_labels(y, num_classes, batch_size)
    return True


def spectral_normalize(module: nn.Module) -> nn.Module:
    """Spectrally normalize every linear and convolutional layer of ``module`` in place (and return it).

    Uses ``torch.nn.utils.parametrizations.spectral_norm``: one power iteration per training
    forward pass; its vectors ``u, v`` are buffers, so they are checkpointed and restored.
    """
    from torch.nn.utils.parametrizations import spectral_norm

    for child in list(module.modules()):
        if isinstance(child, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            spectral_norm(child)
    return module


class _Projection(nn.Module):
    """``psi(h) + embed(y) . h``: the projection head of a conditional critic (plain linear head without labels)."""

    def __init__(self, features: int, num_classes: int | None):
        super().__init__()
        self.num_classes = num_classes
        self.linear = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features) if num_classes else None

    def forward(self, h: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        out = self.linear(h).squeeze(-1)
        if not _conditioned(y, self.num_classes, len(h), "critic"):
            return out
        return out + (self.embed(y) * h).sum(-1)


class _LabelConcat(nn.Module):
    """Concatenate a learned label embedding to the code (identity for unconditional generators)."""

    def __init__(self, num_classes: int | None, embed_dim: int | None):
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None

    def forward(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if not _conditioned(y, self.num_classes, len(z), "generator"):
            return z
        return torch.cat([z, self.embed(y)], -1)


class MLPGenerator(nn.Module):
    """``x = MLP([z, embed(y)])``: a fully connected generator for vector data.

    :param int latent_dim: size of ``z``.
    :param hidden: hidden layer sizes.
    :param int out_features: size of one sample.
    :param num_classes: number of classes of a conditional generator (``None``: unconditional).
    :param embed_dim: size of the label embedding (default ``num_classes``).
    :param output: ``None`` (identity), ``"sigmoid"`` or ``"tanh"``.
    """

    def __init__(
        self,
        latent_dim: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "relu",
        num_classes: int | None = None,
        embed_dim: int | None = None,
        output: str | None = None,
    ):
        super().__init__()
        embed_dim = (embed_dim or num_classes) if num_classes else 0
        self.latent_dim, self.num_classes, self.out_shape = latent_dim, num_classes, (out_features,)
        self.labels = _LabelConcat(num_classes, embed_dim)
        self.net = nn.Sequential(MLP(latent_dim + embed_dim, hidden, out_features, activation), _output(output))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.labels(z, y))


class MLPCritic(nn.Module):
    """A fully connected critic ``x -> score`` (projection head when conditional).

    :param int in_features: size of one sample; a packed critic reads ``pack * in_features``.
    :param hidden: hidden layer sizes.
    :param num_classes: classes of a conditional critic (``None``: unconditional).
    :param int pack: number of samples scored jointly (PacGAN).
    :param bool spectral_norm: spectrally normalize every layer.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        activation: str = "leaky_relu",
        num_classes: int | None = None,
        pack: int = 1,
        spectral_norm: bool = False,
    ):
        super().__init__()
        _check_pack(pack)
        if not hidden:
            raise ConfigError("an MLP critic needs at least one hidden layer")
        self.in_shape, self.num_classes, self.pack = (in_features,), num_classes, pack
        # the last hidden layer is the feature map phi(x) that the projection head reads
        self.features = nn.Sequential(MLP(pack * in_features, hidden[:-1], hidden[-1], activation), make_activation(activation))
        self.head = _Projection(hidden[-1], num_classes)
        if spectral_norm:
            spectral_normalize(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 2 or x.shape[-1] != self.pack * self.in_shape[0]:
            raise DataError(
                f"this critic reads (batch, {self.pack * self.in_shape[0]}) inputs ({self.pack} packed sample(s) of size "
                f"{self.in_shape[0]}); got shape {tuple(x.shape)}. Build the critic for the generator's data shape."
            )
        return self.head(self.features(x), y)


def _image_layout(shape: Sequence[int], channels: Sequence[int] | None, who: str, rising: bool) -> tuple[tuple[int, ...], int, int, int]:
    """``(channels, C, H / 2^L, W / 2^L)`` for images of ``shape`` and ``L = len(channels)`` stride-2 layers."""
    if len(shape) != 3:
        raise ConfigError(f"{who} needs an image shape (C, H, W); got {tuple(shape)}")
    c, h, w = shape
    if channels is None:
        channels = default_channels(min(h, w))[:: -1 if rising else 1]
    f = 2 ** len(channels)
    if h % f or w % f:
        raise ConfigError(
            f"{who} with {len(channels)} stride-2 layers needs height and width divisible by {f}; got {h}x{w}. "
            "Give channels with fewer entries (e.g. 2 layers for 28x28, 3 for 32x32, 4 for 64x64)."
        )
    return tuple(channels), c, h // f, w // f


def default_channels(size: int, width: int = 64, max_layers: int = 4) -> tuple[int, ...]:
    """DCGAN channel widths for images of side ``size``: as many stride-2 layers as leave a side >= 4.

    28 -> 2 layers (7x7 start), 32 -> 3 (4x4), 64 -> 4 (4x4). The generator's widths fall
    ``width * 2**(L-1), ..., width``; the critic's rise ``width, ..., width * 2**(L-1)``.
    """
    layers = 0
    while layers < max_layers and size % 2 ** (layers + 1) == 0 and size // 2 ** (layers + 1) >= 4:
        layers += 1
    if layers == 0:
        raise ConfigError(f"images of side {size} are too small or odd for a DCGAN (need a side divisible by 2 and >= 8)")
    return tuple(width * 2 ** (layers - 1 - i) for i in range(layers))


class DCGANGenerator(nn.Module):
    """DCGAN generator: ``[z, embed(y)] -> linear -> (C0, H/2^L, W/2^L)`` then ``L`` transposed convolutions.

    Every hidden layer is batch-normalized and ReLU-activated; the last one maps to the
    image's channels with the ``output`` activation (``"sigmoid"`` for data in [0, 1]).

    :param int latent_dim: size of ``z``.
    :param out_shape: ``(C, H, W)``; ``H`` and ``W`` divisible by ``2**len(channels)``.
    :param channels: widths of the ``L`` feature maps before each upsampling, e.g. ``(128, 64)``
        for 28x28 (default: :func:`default_channels`).
    """

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int],
        channels: Sequence[int] | None = None,
        num_classes: int | None = None,
        embed_dim: int | None = None,
        output: str | None = "sigmoid",
    ):
        super().__init__()
        channels, c, h0, w0 = _image_layout(out_shape, channels, "a DCGAN generator", rising=False)
        embed_dim = (embed_dim or num_classes) if num_classes else 0
        self.latent_dim, self.num_classes, self.out_shape = latent_dim, num_classes, tuple(out_shape)
        self.labels = _LabelConcat(num_classes, embed_dim)
        layers: list[nn.Module] = [
            nn.Linear(latent_dim + embed_dim, channels[0] * h0 * w0, bias=False),
            Unflatten((channels[0], h0, w0)),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(),
        ]
        for cin, cout in zip(channels[:-1], channels[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        layers += [nn.ConvTranspose2d(channels[-1], c, 4, 2, 1), _output(output)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.labels(z, y))


class DCGANCritic(nn.Module):
    """DCGAN critic: ``L`` stride-2 convolutions with leaky ReLUs, then a linear (projection) head.

    :param in_shape: ``(C, H, W)`` of one image; a packed critic reads ``pack * C`` channels.
    :param channels: widths of the ``L`` convolutions, e.g. ``(64, 128)`` for 28x28 (default:
        :func:`default_channels` reversed).
    :param num_classes: classes of a conditional (projection) critic.
    :param int pack: samples scored jointly (PacGAN).
    :param bool spectral_norm: spectrally normalize every layer.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        channels: Sequence[int] | None = None,
        num_classes: int | None = None,
        pack: int = 1,
        spectral_norm: bool = False,
    ):
        super().__init__()
        _check_pack(pack)
        channels, c, h, w = _image_layout(in_shape, channels, "a DCGAN critic", rising=True)
        self.in_shape, self.num_classes, self.pack = tuple(in_shape), num_classes, pack
        layers: list[nn.Module] = []
        for cin, cout in zip([pack * c, *channels[:-1]], channels):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2)]
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        self.head = _Projection(channels[-1] * h * w, num_classes)
        if spectral_norm:
            spectral_normalize(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        c, h, w = self.in_shape
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.pack * c, h, w):
            raise DataError(
                f"this critic was built for {c}x{h}x{w} images ({self.pack} packed: input (batch, {self.pack * c}, {h}, {w})); "
                f"got shape {tuple(x.shape)}. Build the critic and the generator for the same image size."
            )
        return self.head(self.features(x), y)
