"""The PixelCNN as a Pyro program: an exact, autoregressive image density.

``PixelCNNDistribution`` is a :class:`pyro.distributions.TorchDistribution` over single-channel
images whose ``log_prob`` is exact, ``log p(x) = sum_i log p(x_i | x_<i)`` with every conditional
computed in one pass of a causal network (:class:`~pyro_gen.nn.pixelcnn.GatedPixelCNN`):

* ``levels == 2``: Bernoulli pixels (binary images, e.g. static binarized MNIST);
* ``levels > 2``: a softmax over the ``levels`` intensity levels (17 for scikit-learn's digits, 256 for
  8-bit images; van den Oord et al. 2016a, section 5.3: the discrete softmax beat continuous densities).

Values are images as the library stores them, floats ``k / (levels - 1)`` in [0, 1] (see
:mod:`pyro_gen.data.levels`); an image off that grid is refused, never rounded. ``sample`` is
autoregressive: pixel by pixel in raster order, each from its conditional given the pixels drawn so
far. It uses a windowed pass (:func:`autoregressive_sample` with ``method="fast"``: the vertical stack
once per row over the :attr:`~pyro_gen.nn.pixelcnn.GatedPixelCNN.reach` rows it reads, then the
horizontal stack per pixel on one row segment) that gives the same draws as the naive loop (a full
forward pass per pixel) from the same random numbers; ``bench/pixelcnn_sampling.py`` measures both.

The model, :class:`PixelCNN`, is the program ``pyro.sample("x", PixelCNNDistribution(...), obs=x)`` in the
``"data"`` plate, fitted without a guide by :class:`~pyro_gen.infer.objectives.MaximumLikelihood`.

References:
  van den Oord, Kalchbrenner & Kavukcuoglu, Pixel Recurrent Neural Networks, ICML 2016.
  van den Oord et al., Conditional Image Generation with PixelCNN Decoders, NeurIPS 2016.
  Theis, van den Oord & Bethge, A note on the evaluation of generative models, ICLR 2016 (bits per dimension).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn
from torch.nn import functional as F

from pyro_gen.errors import ConfigError, DataError
from pyro_gen.infer.precision import as_float32
from pyro_gen.models.checks import check_batch, check_class_labels, check_finite, values_already_checked
from pyro_gen.models.latent import DATA_PLATE
from pyro_gen.models.likelihoods import Likelihood
from pyro_gen.nn.pixelcnn import GatedPixelCNN

SAMPLERS = ("fast", "naive")


# -- nats and bits ---------------------------------------------------------------------------------
def bits_per_dim(nll_nats: float, num_dims: int) -> float:
    """Bits per dimension of a negative log-likelihood of ``nll_nats`` nats per image of ``num_dims`` values.

    ``nll / (D ln 2)``: the standard unit of image densities (Theis et al. 2016). For a discrete model it
    is the code length per pixel in bits, each pixel's alphabet being the image's ``levels`` values;
    a dequantized flow's ``-log p(x)`` in bits per dim on the same ``levels`` is a bound on the same
    quantity, so the two are comparable.
    """
    if isinstance(num_dims, bool) or not isinstance(num_dims, int) or num_dims < 1:
        raise ConfigError(f"num_dims must be a positive integer (values per image), got {num_dims!r}")
    return nll_nats / (num_dims * math.log(2))


# -- values ---------------------------------------------------------------------------------------
def image_levels(x: torch.Tensor, levels: int) -> torch.Tensor:
    """The integer levels ``k`` (int64) of images ``x = k / (levels - 1)``, refusing anything else by name.

    :raises DataError: integer or boolean pixels (give ``k / (levels - 1)`` floats), integer levels given
        as floats (0..255 instead of 0..1), a non-binary image under Bernoulli pixels, values off the grid,
        NaN or infinite values.
    """
    from pyro_gen.data.levels import to_levels

    if not torch.is_tensor(x):
        raise DataError(f"images must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise DataError(
            f"images have dtype {x.dtype}, but a PixelCNN reads float images k / {levels - 1} in [0, 1] (as the datasets store them): "
            f"convert integer levels with x.float() / {levels - 1}"
        )
    if levels == 2:
        # one fused test: x (1 - x) is zero exactly at 0 and 1, and NaN / inf for NaN / inf
        if torch.count_nonzero(x * (1 - x)):
            check_finite(x)
            bad = x[(x != 0) & (x != 1)]
            raise DataError(
                f"Bernoulli pixels need binary images (0 or 1), but the images have {bad.numel()} other values "
                f"(e.g. {bad[0].item():.4g}): binarize them, or use a softmax over levels (levels > 2) for grayscale images"
            )
        return x.long()
    check_finite(x)
    if x.numel() and x.max() > 1 and bool((x == x.round()).all()):
        raise DataError(
            f"the images hold integer levels up to {x.max().item():.0f} as floats, but a PixelCNN reads k / {levels - 1} in [0, 1]: "
            f"divide them by {levels - 1}"
        )
    return to_levels(x, levels)


class LevelGrid(constraints.Constraint):
    """Images whose every value is ``k / (levels - 1)`` for an integer ``k`` in ``0..levels-1`` (event dim 3)."""

    is_discrete = True
    event_dim = 3

    def __init__(self, levels: int):
        self.levels = levels
        super().__init__()

    def check(self, value):
        scaled = value * (self.levels - 1)
        ok = (scaled == scaled.round()) & (value >= 0) & (value <= 1)
        return ok.flatten(-3).all(-1)


# -- sampling -------------------------------------------------------------------------------------
def _image_setting(data_shape, levels: int, owner: str) -> tuple:
    """``(data_shape, levels)`` checked: single-channel images ``(1, H, W)`` and at least 2 levels."""
    data_shape = tuple(data_shape)
    if len(data_shape) != 3 or data_shape[0] != 1 or min(data_shape) < 1:
        raise ConfigError(
            f"{owner} models single-channel images: data_shape must be (1, H, W), got {data_shape}; "
            "declare image-shaped data (e.g. (1, 28, 28))"
        )
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ConfigError(f"levels must be an integer >= 2 (2: Bernoulli pixels), got {levels!r}")
    return data_shape, levels


def _draw(logits: torch.Tensor, u: torch.Tensor, levels: int) -> torch.Tensor:
    """A pixel's level from its logits ``(N, out)`` and uniforms ``u`` ``(N,)`` by the inverse CDF.

    The same uniforms give the same draw in every sampler (the naive loop and the windowed one
    differ only in float rounding of the logits).
    """
    if levels == 2:
        return (u < torch.sigmoid(logits[:, 0])).long()
    cdf = torch.softmax(logits, dim=-1).cumsum(-1)
    return (cdf[:, :-1] < u[:, None]).sum(-1)


def _crop(term: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    # a label term is (N, 2C, 1, 1) and broadcasts everywhere; a feature-map term is (N, 2C, H, W)
    return term if term.shape[-2:] == (1, 1) else term[..., rows, cols]


@torch.no_grad()
def autoregressive_sample(
    network: GatedPixelCNN, n: int, image_shape: Sequence[int], levels: int, y=None, cond=None, method: str = "fast", generator=None
) -> torch.Tensor:
    """``n`` images ``(n, 1, H, W)`` (floats ``k / (levels - 1)``) drawn pixel by pixel in raster order.

    :param method: ``"naive"``: one full forward pass of the network per pixel (``H W`` passes over the
        whole image); ``"fast"``: per row, the vertical stack over the :attr:`~GatedPixelCNN.reach` rows
        above it, then per pixel the horizontal stack over the ``reach`` columns before it (the outputs
        there read nothing else, so the logits equal the full pass's up to float rounding).
    :param generator: a ``torch.Generator`` for the uniforms (default: torch's global one).
    """
    if method not in SAMPLERS:
        raise ConfigError(f"unknown sampler {method!r}; choose one of {', '.join(SAMPLERS)}")
    _, height, width = image_shape
    param = next(network.parameters())
    canvas = torch.zeros(n, 1, height, width, device=param.device, dtype=param.dtype)
    scale = levels - 1
    if method == "naive":
        for r in range(height):
            for c in range(width):
                logits = network(canvas, y=y, cond=cond)[:, :, r, c]
                u = torch.rand(n, device=canvas.device, generator=generator, dtype=canvas.dtype)
                canvas[:, 0, r, c] = _draw(logits, u, levels).to(canvas.dtype) / scale
        return canvas
    terms = network.conditioning(n, y, cond)
    reach = network.reach
    for r in range(height):
        rows = slice(max(0, r - reach), r + 1)
        v_terms = None if terms is None else [(_crop(cv, rows, slice(None)), None) for cv, _ in terms]
        v_rows = network.vertical_row(canvas[:, :, rows], v_terms)
        for c in range(width):
            cols = slice(max(0, c - reach), c + 1)
            h_terms = None if terms is None else [(None, _crop(ch, slice(r, r + 1), cols)) for _, ch in terms]
            logits = network.horizontal_pixel(canvas[:, :, r : r + 1, cols], [v[..., cols] for v in v_rows], h_terms)
            u = torch.rand(n, device=canvas.device, generator=generator, dtype=canvas.dtype)
            canvas[:, 0, r, c] = _draw(logits, u, levels).to(canvas.dtype) / scale
    return canvas


# -- the distribution ----------------------------------------------------------------------------
class PixelCNNDistribution(dist.TorchDistribution):
    """An exact autoregressive density over single-channel images ``(1, H, W)``, computed by a gated PixelCNN.

    :param network: a :class:`~pyro_gen.nn.pixelcnn.GatedPixelCNN` with ``out_per_pixel`` = 1 (``levels == 2``)
        or ``levels``.
    :param image_shape: ``(1, H, W)``, the event shape.
    :param levels: intensity levels: 2 (Bernoulli pixels) or more (softmax over levels).
    :param y: class labels ``batch_shape`` (a class-conditional network), or ``None``.
    :param cond: a feature map ``batch_shape + (C, H, W)`` (a feature-conditional network: PixelVAE), or ``None``.
    :param batch_shape: the batch shape when neither ``y`` nor ``cond`` gives it (default ``()``).
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, network, image_shape, levels: int, y=None, cond=None, batch_shape=None, validate_args=None):
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ConfigError(f"levels must be an integer >= 2 (2: Bernoulli pixels), got {levels!r}")
        expected = 1 if levels == 2 else levels
        if network.out_per_pixel != expected:
            raise ConfigError(
                f"the network gives {network.out_per_pixel} logits per pixel, but {levels} levels need {expected} "
                f"({'one Bernoulli logit' if levels == 2 else 'one per level'})"
            )
        image_shape = tuple(image_shape)
        if len(image_shape) != 3 or image_shape[0] != 1:
            raise ConfigError(f"a PixelCNN models single-channel images (1, H, W), got image_shape {image_shape}")
        self.network, self.levels, self.y, self.cond = network, levels, y, cond
        if cond is not None:
            if cond.dim() < 3 or tuple(cond.shape[-2:]) != image_shape[1:]:
                raise DataError(f"cond must be a feature map (..., C, {image_shape[1]}, {image_shape[2]}), got shape {tuple(cond.shape)}")
            shape = cond.shape[:-3]
        elif y is not None:
            shape = y.shape
        else:
            shape = torch.Size(() if batch_shape is None else batch_shape)
        super().__init__(torch.Size(shape), torch.Size(image_shape), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=3)
    def support(self):
        return LevelGrid(self.levels)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape:
            return self
        y = None if self.y is None else self.y.expand(batch_shape)
        cond = None if self.cond is None else self.cond.expand(batch_shape + self.cond.shape[-3:])
        return PixelCNNDistribution(self.network, self.event_shape, self.levels, y=y, cond=cond, batch_shape=batch_shape)

    def _flat_conditioning(self, batch: torch.Size):
        n = math.prod(batch)
        y = None if self.y is None else self.y.expand(batch).reshape(n)
        cond = None if self.cond is None else self.cond.expand(batch + self.cond.shape[-3:]).reshape((n,) + self.cond.shape[-3:])
        return y, cond

    def logits(self, value: torch.Tensor) -> torch.Tensor:
        """Every pixel's conditional logits given the pixels before it: ``batch + (out, H, W)`` for images ``batch + (1, H, W)``."""
        batch = torch.broadcast_shapes(value.shape[: value.dim() - 3], self.batch_shape)
        flat = value.expand(batch + self.event_shape).reshape((-1,) + self.event_shape)
        y, cond = self._flat_conditioning(batch)
        out = self.network(flat, y=y, cond=cond)
        return out.reshape(batch + out.shape[1:])

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """The exact ``log p(x)`` in nats, one per image: the sum of the pixels' conditional log-probabilities."""
        if not torch.is_tensor(value) or value.dim() < 3 or tuple(value.shape[-3:]) != tuple(self.event_shape):
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise DataError(f"images must be shaped (..., {', '.join(map(str, self.event_shape))}), got {shape}")
        k = image_levels(value, self.levels)
        logits = as_float32(self.logits(value))  # the network may run in bf16 (train.precision); the density does not
        batch = logits.shape[:-3]
        k = k.expand(batch + self.event_shape)
        if self.levels == 2:
            per_pixel = -F.binary_cross_entropy_with_logits(logits, value.expand_as(logits), reduction="none")
        else:
            per_pixel = torch.log_softmax(logits, dim=-3).gather(-3, k)
        return per_pixel.flatten(-3).sum(-1)

    def sample(self, sample_shape=(), method: str = "fast", generator=None):
        """Images ``sample_shape + batch_shape + (1, H, W)`` drawn autoregressively (floats ``k / (levels - 1)``)."""
        shape = torch.Size(sample_shape) + self.batch_shape
        n = math.prod(shape)
        y, cond = self._flat_conditioning(shape)
        out = autoregressive_sample(self.network, n, self.event_shape, self.levels, y=y, cond=cond, method=method, generator=generator)
        return out.reshape(shape + self.event_shape)


# -- the model ------------------------------------------------------------------------------------
class PixelCNN(nn.Module):
    """The PixelCNN as a Pyro program: ``x ~ PixelCNNDistribution`` in the ``"data"`` plate, no latent variables.

    ``model(x)`` scores images ``(N, 1, H, W)`` (floats ``k / (levels - 1)``); ``model(batch_size=n)`` draws
    ``n`` images autoregressively; a class-conditional model takes ``y=labels`` in both (``model(batch_size=n,
    y=labels)`` draws one image per label). Fitted by maximum likelihood without a guide
    (``Trainer(model, None, objective="mle")``). Returns the images (drawn or given).

    :param data_shape: ``(1, H, W)``.
    :param levels: 2 (Bernoulli pixels) or the number of intensity levels (softmax).
    :param channels, layers, first_kernel, kernel, head: the :class:`~pyro_gen.nn.pixelcnn.GatedPixelCNN`'s sizes.
    :param num_classes: class conditioning, or ``None``.
    """

    max_plate_nesting = 1

    def __init__(
        self,
        data_shape: Sequence[int],
        levels: int = 2,
        channels: int = 32,
        layers: int = 5,
        first_kernel: int = 7,
        kernel: int = 3,
        head: int | None = None,
        num_classes: int | None = None,
        obs_name: str = "x",
    ):
        super().__init__()
        data_shape, levels = _image_setting(data_shape, levels, "a PixelCNN")
        self.data_shape, self.levels, self.obs_name, self.num_classes = data_shape, levels, obs_name, num_classes
        self.network = GatedPixelCNN(
            1 if levels == 2 else levels, channels, layers, first_kernel, kernel, head=head, num_classes=num_classes
        )  # fmt: skip

    @property
    def num_dims(self) -> int:
        """Values per image (``H W``): the ``D`` of bits per dimension."""
        return math.prod(self.data_shape)

    def check_data(self, x: torch.Tensor) -> None:
        """Refuse a batch of the wrong shape / dtype, or (outside a checked dataset) with values off the level grid."""
        param = next(self.parameters())
        check_batch(x, self.data_shape, "model", dtype=param.dtype)
        if not values_already_checked():
            image_levels(x, self.levels)

    def distribution(self, y=None, batch_shape=None) -> PixelCNNDistribution:
        return PixelCNNDistribution(self.network, self.data_shape, self.levels, y=y, batch_shape=batch_shape)

    def forward(self, x: torch.Tensor | None = None, *, batch_size: int | None = None, data_size: int | None = None, y=None):
        # data_size is part of the models' shared call signature; with no global sites nothing is scaled by it
        if x is not None:
            self.check_data(x)
            batch_size = x.shape[0]
        elif y is not None and batch_size is None:
            batch_size = len(y)
        if batch_size is None:
            raise ConfigError("call the PixelCNN with images x, or with batch_size=n to draw n images")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer (the number of images to draw), got {batch_size!r}")
        if self.num_classes is None and y is not None:
            raise ConfigError("this PixelCNN takes no labels (y): build it with num_classes=K to condition on them")
        labels = None if self.num_classes is None else check_class_labels(y, batch_size, self.num_classes)
        with pyro.plate(DATA_PLATE, batch_size, dim=-1):
            return pyro.sample(self.obs_name, self.distribution(y=labels, batch_shape=(batch_size,)), obs=x)


def pixelcnn(
    data_shape: Sequence[int],
    levels: int = 2,
    channels: int = 32,
    layers: int = 5,
    first_kernel: int = 7,
    kernel: int = 3,
    head: int | None = None,
    num_classes: int | None = None,
) -> PixelCNN:
    """A gated PixelCNN model (see :class:`PixelCNN`): ``pixelcnn((1, 28, 28), levels=2, channels=32, layers=5)``."""
    return PixelCNN(data_shape, levels, channels, layers, first_kernel, kernel, head, num_classes)


# -- PixelVAE: the likelihood of a latent-variable model ----------------------------------------
class PixelCNNLikelihood(Likelihood):
    """An autoregressive observation model ``p(x | z)`` for :class:`~pyro_gen.models.LatentModel`: PixelVAE.

    The decoder's output is a feature map of ``cond_channels`` values per pixel, which conditions a small
    gated PixelCNN (1x1 projections into every gate, Gulrajani et al. 2017), so ``p(x | z) = prod_i p(x_i |
    x_<i, z)`` is exact: the ELBO, IWAE and ``evaluate``'s importance-sampled ``log p(x)`` work unchanged.
    Drawing from the model (``model(batch_size=n)``) samples ``x`` autoregressively given each ``z``.
    A PixelCNN decoder can model the images without the latents (Chen et al. 2017, "Variational Lossy
    Autoencoder"); a small receptive field (few ``layers``, a small ``first_kernel``) leaves it the local
    statistics only, and free bits (``ELBO(free_bits=...)``) keep information in ``z``.

    :param data_shape: ``(1, H, W)``.
    :param levels: 2 (Bernoulli pixels) or the intensity levels (softmax).
    :param cond_channels: feature-map channels the decoder outputs per pixel (its output size is
        ``cond_channels * H * W``; :attr:`params_per_value`).
    :param channels, layers, first_kernel, kernel, head: the :class:`~pyro_gen.nn.pixelcnn.GatedPixelCNN`'s sizes.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        levels: int = 2,
        cond_channels: int = 4,
        channels: int = 16,
        layers: int = 2,
        first_kernel: int = 5,
        kernel: int = 3,
        head: int | None = None,
    ):
        super().__init__()
        data_shape, levels = _image_setting(data_shape, levels, "the pixelcnn likelihood")
        self.data_shape, self.levels = data_shape, levels
        self.has_mean = False  # pixels depend on each other: pictures show draws
        self.params_per_value = cond_channels  # the decoder's outputs per pixel: the conditioning feature map
        self.network = GatedPixelCNN(
            1 if levels == 2 else levels, channels, layers, first_kernel, kernel, head=head, cond_channels=cond_channels
        )  # fmt: skip

    def validate(self, x: torch.Tensor) -> None:
        image_levels(x, self.levels)

    def forward(self, params: torch.Tensor, data_ndim: int) -> PixelCNNDistribution:
        if data_ndim != 3:
            raise DataError(f"the pixelcnn likelihood scores images (1, H, W), but the model's data have {data_ndim} dimensions")
        # params: batch + (1, H, W) for one channel, else (C,) + batch + (1, H, W): the feature map batch + (C, H, W)
        cond = params if self.params_per_value == 1 else params.squeeze(-3).movedim(0, -3)
        return PixelCNNDistribution(self.network, self.data_shape, self.levels, cond=cond)

    def mean(self, params, data_ndim):
        raise ConfigError(
            "the pixelcnn likelihood has no closed-form mean (its pixels depend on each other): draw images instead, "
            "e.g. poutine.trace(model).get_trace(batch_size=n).nodes['x']['value']"
        )
