"""Normalizing flows as explicit densities: Real NVP and Glow for vectors and images, as Pyro programs.

A :class:`FlowDensity` is the program ::

    with pyro.plate("data", N):
        pyro.sample("x", dist.TransformedDistribution(Normal(0, I), transforms), obs=v)

with ``v = x`` for vectors and, for images of ``L`` levels, the dequantized ``v = k + u`` on the level
scale ``[0, L)`` (:mod:`~pyro_gen.models.flows.preprocess`): its ``log p`` is then the standard
one-draw bound on the discrete log-likelihood, in nats, and ``bits/dim = -log p / (D ln 2)``. No
site is latent, so the model is fitted by exact maximum likelihood
(:class:`~pyro_gen.infer.objectives.MaximumLikelihood`, no guide). Sampling is exact (base draw,
then every layer's ``_call``); :meth:`FlowDensity.encode` gives the latent code of any ``x`` (every
layer's ``_inverse``) and :meth:`FlowDensity.decode` maps a code back, so codes can be interpolated.

Architectures (:func:`realnvp`, :func:`glow`, :func:`spline`):

* **Real NVP** (Dinh et al. 2017). Images: each scale but the last applies 3 checkerboard couplings,
  a squeeze, 3 channel couplings and factors out half of the channels; the last scale applies 4
  checkerboard couplings. Vectors: ``couplings`` affine couplings (Pyro's ``AffineCoupling``) with
  a reversal between them. A normalization layer (``actnorm``, ``batch`` or ``none``) follows each
  coupling.
* **Glow** (Kingma & Dhariwal 2018). Images: each scale squeezes, then applies ``steps`` steps of
  actnorm, an invertible 1x1 convolution and a channel coupling, then factors out half of the
  channels (except the last scale). Vectors: ``couplings`` steps of actnorm, an invertible linear map
  and a coupling.
* **Neural spline flow** (Durkan et al. 2019), vectors only: a normalization layer at the data end
  (``actnorm``: the data standardized from their mean and standard deviation, so they sit inside the
  splines' box), then ``couplings`` rational-quadratic spline couplings (Pyro's ``SplineCoupling``,
  :mod:`~pyro_gen.models.flows.spline`) with a reversal between them (Durkan et al. put an invertible
  linear map between couplings and use residual hypernets; a reversal and an MLP suffice in 2-D).

References: L. Dinh, J. Sohl-Dickstein, S. Bengio, "Density estimation using Real NVP", ICLR 2017;
D. P. Kingma, P. Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018;
C. Durkan, A. Bekasov, I. Murray, G. Papamakarios, "Neural Spline Flows", NeurIPS 2019;
L. Theis, A. van den Oord, M. Bethge, "A note on the evaluation of generative models", ICLR 2016.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_gen.errors import ConfigError
from pyro_gen.models.checks import check_batch, check_finite, values_already_checked
from pyro_gen.models.flows import (
    ActNorm,
    FactorOut,
    Flatten,
    InvertibleConv1x1,
    Squeeze,
    batch_norm,
    channel_coupling,
    check_squeezable,
    checkerboard_coupling,
    dequantize,
    output_transforms,
    quantize,
    reverse,
    run_chain,
    vector_coupling,
    vector_spline_coupling,
)
from pyro_gen.models.flows.base import is_module

DATA_PLATE = "data"
ARCHITECTURES = ("realnvp", "glow", "spline")
NORMS = ("actnorm", "batch", "none")


class FlowDensity(nn.Module):
    """A flow density observed at ``x`` (a Pyro program with no latent site).

    :param data_shape: the shape of one datapoint: ``(D,)`` or ``(C, H, W)``.
    :param transforms: the flow's layers in the generating order, from a flat latent ``(D,)`` to the
        data side (``data_shape``; for images the space the logit / centering pre-transform maps to).
    :param levels: for quantized images, their number of levels ``L`` (17 for digits, 256 for 8-bit,
        2 for binary): the data are dequantized and pre-transformed; ``None`` for continuous data.
    :param logit: the logit pre-transform (Real NVP) or, ``False``, centering ``v / L - 1/2`` (Glow).
    :param alpha: the logit's margin.
    :param description: one line naming the architecture (recorded by the family).

    Calling it runs the program: ``model(x)`` observes ``x``; ``model(batch_size=n)`` draws ``n``
    samples (images on their grid ``k / (L - 1)``).
    """

    max_plate_nesting = 1

    def __init__(
        self, data_shape, transforms, *, levels: int | None = None, logit: bool = True, alpha: float = 0.05, description: str = ""
    ):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.dim = math.prod(self.data_shape)
        self.transforms = list(transforms)
        self.layers = nn.ModuleList([t for t in self.transforms if is_module(t)])
        if levels is not None and (not isinstance(levels, int) or isinstance(levels, bool) or levels < 2):
            raise ConfigError(f"levels must be an integer >= 2 (the number of intensity levels of the images), got {levels!r}")
        self.levels = levels
        self.logit, self.alpha = logit, alpha
        self.output = output_transforms(levels, logit, alpha, len(self.data_shape)) if levels is not None else []
        self.description = description
        self.register_buffer("_reference", torch.zeros(()))  # the device and dtype of the base distribution

    # -- the distribution ---------------------------------------------------------------------------
    def base(self) -> dist.Distribution:
        """The standard normal base distribution of the flat latent code ``(D,)``."""
        zeros = self._reference.expand(self.dim)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def distribution(self) -> dist.TransformedDistribution:
        """The density of the observed value (``x`` for vectors; the level-scale ``k + u`` for images)."""
        return dist.TransformedDistribution(self.base(), self.transforms + self.output)

    def check_data(self, x: torch.Tensor) -> None:
        """Shape and dtype of every batch; the values (finite; for images, on the grid of ``levels``) unless already checked."""
        check_batch(x, self.data_shape, "model", dtype=self._reference.dtype)
        if values_already_checked():
            return
        if self.levels is not None:
            from pyro_gen.data.levels import to_levels

            to_levels(x, self.levels)
        else:
            check_finite(x, "x")

    def observed_value(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """What the ``"x"`` site observes: ``x`` itself, or for images the dequantized ``k + u`` (``noise``: ``u``)."""
        if self.levels is None:
            return x
        return dequantize(x, self.levels, noise)

    def forward(self, x: torch.Tensor | None = None, *, batch_size: int | None = None):
        if x is not None:
            self.check_data(x)
            batch_size = len(x)
        elif batch_size is None:
            raise ConfigError("call the flow with data x, or with batch_size=n to draw n samples")
        with pyro.plate(DATA_PLATE, batch_size, dim=-1):
            if x is None:
                return self.to_data(pyro.sample("x", self.distribution()))
            pyro.sample("x", self.distribution(), obs=self.observed_value(x))
        return x

    # -- scores, codes, samples -----------------------------------------------------------------------
    def log_prob(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``log p`` of each datapoint in nats: exact for vectors; for images the density of ``k + u`` (one draw of
        ``u``, or ``noise``), a lower bound on the discrete ``log P(k)``."""
        self.check_data(x)
        return self.distribution().log_prob(self.observed_value(x, noise))

    def to_data(self, value: torch.Tensor) -> torch.Tensor:
        """Images on their grid from level-scale values; vectors unchanged."""
        return value if self.levels is None else quantize(value, self.levels)

    def encode(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The latent code ``z`` (flat, ``(N, D)``) of each datapoint: every layer's inverse.

        Images are dequantized at the centre of each pixel's bin (``u = 1/2``) unless ``noise`` is given.
        """
        self.check_data(x)
        if self.levels is not None and noise is None:
            noise = torch.full_like(x, 0.5)
        value = self.observed_value(x, noise)
        return run_chain(self.transforms + self.output, value, len(self.data_shape), inverse=True)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The datapoint of latent codes ``z`` ``(N, D)``: every layer forward (images quantized to their grid)."""
        if not torch.is_tensor(z) or z.dim() != 2 or z.shape[-1] != self.dim:
            raise ConfigError(
                f"latent codes must be a tensor (N, {self.dim}), got {tuple(z.shape) if torch.is_tensor(z) else type(z).__name__}"
            )
        return self.to_data(run_chain(self.transforms + self.output, z, 1)[0])

    def sample(self, n: int) -> torch.Tensor:
        """``n`` exact samples (images on their grid)."""
        return self(batch_size=n)

    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent initialization (actnorm) on ``x``: one normalizing pass in training mode without gradients.

        Without it an actnorm layer initializes itself on the first training batch, as in Glow.
        """
        was_training = self.training
        self.train()
        try:
            with torch.no_grad():
                self.log_prob(x)
        finally:
            self.train(was_training)


# -- builders --------------------------------------------------------------------------------------
def _norm(shape, norm: str) -> list:
    if norm not in NORMS:
        raise ConfigError(f"norm is {norm!r}; choose one of {', '.join(map(repr, NORMS))}")
    return {"actnorm": lambda: [ActNorm(shape)], "batch": lambda: [batch_norm(shape)], "none": list}[norm]()


def _realnvp_image(shape, scale: int, scales: int, hidden: int, blocks: int, norm: str) -> list:
    """The generating-order layers of scales ``scale..scales-1`` on images of ``shape`` (a flat latent to ``shape``)."""
    steps = []  # the normalizing order (data to latent), reversed at the end
    last = scale == scales - 1
    for i in range(4 if last else 3):
        steps += [checkerboard_coupling(shape, i % 2, hidden, blocks), *_norm(shape, norm)]
    if last:
        return list(reversed([*steps, Flatten(shape)]))
    channels, height, width = shape
    squeezed = (4 * channels, height // 2, width // 2)
    steps.append(Squeeze(shape))
    for _ in range(3):
        steps += [channel_coupling(squeezed, hidden, blocks), *_norm(squeezed, norm), reverse(squeezed[0], dim=-3)]
    kept = (squeezed[0] - squeezed[0] // 2, *squeezed[1:])
    steps.append(FactorOut(squeezed, _realnvp_image(kept, scale + 1, scales, hidden, blocks, norm)))
    return list(reversed(steps))


def _glow_image(shape, scale: int, scales: int, steps_per_scale: int, hidden: int, blocks: int, lu: bool) -> list:
    channels, height, width = shape
    squeezed = (4 * channels, height // 2, width // 2)
    steps = [Squeeze(shape)]
    for _ in range(steps_per_scale):
        steps += [ActNorm(squeezed), InvertibleConv1x1(squeezed, lu), channel_coupling(squeezed, hidden, blocks)]
    if scale == scales - 1:
        steps.append(Flatten(squeezed))
    else:
        kept = (squeezed[0] - squeezed[0] // 2, *squeezed[1:])
        steps.append(FactorOut(squeezed, _glow_image(kept, scale + 1, scales, steps_per_scale, hidden, blocks, lu)))
    return list(reversed(steps))


def _check_shape(data_shape) -> tuple:
    shape = tuple(int(s) for s in data_shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ConfigError(f"a flow density models vectors (D,) or images (C, H, W), got data shape {shape}")
    return shape


def realnvp(
    data_shape, *, levels: int | None = None, scales: int = 2, couplings: int = 8, hidden=64, blocks: int = 2,
    norm: str = "actnorm", logit: bool = True, alpha: float = 0.05,
) -> FlowDensity:  # fmt: skip
    """Real NVP (Dinh et al. 2017) on vectors or images.

    :param levels: the images' number of levels (dequantized, logit pre-transform); ``None`` for vectors.
    :param scales: images: the number of scales (``scales - 1`` squeezes).
    :param couplings: vectors: the number of coupling layers.
    :param hidden: images: the width of the ResNet in each coupling (an int); vectors: the MLP's hidden sizes (a list).
    :param blocks: images: residual blocks per coupling network.
    :param norm: ``actnorm``, ``batch`` (Pyro's ``BatchNorm``) or ``none``, after each coupling.
    """
    shape = _check_shape(data_shape)
    if len(shape) == 1:
        steps = []
        for _ in range(couplings):
            steps += [vector_coupling(shape[0], _widths(hidden)), *_norm(shape, norm), reverse(shape[0])]
        transforms = list(reversed(steps))
        text = f"realnvp: {couplings} affine couplings (MLP {_widths(hidden)}), {norm}"
    else:
        if scales < 1:
            raise ConfigError(f"scales must be >= 1, got {scales}")
        check_squeezable(shape, scales - 1, f"Real NVP with {scales} scales")
        transforms = _realnvp_image(shape, 0, scales, _width(hidden), blocks, norm)
        text = f"realnvp: {scales} scales, checkerboard and channel couplings (ResNet {_width(hidden)}x{blocks} blocks), {norm}"
    if levels is not None:
        text += f", dequantized ({levels} levels)" + (f", logit (alpha {alpha})" if logit else "")
    return FlowDensity(shape, transforms, levels=levels, logit=logit, alpha=alpha, description=text)


def glow(
    data_shape, *, levels: int | None = None, scales: int = 2, steps: int = 4, couplings: int = 8, hidden=64,
    blocks: int = 1, lu: bool = True, logit: bool = False, alpha: float = 0.05,
) -> FlowDensity:  # fmt: skip
    """Glow (Kingma & Dhariwal 2018) on vectors or images: actnorm, invertible 1x1 convolution, affine coupling.

    :param scales: images: the number of scales (each begins with a squeeze).
    :param steps: images: flow steps per scale.
    :param couplings: vectors: the number of steps.
    :param lu: the LU-decomposed 1x1 convolution (else a plain weight with its ``slogdet``).
    """
    shape = _check_shape(data_shape)
    if len(shape) == 1:
        layers = []
        for _ in range(couplings):
            layers += [ActNorm(shape), InvertibleConv1x1(shape, lu), vector_coupling(shape[0], _widths(hidden))]
        transforms = list(reversed(layers))
        text = f"glow: {couplings} steps of actnorm, invertible linear map ({'LU' if lu else 'plain'}), affine coupling (MLP {_widths(hidden)})"
    else:
        if scales < 1:
            raise ConfigError(f"scales must be >= 1, got {scales}")
        check_squeezable(shape, scales, f"Glow with {scales} scales")
        transforms = _glow_image(shape, 0, scales, steps, _width(hidden), blocks, lu)
        text = (
            f"glow: {scales} scales x {steps} steps of actnorm, 1x1 convolution ({'LU' if lu else 'plain'}), "
            f"channel coupling (ResNet {_width(hidden)}x{blocks} blocks)"
        )
    if levels is not None:
        text += f", dequantized ({levels} levels)" + (f", logit (alpha {alpha})" if logit else ", centred")
    return FlowDensity(shape, transforms, levels=levels, logit=logit, alpha=alpha, description=text)


def spline(data_shape, *, couplings: int = 8, hidden=(64, 64), bins: int = 8, bound: float = 3.0, norm: str = "actnorm") -> FlowDensity:
    """A neural spline flow (Durkan et al. 2019) on vectors: rational-quadratic spline couplings.

    In the normalizing order (data to latent): ``norm`` (``actnorm``: standardized from the first training
    batch, or the data given to :meth:`FlowDensity.initialize`; ``batch``; ``none``), then ``couplings``
    spline couplings (an element-wise spline on the first half, a conditional one on the rest, MLPs of
    ``hidden`` sizes), each followed by a reversal. Every spline has ``bins`` bins on
    ``[-bound, bound]`` and is the identity outside it, so the standardized data (and the base's
    ``N(0, 1)``) should sit inside: ``bound`` 3 to 5 for standardized data.
    """
    shape = _check_shape(data_shape)
    if len(shape) != 1:
        raise ConfigError(f"spline couplings model vectors (D,), got data shape {shape}: use model.architecture realnvp or glow for images")
    steps = [*_norm(shape, norm)]
    for _ in range(couplings):
        steps += [vector_spline_coupling(shape[0], _widths(hidden), bins, bound), reverse(shape[0])]
    text = (
        f"spline: {norm}, {couplings} rational-quadratic spline couplings ({bins} bins on [-{bound:g}, {bound:g}], MLP {_widths(hidden)})"
    )
    return FlowDensity(shape, list(reversed(steps)), description=text)


def _width(hidden) -> int:
    if isinstance(hidden, (list, tuple)):
        if len(hidden) != 1:
            raise ConfigError(f"an image flow's coupling networks have one width (their ResNet's channels), got {list(hidden)}")
        return int(hidden[0])
    return int(hidden)


def _widths(hidden) -> list:
    return [int(h) for h in hidden] if isinstance(hidden, (list, tuple)) else [int(hidden)]
