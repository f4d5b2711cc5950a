"""The GAN generator as a Pyro program.

A generator is an implicit model: a latent code drawn from a prior and pushed through a
deterministic network, with no likelihood::

    z_n ~ p(z)            (pyro.sample("z", ...) in the "data" plate; standard Normal by default)
    y_n ~ Uniform{0..K-1} (pyro.sample("y", ...), observed when labels are given; conditional models only)
    x_n = G(z_n, y_n)     (pyro.deterministic("x", ...))

Because it is a Pyro program, the usual handlers work on it: ``poutine.trace`` reads ``z``,
``y`` and ``x``; ``poutine.condition`` / ``poutine.do`` on ``z`` give interpolations and latent
arithmetic; a guide could be added for inference on ``z``. Training compares its ``x`` with
data through a critic (:class:`pyro_gen.infer.adversarial.Adversarial`), fitted by the same
:class:`~pyro_gen.infer.trainer.Trainer` as every other model (with ``guide=None``).

Example::

    from pyro_gen import Trainer
    from pyro_gen.infer.adversarial import Adversarial
    from pyro_gen.models.gan import gan, gan_critic

    generator = gan((2,), latent_dim=2, hidden=(128, 128))
    critic = gan_critic((2,), hidden=(128, 128))
    Trainer(generator, None, Adversarial(critic, "wgan_gp", n_critic=5), epochs=20).fit(x)

References:
  Goodfellow et al., Generative Adversarial Nets, NeurIPS 2014.
  Mohamed & Lakshminarayanan, Learning in Implicit Generative Models, 2016.
"""

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_gen.errors import ConfigError, DataError
from pyro_gen.models.checks import check_batch, check_finite
from pyro_gen.models.latent import DATA_PLATE, Latent, declared_prior
from pyro_gen.nn.gan import DCGANCritic, DCGANGenerator, MLPCritic, MLPGenerator, check_labels


class GANGenerator(nn.Module):
    """``x = network(z[, y])`` with ``z`` drawn from a prior: a GAN generator written as a Pyro program.

    Calling it runs the program: ``generator(batch_size=n)`` draws ``n`` samples;
    ``generator(batch_size=n, y=labels)`` draws one sample per given label;
    ``generator(x)`` draws ``len(x)`` samples after checking that ``x`` has the generator's
    data shape (a GAN has no likelihood, so ``x`` is never scored). The return value is
    the samples, shaped ``batch + data_shape``.

    :param network: an ``nn.Module`` mapping ``(N, *latent_shape)`` codes (and ``(N,)`` labels
        for a conditional generator) to ``N * prod(data_shape)`` values.
    :param latent_shape: shape of one code ``z``.
    :param data_shape: shape of one sample, e.g. ``(2,)`` or ``(1, 28, 28)``.
    :param prior: distribution of ``z`` (default: standard Normal); any torch/Pyro distribution
        whose samples broadcast to ``latent_shape``, e.g. ``dist.Uniform(-1., 1.)``.
    :param num_classes: number of classes of a conditional generator (site ``y``), else ``None``.
    """

    max_plate_nesting = 1

    def __init__(
        self,
        network: nn.Module,
        latent_shape: Sequence[int],
        data_shape: Sequence[int],
        prior: dist.Distribution | None = None,
        num_classes: int | None = None,
        latent_name: str = "z",
        obs_name: str = "x",
        label_name: str = "y",
    ):
        super().__init__()
        if len({latent_name, obs_name, label_name}) != 3:
            raise ConfigError(f"site names must differ; got z={latent_name!r}, x={obs_name!r}, y={label_name!r}")
        if num_classes is not None and num_classes < 2:
            raise ConfigError(f"a conditional generator needs num_classes >= 2, got {num_classes}")
        self.network = network
        self.latent = Latent(latent_name, tuple(latent_shape), prior)
        self.data_shape = tuple(data_shape)
        self.num_classes = num_classes
        self.obs_name, self.label_name = obs_name, label_name
        # buffers, so that .to(device) moves the default prior and the uniform label distribution
        self.register_buffer("_prior_loc", torch.zeros(self.latent.shape))
        self.register_buffer("_label_logits", torch.zeros(num_classes or 1))
        self._moved_priors: dict = {}

    @property
    def latent_name(self) -> str:
        return self.latent.name

    def prior(self) -> dist.Distribution:
        """The distribution of one code ``z`` (event shape ``latent_shape``)."""
        if self.latent.prior is None:
            return dist.Normal(self._prior_loc, 1.0, validate_args=False).to_event(len(self.latent.shape))
        device = self._prior_loc.device
        if device not in self._moved_priors:
            self._moved_priors[device] = declared_prior(self.latent, device)
        return self._moved_priors[device]

    def check_data(self, x: torch.Tensor) -> None:
        """Raise :class:`DataError` for a batch of the wrong shape or with NaN/inf values."""
        check_batch(x, self.data_shape, "generator")
        check_finite(x)

    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The deterministic map ``G(z[, y])``: codes ``batch + latent_shape`` to samples ``batch + data_shape``.

        Leading batch dimensions (particles, data) are folded for the network and restored.
        """
        batch = z.shape[: z.dim() - len(self.latent.shape)]
        flat_z = z.reshape((-1,) + self.latent.shape)
        flat_y = None if y is None else y.expand(batch).reshape(-1)
        out = self.network(flat_z) if self.num_classes is None else self.network(flat_z, flat_y)
        expected = math.prod(self.data_shape)
        if out.shape[0] != flat_z.shape[0] or out[0].numel() != expected:
            raise DataError(
                f"the generator network returned shape {tuple(out.shape)} for {flat_z.shape[0]} codes, but data_shape "
                f"{self.data_shape} needs {expected} values per sample: make its output match the data"
            )
        return out.reshape(batch + self.data_shape)

    def forward(
        self, x: torch.Tensor | None = None, *, y: torch.Tensor | None = None, batch_size: int | None = None, data_size: int | None = None
    ):
        # data_size is part of the models' shared call signature; with no global latents nothing is scaled by it
        if x is not None:
            self.check_data(x)
            batch_size = len(x)
        if y is not None:
            if self.num_classes is None:
                raise DataError("this generator is unconditional (num_classes=None) but was given class labels y")
            batch_size = len(y) if batch_size is None else batch_size
            check_labels(y, self.num_classes, batch_size)
        if batch_size is None:
            raise ValueError("call the generator with batch_size=n (or labels y, or data x) to draw samples")
        with pyro.plate(DATA_PLATE, batch_size, dim=-1):
            z = pyro.sample(self.latent.name, self.prior())
            if self.num_classes is not None:
                # observed when labels are given, else drawn uniformly over the classes
                y = pyro.sample(self.label_name, dist.Categorical(logits=self._label_logits), obs=y)
            out = self.generate(z, y)
            pyro.deterministic(self.obs_name, out, event_dim=len(self.data_shape))
        return out

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The generator's output is the sample itself (the figure helpers ask every model for a mean)."""
        return out


#: Priors of ``z`` by name, for configs (``model.prior``); in Python any distribution can be passed.
PRIORS = ("normal", "uniform")


def latent_prior(name: str, latent_dim: int) -> dist.Distribution | None:
    """The prior of a ``latent_dim`` code by name: ``"normal"`` (``None``: the generator's default
    standard Normal) or ``"uniform"`` (independent ``Uniform(-1, 1)`` coordinates, as in Radford et
    al. 2016; on grid25 it covers more modes than a Normal, BENCHMARKS.md section 7)."""
    if name == "normal":
        return None
    if name == "uniform":
        return dist.Uniform(-torch.ones(latent_dim), torch.ones(latent_dim)).to_event(1)
    raise ConfigError(f"unknown prior {name!r}; choose one of {', '.join(map(repr, PRIORS))} (or pass a distribution in Python)")


def gan(
    data_shape: Sequence[int],
    latent_dim: int = 2,
    hidden: Sequence[int] = (128, 128),
    net: str = "mlp",
    num_classes: int | None = None,
    prior: dist.Distribution | None = None,
    channels: Sequence[int] | None = None,
    output: str | None = "default",
) -> GANGenerator:
    """A GAN generator ``x = G(z[, y])`` with an MLP or DCGAN network.

    :param data_shape: one sample's shape: ``(D,)`` for ``net="mlp"``, ``(C, H, W)`` for either.
    :param latent_dim: size of ``z``.
    :param hidden: hidden sizes of the MLP.
    :param net: ``"mlp"`` or ``"dcgan"``.
    :param num_classes: make a class-conditional generator.
    :param prior: distribution of ``z`` (default standard Normal).
    :param channels: DCGAN feature-map widths (default by image size).
    :param output: output activation; default ``None`` for the MLP and ``"sigmoid"`` (data in
        [0, 1]) for the DCGAN.
    """
    data_shape = tuple(data_shape)
    size = math.prod(data_shape)
    if net == "mlp":
        network = MLPGenerator(latent_dim, hidden, size, num_classes=num_classes, output=None if output == "default" else output)
    elif net == "dcgan":
        network = DCGANGenerator(
            latent_dim, data_shape, channels, num_classes=num_classes, output="sigmoid" if output == "default" else output
        )
    else:
        raise ConfigError(f"unknown generator network {net!r}; choose 'mlp' or 'dcgan'")
    return GANGenerator(network, (latent_dim,), data_shape, prior=prior, num_classes=num_classes)


def gan_critic(
    data_shape: Sequence[int],
    hidden: Sequence[int] = (128, 128),
    net: str = "mlp",
    num_classes: int | None = None,
    channels: Sequence[int] | None = None,
    pack: int = 1,
    spectral_norm: bool = False,
) -> nn.Module:
    """A critic for samples of ``data_shape``: a plain ``nn.Module`` ``(x[, y]) -> scores``.

    :param net: ``"mlp"`` (samples flattened) or ``"dcgan"`` (images).
    :param num_classes: a projection critic for a conditional generator with that many classes.
    :param pack: score ``pack`` samples jointly (PacGAN).
    :param spectral_norm: spectrally normalize every layer.
    """
    data_shape = tuple(data_shape)
    if net == "mlp":
        if len(data_shape) != 1:
            raise ConfigError(f"the MLP critic reads vectors (D,); data_shape is {data_shape}: use net='dcgan' for images")
        return MLPCritic(data_shape[0], hidden, num_classes=num_classes, pack=pack, spectral_norm=spectral_norm)
    if net == "dcgan":
        return DCGANCritic(data_shape, channels, num_classes=num_classes, pack=pack, spectral_norm=spectral_norm)
    raise ConfigError(f"unknown critic network {net!r}; choose 'mlp' or 'dcgan'")
