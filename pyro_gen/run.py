"""Run directories: train, evaluate, sample, compare and analyze from a :class:`~pyro_gen.config.RunConfig`.

A run directory holds everything needed to re-make its results::

    config.yaml      the resolved config (read back with yaml.safe_load)
    metrics.jsonl    one JSON line per epoch                          (train.method: svi)
    last.pt, best.pt checkpoints (torch.load(..., weights_only=True))   (train.method: svi)
    posterior.nc     the NUTS posterior as ArviZ InferenceData          (train.method: nuts)
    training.json    epochs and time (or the NUTS settings and time)
    metrics.json     test scores with their protocol (K, split, binarization, sizes, seed)
    samples.png, reconstructions.png, interpolation.png   (VAE)  |  clusters.png (Gaussian mixture)
    samples.png (a scatter over the data, or an image grid), interpolation.png (images)   (GAN)

and, after ``pyro-gen analyze``, ``summary.csv`` and the diagnostic plots (see :func:`analyze_run`).

Three model kinds: ``vae`` (amortized guides, fitted by the trainer, scored by importance
sampling), ``gmm`` (a Gaussian mixture whose assignments are summed out, fitted by the
same trainer with ``TraceEnum_ELBO`` or sampled by NUTS, scored exactly) and ``gan`` (a
generator program and a critic, the two players of an adversarial objective fitted by the same
trainer, scored by their samples: mode coverage on the 2-D toys, Frechet distance, KID and
precision / recall elsewhere). This module is the only place that connects dataset names to
models and guides; the trainer and evaluator stay generic.
"""

import copy
import csv
import json
import math
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_gen.config import GuideConfig, ObjectiveConfig, RunConfig, load_config, save_config
from pyro_gen.errors import ConfigError, RunDirError
from pyro_gen.io import atomic_path
from pyro_gen.rng import seeded

CONFIG_FILE, METRICS_FILE, TRAINING_FILE, POSTERIOR_FILE = "config.yaml", "metrics.json", "training.json", "posterior.nc"
MODEL_KINDS = ("vae", "gmm", "gan")
METHODS = ("svi", "nuts")


# -- checks ---------------------------------------------------------------------------
def check_config(config: RunConfig) -> None:
    """Refuse combinations of settings that cannot work, before any data is loaded or any file written."""
    from pyro_gen.analysis.psis import MIN_SAMPLES

    m, t = config.model, config.train
    if m.kind not in MODEL_KINDS:
        raise ConfigError(
            f"unknown model.kind {m.kind!r}; choose 'vae' (a deep latent-variable model), 'gmm' (a Gaussian mixture) "
            "or 'gan' (a generator and a critic); declare other models in Python"
        )
    if t.method not in METHODS:
        raise ConfigError(
            f"unknown train.method {t.method!r}; choose 'svi' (gradient steps on the objective) or 'nuts' (MCMC, model.kind: gmm)"
        )
    from pyro_gen.infer.trainer import LR_SCHEDULES

    if t.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(
            f"unknown train.lr_schedule {t.lr_schedule!r}; choose 'constant' or 'linear' (every rate falls linearly to 0 over the run)"
        )
    if t.method == "nuts" and m.kind != "gmm":
        what = "a GAN's generator and critic are" if m.kind == "gan" else "a VAE's networks are"
        raise ConfigError(
            f"train.method: nuts samples the global parameters of a Gaussian mixture (model.kind: gmm); {what} fitted with train.method: svi"
        )
    k = config.eval.khat_samples
    if k is not None and k != 0 and k < MIN_SAMPLES:
        raise ConfigError(
            f"eval.khat_samples must be null (k-hat from the test NLL's own draws), 0 (no k-hat) or at least {MIN_SAMPLES} "
            f"(the fewest draws whose tail can be fitted); got {k}"
        )
    if m.kind == "gmm":
        _check_gmm_config(config)
    if m.kind == "gan":
        _check_gan_config(config)
    else:
        # a GAN's options would do nothing in another model's run: refuse them rather than ignore them
        for section, keys in (("model", GAN_MODEL_KEYS), ("objective", GAN_OBJECTIVE_KEYS)):
            for key in _changed(getattr(config, section), keys):
                raise ConfigError(
                    f"{section}.{key} is an option of a GAN (model.kind: gan); a model.kind: {m.kind} run does not use it: "
                    f"remove {section}.{key}"
                )


def _changed(section, keys) -> list[str]:
    """The ``keys`` of a config section whose values differ from the section's defaults."""
    defaults = type(section)()
    return [key for key in keys if getattr(section, key) != getattr(defaults, key)]


def _check_gmm_config(config: RunConfig) -> None:
    from pyro_gen.infer.gmm_fit import GLOBAL_GUIDES
    from pyro_gen.models.gmm import COVARIANCES

    m, t, o = config.model, config.train, config.objective
    if m.covariance not in COVARIANCES:
        raise ConfigError(f"unknown model.covariance {m.covariance!r}; choose 'diag' or 'full'")
    if m.components < 1:
        raise ConfigError(f"model.components must be at least 1, got {m.components}")
    if t.method == "nuts":
        if t.num_samples < 1 or t.warmup < 0 or t.chains < 1:
            raise ConfigError(
                f"NUTS needs train.num_samples >= 1, train.warmup >= 0 and train.chains >= 1; got {t.num_samples}, {t.warmup}, {t.chains}"
            )
        return
    if config.guide.name not in GLOBAL_GUIDES:
        raise ConfigError(
            f"guide.name {config.guide.name!r} is not a guide of a Gaussian mixture (model.kind: gmm): choose 'delta' "
            "(MAP point estimate) or 'normal' (mean-field Gaussian), autoguides over its global sites, or train.method: nuts"
        )
    if o.name != "elbo":
        raise ConfigError(
            f"objective.name {o.name!r}: a Gaussian mixture is fitted with Pyro's TraceEnum_ELBO, which sums its "
            "assignments out; set objective.name: elbo"
        )
    defaults = ObjectiveConfig()
    for key in ("beta", "warmup_epochs", "free_bits"):
        if getattr(o, key) != getattr(defaults, key):
            raise ConfigError(
                f"objective.{key} is an option of the VAE's ELBO; a Gaussian mixture's TraceEnum_ELBO takes only "
                f"objective.num_particles; remove objective.{key}"
            )


def read_run_config(run_dir) -> RunConfig:
    """The config of a run directory; :class:`RunDirError` when ``run_dir`` is not one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a directory; give the run directory written by 'pyro-gen train'")
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"{run_dir} is not a pyro_gen run directory: it has no {CONFIG_FILE} (written by 'pyro-gen train')")
    try:
        return load_config(run_dir / CONFIG_FILE)
    except ConfigError as e:
        raise RunDirError(f"{run_dir} is not a pyro_gen run directory: its {CONFIG_FILE} is not a pyro_gen config ({e})") from None


# -- building blocks -------------------------------------------------------------
def load_splits(cfg, wanted=("train", "valid", "test")) -> dict:
    """Train / valid / test :class:`~pyro_gen.data.ArrayData` for a :class:`DataConfig` (seeded subsets).

    ``wanted``: the splits to load (a GAN, selected by no validation score, skips ``valid``).
    """
    from pyro_gen.data import dataset_splits, load_dataset

    splits = {}
    sizes = {"train": cfg.train_size, "valid": cfg.valid_size, "test": cfg.test_size}
    available = dataset_splits(cfg.name)
    for split in wanted:
        if split not in available:
            if sizes[split] is not None:
                raise ConfigError(
                    f"data.{split}_size is set but {cfg.name!r} has no {split} split (its splits: {', '.join(available)}); remove data.{split}_size"
                )
            continue
        splits[split] = load_dataset(cfg.name, split, data_dir=cfg.data_dir, binarize=cfg.binarize, n=sizes[split], seed=cfg.seed)
    return splits


def build_model(config: RunConfig, data_shape):
    """The configured model for data of ``data_shape`` (one datapoint's shape).

    A Gaussian mixture fitted by NUTS orders its components by the first coordinate of their
    means (label switching, see :mod:`pyro_gen.models.gmm`); fitted by SVI it needs no order.
    """
    from pyro_gen.models import gmm, vae

    m = config.model
    if m.kind == "gmm":
        if len(data_shape) != 1:
            raise ConfigError(
                f"model.kind: gmm needs vector data (points of shape (D,)); {config.data.name!r} has points of shape "
                f"{tuple(data_shape)}; use a table or 2-D data such as iris, wine or gmm2d"
            )
        return gmm(m.components, data_shape[0], m.covariance, ordered=config.train.method == "nuts")
    if m.kind == "gan":
        # the generator's class count comes from the training labels, and it needs its critic
        raise ConfigError("a GAN's generator is built with its critic from the training data: use build_gan(config, train_data)")
    if m.kind != "vae":
        raise ConfigError(f"unknown model.kind {m.kind!r}; choose 'vae', 'gmm' or 'gan' (declare other models in Python)")
    return vae(data_shape, m.latent_dim, m.hidden, m.net, m.likelihood, m.likelihood_scale)


def build_guide(config: RunConfig, model, train_x: torch.Tensor):
    """The configured guide; a Gaussian mixture's starts at the k-means fit of ``train_x``."""
    if config.model.kind == "gmm":
        from pyro_gen.infer.gmm_fit import global_guide

        return global_guide(model, train_x, config.guide.name, init="kmeans", seed=config.train.seed)
    from pyro_gen.guides import make_guide

    hidden = config.guide.hidden or config.model.hidden
    return make_guide(config.guide.name, model, hidden=hidden, net=config.model.net, global_guide=config.guide.global_guide)


def build_objective(config: RunConfig, model):
    """The configured objective; a Gaussian mixture's is Pyro's ``TraceEnum_ELBO`` (assignments summed out)."""
    cfg = config.objective
    if config.model.kind == "gmm":
        from pyro_gen.infer.gmm_fit import enum_objective

        return enum_objective(model, cfg.num_particles)
    from pyro_gen.infer import make_objective

    options = {"num_particles": cfg.num_particles}
    if cfg.name == "elbo":
        options.update(beta=cfg.beta, warmup_epochs=cfg.warmup_epochs, free_bits=cfg.free_bits, analytic_kl=cfg.analytic_kl)
    return make_objective(cfg.name, **options)


def count_parameters(*modules) -> int:
    seen = {id(p): p.numel() for m in modules for p in m.parameters()}
    return sum(seen.values())


def fixed_test_data(test, seed: int, x: torch.Tensor | None = None) -> torch.Tensor:
    """The test tensor (or images ``x`` of the same dataset); dynamically binarized data are binarized once, with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return test.transform_batch(test.x if x is None else x, generator=g)


# -- train / evaluate / sample ---------------------------------------------------------------
def _trainer(config: RunConfig, model, guide, objective, run_dir: Path, patience: int | None = None):
    """The one Trainer, set from the config's ``train`` section."""
    from pyro_gen.infer.trainer import Trainer

    t = config.train
    return Trainer(
        model, guide, objective, lr=t.lr, batch_size=t.batch_size, epochs=t.epochs, device=t.device, seed=t.seed,
        run_dir=run_dir, patience=patience, progress=t.progress, clip_norm=t.clip_norm,
        lr_schedule=t.lr_schedule,
    )  # fmt: skip


def train(config: RunConfig, run_dir, resume: bool = False, device: str | None = None) -> dict:
    """Train the configured model and guide into ``run_dir``, evaluate on the test split, write figures.

    Returns the contents of ``metrics.json``.
    """

    run_dir = Path(run_dir)
    if resume and not (run_dir / CONFIG_FILE).exists():
        raise RunDirError(f"cannot resume: {run_dir} has no {CONFIG_FILE}")
    if resume:
        config = load_config(run_dir / CONFIG_FILE)
        if device is not None:
            # a run may continue on another device; everything else stays as the run was configured
            config.train.device = device
            save_config(config, run_dir / CONFIG_FILE)
    elif device is not None:
        config.train.device = device
    check_config(config)
    if config.train.method == "nuts":
        if resume:
            raise ConfigError(
                f"{run_dir} is a NUTS run, which cannot be resumed (MCMC keeps no checkpoints); train it again into a new run directory"
            )
        return _train_nuts(config, run_dir)
    if config.model.kind == "gan":
        return _train_gan(config, run_dir, resume)
    splits = load_splits(config.data)
    train_data = splits["train"]
    # seed before the networks are built: their initial weights come from torch's global
    # generator, which a fresh process seeds at random (Trainer.fit seeds only later)
    pyro.set_rng_seed(config.train.seed)
    model = build_model(config, tuple(train_data.event_shape))
    guide = build_guide(config, model, train_data.x)
    t = config.train
    trainer = _trainer(config, model, guide, build_objective(config, model), run_dir, patience=t.patience)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        save_config(config, run_dir / CONFIG_FILE)
    history = trainer.fit(train_data, splits.get("valid"), resume=resume)
    training = {
        "epochs": len(history),
        "seconds_per_epoch": sum(r["seconds"] for r in history) / max(len(history), 1),
        "final_train_loss": history[-1]["train_loss"] if history else math.nan,
    }
    _write_json(run_dir / TRAINING_FILE, training)
    return evaluate_run(run_dir, device=t.device)


def _train_nuts(config: RunConfig, run_dir: Path) -> dict:
    """Sample a Gaussian mixture's posterior with NUTS; save it as ``posterior.nc`` (InferenceData) and evaluate."""
    from pyro_gen.analysis.arviz import from_mcmc
    from pyro_gen.analysis.report import write_netcdf
    from pyro_gen.infer.gmm_fit import fit_nuts

    t = config.train
    splits = load_splits(config.data)
    x = splits["train"].x.to(t.device)
    model = build_model(config, tuple(splits["train"].event_shape)).to(t.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / CONFIG_FILE)
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
    write_netcdf(idata, run_dir / POSTERIOR_FILE)
    _write_json(
        run_dir / TRAINING_FILE,
        {"method": "nuts", "seconds": seconds, "num_samples": t.num_samples, "warmup": t.warmup, "chains": t.chains},
    )
    return evaluate_run(run_dir)


def _write_json(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _finite(value):
    """A float for JSON, or None when it is NaN or infinite (JSON has no such numbers)."""
    return value if value is not None and math.isfinite(value) else None


def load_run(run_dir, device="cpu", checkpoint: str = "best.pt"):
    """Rebuild ``(config, model, guide, splits)`` of a run directory with its trained weights.

    A GAN run gives ``(config, generator, None, splits)``: the generator its samples come from (the
    moving average of its weights when ``objective.ema_decay`` is set) and no guide; its critic and
    both raw networks are in :func:`load_gan_run`.
    """
    from pyro_gen.infer.trainer import initialize, load_checkpoint

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if config.model.kind == "gan":
        run = load_gan_run(run_dir, device)
        return run.config, run.sampler, None, run.splits
    if config.train.method == "nuts":
        raise RunDirError(f"{run_dir} is a NUTS run: its posterior is {run_dir / POSTERIOR_FILE} (arviz.from_netcdf), not a checkpoint")
    path = run_dir / checkpoint
    if not path.exists():
        path = run_dir / "last.pt"
    ckpt = load_checkpoint(path, map_location=device)
    splits = load_splits(config.data)
    model = build_model(config, tuple(splits["train"].event_shape)).to(device)
    guide = build_guide(config, model, splits["train"].x).to(device)
    # a forward pass creates lazy (autoguide) parameters before the weights are loaded
    initialize(model, guide, fixed_test_data(splits["train"], 0)[:2].to(device))
    model.load_state_dict(ckpt["model"])
    guide.load_state_dict(ckpt["guide"])
    model.eval(), guide.eval()
    return config, model, guide, splits


def evaluate_run(run_dir, nll_samples: int | None = None, device=None, figures: bool | None = None) -> dict:
    """Score a run on its test split; write ``metrics.json`` (and figures).

    A VAE run: its best checkpoint's importance-sampled test NLL with K draws per point, and the
    PSIS k-hat of each test point's importance weights (by default from the same draws, see
    :class:`~pyro_gen.config.EvalConfig`). A Gaussian mixture run: its exact test log-likelihood.
    A GAN run: the quality of its samples (:func:`_evaluate_gan`).
    """
    from pyro_gen.analysis import write_figures

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if config.model.kind == "gan":
        if nll_samples is not None:
            raise ConfigError(
                "--nll-samples sets the importance samples of a VAE's test NLL; a GAN has no likelihood (it is scored by "
                "its samples): drop --nll-samples"
            )
        return _evaluate_gan(run_dir, config, device, figures)
    if config.model.kind == "gmm":
        if nll_samples is not None:
            raise ConfigError(
                "--nll-samples sets the importance samples of a VAE's test NLL; a Gaussian mixture's test log-likelihood "
                "is exact (its assignments are summed out): drop --nll-samples"
            )
        return _evaluate_gmm(run_dir, config, figures)
    device = device or config.train.device
    config, model, guide, splits = load_run(run_dir, device=device)
    k = nll_samples or config.eval.nll_samples
    test = splits["test"]
    x = fixed_test_data(test, config.data.seed)
    scores, khat, khat_estimator = _importance_scores(model, guide, x, config, k)
    training = _read_json(run_dir / TRAINING_FILE)
    metrics = {
        "test_nll": scores["nll"],
        "nll_samples": k,
        "test_elbo": scores["elbo"],
        "test_kl": scores["kl"],
        "test_reconstruction": scores["reconstruction"],
        "active_units": scores["active_units"],
        **khat,
        "epochs": training.get("epochs"),
        "seconds_per_epoch": training.get("seconds_per_epoch"),
        "parameters": count_parameters(model, guide),
        "guide": config.guide.name,
        "objective": config.objective.name,
        "protocol": {
            "train": splits["train"].protocol(),
            "test": test.protocol(),
            "test_binarization_seed": config.data.seed if test.binarization == "dynamic" else None,
            "nll_estimator": f"importance sampling, K={k} draws from the guide, chunk {config.eval.chunk_size}",
            "khat_estimator": khat_estimator,
            "seed": config.train.seed,
        },
    }
    _write_json(run_dir / METRICS_FILE, metrics)
    if figures if figures is not None else config.eval.images:
        write_figures(model, guide, x[:64], run_dir, seed=config.train.seed)
    return metrics


def _importance_scores(model, guide, x: torch.Tensor, config: RunConfig, k: int) -> tuple[dict, dict, str]:
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
        "khat_mean": _finite(summary.get("khat_mean")),
        "khat_max": _finite(summary.get("khat_max")),
        "khat_share_above_0.7": summary.get("khat_share_above_0.7"),
        "khat_samples": khat_k if khat is not None else None,
    }
    return result.summary(), khat_metrics, estimator


def _read_posterior(run_dir: Path):
    import arviz

    path = run_dir / POSTERIOR_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no {POSTERIOR_FILE}: its NUTS run did not finish; train it again")
    return arviz.from_netcdf(str(path))


def posterior_draws(idata, names) -> dict:
    """The posterior draws of the named sites as tensors ``(chains * draws, *site_shape)``."""
    out = {}
    for name in names:
        values = torch.as_tensor(np.asarray(idata.posterior[name].values))
        out[name] = values.reshape((-1,) + tuple(values.shape[2:]))
    return out


def _evaluate_gmm(run_dir: Path, config: RunConfig, figures: bool | None) -> dict:
    """A Gaussian mixture run's exact test log-likelihood per point (assignments summed out), and its diagnostics."""
    import arviz

    from pyro_gen.analysis.plots import mixture_figure
    from pyro_gen.analysis.report import quiet

    t = config.train
    training = _read_json(run_dir / TRAINING_FILE)
    if t.method == "nuts":
        splits = load_splits(config.data)
        model = build_model(config, tuple(splits["train"].event_shape))
        idata = _read_posterior(run_dir)
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
            "r_hat_max": _finite(float(np.nanmax(r_hat))),
            "ess_bulk_min": _finite(float(np.nanmin(ess))),
            "seconds": training.get("seconds"),
            "guide": "nuts",
            "objective": "NUTS (assignments enumerated)",
        }
        estimator = (
            "test_log_likelihood: mean of log p(x_n | posterior mean of each global site); test_lpd: mean of "
            f"log (1/S) sum_s p(x_n | theta_s) over the S={len(log_p)} posterior draws; assignments summed out"
        )
        sampler = {"num_samples": t.num_samples, "warmup": t.warmup, "chains": t.chains}
    else:
        from pyro_gen.infer.gmm_fit import point_estimate

        config, model, guide, splits = load_run(run_dir)
        params = point_estimate(guide, splits["train"].x)
        fit = {
            "epochs": training.get("epochs"),
            "seconds_per_epoch": training.get("seconds_per_epoch"),
            "parameters": count_parameters(guide),
            "guide": config.guide.name,
            "objective": "TraceEnum_ELBO (assignments enumerated)",
        }
        estimator = "mean of log p(x_n | theta_hat), theta_hat the guide's median of each global site (MAP for guide 'delta'); assignments summed out"
        sampler = None
    x_train, x_test = splits["train"].x, splits["test"].x
    metrics = {
        "test_log_likelihood": model.log_density(x_test, params).mean().item(),
        "train_log_likelihood": model.log_density(x_train, params).mean().item(),
        **fit,
        "model": f"gmm: {model.num_components} components, {model.covariance} covariances, dim {model.dim}",
        "protocol": {
            "train": splits["train"].protocol(),
            "test": splits["test"].protocol(),
            "method": t.method,
            "estimator": estimator,
            **({"nuts": sampler} if sampler else {}),
            "seed": t.seed,
        },
    }
    _write_json(run_dir / METRICS_FILE, metrics)
    if figures if figures is not None else config.eval.images:
        mixture_figure(model, params, x_test, run_dir / "clusters.png", title=f"{config.data.name} test split, {t.method}")
    return metrics


def sample_run(run_dir, num: int | None = None, out=None, seed: int = 0) -> list[Path]:
    """Write ``num`` samples from a run's model to ``out`` (default ``run_dir/samples.png``); returns the paths written.

    A VAE: a PNG grid of ``num`` (default 64) images. A GAN: a PNG grid for images; for vector data
    a scatter plot over the test split and the points themselves, ``(num, D)`` float32 in
    ``out`` with the suffix ``.npy`` (``numpy.load``); ``num`` defaults to 64 images or
    :data:`~pyro_gen.evaluation.sample_quality.NUM_SAMPLES` points.
    """
    from pyro_gen.analysis import save_image_grid
    from pyro_gen.analysis.plots import sample_images

    if num is not None and num < 1:
        raise ConfigError(f"--num must be a positive number of samples, got {num}")
    kind = read_run_config(run_dir).model.kind
    if kind == "gan":
        return _sample_gan(Path(run_dir), num, out, seed)
    num = num or 64
    if kind != "vae":
        raise ConfigError(
            f"'sample' draws image grids from a VAE run; {run_dir} is a Gaussian mixture run: see its clusters.png, "
            "or the posterior predictive check (ppc.png) of 'pyro-gen analyze'"
        )
    config, model, guide, _ = load_run(run_dir)
    if len(model.data_shape) != 3:
        raise ConfigError(f"sample grids need image data (C, H, W); this model's data have shape {tuple(model.data_shape)}")
    out = Path(out) if out else Path(run_dir) / "samples.png"
    with seeded(seed):
        images = sample_images(model, num)
    return [save_image_grid(images, out, nrow=max(1, int(math.sqrt(num))))]


# -- GANs -----------------------------------------------------------------------------------------
GAN_NETS = ("mlp", "dcgan")
#: Options of ``model.kind: gan`` only (refused in other runs, where they would do nothing).
GAN_MODEL_KEYS = ("critic_hidden", "channels", "critic_channels", "conditional", "spectral_norm", "pack", "prior")
GAN_OBJECTIVE_KEYS = ("n_critic", "lr_generator", "lr_critic", "betas", "gp_weight", "ema_decay")
#: 2-D mixtures with known modes: a GAN on them is scored by mode coverage.
TOY_DATASETS = ("ring8", "grid25")
#: The mode-coverage protocol of VEEGAN (Srivastava et al. 2017): samples within this many
#: standard deviations of their nearest mode are of high quality; a mode is covered by one of them.
TOY_NUM_STD, TOY_MIN_COUNT = 3.0, 1
#: Samples scored against the test split elsewhere (fewer when the test split is smaller): the
#: precision / recall neighbourhoods cost O(N^2 d), which 2000 keeps to seconds on a CPU.
QUALITY_SAMPLES = 2000
#: KID: the unbiased MMD^2 averaged over this many random subsets of this size (Binkowski et al. 2018).
KID_SUBSETS, KID_SUBSET_SIZE = 10, 1000
#: Neighbours of the k-NN manifolds of improved precision and recall (Kynkaanniemi et al. 2019).
PR_NEIGHBOURS = 3
SAMPLE_CHUNK = 500  # samples drawn per generator call, to bound the memory of image batches


def _check_gan_config(config: RunConfig) -> None:
    """Refuse GAN settings that cannot work or would be ignored (checks that need the data: :func:`check_gan_data`)."""
    from pyro_gen.infer.adversarial import LOSSES
    from pyro_gen.models.gan import PRIORS

    m, o, t = config.model, config.objective, config.train
    if o.name not in LOSSES:
        raise ConfigError(
            f"objective.name {o.name!r} is not an adversarial loss: a GAN (model.kind: gan) has no likelihood to bound; "
            f"set objective.name to one of {', '.join(LOSSES)}"
        )
    if m.net not in GAN_NETS:
        raise ConfigError(f"model.net {m.net!r} is not a GAN network: choose 'mlp' (vectors such as ring8) or 'dcgan' (images)")
    if m.latent_dim < 1:
        raise ConfigError(f"model.latent_dim must be at least 1, got {m.latent_dim}")
    for key, allow_empty in (("hidden", True), ("critic_hidden", False), ("channels", False), ("critic_channels", False)):
        if getattr(m, key) is not None:
            _check_widths(f"model.{key}", getattr(m, key), allow_empty)
    if m.pack < 1:
        raise ConfigError(f"model.pack must be at least 1 (1: no packing), got {m.pack}")
    if m.prior not in PRIORS:
        raise ConfigError(f"unknown model.prior {m.prior!r}; choose 'normal' (standard Normal z) or 'uniform' (z uniform on [-1, 1])")
    if m.conditional and m.pack > 1:
        raise ConfigError(
            "model.pack > 1 packs several samples into one critic input, which would mix classes: a conditional GAN "
            "cannot be packed; set model.pack=1 or model.conditional=false"
        )
    if o.n_critic < 1:
        raise ConfigError(f"objective.n_critic (critic steps per generator step) must be at least 1, got {o.n_critic}")
    for key in ("lr_generator", "lr_critic"):
        if getattr(o, key) is not None and not getattr(o, key) > 0:
            raise ConfigError(f"objective.{key} must be a positive learning rate (or null: train.lr), got {getattr(o, key)}")
    if o.betas is not None and (
        len(o.betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in o.betas)
    ):
        raise ConfigError(f"objective.betas must be two numbers in [0, 1), Adam's (beta1, beta2), e.g. [0.5, 0.999]; got {o.betas}")
    if o.gp_weight is not None and o.gp_weight < 0:
        raise ConfigError(f"objective.gp_weight must be non-negative (or null: 10 for wgan_gp, else 0), got {o.gp_weight}")
    if o.ema_decay is not None and not 0 <= o.ema_decay < 1:
        raise ConfigError(f"objective.ema_decay must be in [0, 1) (e.g. 0.99), or null for no moving average; got {o.ema_decay}")
    # settings of the likelihood models that a GAN would silently ignore
    refused = [
        ("model", ("likelihood", "likelihood_scale", "components", "covariance"), "a GAN has no likelihood and no mixture components"),
        (
            "objective",
            ("num_particles", "beta", "warmup_epochs", "free_bits", "analytic_kl"),
            "it is an option of the VAE's ELBO / IWAE; a GAN's objective takes n_critic, lr_generator, lr_critic, betas, "
            "gp_weight and ema_decay",
        ),
        ("guide", tuple(f.name for f in fields(GuideConfig)), "a GAN has no guide: its latent codes are not inferred"),
        ("eval", ("nll_samples", "chunk_size", "khat_samples"), "a GAN has no likelihood to estimate: it is scored by its samples"),
    ]
    for section, keys, why in refused:
        for key in _changed(getattr(config, section), keys):
            raise ConfigError(f"{section}.{key} does not apply to model.kind: gan ({why}); remove {section}.{key}")
    if t.patience is not None:
        raise ConfigError(
            "train.patience stops on a validation score, and a GAN has none (its critic's loss says nothing about the "
            "samples' quality): remove train.patience and set train.epochs"
        )
    if config.data.valid_size is not None:
        raise ConfigError(
            "data.valid_size is set, but a GAN run uses no validation split (it is not selected by a validation score; "
            "its last epoch is scored on the test split): remove data.valid_size"
        )


def _check_widths(key: str, widths, allow_empty: bool) -> None:
    if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths) or (not widths and not allow_empty):
        raise ConfigError(
            f"{key} must be a {'' if allow_empty else 'non-empty '}list of positive layer widths, e.g. [128, 128]; got {widths}"
        )


def check_gan_data(config: RunConfig, train_data) -> None:
    """Refuse a GAN whose networks do not fit the training data, before any file is written."""
    m, t, name = config.model, config.train, config.data.name
    shape = tuple(train_data.event_shape)
    if m.net == "dcgan" and len(shape) != 3:
        raise ConfigError(
            f"model.net: dcgan builds convolutional networks for images (C, H, W), but {name!r} has points of shape {shape}: "
            "use model.net=mlp"
        )
    if m.net == "mlp" and len(shape) != 1:
        raise ConfigError(f"model.net: mlp builds a GAN for vectors (D,), but {name!r} has images of shape {shape}: use model.net=dcgan")
    if m.conditional and train_data.y is None:
        raise ConfigError(
            f"model.conditional: true conditions the GAN on class labels, but {name!r} has no labels in its "
            f"{train_data.split} split: set model.conditional=false, or train on a labelled dataset (e.g. ring8, digits)"
        )
    _check_gan_net_options(m)
    if len(train_data) < t.batch_size:
        raise ConfigError(
            f"train.batch_size {t.batch_size} is larger than the {len(train_data)} training points, and a GAN steps on full "
            "batches only: lower train.batch_size or raise data.train_size"
        )
    if t.batch_size < m.pack:
        raise ConfigError(f"train.batch_size {t.batch_size} is smaller than model.pack {m.pack}: a batch must hold at least one pack")


def _check_gan_net_options(m) -> None:
    """Refuse the options of the other network (checked after the data's shape, so that a wrong
    ``model.net`` is reported as such, not as a leftover option of the right one)."""
    if m.net == "mlp":
        for key in ("channels", "critic_channels"):
            if getattr(m, key) is not None:
                raise ConfigError(
                    f"model.{key} sets the widths of a DCGAN's convolutions, but model.net is 'mlp': size the MLPs with "
                    f"model.hidden and model.critic_hidden, or set model.net=dcgan; remove model.{key}"
                )
        if m.critic_hidden is None and not m.hidden:
            raise ConfigError("the MLP critic needs at least one hidden layer: give model.critic_hidden (or a non-empty model.hidden)")
        return
    for key in _changed(m, ("hidden", "critic_hidden")):
        raise ConfigError(
            f"model.{key} sizes an MLP, but model.net is 'dcgan': set the convolutions' widths with model.channels "
            f"and model.critic_channels (or leave them to the image size), or set model.net=mlp; remove model.{key}"
        )


def build_gan(config: RunConfig, train_data):
    """The configured generator program and its :class:`~pyro_gen.infer.adversarial.Adversarial` objective (holding the critic).

    A conditional GAN has one class per label of the training split (``max label + 1``).
    """
    from pyro_gen.infer.adversarial import Adversarial
    from pyro_gen.models.gan import gan, gan_critic, latent_prior

    m, o = config.model, config.objective
    shape = tuple(train_data.event_shape)
    num_classes = int(train_data.y.max()) + 1 if m.conditional else None
    generator = gan(
        shape, m.latent_dim, m.hidden, m.net, num_classes=num_classes, channels=m.channels, prior=latent_prior(m.prior, m.latent_dim)
    )
    critic_hidden = m.critic_hidden if m.critic_hidden is not None else m.hidden
    critic = gan_critic(
        shape, critic_hidden, m.net, num_classes=num_classes, channels=m.critic_channels, pack=m.pack, spectral_norm=m.spectral_norm
    )
    objective = Adversarial(
        critic,
        o.name,
        n_critic=o.n_critic,
        lr_critic=o.lr_critic,
        lr_generator=o.lr_generator,
        betas=tuple(o.betas) if o.betas is not None else None,
        gp_weight=o.gp_weight,
        ema_decay=o.ema_decay,
    )
    return generator, objective


def gan_batches(config: RunConfig, train_data):
    """Shuffled full batches of the training split (with labels for a conditional GAN).

    The last partial batch of an epoch is dropped: a GAN's step compares a batch of data with as
    many samples, and a small remainder would give a noisy step (or hold less than one pack).
    """
    from pyro_gen.infer.trainer import TensorBatches

    t = config.train
    labels = train_data.y if config.model.conditional else None
    return TensorBatches(
        train_data.x, t.batch_size, shuffle=True, seed=t.seed, transform=train_data.transform_batch, drop_last=True, y=labels
    )


def _train_gan(config: RunConfig, run_dir: Path, resume: bool) -> dict:
    """Train a generator and its critic with the one trainer (one Adam per player), then score the samples.

    No validation split is given to the trainer: a critic's validation loss says nothing about the
    samples' quality (it is lowest when the generator is worst), so it must not choose ``best.pt``;
    every epoch then writes ``best.pt`` and ``last.pt`` alike, and the last epoch is scored.
    """

    t = config.train
    train_data = load_splits(config.data, ("train",))["train"]
    check_gan_data(config, train_data)
    pyro.set_rng_seed(t.seed)  # the networks' initial weights (see train)
    generator, objective = build_gan(config, train_data)
    batches = gan_batches(config, train_data)
    trainer = _trainer(config, generator, None, objective, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        save_config(config, run_dir / CONFIG_FILE)
    history = trainer.fit(batches, None, resume=resume)
    last = history[-1] if history else {}
    training = {
        "epochs": len(history),
        "seconds_per_epoch": sum(r["seconds"] for r in history) / max(len(history), 1),
        # the trainer counts batches over the whole run; the generator steps on every n_critic-th
        "generator_steps": len(history) * len(batches) // config.objective.n_critic,
        "final_critic_loss": last.get("train_critic_loss", math.nan),
        "final_generator_loss": last.get("train_generator_loss", math.nan),
    }
    _write_json(run_dir / TRAINING_FILE, training)
    return evaluate_run(run_dir, device=t.device)


@dataclass
class GANRun:
    """A trained GAN rebuilt from its run directory (:func:`load_gan_run`).

    :ivar generator: the generator program with its trained weights.
    :ivar objective: the :class:`~pyro_gen.infer.adversarial.Adversarial` objective: its
        ``critic`` and, with ``objective.ema_decay``, ``ema`` (the moving average of the generator).
    :ivar splits: the ``train`` and ``test`` splits.
    """

    config: RunConfig
    generator: torch.nn.Module
    objective: torch.nn.Module
    splits: dict

    @property
    def sampler(self) -> torch.nn.Module:
        """The generator that samples are drawn from: the weights' moving average when there is one."""
        return self.objective.ema if self.objective.ema is not None else self.generator

    @property
    def sampler_name(self) -> str:
        if self.objective.ema is None:
            return "the generator's weights at the last epoch"
        return f"the moving average of the generator's weights (objective.ema_decay {self.objective.ema_decay})"


def load_gan_run(run_dir, device="cpu", checkpoint: str = "last.pt") -> GANRun:
    """Rebuild a GAN run's generator, critic and weight average from a checkpoint (default: the last epoch's)."""
    from pyro_gen.infer.trainer import load_checkpoint

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if config.model.kind != "gan":
        raise RunDirError(f"{run_dir} is a model.kind: {config.model.kind} run, not a GAN run")
    ckpt = load_checkpoint(run_dir / checkpoint, map_location=device)
    splits = load_splits(config.data, ("train", "test"))
    generator, objective = build_gan(config, splits["train"])
    # declaring the players makes the weight average (objective.ema) whose weights the checkpoint holds
    objective.players(generator, None)
    generator.load_state_dict(ckpt["model"])
    objective.load_state_dict(ckpt["objective"])
    generator.to(device).eval(), objective.to(device).eval()
    return GANRun(config, generator, objective, splits)


@torch.no_grad()
def draw_samples(generator, num: int, seed: int, y: torch.Tensor | None = None) -> torch.Tensor:
    """``num`` samples from a generator program, seeded without touching the global random state.

    ``y``: class labels, one per sample, for a conditional generator (default: drawn uniformly by the program).
    """
    device = next(generator.parameters()).device
    with seeded(seed, device):
        chunks = []
        for start in range(0, num, SAMPLE_CHUNK):
            n = min(SAMPLE_CHUNK, num - start)
            kwargs = {"batch_size": n} if y is None else {"batch_size": n, "y": y[start : start + n].to(device)}
            chunks.append(generator(**kwargs))
    return torch.cat(chunks).cpu()


@torch.no_grad()
def gan_interpolation(generator, rows: int = 8, steps: int = 10, seed: int = 0) -> torch.Tensor:
    """``rows * steps`` samples; row ``r`` decodes ``steps`` codes on the line between two prior draws.

    The codes are set by conditioning the generator program's latent site (``poutine.condition``),
    so the program itself runs unchanged. A conditional generator keeps one class per row.
    """
    device = next(generator.parameters()).device
    with seeded(seed, device):
        start, end = generator.prior().sample((2, rows))  # (rows, latent) each
    t = torch.linspace(0, 1, steps, device=device)[None, :, None]
    codes = ((1 - t) * start[:, None] + t * end[:, None]).reshape((rows * steps,) + tuple(start.shape[1:]))
    conditioned = pyro.poutine.condition(generator, data={generator.latent_name: codes})
    if generator.num_classes is None:
        return conditioned(batch_size=rows * steps).cpu()
    labels = (torch.arange(rows, device=device) % generator.num_classes).repeat_interleave(steps)
    return conditioned(batch_size=rows * steps, y=labels).cpu()


def _digit_domain(data_name: str) -> str | None:
    """The trained domain feature space of a digit dataset (``mnist28``, ``digits8``), else ``None``.

    Chosen by dataset, not by image shape: fashion_mnist has MNIST's shape but is no digit set.
    """
    from pyro_gen.evaluation.features import DOMAIN_ALIASES

    return DOMAIN_ALIASES.get(data_name)


def sample_feature_space(data_name: str, data_dir=None):
    """The feature space of a GAN's Frechet distance, KID and precision / recall: the one place that chooses it.

    Digit datasets (``binarized_mnist``, ``mnist``, ``digits``) are compared in the library's
    trained, cached digit-classifier features (:func:`pyro_gen.evaluation.features.domain_features`,
    offline); other data in its own coordinates (flattened pixels for other images, e.g. Frey faces
    or Fashion-MNIST: no extractor of the library was trained on them). The space's name and
    description go into ``metrics.json``: figures from different spaces are not comparable.
    """
    from pyro_gen.evaluation.features import feature_space, identity_space

    domain = _digit_domain(data_name)
    return feature_space(domain, data_dir=data_dir) if domain else identity_space()


def _sample_quality(samples: torch.Tensor, real: torch.Tensor, space, seed: int) -> tuple[dict, dict]:
    """Frechet distance, KID and precision / recall of ``samples`` against ``real`` in a feature space; ``(scores, protocol)``."""
    from pyro_gen.evaluation import quality_scores

    # subsets as large as the sets would all be the same set: then one estimate on everything, no spread
    subsets = min(len(samples), len(real)) > KID_SUBSET_SIZE
    q = quality_scores(
        real, samples, space, k=PR_NEIGHBOURS, kid_subsets=KID_SUBSETS if subsets else 1,
        kid_subset_size=KID_SUBSET_SIZE if subsets else None, seed=seed,
    )  # fmt: skip
    if subsets:
        kid_estimator = f"unbiased MMD^2, cubic polynomial kernel, mean and std over {KID_SUBSETS} random subsets of {KID_SUBSET_SIZE}"
    else:
        kid_estimator = f"unbiased MMD^2, cubic polynomial kernel, one estimate on all {len(real)} and {len(samples)} points"
    scores = {
        "frechet_distance": q.frechet_distance,
        "kid": q.kid,
        "kid_std": q.kid_std if subsets else None,
        "precision": q.precision,
        "recall": q.recall,
        "feature_space": space.name,
        "num_samples": len(samples),
    }
    protocol = {
        "samples": len(samples),
        "real": len(real),
        "feature_space": f"{space.name}: {space.description}",
        "frechet_distance": "squared Frechet distance of Gaussians fitted to the real and the generated features (FID in Inception features)",
        "kid": kid_estimator,
        "precision_recall": f"k-NN manifolds with k={PR_NEIGHBOURS} (Kynkaanniemi et al. 2019)",
    }
    return scores, protocol


def _evaluate_gan(run_dir: Path, config: RunConfig, device, figures: bool | None) -> dict:
    """Score a GAN by its samples; write ``metrics.json`` and the figures.

    * ring8 / grid25: mode coverage with the VEEGAN protocol on
      :data:`~pyro_gen.evaluation.sample_quality.NUM_SAMPLES` samples (modes covered, fraction
      of high-quality samples, reverse KL of the mode histogram to uniform);
    * any other data: Frechet distance, KID and precision / recall of
      :data:`QUALITY_SAMPLES` samples against as many test points (a seeded random subset when the
      test split is larger; all of it, and as many samples, when it is smaller), in the feature
      space chosen by :func:`sample_feature_space`.

    The samples come from :attr:`GANRun.sampler`, seeded with ``train.seed``.
    """
    from pyro_gen.evaluation.sample_quality import NUM_SAMPLES, toy_mode_coverage

    run = load_gan_run(run_dir, device or config.train.device)
    config, test, seed = run.config, run.splits["test"], config.train.seed
    if config.data.name in TOY_DATASETS:
        real = fixed_test_data(test, config.data.seed)
        samples = draw_samples(run.sampler, NUM_SAMPLES, seed)
        coverage = toy_mode_coverage(samples, config.data.name, num_std=TOY_NUM_STD, min_count=TOY_MIN_COUNT)
        scores = {**coverage.as_dict(), "reverse_kl": _finite(coverage.reverse_kl), "mode_counts": coverage.counts.tolist()}
        quality = {
            "samples": NUM_SAMPLES,
            "num_std": TOY_NUM_STD,
            "min_count": TOY_MIN_COUNT,
            "estimator": (
                f"VEEGAN protocol (Srivastava et al. 2017): {NUM_SAMPLES} samples; a sample is of high quality within "
                f"{TOY_NUM_STD:g} standard deviations of its nearest mode; a mode is covered by {TOY_MIN_COUNT} high-quality "
                "sample(s); reverse KL: KL(q || uniform) of the high-quality samples' histogram q over the modes"
            ),
        }
    else:
        scores, quality, samples, real = _image_quality(run, config, seed)
    training = _read_json(run_dir / TRAINING_FILE)
    m, o = config.model, config.objective
    parameters = {"generator": count_parameters(run.generator), "critic": count_parameters(run.objective.critic)}
    metrics = {
        **scores,
        "epochs": training.get("epochs"),
        "seconds_per_epoch": training.get("seconds_per_epoch"),
        "generator_steps": training.get("generator_steps"),
        "final_critic_loss": _finite(training.get("final_critic_loss")),
        "final_generator_loss": _finite(training.get("final_generator_loss")),
        "parameters": sum(parameters.values()),
        "generator_parameters": parameters["generator"],
        "critic_parameters": parameters["critic"],
        "objective": o.name,
        "model": (
            f"gan: {m.net} generator (latent {m.latent_dim}) and critic"
            + (f", conditional on {run.generator.num_classes} classes" if m.conditional else "")
            + (f", pack {m.pack}" if m.pack > 1 else "")
            + (", spectral norm" if m.spectral_norm else "")
        ),
        "sampler": run.sampler_name,
        "protocol": {
            "train": run.splits["train"].protocol(),
            "test": test.protocol(),
            "sample_quality": quality,
            "sampler": run.sampler_name,
            "seed": seed,
        },
    }
    draw = figures if figures is not None else config.eval.images
    arithmetic = _latent_arithmetic(run, seed)
    if arithmetic is not None:
        metrics["latent_arithmetic"] = {
            **arithmetic.as_dict(),
            "protocol": (
                "class vectors v_c = mean code of the samples the domain classifier labels c; each source code z moves to "
                "z - v_(its class) + v_c; target_accuracy: share of moved samples the classifier labels c"
            ),
        }
    _write_json(run_dir / METRICS_FILE, metrics)
    if draw:
        _gan_figures(run, samples, real, run_dir, seed, arithmetic)
    return metrics


def _latent_arithmetic(run: GANRun, seed: int):
    """Class-vector arithmetic (:mod:`pyro_gen.analysis.latent_arithmetic`) for an unconditional GAN on digit images, else ``None``.

    ``None`` too when the generator never produced some digit in the draws (no vector for it): the
    metric is then missing rather than made up.
    """
    from pyro_gen.analysis.latent_arithmetic import MissingClassError, latent_arithmetic
    from pyro_gen.evaluation.features import domain_classifier

    domain = _digit_domain(run.config.data.name)
    if domain is None or run.generator.num_classes is not None:
        return None
    device = next(run.sampler.parameters()).device
    classifier = domain_classifier(domain, data_dir=run.config.data.data_dir, device=device)
    try:
        return latent_arithmetic(run.sampler, classifier, rows=8, num_samples=QUALITY_SAMPLES, seed=seed)
    except MissingClassError:
        return None


def _seeded_subset(x: torch.Tensor, num: int, seed: int) -> torch.Tensor:
    """``num`` rows of ``x`` chosen at random with ``seed``, in their original order (all of ``x`` when it has no more)."""
    if num >= len(x):
        return x
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[order[:num].sort().values]


def quality_reference_images(config: RunConfig, splits: dict, space) -> tuple[torch.Tensor, str]:
    """The real images a GAN's samples are compared with, and their description.

    Digit data scored in the library's domain features use the images its extractor was *not*
    trained on (:func:`~pyro_gen.evaluation.features.held_out_images`): the extractor was trained on
    most of MNIST's test images, whose features it would flatter. Other data use the test split.
    Dynamically binarized data are binarized once, with ``data.seed``.
    """
    from pyro_gen.evaluation.features import held_out_images

    test, name = splits["test"], config.data.name
    domain = _digit_domain(name)
    if domain is not None and space.name == f"domain:{domain}":
        held = held_out_images(domain, dataset=name, data_dir=config.data.data_dir)
        return fixed_test_data(
            test, config.data.seed, held.x
        ), f"{len(held.x)} {name} {held.split} images held out of the {domain} extractor's training"
    return fixed_test_data(test, config.data.seed), f"the {name} test split"


def _image_quality(run: GANRun, config: RunConfig, seed: int) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    """Frechet distance, KID and precision / recall of a GAN's samples, with two references measured the same way.

    * ``untrained_generator``: the same architecture at its initial weights (the training seed), the
      ceiling a trained generator must come well under;
    * ``train_split``: as many training images as samples, the floor (real against real).

    Returns ``(scores, protocol, samples, real)``.
    """
    space = sample_feature_space(config.data.name, config.data.data_dir)
    real, real_name = quality_reference_images(config, run.splits, space)
    num = min(QUALITY_SAMPLES, len(real))
    # as many real points as samples: the k-NN radii of precision / recall depend on a set's size
    real = _seeded_subset(real, num, seed)
    samples = draw_samples(run.sampler, num, seed)
    scores, quality = _sample_quality(samples, real, space, seed)
    quality["real_set"] = real_name

    device = next(run.generator.parameters()).device
    # the initial weights of the training run (torch's generator only: numpy and random stay untouched)
    with seeded(config.train.seed, device):
        untrained, _ = build_gan(config, run.splits["train"])
    untrained.to(device).eval()
    train = run.splits["train"]
    rows = _seeded_subset(torch.arange(len(train.x)), num, seed + 1)
    train_images = fixed_test_data(train, config.data.seed, train.x[rows])
    keys = ("frechet_distance", "kid", "kid_std", "precision", "recall")
    references = {
        "untrained_generator": _sample_quality(draw_samples(untrained, num, seed), real, space, seed)[0],
        "train_split": _sample_quality(train_images, real, space, seed)[0],
    }
    scores["references"] = {name: {k: ref[k] for k in keys} for name, ref in references.items()}
    quality["references"] = {
        "untrained_generator": f"{num} samples of the generator at its initial weights (seed {config.train.seed})",
        "train_split": f"{num} random images of the training split (seed {seed + 1}): real against real, the floor",
    }
    return scores, quality, samples, real


def _gan_figures(run: GANRun, samples: torch.Tensor, real: torch.Tensor, run_dir: Path, seed: int, arithmetic=None) -> list[Path]:
    """The figures of a GAN run.

    ``samples.png``: a scatter over the test data (vector data) or a grid of 64 images; for images
    also ``interpolation.png`` (8 rows of 10 codes on a line in ``z``), ``arithmetic.png`` (the
    :func:`_latent_arithmetic` result: a source sample, then it moved to each class) and, for a
    conditional generator, ``classes.png`` (one code per row, one class per column).
    """
    from pyro_gen.analysis import save_image_grid

    if len(run.generator.data_shape) == 1:
        return [_scatter_samples(samples, real, run.config.data.name, run_dir / "samples.png")]
    paths = [save_image_grid(samples[:64], run_dir / "samples.png", nrow=8)]
    paths.append(save_image_grid(gan_interpolation(run.sampler, seed=seed), run_dir / "interpolation.png", nrow=8))
    if arithmetic is not None:
        rows = torch.cat([arithmetic.sources[:, None], arithmetic.images], dim=1)  # (rows, 1 + classes, ...)
        paths.append(save_image_grid(rows.flatten(0, 1), run_dir / "arithmetic.png", nrow=rows.shape[0]))
    if run.generator.num_classes is not None:
        paths.append(save_image_grid(class_grid(run.sampler, rows=8, seed=seed), run_dir / "classes.png", nrow=8))
    return paths


@torch.no_grad()
def class_grid(generator, rows: int = 8, seed: int = 0) -> torch.Tensor:
    """``rows * num_classes`` samples of a conditional generator: row ``r`` holds one code ``z`` (set
    with ``poutine.condition``) drawn with every class label in turn."""
    device = next(generator.parameters()).device
    k = generator.num_classes
    with seeded(seed, device):
        codes = generator.prior().sample((rows,))
    codes = codes.repeat_interleave(k, dim=0)
    labels = torch.arange(k, device=device).repeat(rows)
    return pyro.poutine.condition(generator, data={generator.latent_name: codes})(batch_size=rows * k, y=labels).cpu()


def _scatter_samples(samples: torch.Tensor, real: torch.Tensor, name: str, path: Path) -> Path:
    """Samples over the data (the first two coordinates), with the modes of a toy mixture marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from pyro_gen.data.toy import toy_modes

    samples, real = samples.reshape(len(samples), -1), real.reshape(len(real), -1).cpu()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    # the second coordinate of 1-D data is the point's index, so that the points do not overlap
    column = (lambda x: x[:, 1]) if samples.shape[1] > 1 else (lambda x: torch.arange(len(x)))
    ax.scatter(real[:, 0], column(real), s=2, alpha=0.3, color="tab:blue", label=f"data ({len(real)} test points)")
    ax.scatter(samples[:, 0], column(samples), s=2, alpha=0.3, color="tab:orange", label=f"samples ({len(samples)})")
    if name in TOY_DATASETS:
        centers, _ = toy_modes(name)
        ax.scatter(centers[:, 0], centers[:, 1], marker="x", color="k", s=30, label="modes")
    legend = ax.legend(loc="upper right", fontsize=7)
    for handle in legend.legend_handles:  # the 2-pixel dots would be invisible in the legend
        handle.set_sizes([20])
        handle.set_alpha(1)
    ax.set_title(f"GAN samples over {name}", fontsize=9)
    if samples.shape[1] > 1:
        ax.set_aspect("equal", adjustable="datalim")
    path = Path(path)
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return path


def _sample_gan(run_dir: Path, num: int | None, out, seed: int) -> list[Path]:
    """A GAN run's samples: an image grid, or a scatter PNG and the points as ``.npy`` for vector data."""
    from pyro_gen.analysis import save_image_grid
    from pyro_gen.evaluation.sample_quality import NUM_SAMPLES

    run = load_gan_run(run_dir)
    out = Path(out) if out else run_dir / "samples.png"
    if len(run.generator.data_shape) == 3:
        num = num or 64
        images = draw_samples(run.sampler, num, seed)
        return [save_image_grid(images, out, nrow=max(1, int(math.sqrt(num))))]
    points = draw_samples(run.sampler, num or NUM_SAMPLES, seed)
    png = _scatter_samples(points, fixed_test_data(run.splits["test"], run.config.data.seed), run.config.data.name, out.with_suffix(".png"))
    npy = out.with_suffix(".npy")
    with atomic_path(npy) as tmp, open(tmp, "wb") as f:
        np.save(f, points.numpy().astype(np.float32))
    return [png, npy]


# -- compare ------------------------------------------------------------------------------------
COMPARE_COLUMNS = [
    "guide",
    "test_nll",
    "test_elbo",
    "kl",
    "active_units",
    "seconds_per_epoch",
    "parameters",
    "nll_samples",
    "epochs",
    "khat_mean",  # mean PSIS k-hat of the test points' importance weights
    "khat_gt_0.7",  # share of test points whose k-hat exceeds 0.7 (unreliable importance sampling there)
]


def _compare_one(config: RunConfig, name: str, run_dir: Path, threads: int | None) -> dict:
    """Train and evaluate one guide (runs in a worker process when ``jobs > 1``)."""
    if threads:
        torch.set_num_threads(threads)
    config = copy.deepcopy(config)
    config.guide.name = name
    t0 = time.time()
    m = train(config, run_dir)
    return {
        "guide": name,
        "test_nll": m["test_nll"],
        "test_elbo": m["test_elbo"],
        "kl": m["test_kl"],
        "active_units": m["active_units"],
        "seconds_per_epoch": m["seconds_per_epoch"],
        "parameters": m["parameters"],
        "nll_samples": m["nll_samples"],
        "epochs": m["epochs"],
        "khat_mean": m["khat_mean"],
        "khat_gt_0.7": m["khat_share_above_0.7"],
        "wall_seconds": time.time() - t0,
    }


def compare(config: RunConfig, guides, out_dir, jobs: int = 1) -> list[dict]:
    """Train and evaluate each guide on the same model and data; write ``compare.csv`` and ``compare.md``.

    With ``jobs > 1`` that many guides train at once in worker processes, sharing the CPU
    threads evenly (``seconds_per_epoch`` is then measured under that sharing).
    """
    from pyro_gen.guides import parse_guide_name

    if config.model.kind != "vae":
        settings = (
            "objective.name=non_saturating|wgan_gp|..., model.pack=..."
            if config.model.kind == "gan"
            else "guide.name=delta|normal, train.method=nuts"
        )
        raise ConfigError(
            f"compare trains several amortized guides of one VAE; for model.kind {config.model.kind!r} run 'pyro-gen train' "
            f"once per setting ({settings})"
        )
    check_config(config)
    guides = [g.strip() for g in guides if g.strip()]
    if not guides:
        raise ConfigError("compare needs at least one guide name, e.g. --guides normal,planar:10")
    if len(set(guides)) != len(guides):
        raise ConfigError(f"compare got a guide twice: {guides}")
    for name in guides:
        parse_guide_name(name)  # fail before any training
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dirs = {name: out_dir / name.replace(":", "-") for name in guides}
    rows: dict = {}
    if jobs == 1:
        for name in guides:
            rows[name] = _compare_one(config, name, dirs[name], None)
            _write_compare([rows[g] for g in guides if g in rows], config, out_dir)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, torch.get_num_threads() // jobs)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_compare_one, config, name, dirs[name], threads): name for name in guides}
            for future in as_completed(futures):
                rows[futures[future]] = future.result()
                _write_compare([rows[g] for g in guides if g in rows], config, out_dir)
    return [rows[g] for g in guides]


def _write_compare(rows, config: RunConfig, out_dir: Path) -> None:
    with atomic_path(out_dir / "compare.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COMPARE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    d = config.data
    lines = [
        f"Data: {d.name} (train {d.train_size or 'all'}, test {d.test_size or 'all'}, subset seed {d.seed}); "
        f"model: {config.model.kind} latent {config.model.latent_dim}, hidden {config.model.hidden}, {config.model.net}, "
        f"{config.model.likelihood}; objective {config.objective.name}; {config.train.epochs} epochs max, batch "
        f"{config.train.batch_size}, lr {config.train.lr}, seed {config.train.seed}; test NLL by importance sampling "
        f"with K={config.eval.nll_samples}. Nats per datapoint. khat_mean: mean PSIS k-hat of the test points' "
        "importance weights; khat_gt_0.7: share of test points with k-hat > 0.7, where importance sampling from the "
        "guide is unreliable (empty: too few draws for a tail fit).",
        "",
        "| " + " | ".join(COMPARE_COLUMNS) + " |",
        "|" + "---|" * len(COMPARE_COLUMNS),
    ]
    for r in rows:
        cells = [f"{r[c]:.2f}" if isinstance(r[c], float) else "" if r[c] is None else str(r[c]) for c in COMPARE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    with atomic_path(out_dir / "compare.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


# -- analyze ------------------------------------------------------------------------------------
ANALYZE_POINTS = 100  # default number of test points whose local posteriors a VAE analysis draws


def analyze_run(run_dir, points: int | None = None, draws: int = 1000, seed: int = 0, khat_samples: int | None = None) -> list[Path]:
    """Bayesian diagnostics of a run with ArviZ, written into the run directory; returns the paths written.

    * A Gaussian mixture sampled by NUTS (or fitted with ``guide.name: normal``, whose ``draws``
      draws are saved as ``posterior.nc``): ``summary.csv`` (mean, sd, 94% HDI, MCSE, bulk and
      tail ESS, R-hat), ``trace.png``, ``rank.png``, ``pair.png``, ``ppc.png``, and PSIS-LOO and
      WAIC with the per-datapoint Pareto k in ``loo.json`` (``loo_khat.png``).
    * A VAE: the local posteriors ``q(z | x_n)`` of ``points`` test points (a seeded random draw,
      ``seed``) as InferenceData in ``posterior_local.nc`` (``draws`` draws each) with their
      ``summary.csv``; the PSIS k-hat of each of these points' importance weights (``khat_samples``
      draws; default the run's ``eval.khat_samples`` or ``eval.nll_samples``, at least
      :data:`~pyro_gen.analysis.psis.MIN_SAMPLES`) in ``khat.csv`` and ``khat_hist.png``; and
      ``pair_local.png``, a pair plot of the first latent dims at the point with the largest k-hat.
    """
    from pyro_gen.analysis.psis import MIN_SAMPLES

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if config.model.kind == "gan":
        raise ConfigError(
            f"'analyze' draws Bayesian diagnostics of a posterior, but {run_dir} is a GAN run (model.kind: gan), which infers "
            "no posterior (no guide, no likelihood): its sample scores are in metrics.json ('pyro-gen evaluate') and its "
            "samples in samples.png ('pyro-gen sample')"
        )
    if points is not None and points < 1:
        raise ConfigError(f"--points must be a positive number of test points, got {points}")
    if draws < 4:
        raise ConfigError(f"--draws must be at least 4 (ESS and R-hat split each chain in two), got {draws}")
    if khat_samples is not None and khat_samples < MIN_SAMPLES:
        raise ConfigError(f"--khat-samples must be at least {MIN_SAMPLES}, the fewest draws whose tail can be fitted; got {khat_samples}")
    if config.model.kind == "gmm":
        if points is not None:
            raise ConfigError(
                "--points asks for the local posteriors q(z | x_n) of test points, but a Gaussian mixture's guide has no local "
                "latent sites (its assignments are summed out, its parameters are global): drop --points"
            )
        return _analyze_gmm(run_dir, config, draws, seed)
    return _analyze_vae(run_dir, config, points or ANALYZE_POINTS, draws, seed, khat_samples)


def _analyze_gmm(run_dir: Path, config: RunConfig, draws: int, seed: int) -> list[Path]:
    from pyro_gen.analysis import report

    if config.train.method == "nuts":
        splits = load_splits(config.data)
        model = build_model(config, tuple(splits["train"].event_shape))
        idata = _read_posterior(run_dir)
        paths = []
    else:
        if config.guide.name == "delta":
            raise ConfigError(
                f"{run_dir} holds a MAP point estimate (guide.name: delta): there are no posterior draws to summarize; "
                "fit the mixture with guide.name=normal (a variational posterior) or train.method=nuts"
            )
        from pyro_gen.analysis import from_guide

        config, model, guide, splits = load_run(run_dir)
        pyro.set_rng_seed(seed)
        idata = from_guide(model, guide, splits["train"].x, num_draws=draws, posterior_predictive=True)
        paths = [report.write_netcdf(idata, run_dir / POSTERIOR_FILE)]
    report.write_summary(idata, run_dir / "summary.csv", var_names=model.global_sites)
    paths.append(run_dir / "summary.csv")
    # the pair and rank plots have one panel per (pair of) entries: the first coordinate keeps them legible
    first = {"coordinate": [0]}
    paths += report.posterior_plots(
        idata, run_dir, var_names=["weights", "locs", "scales"], pair_names=["weights", "locs"], pair_coords=first, rank_coords=first
    )
    report.write_loo(idata, run_dir / "loo.json", khat_plot=run_dir / "loo_khat.png")
    return paths + [run_dir / "loo.json", run_dir / "loo_khat.png"]


def _analyze_vae(run_dir: Path, config: RunConfig, points: int, draws: int, seed: int, khat_samples: int | None) -> list[Path]:
    from pyro_gen.analysis import from_local_posterior, report
    from pyro_gen.analysis.psis import MIN_SAMPLES, psis_khat
    from pyro_gen.evaluation.likelihood import log_weights

    config, model, guide, splits = load_run(run_dir)
    x = fixed_test_data(splits["test"], config.data.seed)
    index = np.sort(np.random.default_rng(seed).choice(len(x), size=min(points, len(x)), replace=False))
    chosen = x[torch.as_tensor(index)]
    pyro.set_rng_seed(seed)
    idata = from_local_posterior(guide, chosen, num_draws=draws, datapoints=index)
    paths = [report.write_netcdf(idata, run_dir / "posterior_local.nc")]
    report.write_summary(idata, run_dir / "summary.csv")
    paths.append(run_dir / "summary.csv")

    k = khat_samples or max(config.eval.khat_samples or config.eval.nll_samples, MIN_SAMPLES)
    lw = log_weights(model, guide, chosen, num_samples=k, chunk_size=config.eval.chunk_size, seed=seed)
    khat = psis_khat(lw)
    log_px = lw.double().logsumexp(0) - math.log(k)
    paths.append(report.write_khat_table(index, khat.numpy(), log_px.numpy(), run_dir / "khat.csv"))
    paths.append(report.khat_histogram(khat.numpy(), run_dir / "khat_hist.png", k, title=f"guide {config.guide.name}:"))

    # the pair plot: the first latent dims of the local site at the point whose weights are worst
    site = next(iter(idata.posterior.data_vars))
    dims = idata.posterior[site].dims[3:]
    finite = torch.where(torch.isfinite(khat), khat, torch.full_like(khat, -math.inf))
    worst = int(index[int(finite.argmax())])
    coords = {"data": [worst], **{d: list(range(min(4, idata.posterior.sizes[d]))) if i == 0 else [0] for i, d in enumerate(dims)}}
    title = f"q({site} | x) of test point {worst}, the largest k-hat ({float(khat.max()):.2f}) of the {len(index)} points"
    paths.append(report.pair_plot(idata, run_dir / "pair_local.png", var_names=[site], coords=coords, title=title))
    return paths
