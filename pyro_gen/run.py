"""Run directories: train, evaluate, sample, compare and analyze from a :class:`~pyro_gen.config.RunConfig`.

A run directory holds everything needed to re-make its results::

    config.yaml      the resolved config (read back with yaml.safe_load)
    metrics.jsonl    one JSON line per epoch                          (train.method: svi)
    last.pt, best.pt checkpoints (torch.load(..., weights_only=True))   (train.method: svi)
    posterior.nc     the NUTS posterior as ArviZ InferenceData          (train.method: nuts)
    training.json    epochs and time (or the NUTS settings and time)
    metrics.json     test scores with their protocol (K, split, binarization, sizes, seed)
    samples.png, reconstructions.png, interpolation.png   (VAE)  |  clusters.png (Gaussian mixture)

and, after ``pyro-gen analyze``, ``summary.csv`` and the diagnostic plots (see :func:`analyze_run`).

Two model kinds: ``vae`` (amortized guides, fitted by the trainer, scored by importance
sampling) and ``gmm`` (a Gaussian mixture whose assignments are summed out, fitted by the
same trainer with ``TraceEnum_ELBO`` or sampled by NUTS, scored exactly). This module is the
only place that connects dataset names to models and guides; the trainer and evaluator stay
generic.
"""

import copy
import csv
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_gen.config import ObjectiveConfig, RunConfig, load_config, save_config
from pyro_gen.errors import ConfigError, RunDirError
from pyro_gen.io import atomic_path

CONFIG_FILE, METRICS_FILE, TRAINING_FILE, POSTERIOR_FILE = "config.yaml", "metrics.json", "training.json", "posterior.nc"
MODEL_KINDS = ("vae", "gmm")
METHODS = ("svi", "nuts")


# -- checks ---------------------------------------------------------------------------
def check_config(config: RunConfig) -> None:
    """Refuse combinations of settings that cannot work, before any data is loaded or any file written."""
    from pyro_gen.analysis.psis import MIN_SAMPLES

    m, t = config.model, config.train
    if m.kind not in MODEL_KINDS:
        raise ConfigError(
            f"unknown model.kind {m.kind!r}; choose 'vae' (a deep latent-variable model) or 'gmm' (a Gaussian mixture); "
            "declare other models in Python"
        )
    if t.method not in METHODS:
        raise ConfigError(
            f"unknown train.method {t.method!r}; choose 'svi' (gradient steps on the objective) or 'nuts' (MCMC, model.kind: gmm)"
        )
    if t.method == "nuts" and m.kind != "gmm":
        raise ConfigError(
            "train.method: nuts samples the global parameters of a Gaussian mixture (model.kind: gmm); "
            "a VAE's networks are fitted with train.method: svi"
        )
    k = config.eval.khat_samples
    if k is not None and k != 0 and k < MIN_SAMPLES:
        raise ConfigError(
            f"eval.khat_samples must be null (k-hat from the test NLL's own draws), 0 (no k-hat) or at least {MIN_SAMPLES} "
            f"(the fewest draws whose tail can be fitted); got {k}"
        )
    if m.kind == "gmm":
        _check_gmm_config(config)


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
def load_splits(cfg) -> dict:
    """Train / valid / test :class:`~pyro_gen.data.ArrayData` for a :class:`DataConfig` (seeded subsets)."""
    from pyro_gen.data import dataset_splits, load_dataset

    splits = {}
    sizes = {"train": cfg.train_size, "valid": cfg.valid_size, "test": cfg.test_size}
    available = dataset_splits(cfg.name)
    for split in ("train", "valid", "test"):
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
    if m.kind != "vae":
        raise ConfigError(f"unknown model.kind {m.kind!r}; choose 'vae' or 'gmm' (declare other models in Python)")
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


def fixed_test_data(test, seed: int) -> torch.Tensor:
    """The test tensor; dynamically binarized data are binarized once, with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return test.transform_batch(test.x, generator=g)


# -- train / evaluate / sample ---------------------------------------------------------------
def train(config: RunConfig, run_dir, resume: bool = False, device: str | None = None) -> dict:
    """Train the configured model and guide into ``run_dir``, evaluate on the test split, write figures.

    Returns the contents of ``metrics.json``.
    """
    from pyro_gen.infer.trainer import Trainer

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
    splits = load_splits(config.data)
    train_data = splits["train"]
    # seed before the networks are built: their initial weights come from torch's global
    # generator, which a fresh process seeds at random (Trainer.fit seeds only later)
    pyro.set_rng_seed(config.train.seed)
    model = build_model(config, tuple(train_data.event_shape))
    guide = build_guide(config, model, train_data.x)
    t = config.train
    trainer = Trainer(
        model,
        guide,
        build_objective(config, model),
        lr=t.lr,
        batch_size=t.batch_size,
        epochs=t.epochs,
        device=t.device,
        seed=t.seed,
        run_dir=run_dir,
        patience=t.patience,
        progress=t.progress,
        clip_norm=t.clip_norm,
    )
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
    """Rebuild ``(config, model, guide, splits)`` of a run directory with its trained weights."""
    from pyro_gen.infer.trainer import initialize, load_checkpoint

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
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
    """
    from pyro_gen.analysis import write_figures

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
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


def sample_run(run_dir, num: int = 64, out=None, seed: int = 0) -> Path:
    """Write a grid of ``num`` samples from a run's model to ``out`` (default ``run_dir/samples.png``)."""
    from pyro_gen.analysis import save_image_grid
    from pyro_gen.analysis.plots import sample_images

    if read_run_config(run_dir).model.kind != "vae":
        raise ConfigError(
            f"'sample' draws image grids from a VAE run; {run_dir} is a Gaussian mixture run: see its clusters.png, "
            "or the posterior predictive check (ppc.png) of 'pyro-gen analyze'"
        )
    config, model, guide, _ = load_run(run_dir)
    if len(model.data_shape) != 3:
        raise ConfigError(f"sample grids need image data (C, H, W); this model's data have shape {tuple(model.data_shape)}")
    out = Path(out) if out else Path(run_dir) / "samples.png"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        images = sample_images(model, num)
    return save_image_grid(images, out, nrow=max(1, int(math.sqrt(num))))


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
        raise ConfigError(
            f"compare trains several amortized guides of one VAE; for model.kind {config.model.kind!r} run 'pyro-gen train' "
            "once per setting (guide.name=delta|normal, train.method=nuts)"
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
