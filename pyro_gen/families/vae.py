"""The VAE family (``model.kind: vae``): a deep latent-variable model with an amortized guide.

Built by :func:`pyro_gen.models.vae`, guided by :func:`pyro_gen.guides.make_guide` (any registered
guide name), fitted by the one trainer on the ELBO or IWAE, scored by its importance-sampled test
log-likelihood with the PSIS k-hat of each test point's weights (Kingma & Welling 2014;
Burda et al. 2016; Vehtari et al. 2024).

The likelihood follows the dataset when the config does not name one: binary data get Bernoulli
pixels, grayscale values in [0, 1] the continuous Bernoulli, counts the Poisson and real values a
Gaussian (:func:`pyro_gen.data.default_likelihood`); the choice is recorded in ``config.yaml``
(the resolved config) and in ``metrics.json``'s protocol.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_gen.config import HUGE, EvalConfig, setting, size, widths
from pyro_gen.errors import ConfigError
from pyro_gen.families.base import Family, Scores, check_batch_size, epochs_record, finite, fit_with_trainer, make_trainer, restore
from pyro_gen.rng import seeded
from pyro_gen.run.data import count_parameters, fixed_test_data, image_levels

#: Default number of test points whose local posteriors ``analyze`` draws.
ANALYZE_POINTS = 100
LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian", "laplace", "poisson", "pixelcnn")


@dataclass
class VAEModelConfig:
    """``model`` of a VAE: latent size, MLP / conv networks, the likelihood (``null``: chosen from the dataset).

    ``prior``: ``normal`` (N(0, I)), ``learned``, ``mog:K`` or ``vamp:K`` (of the top latent); ``top_latent_dim``: a
    second latent level ``z2`` of that size above ``z`` (a two-level hierarchical VAE, site names ``z2``, ``z1``).
    ``likelihood: pixelcnn`` (PixelVAE, Gulrajani et al. 2017; quantized images): the decoder outputs
    ``pixelcnn_cond_channels`` feature maps that condition a gated PixelCNN of ``pixelcnn_layers`` layers of
    ``pixelcnn_channels`` channels whose first (mask A) kernel is ``pixelcnn_first_kernel``: a small receptive
    field keeps the latents in use (see :class:`~pyro_gen.models.pixelcnn.PixelCNNLikelihood`).
    """

    kind: str = "vae"
    latent_dim: int = size(40, high=100_000)
    hidden: list[int] = widths([300, 300])
    net: str = setting("mlp", choices=("mlp", "conv"))
    likelihood: str | None = setting(None, choices=(None, *LIKELIHOODS))
    likelihood_scale: float | str = "learned"
    prior: str = "normal"
    top_latent_dim: int | None = size(None, high=100_000)
    pixelcnn_channels: int = size(16, high=4096)
    pixelcnn_layers: int = size(2, high=100)
    pixelcnn_cond_channels: int = size(4, high=4096)
    pixelcnn_first_kernel: int = size(5, high=99)


@dataclass
class VAEGuideConfig:
    """The guide by name (``normal``, ``planar:10``, ...); its encoder uses the model's hidden sizes unless given.

    ``global_guide``: the autoguide of global latents (``normal`` or ``delta``).
    """

    name: str = "normal"
    hidden: list[int] | None = widths(None)
    global_guide: str = setting("normal", choices=("normal", "delta"))


@dataclass
class ELBOConfig:
    """The ELBO (``elbo``: analytic KL where it exists, ``beta``, ``warmup_epochs``, ``free_bits``) or ``iwae``."""

    name: str = setting("elbo", choices=("elbo", "iwae"))
    num_particles: int = size(1, high=100_000)
    beta: float = setting(1.0, low=0, high=1e6)
    warmup_epochs: int = setting(0, low=0, high=HUGE)
    free_bits: float = setting(0.0, low=0, high=1e6)
    analytic_kl: bool = True


@dataclass
class ImportanceEvalConfig(EvalConfig):
    """Importance-sampled test log-likelihood: ``nll_samples`` draws K per point in chunks of ``chunk_size``.

    ``khat_samples``: importance draws per test point for the PSIS k-hat diagnostic of the guide.
    ``null`` (default): the test NLL's own ``nll_samples`` draws, at no extra cost; ``0``: no k-hat;
    another number (at least 21, the fewest whose tail can be fitted): a second pass with that many draws.
    """

    nll_samples: int = size(1000, high=10_000_000)
    chunk_size: int = size(32768, high=100_000_000)
    khat_samples: int | None = setting(None, low=0, high=10_000_000)


@dataclass
class VAEScores(Scores):
    """``metrics.json`` of a VAE run."""

    test_nll: float | None = None
    nll_samples: int | None = None
    test_elbo: float | None = None
    test_kl: float | None = None
    test_reconstruction: float | None = None
    active_units: int | None = None
    khat_mean: float | None = None
    khat_max: float | None = None
    khat_share_above: float | None = field(default=None, metadata={"key": "khat_share_above_0.7"})
    khat_samples: int | None = None
    epochs: int | None = None
    seconds_per_epoch: float | None = None
    parameters: int | None = None
    guide: str | None = None
    objective: str | None = None
    likelihood: str | None = field(default=None, metadata={"group": "likelihood"})
    checkpoint: str | None = field(default=None, metadata={"group": "checkpoint"})
    protocol: dict = field(default_factory=dict)

    def summary(self) -> str:
        line = f"test NLL {self.test_nll:.3f} nats (K={self.nll_samples}), test ELBO {self.test_elbo:.3f}, active units {self.active_units}"
        if self.khat_mean is not None:
            line += f", k-hat mean {self.khat_mean:.2f} ({100 * self.khat_share_above:.0f}% of points above 0.7)"
        return line


def resolve_likelihood(config) -> tuple[str, str]:
    """``(likelihood, how it relates to the dataset)``: the config's, or the one the dataset's values call for.

    The description depends on the config and the dataset only (not on whether this process chose the
    likelihood), so a resumed run records what the uninterrupted run records.
    """
    from pyro_gen.data import dataset_info
    from pyro_gen.models.likelihoods import default_likelihood

    info = dataset_info(config.data.name, config.data.binarize)
    default, reason = default_likelihood(info.values)
    given = config.model.likelihood
    if given is None or given == default:
        return default, f"chosen from the dataset: {config.data.name} holds {reason}; set model.likelihood to choose another"
    return given, f"given in the config (model.likelihood; the dataset's default is {default})"


class VAEFamily(Family):
    name = "vae"
    description = "a deep latent-variable model with an amortized guide"
    sections = {"model": VAEModelConfig, "guide": VAEGuideConfig, "objective": ELBOConfig, "eval": ImportanceEvalConfig}
    scores = VAEScores
    unsupported = {}
    compare_columns = (
        "guide", "test_nll", "test_elbo", "kl", "active_units", "seconds_per_epoch", "parameters", "nll_samples", "epochs",
        "khat_mean",  # mean PSIS k-hat of the test points' importance weights
        "khat_gt_0.7",  # share of test points whose k-hat exceeds 0.7 (unreliable importance sampling there)
    )  # fmt: skip

    # -- config ---------------------------------------------------------------------------------
    def check(self, config) -> None:
        from pyro_gen.analysis.psis import MIN_SAMPLES
        from pyro_gen.guides import parse_guide_name

        parse_guide_name(config.guide.name)
        from pyro_gen.models.priors import make_prior

        try:
            make_prior(config.model.prior, 1, (1,))
        except ConfigError as e:
            raise ConfigError(f"model.prior: {e}") from None
        scale = config.model.likelihood_scale
        if isinstance(scale, str) and scale not in ("learned", "decoder"):
            raise ConfigError(f"model.likelihood_scale is {scale!r}; choose a positive number, 'learned' or 'decoder'")
        if not isinstance(scale, str) and not (isinstance(scale, float) and math.isfinite(scale) and scale > 0):
            raise ConfigError(f"model.likelihood_scale must be a positive number, 'learned' or 'decoder'; got {scale}")
        k = config.eval.khat_samples
        if k is not None and k != 0 and k < MIN_SAMPLES:
            raise ConfigError(
                f"eval.khat_samples must be null (k-hat from the test NLL's own draws), 0 (no k-hat) or at least {MIN_SAMPLES} "
                f"(the fewest draws whose tail can be fitted); got {k}"
            )

    bf16_refusal = None  # networks in bf16, densities in float32 (pyro_gen.infer.precision)
    example = {
        "data": {"name": "digits", "binarize": "dynamic", "train_size": 100, "valid_size": 30, "test_size": 30},
        "model": {"latent_dim": 2, "hidden": [16]},
        "train": {"epochs": 2, "batch_size": 25, "progress": False},
        "eval": {"nll_samples": 25},
    }

    def label(self, config) -> str:
        return config.guide.name.replace(":", "-")

    def check_data(self, config, splits) -> None:
        train = splits["train"]
        if config.model.net == "conv" and len(train.event_shape) != 3:
            raise ConfigError(
                f"model.net: conv needs images (C, H, W), but {config.data.name!r} has points of shape {tuple(train.event_shape)}: "
                "use model.net=mlp"
            )
        if config.model.likelihood == "pixelcnn":
            shape, name = tuple(train.event_shape), config.data.name
            if len(shape) != 3 or shape[0] != 1 or image_levels(config) is None:
                raise ConfigError(
                    f"model.likelihood: pixelcnn models quantized single-channel images (1, H, W), but {name!r} holds points of "
                    f"shape {shape}: choose binarized_mnist, digits, frey_faces or mnist, or another model.likelihood"
                )
        check_batch_size(config, len(train))

    # -- building -------------------------------------------------------------------------------
    def build(self, config, data_shape):
        """``(model, guide)`` for data of ``data_shape``."""
        from pyro_gen.guides import make_guide
        from pyro_gen.models import vae

        m = config.model
        likelihood = m.likelihood or resolve_likelihood(config)[0]
        options = None
        if likelihood == "pixelcnn":
            options = {
                "levels": image_levels(config),
                "channels": m.pixelcnn_channels,
                "layers": m.pixelcnn_layers,
                "cond_channels": m.pixelcnn_cond_channels,
                "first_kernel": m.pixelcnn_first_kernel,
            }
        model = vae(data_shape, m.latent_dim, m.hidden, m.net, likelihood, m.likelihood_scale, m.prior, m.top_latent_dim, options)
        hidden = config.guide.hidden or m.hidden
        guide = make_guide(config.guide.name, model, hidden=hidden, net=m.net, global_guide=config.guide.global_guide)
        return model, guide

    def objective(self, config):
        from pyro_gen.infer import make_objective

        o = config.objective
        options = {"num_particles": o.num_particles}
        if o.name == "elbo":
            options.update(beta=o.beta, warmup_epochs=o.warmup_epochs, free_bits=o.free_bits, analytic_kl=o.analytic_kl)
        return make_objective(o.name, **options)

    def load(self, config, run, device="cpu"):
        """``(model, guide, splits, checkpoint name)`` of a run, with its best weights (``last.pt`` if there is no best)."""

        splits = self.load_data(config)
        ckpt, name = run.load_checkpoint(run.BEST, device)
        model, guide = self.build(config, tuple(splits["train"].event_shape))
        model, guide = model.to(device), guide.to(device)
        restore(model, guide, ckpt, run.path / name, fixed_test_data(splits["train"], 0)[:2].to(device))
        return model, guide, splits, name

    # -- commands -------------------------------------------------------------------------------
    def fit(self, config, splits, run, resume) -> dict:
        train = splits["train"]
        likelihood, how = resolve_likelihood(config)
        if config.model.likelihood is None:
            config.model.likelihood = likelihood  # the resolved config is what config.yaml records
            from pyro_gen import distributed

            if distributed.is_main():  # once, not once per rank under torchrun
                print(f"likelihood: {likelihood}, {how}", file=sys.stderr)
        # seed before the networks are built: their initial weights come from torch's global generator
        pyro.set_rng_seed(config.train.seed)
        model, guide = self.build(config, tuple(train.event_shape))
        trainer = make_trainer(config, model, guide, self.objective(config), run, patience=config.train.patience)
        if not resume:
            run.save_config(config)
        history = fit_with_trainer(trainer, train, splits.get("valid"), run, resume)
        return {**epochs_record(history, config.train.epochs), "likelihood": f"{likelihood} ({how})"}

    def evaluate(self, config, run, options) -> VAEScores:
        from pyro_gen.analysis import write_figures

        device = options.device or config.train.device
        model, guide, splits, checkpoint = self.load(config, run, device)
        k = options.nll_samples or config.eval.nll_samples
        test = splits["test"]
        x = fixed_test_data(test, config.data.seed)
        scores, khat, khat_estimator = importance_scores(model, guide, x, config, k)
        training = run.training()
        record = VAEScores(
            test_nll=scores["nll"],
            nll_samples=k,
            test_elbo=scores["elbo"],
            test_kl=scores["kl"],
            test_reconstruction=scores["reconstruction"],
            active_units=scores["active_units"],
            **khat,
            epochs=training.get("epochs"),
            seconds_per_epoch=training.get("seconds_per_epoch"),
            parameters=count_parameters(model, guide),
            guide=config.guide.name,
            objective=config.objective.name,
            likelihood=training.get("likelihood", config.model.likelihood),
            checkpoint=checkpoint,
            protocol={
                "train": splits["train"].protocol(),
                "test": test.protocol(),
                "test_binarization_seed": config.data.seed if test.binarization == "dynamic" else None,
                "nll_estimator": f"importance sampling, K={k} draws from the guide, chunk {config.eval.chunk_size}",
                "khat_estimator": khat_estimator,
                "checkpoint": checkpoint,
                "seed": config.train.seed,
            },
        )
        if not math.isfinite(scores["nll"]):
            from pyro_gen.errors import TrainingDivergedError

            raise TrainingDivergedError(
                f"the test NLL of {run.path / checkpoint} is {scores['nll']}: the model gives the test data no finite density; "
                "train the run again with a lower train.lr or train.clip_norm"
            )
        run.write_scores(record)
        if options.figures if options.figures is not None else config.eval.images:
            write_figures(model, guide, x[:64], run.path, seed=config.train.seed)
        return record

    def sample(self, config, run, num, out, seed) -> list[Path]:
        return [self.write_image_samples(config, run, num or 64, out, seed)]

    def sample_images(self, config, run, num, seed):
        from pyro_gen.analysis.plots import picture_kind, sample_images

        model, _, _, _ = self.load(config, run)
        if len(model.data_shape) != 3:
            raise ConfigError(f"sample grids need image data (C, H, W); this model's data have shape {tuple(model.data_shape)}")
        with seeded(seed):
            return sample_images(model, num), f"draws from the model: {picture_kind(model)} at z ~ p(z)"

    def analyze(self, config, run, options) -> list[Path]:
        """The local posteriors ``q(z | x_n)`` of ``points`` test points (a seeded random draw) as InferenceData in
        ``posterior_local.nc`` with their ``summary.csv``; their PSIS k-hat (``khat.csv``, ``khat_hist.png``); and
        ``pair_local.png``, a pair plot of the first latent dims at the point with the largest k-hat."""
        from pyro_gen.analysis import from_local_posterior, report
        from pyro_gen.analysis.psis import MIN_SAMPLES, psis_khat
        from pyro_gen.evaluation.likelihood import log_weights

        model, guide, splits, _ = self.load(config, run)
        x = fixed_test_data(splits["test"], config.data.seed)
        seed, draws = options.seed, options.draws
        index = np.sort(np.random.default_rng(seed).choice(len(x), size=min(options.points or ANALYZE_POINTS, len(x)), replace=False))
        chosen = x[torch.as_tensor(index)]
        pyro.set_rng_seed(seed)
        idata = from_local_posterior(guide, chosen, num_draws=draws, datapoints=index)
        paths = [report.write_netcdf(idata, run.path / "posterior_local.nc")]
        report.write_summary(idata, run.path / "summary.csv")
        paths.append(run.path / "summary.csv")

        k = options.khat_samples or max(config.eval.khat_samples or config.eval.nll_samples, MIN_SAMPLES)
        lw = log_weights(model, guide, chosen, num_samples=k, chunk_size=config.eval.chunk_size, seed=seed)
        khat = psis_khat(lw)
        log_px = lw.double().logsumexp(0) - math.log(k)
        paths.append(report.write_khat_table(index, khat.numpy(), log_px.numpy(), run.path / "khat.csv"))
        paths.append(report.khat_histogram(khat.numpy(), run.path / "khat_hist.png", k, title=f"guide {config.guide.name}:"))

        # the pair plot: the first latent dims of the local site at the point whose weights are worst
        site = next(iter(idata.posterior.data_vars))
        dims = idata.posterior[site].dims[3:]
        finite_khat = torch.where(torch.isfinite(khat), khat, torch.full_like(khat, -math.inf))
        worst = int(index[int(finite_khat.argmax())])
        coords = {"data": [worst], **{d: list(range(min(8, idata.posterior.sizes[d]))) if i == 0 else [0] for i, d in enumerate(dims)}}
        title = f"q({site} | x) of test point {worst}, the largest k-hat ({float(khat.max()):.2f}) of the {len(index)} points"
        paths.append(report.pair_plot(idata, run.path / "pair_local.png", var_names=[site], coords=coords, title=title))
        return paths

    # -- compare --------------------------------------------------------------------------------
    def compare_row(self, scores) -> dict:
        return {
            "guide": scores["guide"],
            "test_nll": scores["test_nll"],
            "test_elbo": scores["test_elbo"],
            "kl": scores["test_kl"],
            "active_units": scores["active_units"],
            "seconds_per_epoch": scores["seconds_per_epoch"],
            "parameters": scores["parameters"],
            "nll_samples": scores["nll_samples"],
            "epochs": scores["epochs"],
            "khat_mean": scores["khat_mean"],
            "khat_gt_0.7": scores["khat_share_above_0.7"],
        }

    def density_row(self, config, scores) -> dict:
        nll = scores["test_nll"]
        bits = None
        from pyro_gen.data import dataset_info

        info = dataset_info(config.data.name, config.data.binarize)
        if info.image and nll is not None:
            bits = nll / (math.prod(info.data_shape) * math.log(2))
        return {"test_nll": nll, "nll_method": f"importance sampling, K={scores['nll_samples']}", "bits_per_dim": bits}

    def compare_caption(self, config) -> str:
        d, m, o, t = config.data, config.model, config.objective, config.train
        return (
            f"Data: {d.name} (train {d.train_size or 'all'}, test {d.test_size or 'all'}, subset seed {d.seed}); "
            f"model: vae latent {m.latent_dim}, hidden {m.hidden}, {m.net}, {m.likelihood or 'likelihood from the dataset'}; "
            f"objective {o.name}; {t.epochs} epochs max, batch {t.batch_size}, lr {t.lr}, seed {t.seed}; test NLL by importance "
            f"sampling with K={config.eval.nll_samples}. Nats per datapoint. khat_mean: mean PSIS k-hat of the test points' "
            "importance weights; khat_gt_0.7: share of test points with k-hat > 0.7, where importance sampling from the "
            "guide is unreliable (empty: too few draws for a tail fit)."
        )


def importance_scores(model, guide, x: torch.Tensor, config, k: int) -> tuple[dict, dict, str]:
    """Test scores from K importance draws per point, and the guide's per-point PSIS k-hat summarized.

    By default k-hat is fitted to the very draws of the NLL estimate, block by block as the
    evaluator makes them (its ``weights_fn``), so the expensive draws are made once and at most
    ``max(chunk_size, K)`` log-weights are held at a time. ``eval.khat_samples`` asks for a second
    pass with another number of draws (or 0: none).
    """
    from pyro_gen.analysis.psis import MIN_SAMPLES, KhatResult, guide_khat, psis_khat
    from pyro_gen.evaluation import log_likelihood

    e, seed = config.eval, config.train.seed
    khat_k = k if e.khat_samples is None else e.khat_samples
    same_draws = khat_k == k and k >= MIN_SAMPLES
    khat = torch.full((len(x),), math.nan, dtype=torch.float64) if same_draws else None

    def fit_tails(data, lw):
        khat[data] = psis_khat(lw)

    result = log_likelihood(
        model, guide, x, k, e.chunk_size, seed=seed, progress=config.train.progress, weights_fn=fit_tails if same_draws else None
    )
    if same_draws:
        estimator = f"PSIS k-hat of each test point's K={k} importance log-weights (the test NLL's own draws)"
    elif khat_k == 0:
        estimator = "not computed (eval.khat_samples: 0)"
    elif khat_k == k:
        estimator = f"not computed: K={k} draws are too few for a tail fit (at least {MIN_SAMPLES}); set eval.khat_samples"
    else:
        khat = guide_khat(model, guide, x, khat_k, e.chunk_size, seed=seed).khat
        estimator = f"PSIS k-hat of each test point's {khat_k} importance log-weights, a second pass of draws (eval.khat_samples)"
    summary = KhatResult(khat, khat_k).summary() if khat is not None else {}
    khat_metrics = {
        "khat_mean": finite(summary.get("khat_mean")),
        "khat_max": finite(summary.get("khat_max")),
        "khat_share_above": summary.get("khat_share_above_0.7"),
        "khat_samples": khat_k if khat is not None else None,
    }
    return result.summary(), khat_metrics, estimator
