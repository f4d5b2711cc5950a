"""The Gaussian-mixture family (``model.kind: gmm``): assignments summed out, globals fitted or sampled.

``train.method: svi`` fits the globals with the one trainer (an autoguide ``delta`` (MAP) or
``normal`` over them, Pyro's ``TraceEnum_ELBO`` summing the assignments out, started at k-means);
``train.method: nuts`` samples their posterior with NUTS and saves it as ``posterior.nc``
(ArviZ InferenceData). Either way the test log-likelihood is exact (no importance sampling).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch

from pyro_gen.config import TrainConfig, setting, size
from pyro_gen.errors import ConfigError, RunDirError
from pyro_gen.families.base import Family, Scores, epochs_record, finite, fit_with_trainer, make_trainer, restore
from pyro_gen.run.data import count_parameters


@dataclass
class GMMModelConfig:
    """``model`` of a Gaussian mixture: ``components`` components with ``diag`` or ``full`` covariances."""

    kind: str = "gmm"
    components: int = size(3, high=10_000)
    covariance: str = setting("diag", choices=("diag", "full"))


@dataclass
class GMMGuideConfig:
    """An autoguide over the mixture's global sites: ``delta`` (MAP point estimate) or ``normal`` (mean-field Gaussian)."""

    name: str = setting("normal", choices=("delta", "normal"))


@dataclass
class EnumELBOConfig:
    """Pyro's ``TraceEnum_ELBO``, which sums the assignments out (``num_particles`` draws of the globals)."""

    name: str = setting("elbo", choices=("elbo",))
    num_particles: int = size(1, high=100_000)


@dataclass
class GMMTrainConfig(TrainConfig):
    """``method: svi`` (gradient steps on the objective) or ``nuts`` (MCMC): ``num_samples`` draws per chain after
    ``warmup`` steps, ``chains`` chains (sequential when the machine has fewer free CPUs), ``jit`` compiles the potential."""

    method: str = setting("svi", choices=("svi", "nuts"))
    num_samples: int = size(1000)
    warmup: int = setting(1000, low=0, high=10_000_000)
    chains: int = size(1, high=1000)
    jit: bool = True


@dataclass
class GMMScores(Scores):
    """``metrics.json`` of a Gaussian-mixture run (``test_lpd`` ... ``ess_bulk_min`` for NUTS only)."""

    test_log_likelihood: float | None = None
    train_log_likelihood: float | None = None
    test_lpd: float | None = field(default=None, metadata={"group": "nuts"})
    divergences: int | None = field(default=None, metadata={"group": "nuts"})
    r_hat_max: float | None = field(default=None, metadata={"group": "nuts"})
    ess_bulk_min: float | None = field(default=None, metadata={"group": "nuts"})
    seconds: float | None = field(default=None, metadata={"group": "nuts"})
    epochs: int | None = field(default=None, metadata={"group": "svi"})
    seconds_per_epoch: float | None = field(default=None, metadata={"group": "svi"})
    parameters: int | None = field(default=None, metadata={"group": "svi"})
    guide: str | None = None
    objective: str | None = None
    checkpoint: str | None = field(default=None, metadata={"group": "checkpoint"})
    model: str | None = None
    protocol: dict = field(default_factory=dict)

    def summary(self) -> str:
        at = "the posterior mean" if self.protocol.get("method") == "nuts" else f"the {self.guide} guide's estimate"
        line = f"test log-likelihood {self.test_log_likelihood:.4f} nats per point at {at} (train {self.train_log_likelihood:.4f})"
        if self.test_lpd is not None:
            r_hat = "n/a" if self.r_hat_max is None else f"{self.r_hat_max:.3f}"
            line += f", posterior predictive {self.test_lpd:.4f}; {self.divergences} divergences, max R-hat {r_hat}"
        return line


def posterior_draws(idata, names) -> dict:
    """The posterior draws of the named sites as tensors ``(chains * draws, *site_shape)``."""
    out = {}
    for name in names:
        values = torch.as_tensor(np.asarray(idata.posterior[name].values))
        out[name] = values.reshape((-1,) + tuple(values.shape[2:]))
    return out


def read_posterior(run):
    import arviz

    path = run.path / run.POSTERIOR
    if not path.is_file():
        raise RunDirError(f"{run.path} has no {run.POSTERIOR}: its NUTS run did not finish; train it again")
    try:
        return arviz.from_netcdf(str(path))
    except Exception as e:  # netCDF / HDF5 readers raise many types on a damaged file
        raise RunDirError(f"{path} is damaged ({type(e).__name__}); train the NUTS run again into a new run directory") from None


class GMMFamily(Family):
    name = "gmm"
    description = "a Gaussian mixture"
    sections = {"model": GMMModelConfig, "guide": GMMGuideConfig, "objective": EnumELBOConfig, "train": GMMTrainConfig}
    scores = GMMScores
    unsupported = {
        "sample": "see its clusters.png, or the posterior predictive check (ppc.png) of 'pyro-gen analyze'",
    }
    compare_columns = ("guide", "test_log_likelihood", "train_log_likelihood", "parameters", "epochs", "seconds_per_epoch")

    bf16_refusal = "a mixture has no networks to run in bfloat16"
    example = {
        "data": {"name": "iris"},
        "model": {"kind": "gmm", "components": 2},
        "guide": "normal",
        "train": {"epochs": 3, "batch_size": 120, "lr": 0.05, "progress": False},
    }

    def label(self, config) -> str:
        return f"gmm-{config.train.method if config.train.method == 'nuts' else config.guide.name}"

    def check_data(self, config, splits) -> None:
        shape = tuple(splits["train"].event_shape)
        if len(shape) != 1:
            raise ConfigError(
                f"model.kind: gmm needs vector data (points of shape (D,)); {config.data.name!r} has points of shape "
                f"{shape}; use a table or 2-D data such as iris, wine or gmm2d"
            )
        n = len(splits["train"])
        if config.train.method == "svi" and config.train.batch_size > n:
            raise ConfigError(
                f"train.batch_size {config.train.batch_size} is larger than the {n} training points: lower train.batch_size "
                f"(train.batch_size={n} steps on all of them at once) or raise data.train_size"
            )
        if config.model.components > n:
            raise ConfigError(f"model.components {config.model.components} is more than the {n} training points: lower model.components")

    def build(self, config, data_shape):
        from pyro_gen.models import gmm

        m = config.model
        # NUTS orders the components by their means' first coordinate (label switching); SVI needs no order
        return gmm(m.components, data_shape[0], m.covariance, ordered=config.train.method == "nuts")

    def _guide(self, config, model, x):
        from pyro_gen.infer.gmm_fit import global_guide

        return global_guide(model, x, config.guide.name, init="kmeans", seed=config.train.seed)

    def load(self, config, run, device="cpu"):
        """``(model, guide, splits, checkpoint name)`` of an SVI run with its best weights."""

        if config.train.method == "nuts":
            raise RunDirError(
                f"{run.path} is a NUTS run: its posterior is {run.path / run.POSTERIOR} (arviz.from_netcdf), not a checkpoint"
            )
        splits = self.load_data(config)
        ckpt, name = run.load_checkpoint(run.BEST, device)
        model = self.build(config, tuple(splits["train"].event_shape)).to(device)
        guide = self._guide(config, model, splits["train"].x).to(device)
        restore(model, guide, ckpt, run.path / name, splits["train"].x[:2].to(device))
        return model, guide, splits, name

    # -- fit ------------------------------------------------------------------------------------
    def fit(self, config, splits, run, resume) -> dict:
        if config.train.method == "nuts":
            if resume and (run.path / run.POSTERIOR).exists():
                raise ConfigError(
                    f"{run.path} is a NUTS run, which cannot be resumed (MCMC keeps no checkpoints); train it again into a new run directory"
                )
            return self._fit_nuts(config, splits, run)
        from pyro_gen.infer.gmm_fit import enum_objective

        train = splits["train"]
        pyro.set_rng_seed(config.train.seed)
        model = self.build(config, tuple(train.event_shape))
        guide = self._guide(config, model, train.x)
        trainer = make_trainer(config, model, guide, enum_objective(model, config.objective.num_particles), run, config.train.patience)
        if not resume:
            run.save_config(config)
        return epochs_record(fit_with_trainer(trainer, train, splits.get("valid"), run, resume), config.train.epochs)

    def _fit_nuts(self, config, splits, run) -> dict:
        from pyro_gen.analysis.arviz import from_mcmc
        from pyro_gen.analysis.report import write_netcdf
        from pyro_gen.infer.gmm_fit import fit_nuts

        t = config.train
        x = splits["train"].x.to(t.device)
        model = self.build(config, tuple(splits["train"].event_shape)).to(t.device)
        run.save_config(config)
        start = time.perf_counter()
        with warnings.catch_warnings():
            # the JIT's tracer and deprecation warnings, and Pyro's note that chains run one after another when CPUs are few
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*torch.jit.trace.* is deprecated")
            warnings.filterwarnings("ignore", message=".*Chains will be drawn sequentially")
            mcmc = fit_nuts(
                model, x, t.num_samples, t.warmup, t.chains, seed=t.seed, progress=t.progress, jit_compile=t.jit, ignore_jit_warnings=True
            )
        seconds = time.perf_counter() - start
        pyro.set_rng_seed(t.seed)  # the posterior predictive draws
        idata = from_mcmc(mcmc, posterior_predictive=True)
        write_netcdf(idata, run.path / run.POSTERIOR)
        return {"method": "nuts", "seconds": seconds, "num_samples": t.num_samples, "warmup": t.warmup, "chains": t.chains}

    # -- evaluate -------------------------------------------------------------------------------
    def evaluate(self, config, run, options) -> GMMScores:
        import arviz

        from pyro_gen.analysis.plots import mixture_figure
        from pyro_gen.analysis.report import quiet

        if options.nll_samples is not None:
            raise ConfigError(
                "--nll-samples sets the importance samples of a VAE's test NLL; a Gaussian mixture's test log-likelihood "
                "is exact (its assignments are summed out): drop --nll-samples"
            )
        t = config.train
        training = run.training()
        if t.method == "nuts":
            splits = self.load_data(config)
            model = self.build(config, tuple(splits["train"].event_shape))
            idata = read_posterior(run)
            draws = posterior_draws(idata, model.global_sites)
            params = {name: v.mean(0) for name, v in draws.items()}
            x_test = splits["test"].x
            log_p = torch.cat(
                [model.log_density(x_test, {n: v[i : i + 500] for n, v in draws.items()}) for i in range(0, len(draws["weights"]), 500)]
            )
            with quiet():
                r_hat = arviz.rhat(idata, var_names=model.global_sites).to_array().values
                ess = arviz.ess(idata, var_names=model.global_sites, method="bulk").to_array().values
            fit = {
                # the Bayesian predictive density: log (1/S) sum_s p(x_n | theta_s)
                "test_lpd": (log_p.logsumexp(0) - math.log(len(log_p))).mean().item(),
                "divergences": int(np.asarray(idata.sample_stats["diverging"].values).sum()),
                "r_hat_max": finite(float(np.nanmax(r_hat))),
                "ess_bulk_min": finite(float(np.nanmin(ess))),
                "seconds": training.get("seconds"),
                "guide": "nuts",
                "objective": "NUTS (assignments enumerated)",
            }
            estimator = (
                "test_log_likelihood: mean of log p(x_n | posterior mean of each global site); test_lpd: mean of "
                f"log (1/S) sum_s p(x_n | theta_s) over the S={len(log_p)} posterior draws; assignments summed out"
            )
            extra = {"nuts": {"num_samples": t.num_samples, "warmup": t.warmup, "chains": t.chains}}
        else:
            from pyro_gen.infer.gmm_fit import point_estimate

            model, guide, splits, checkpoint = self.load(config, run)
            params = point_estimate(guide, splits["train"].x)
            fit = {
                "epochs": training.get("epochs"),
                "seconds_per_epoch": training.get("seconds_per_epoch"),
                "parameters": count_parameters(guide),
                "guide": config.guide.name,
                "objective": "TraceEnum_ELBO (assignments enumerated)",
                "checkpoint": checkpoint,
            }
            estimator = "mean of log p(x_n | theta_hat), theta_hat the guide's median of each global site (MAP for guide 'delta'); assignments summed out"
            extra = {"checkpoint": checkpoint}
        x_train, x_test = splits["train"].x, splits["test"].x
        record = GMMScores(
            test_log_likelihood=model.log_density(x_test, params).mean().item(),
            train_log_likelihood=model.log_density(x_train, params).mean().item(),
            **fit,
            model=f"gmm: {model.num_components} components, {model.covariance} covariances, dim {model.dim}",
            protocol={
                "train": splits["train"].protocol(),
                "test": splits["test"].protocol(),
                "method": t.method,
                "estimator": estimator,
                **extra,
                "seed": t.seed,
            },
        )
        run.write_scores(record)
        if options.figures if options.figures is not None else config.eval.images:
            mixture_figure(model, params, x_test, run.path / "clusters.png", title=f"{config.data.name} test split, {t.method}")
        return record

    # -- analyze --------------------------------------------------------------------------------
    def analyze(self, config, run, options) -> list:
        """``summary.csv`` (mean, sd, 94% HDI, MCSE, bulk and tail ESS, R-hat), ``trace.png``, ``rank.png``,
        ``pair.png``, ``ppc.png``, and PSIS-LOO and WAIC with the per-datapoint Pareto k in ``loo.json``
        (``loo_khat.png``), of a NUTS posterior or of ``draws`` draws of a ``guide: normal`` fit (saved as ``posterior.nc``)."""
        from pyro_gen.analysis import report

        if options.points is not None:
            raise ConfigError(
                "--points asks for the local posteriors q(z | x_n) of test points, but a Gaussian mixture's guide has no local "
                "latent sites (its assignments are summed out, its parameters are global): drop --points"
            )
        if config.train.method == "nuts":
            splits = self.load_data(config)
            model = self.build(config, tuple(splits["train"].event_shape))
            idata = read_posterior(run)
            paths = []
        else:
            if config.guide.name == "delta":
                raise ConfigError(
                    f"{run.path} holds a MAP point estimate (guide.name: delta): there are no posterior draws to summarize; "
                    "fit the mixture with guide.name=normal (a variational posterior) or train.method=nuts"
                )
            from pyro_gen.analysis import from_guide

            model, guide, splits, _ = self.load(config, run)
            pyro.set_rng_seed(options.seed)
            idata = from_guide(model, guide, splits["train"].x, num_draws=options.draws, posterior_predictive=True)
            paths = [report.write_netcdf(idata, run.path / run.POSTERIOR)]
        report.write_summary(idata, run.path / "summary.csv", var_names=model.global_sites)
        paths.append(run.path / "summary.csv")
        # the pair and rank plots have one panel per (pair of) entries: the first coordinate keeps them legible
        first = {"coordinate": [0]}
        paths += report.posterior_plots(
            idata, run.path, var_names=["weights", "locs", "scales"], pair_names=["weights", "locs"], pair_coords=first, rank_coords=first
        )
        report.write_loo(idata, run.path / "loo.json", khat_plot=run.path / "loo_khat.png")
        return paths + [run.path / "loo.json", run.path / "loo_khat.png"]

    def density_row(self, config, scores) -> dict:
        if scores.get("test_lpd") is not None:  # NUTS: the posterior predictive density of each test point
            return {"test_nll": -scores["test_lpd"], "nll_method": "exact, posterior predictive (NUTS draws)", "bits_per_dim": None}
        return {"test_nll": -scores["test_log_likelihood"], "nll_method": "exact, at the fitted point estimate", "bits_per_dim": None}

    def compare_caption(self, config) -> str:
        d, m, t = config.data, config.model, config.train
        return (
            f"Data: {d.name} (train {d.train_size or 'all'}, test {d.test_size or 'all'}, subset seed {d.seed}); model: gmm, "
            f"{m.components} components, {m.covariance} covariances; TraceEnum_ELBO, {t.epochs} epochs max, batch {t.batch_size}, "
            f"lr {t.lr}, seed {t.seed}. Exact log-likelihood per point at the guide's estimate (nats)."
        )
