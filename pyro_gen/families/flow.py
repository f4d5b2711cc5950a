"""The flow-density family (``model.kind: flow``): Real NVP or Glow as an explicit density, fitted by exact maximum likelihood.

The model is :class:`~pyro_gen.models.flow_density.FlowDensity`, a Pyro program that observes ``x``
under a ``TransformedDistribution`` (no latent site, no guide); the one trainer fits it with
:class:`~pyro_gen.infer.objectives.MaximumLikelihood`. Vectors (tables, the 2-D toys) are modelled as
they are and their test NLL is exact (``nll_method: exact``). Quantized images are dequantized
(``k + u``, ``u`` uniform) on the level scale ``[0, L)`` and pre-transformed by a logit (Real NVP)
or centred (Glow); their test NLL is the density of one dequantization draw per test image, an
upper bound on the discrete NLL (``nll_method: dequantized``), with bits per dimension
``nll / (D ln 2)`` (Dinh et al. 2017; Kingma & Dhariwal 2018; Theis et al. 2016).

``evaluate`` writes ``metrics.json``, a sample grid and an interpolation between test images through
the latent space (images), or the 2-D density picture ``density.png`` (log-density heat map with the
test data, the density, samples; the true density beside it for ring8 / grid25).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_gen.config import EvalConfig, setting, size, widths
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
from pyro_gen.io import atomic_path
from pyro_gen.rng import seeded
from pyro_gen.run.data import count_parameters, fixed_test_data, image_levels

ARCHITECTURES = ("realnvp", "glow", "spline")
NORMS = ("actnorm", "batch", "none")
#: test points scored per pass
SCORE_BATCH = 1000
#: interpolation rows (pairs of test images) and images per row
INTERPOLATION_PAIRS, INTERPOLATION_STEPS = 4, 10


@dataclass
class FlowModelConfig:
    """``model`` of a flow density.

    ``architecture``: ``realnvp`` (affine couplings: checkerboard and channel masks on images, with
    ``norm`` after each), ``glow`` (actnorm, invertible 1x1 convolution (``lu``), channel coupling) or,
    for vectors only, ``spline`` (a neural spline flow: ``norm`` once at the data end to standardize them,
    then rational-quadratic spline couplings of ``bins`` bins on ``[-bound, bound]``, the identity outside).
    Vectors: ``couplings`` layers with MLPs of ``hidden`` sizes. Images: ``scales`` scales (Real NVP
    squeezes ``scales - 1`` times, Glow ``scales`` times), ResNets of ``channels`` channels and
    ``blocks`` residual blocks, ``steps`` Glow steps per scale. ``logit``: the logit pre-transform
    with margin ``alpha`` (``null``: on for Real NVP, off for Glow, which centres ``v / L - 1/2``).
    """

    kind: str = "flow"
    architecture: str = setting("realnvp", choices=ARCHITECTURES)
    couplings: int = size(8, high=1000)
    hidden: list[int] = widths([64, 64])
    channels: int = size(64, high=4096)
    blocks: int = size(2, high=64)
    scales: int = size(2, high=10)
    steps: int = size(4, high=1000)
    norm: str = setting("actnorm", choices=NORMS)
    lu: bool = True
    logit: bool | None = None
    alpha: float = setting(0.05, low=0, high=0.5, low_open=True, high_open=True)
    bins: int = setting(8, low=2, high=1000)
    bound: float = setting(3.0, low=0, high=1e6, low_open=True)


@dataclass
class FlowEvalConfig(EvalConfig):
    """``density_grid``: grid points per axis of a 2-D flow's density picture; ``samples``: samples drawn for the figures."""

    density_grid: int = size(200, high=2000)
    samples: int = size(2000, high=1_000_000)


@dataclass
class FlowScores(Scores):
    """``metrics.json`` of a flow run: its test NLL in nats per datapoint, exact (vectors) or a dequantized bound (images)."""

    test_nll: float | None = None
    bits_per_dim: float | None = None
    nll_method: str = "exact"
    test_nll_stderr: float | None = None
    test_points: int | None = None
    levels: int | None = None
    true_test_nll: float | None = field(default=None, metadata={"group": "toy"})
    kl_estimate: float | None = field(default=None, metadata={"group": "toy"})
    epochs: int | None = None
    seconds_per_epoch: float | None = None
    parameters: int | None = None
    model: str | None = None
    checkpoint: str | None = None
    protocol: dict = field(default_factory=dict)

    def summary(self) -> str:
        if self.bits_per_dim is not None:
            return (
                f"test NLL {self.test_nll:.3f} nats per image (dequantized, {self.levels} levels), {self.bits_per_dim:.4f} bits/dim "
                f"({self.test_points} test images)"
            )
        line = f"test NLL {self.test_nll:.4f} nats per point (exact, {self.test_points} test points)"
        if self.kl_estimate is not None:
            line += f"; the true density's {self.true_test_nll:.4f}: KL(p_true || p_model) about {self.kl_estimate:.4f}"
        return line


class FlowFamily(Family):
    name = "flow"
    description = "a normalizing flow (Real NVP / Glow): an exact density with exact sampling and latent codes"
    sections = {"model": FlowModelConfig, "eval": FlowEvalConfig}
    absent_sections = {
        "guide": "a flow density has no latent variables to infer, so no guide: it is fitted by exact maximum likelihood "
        "(to compare flows, train one run per setting with 'pyro-gen train' and read their metrics.json: test_nll, bits_per_dim, nll_method)",
        "objective": "a flow density is fitted by exact maximum likelihood (MaximumLikelihood): there is no objective to choose",
    }
    scores = FlowScores
    unsupported = {
        "analyze": "'analyze' draws Bayesian diagnostics of a posterior, and a flow density infers none (no latent variables, "
        "its codes are exact): its test NLL is in metrics.json ('pyro-gen evaluate'), its density and samples in the run's figures",
    }
    bf16_refusal = "a flow's layers are its density (each log-determinant would be computed in bfloat16)"
    example = {
        "data": {"name": "ring8", "train_size": 256, "valid_size": 64, "test_size": 100},
        "model": {"kind": "flow", "couplings": 2, "hidden": [16]},
        "train": {"epochs": 2, "batch_size": 64, "progress": False},
        "eval": {"density_grid": 40, "samples": 200},
    }

    def label(self, config) -> str:
        return f"flow-{config.model.architecture}"

    # -- checks ---------------------------------------------------------------------------------
    def check(self, config) -> None:
        m = config.model
        defaults = FlowModelConfig()
        if m.architecture != "spline" and (m.bins != defaults.bins or m.bound != defaults.bound):
            raise ConfigError(
                f"model.bins and model.bound shape spline couplings, and model.architecture is {m.architecture}: "
                "set model.architecture=spline or remove them"
            )
        if m.architecture == "glow" and m.norm != "actnorm":
            raise ConfigError(
                f"model.norm: {m.norm} sets Real NVP's normalization layers; Glow's steps always begin with actnorm: "
                "remove model.norm or set model.architecture=realnvp"
            )

    def check_data(self, config, splits) -> None:
        train, name = splits["train"], config.data.name
        shape = tuple(train.event_shape)
        if len(shape) == 3 and image_levels(config) is None:
            raise ConfigError(
                f"{name!r} holds images of continuous values, and a flow dequantizes quantized images (k / (L - 1)): "
                "choose a quantized image dataset (digits, frey_faces, binarized_mnist, mnist)"
            )
        if len(shape) not in (1, 3):
            raise ConfigError(f"a flow density models vectors (D,) or images (C, H, W), but {name!r} has points of shape {shape}")
        check_batch_size(config, len(train))
        if config.model.norm == "batch" and config.train.batch_size < 2:
            raise ConfigError("model.norm: batch estimates statistics over each batch, which needs train.batch_size >= 2")
        self.build(config, shape)  # the architecture's own refusals (an odd image size for a squeeze, ...), before any file is written

    # -- building -------------------------------------------------------------------------------
    def build(self, config, data_shape):
        from pyro_gen.models.flow_density import glow, realnvp, spline

        m, levels = config.model, image_levels(config)
        images = len(data_shape) == 3
        logit = m.logit if m.logit is not None else m.architecture == "realnvp"
        hidden = m.channels if images else m.hidden
        if m.architecture == "spline":
            return spline(data_shape, couplings=m.couplings, hidden=m.hidden, bins=m.bins, bound=m.bound, norm=m.norm)
        if m.architecture == "realnvp":
            return realnvp(
                data_shape, levels=levels, scales=m.scales, couplings=m.couplings, hidden=hidden, blocks=m.blocks, norm=m.norm,
                logit=logit, alpha=m.alpha,
            )  # fmt: skip
        return glow(
            data_shape, levels=levels, scales=m.scales, steps=m.steps, couplings=m.couplings, hidden=hidden, blocks=m.blocks,
            lu=m.lu, logit=logit, alpha=m.alpha,
        )  # fmt: skip

    def load(self, config, run, device="cpu"):
        """``(model, None, splits, checkpoint name)`` with the best weights (``last.pt`` if there is no best)."""
        splits = self.load_data(config)
        ckpt, name = run.load_checkpoint(run.BEST, device)
        model = self.build(config, tuple(splits["train"].event_shape)).to(device)
        restore(model, None, ckpt, run.path / name)
        return model, None, splits, name

    # -- commands -------------------------------------------------------------------------------
    def fit(self, config, splits, run, resume) -> dict:
        from pyro_gen.infer.objectives import MaximumLikelihood

        pyro.set_rng_seed(config.train.seed)  # the initial weights (actnorm initializes itself on the first training batch)
        model = self.build(config, tuple(splits["train"].event_shape))
        trainer = make_trainer(config, model, None, MaximumLikelihood(), run, patience=config.train.patience)
        if not resume:
            run.save_config(config)
        history = fit_with_trainer(trainer, splits["train"], splits.get("valid"), run, resume)
        return epochs_record(history, config.train.epochs)

    def evaluate(self, config, run, options) -> FlowScores:
        if options.nll_samples is not None:
            raise ConfigError(
                "--nll-samples sets the importance samples of a VAE's test NLL; a flow's test NLL needs none (its density is "
                "exact): drop --nll-samples"
            )
        device = options.device or config.train.device
        model, _, splits, checkpoint = self.load(config, run, device)
        test, seed = splits["test"], config.train.seed
        x = fixed_test_data(test, config.data.seed).to(device)
        nll = per_point_nll(model, x, seed)
        mean = nll.mean().item()
        if not math.isfinite(mean):
            raise TrainingDivergedError(
                f"the test NLL of {run.path / checkpoint} is {mean}: the flow gives the test data no finite density; "
                "train the run again with a lower train.lr or a train.clip_norm"
            )
        images = model.levels is not None
        toy = self._true_test_nll(config.data.name, x) if not images else None
        training = run.training()
        if images:
            estimator = (
                f"-log p(k + u) in nats per image, k the integer levels of each test image, u ~ U[0, 1)^D one draw per image "
                f"(seed {seed}): an upper bound on the discrete NLL -log P(k) (uniform dequantization)"
            )
        else:
            estimator = "exact: -log p(x) = -log N(z; 0, I) - sum of the layers' log|det dx/dz| at z = f^-1(x), nats per point"
        record = FlowScores(
            test_nll=mean,
            bits_per_dim=(mean / (model.dim * math.log(2))) if images else None,
            nll_method="dequantized" if images else "exact",
            test_nll_stderr=(nll.std() / math.sqrt(len(nll))).item() if len(nll) > 1 else None,
            test_points=len(nll),
            levels=model.levels,
            true_test_nll=toy,
            kl_estimate=None if toy is None else mean - toy,
            epochs=training.get("epochs"),
            seconds_per_epoch=training.get("seconds_per_epoch"),
            parameters=count_parameters(model),
            model=model.description,
            checkpoint=checkpoint,
            protocol={
                "train": splits["train"].protocol(),
                "test": test.protocol(),
                "nll_estimator": estimator,
                **({"bits_per_dim": f"test_nll / ({model.dim} ln 2), on the level scale [0, {model.levels})"} if images else {}),
                **(
                    {"kl_estimate": "test_nll minus the true density's test NLL: KL(p_true || p_model) estimated on the test points"}
                    if toy is not None
                    else {}
                ),
                "checkpoint": checkpoint,
                "seed": seed,
            },
        )
        run.write_scores(record)
        if options.figures if options.figures is not None else config.eval.images:
            self._figures(model, x, config, run.path, seed)
        return record

    @staticmethod
    def _true_test_nll(name: str, x: torch.Tensor) -> float | None:
        from pyro_gen.data.toy import NAMES, toy_log_density

        return -toy_log_density(name, x.cpu()).mean().item() if name in NAMES else None

    def _figures(self, model, x: torch.Tensor, config, out: Path, seed: int) -> list[Path]:
        from pyro_gen.analysis.flow_figures import density_figure, interpolation_figure

        with seeded(seed, x.device), torch.no_grad():
            if model.levels is not None:
                how = f"exact samples of the flow, quantized to its {model.levels} levels"
                paths = [save_sample_grid(model.sample(64), how, config.data.name, seed, out / "samples.png")]
                pairs = min(INTERPOLATION_PAIRS, len(x) // 2)
                if pairs:
                    g = torch.Generator().manual_seed(seed)
                    index = torch.randperm(len(x), generator=g)[: 2 * pairs].to(x.device)
                    paths.append(
                        interpolation_figure(
                            model,
                            x[index[:pairs]],
                            x[index[pairs:]],
                            out / "interpolation.png",
                            INTERPOLATION_STEPS,
                            title=f"straight lines between the latent codes of {pairs} pairs of test images",
                        )  # fmt: skip
                    )
                return paths
            if model.dim != 2:
                return []
            samples = model.sample(config.eval.samples)
        from pyro_gen.data.toy import NAMES, toy_log_density

        name = config.data.name
        truth = (lambda points: toy_log_density(name, points).float()) if name in NAMES else None
        title = f"{model.description} on {name}"
        return [density_figure(model, x.cpu(), samples, out / "density.png", title, config.eval.density_grid, truth)]

    def sample_images(self, config, run, num, seed):
        model, _, _, _ = self.load(config, run)
        if model.levels is None:
            raise ConfigError(
                f"sample grids need images; {config.data.name!r} holds vectors: 'pyro-gen sample' draws them as a scatter plot"
            )
        with seeded(seed), torch.no_grad():
            return model.sample(num), f"exact samples of the flow, quantized to its {model.levels} levels"

    def sample(self, config, run, num, out, seed) -> list[Path]:
        """An image grid, or for vectors a scatter PNG over the test data and the points as ``.npy`` (``(num, D)`` float32)."""
        from pyro_gen.analysis import scatter_samples

        if image_levels(config) is not None:
            return [self.write_image_samples(config, run, num or 64, out, seed)]
        model, _, splits, _ = self.load(config, run)
        with seeded(seed), torch.no_grad():
            points = model.sample(num or config.eval.samples)
        real = fixed_test_data(splits["test"], config.data.seed)
        png = scatter_samples(points, real, config.data.name, out.with_suffix(".png"), title=f"flow samples over {config.data.name}")
        npy = out.with_suffix(".npy")
        with atomic_path(npy) as tmp, open(tmp, "wb") as f:
            np.save(f, points.numpy().astype(np.float32))
        return [png, npy]


@torch.no_grad()
def per_point_nll(model, x: torch.Tensor, seed: int, batch: int = SCORE_BATCH) -> torch.Tensor:
    """``-log p`` in nats of every test point (images: one seeded dequantization draw each), in blocks of ``batch``."""
    model.check_data(x)
    out = []
    with seeded(seed, x.device):
        for start in range(0, len(x), batch):
            out.append(-model.log_prob(x[start : start + batch]))
    return torch.cat(out)
