"""The PixelCNN family (``model.kind: pixelcnn``): an explicit, exact image density fitted by maximum likelihood.

The model is :class:`~pyro_gen.models.pixelcnn.PixelCNN` (gated PixelCNN, van den Oord et al. 2016b), with
Bernoulli pixels on binary images and a softmax over the dataset's intensity levels otherwise
(:attr:`pyro_gen.data.DatasetInfo.levels`: 17 for scikit-learn's digits, 256 for Frey faces / MNIST). It has
no latent variables and no guide: the one :class:`~pyro_gen.Trainer` fits it with
:class:`~pyro_gen.infer.objectives.MaximumLikelihood`, and ``evaluate`` writes its *exact* test NLL in nats per
image and in bits per dimension (``nll / (D ln 2)``, ``D`` pixels), with ``nll_method: exact`` so that a table
across families can set it beside a VAE's importance-sampled estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch

from pyro_gen.config import size
from pyro_gen.errors import ConfigError, TrainingDivergedError
from pyro_gen.families.base import (
    Family,
    Scores,
    check_batch_size,
    epochs_record,
    fit_with_trainer,
    make_trainer,
    restore,
    save_sample_grid,
)
from pyro_gen.rng import seeded
from pyro_gen.run.data import count_parameters, fixed_test_data, image_levels

#: The largest network (weights) a config may ask for: a typo in a size must not try to allocate the machine.
MAX_PARAMETERS = 10**9
#: Test images scored per forward pass (memory, not the result, depends on it).
SCORE_BATCH = 500


@dataclass
class PixelCNNModelConfig:
    """``model`` of a PixelCNN: ``channels`` per stack, ``layers`` gated layers (the first with a ``first_kernel``
    mask-A convolution, the others ``kernel``), ``head`` hidden channels of the output (``null``: ``channels``);
    ``conditional`` conditions on the dataset's class labels. The pixels' distribution follows the dataset: Bernoulli
    for binary images, a softmax over its intensity levels otherwise."""

    kind: str = "pixelcnn"
    channels: int = size(32, high=4096)
    layers: int = size(5, high=1000)
    first_kernel: int = size(7, high=63)
    kernel: int = size(3, high=63)
    head: int | None = size(None, high=4096)
    conditional: bool = False


@dataclass
class PixelCNNScores(Scores):
    """``metrics.json`` of a PixelCNN run: the exact test NLL in nats per image and in bits per dimension."""

    test_nll: float | None = None
    bits_per_dim: float | None = None
    nll_method: str = "exact"
    test_nll_stderr: float | None = None
    test_images: int | None = None
    levels: int | None = None
    pixels: str | None = None
    epochs: int | None = None
    seconds_per_epoch: float | None = None
    parameters: int | None = None
    model: str | None = None
    checkpoint: str | None = None
    protocol: dict = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"test NLL {self.test_nll:.3f} nats per image (exact), {self.bits_per_dim:.4f} bits/dim "
            f"({self.pixels}, {self.test_images} test images)"
        )


class PixelCNNFamily(Family):
    name = "pixelcnn"
    description = "a gated PixelCNN: an exact autoregressive image density"
    sections = {"model": PixelCNNModelConfig}
    absent_sections = {
        "guide": "a PixelCNN has no latent variables to infer, so no guide: it is fitted by exact maximum likelihood",
        "objective": "a PixelCNN is fitted by exact maximum likelihood (MaximumLikelihood), there is no objective to choose",
    }
    scores = PixelCNNScores
    unsupported = {
        "compare": "'compare' varies the guide of one model, and a PixelCNN has none (no latent variables): train one run per "
        "setting with 'pyro-gen train' and read their metrics.json (test_nll, bits_per_dim, nll_method: exact)",
        "analyze": "'analyze' draws Bayesian diagnostics of a posterior, and a PixelCNN infers none (no latent variables): its "
        "exact test NLL is in metrics.json ('pyro-gen evaluate') and its samples in samples.png ('pyro-gen sample')",
    }
    bf16_refusal = None  # networks in bf16, densities in float32 (pyro_gen.infer.precision)
    example = {
        "data": {"name": "digits", "train_size": 100, "valid_size": 30, "test_size": 30},
        "model": {"kind": "pixelcnn", "channels": 8, "layers": 2, "first_kernel": 3},
        "train": {"epochs": 2, "batch_size": 25, "progress": False},
    }

    def label(self, config) -> str:
        m = config.model
        return f"pixelcnn-{m.channels}x{m.layers}"

    # -- checks ---------------------------------------------------------------------------------
    def check(self, config) -> None:
        m = config.model
        for key in ("first_kernel", "kernel"):
            if getattr(m, key) % 2 == 0:
                raise ConfigError(f"model.{key} must be odd (the kernel is centred on the pixel), got {getattr(m, key)}")
        if m.first_kernel < 3:
            raise ConfigError(f"model.first_kernel must be at least 3 (its mask A excludes the centre), got {m.first_kernel}")
        # each layer holds about (kernel * (kernel // 2 + 1) + kernel // 2 + 1 + 4) * 2 C^2 + C^2 weights: refuse a
        # network that could not be allocated before trying (each size alone is within its bounds)
        k = m.kernel
        estimate = m.layers * ((k * (k // 2 + 1) + k // 2 + 1 + 4) * 2 + 1) * m.channels**2
        if estimate > MAX_PARAMETERS:
            raise ConfigError(
                f"model.channels {m.channels} and model.layers {m.layers} (kernel {k}) make a network of about {estimate:.2g} "
                f"weights, above the {MAX_PARAMETERS:.0e} this family builds: lower model.channels or model.layers"
            )

    def check_data(self, config, splits) -> None:
        train, name = splits["train"], config.data.name
        shape = tuple(train.event_shape)
        if len(shape) != 3 or image_levels(config) is None:
            raise ConfigError(
                f"a PixelCNN models quantized images (1, H, W), but {name!r} holds points of shape {shape}"
                ": choose an image dataset (binarized_mnist, digits, frey_faces, mnist) or model.kind=vae / gmm"
            )
        if shape[0] != 1:
            raise ConfigError(f"this PixelCNN models single-channel images, but {name!r} has {shape[0]} channels")
        if config.model.conditional and train.y is None:
            raise ConfigError(
                f"model.conditional: true conditions the PixelCNN on class labels, but {name!r} has no labels in its train split: "
                "set model.conditional=false or use a labelled dataset (digits, mnist)"
            )
        check_batch_size(config, len(train), "training images")

    # -- building -------------------------------------------------------------------------------
    def build(self, config, splits):
        from pyro_gen.models.pixelcnn import pixelcnn

        m, train = config.model, splits["train"]
        num_classes = int(train.y.max()) + 1 if m.conditional else None
        return pixelcnn(tuple(train.event_shape), image_levels(config), m.channels, m.layers, m.first_kernel, m.kernel, m.head, num_classes)

    def load(self, config, run, device="cpu"):
        """``(model, None, splits, checkpoint name)`` with the best weights (``last.pt`` if there is no best)."""
        splits = self.load_data(config)
        ckpt, name = run.load_checkpoint(run.BEST, device)
        model = self.build(config, splits).to(device)
        restore(model, None, ckpt, run.path / name)
        return model, None, splits, name

    # -- commands -------------------------------------------------------------------------------
    def fit(self, config, splits, run, resume) -> dict:
        from pyro_gen.infer.objectives import MaximumLikelihood

        pyro.set_rng_seed(config.train.seed)  # the network's initial weights
        model = self.build(config, splits)
        trainer = make_trainer(config, model, None, MaximumLikelihood(), run, patience=config.train.patience)
        if not resume:
            run.save_config(config)
        history = fit_with_trainer(trainer, splits["train"], splits.get("valid"), run, resume)
        return epochs_record(history, config.train.epochs)

    def evaluate(self, config, run, options) -> PixelCNNScores:
        from pyro_gen.models.pixelcnn import bits_per_dim

        if options.nll_samples is not None:
            raise ConfigError(
                "--nll-samples sets the importance samples of a VAE's test NLL; a PixelCNN's test NLL is exact: drop --nll-samples"
            )
        device = options.device or config.train.device
        model, _, splits, checkpoint = self.load(config, run, device)
        test = splits["test"]
        x = fixed_test_data(test, config.data.seed).to(device)
        y = test.y.to(device) if model.num_classes is not None else None
        nll = exact_test_nll(model, x, y)
        mean = nll.mean().item()
        if not math.isfinite(mean):
            raise TrainingDivergedError(
                f"the test NLL of {run.path / checkpoint} is {mean}: the model gives the test images no finite density; "
                "train the run again with a lower train.lr or a train.clip_norm"
            )
        training, m, levels = run.training(), config.model, model.levels
        pixels = "Bernoulli pixels" if levels == 2 else f"softmax over {levels} levels"
        record = PixelCNNScores(
            test_nll=mean,
            bits_per_dim=bits_per_dim(mean, model.num_dims),
            nll_method="exact",
            test_nll_stderr=(nll.std() / math.sqrt(len(nll))).item() if len(nll) > 1 else None,
            test_images=len(nll),
            levels=levels,
            pixels=pixels,
            epochs=training.get("epochs"),
            seconds_per_epoch=training.get("seconds_per_epoch"),
            parameters=count_parameters(model),
            model=(
                f"pixelcnn: gated, {m.channels} channels, {m.layers} layers ({m.first_kernel}x{m.first_kernel} mask A, then "
                f"{m.kernel}x{m.kernel} mask B), {pixels}" + (f", conditional on {model.num_classes} classes" if y is not None else "")
            ),
            checkpoint=checkpoint,
            protocol={
                "train": splits["train"].protocol(),
                "test": test.protocol(),
                "nll_estimator": "exact: log p(x) = sum of the pixels' conditionals in raster order, nats per image",
                "bits_per_dim": f"test_nll / ({model.num_dims} ln 2); each pixel's alphabet is the {levels} levels",
                "checkpoint": checkpoint,
                "seed": config.train.seed,
            },
        )
        run.write_scores(record)
        if options.figures if options.figures is not None else config.eval.images:
            save_sample_grid(*draw_images(model, 64, config.train.seed), config.data.name, config.train.seed, run.path / "samples.png")
        return record

    def sample(self, config, run, num, out, seed) -> list[Path]:
        return [self.write_image_samples(config, run, num or 64, out, seed)]

    def sample_images(self, config, run, num, seed):
        model, _, _, _ = self.load(config, run)
        return draw_images(model, num, seed)


@torch.no_grad()
def draw_images(model, num: int, seed: int) -> tuple[torch.Tensor, str]:
    """``num`` autoregressive samples of a PixelCNN (a conditional model: the labels 0, 1, ... in turn) and how they
    were drawn, for the grid's title."""
    device = next(model.parameters()).device
    y = None if model.num_classes is None else torch.arange(num, device=device) % model.num_classes
    with seeded(seed, device):
        images = model(batch_size=num, y=y)
    labels = "" if y is None else f", labels 0..{model.num_classes - 1} in turn"
    return images, f"exact autoregressive samples of the PixelCNN, drawn one pixel at a time{labels}"


@torch.no_grad()
def exact_test_nll(model, x: torch.Tensor, y: torch.Tensor | None = None, batch: int = SCORE_BATCH) -> torch.Tensor:
    """``-log p(x)`` in nats of every image (exact), in blocks of ``batch`` images."""
    model.check_data(x)
    out = []
    for start in range(0, len(x), batch):
        block = x[start : start + batch]
        labels = None if y is None else y[start : start + batch]
        out.append(-model.distribution(y=labels, batch_shape=(len(block),)).log_prob(block))
    return torch.cat(out)
