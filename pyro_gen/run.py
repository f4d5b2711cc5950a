"""Run directories: train, evaluate, sample and compare from a :class:`~pyro_gen.config.RunConfig`.

A run directory holds everything needed to re-make its results::

    config.yaml      the resolved config (read back with yaml.safe_load)
    metrics.jsonl    one JSON line per epoch
    last.pt, best.pt checkpoints (torch.load(..., weights_only=True))
    metrics.json     test scores with their protocol (K, split, binarization, sizes, seed)
    samples.png, reconstructions.png, interpolation.png

This module is the only place that connects dataset names to models and guides; the
trainer and evaluator stay generic.
"""

import copy
import csv
import json
import math
import os
import time
from pathlib import Path

import pyro
import torch

from pyro_gen.config import RunConfig, load_config, save_config
from pyro_gen.errors import ConfigError, RunDirError

CONFIG_FILE, METRICS_FILE = "config.yaml", "metrics.json"


# -- building blocks -------------------------------------------------------------
def load_splits(cfg) -> dict:
    """Train / valid / test :class:`~pyro_gen.data.ArrayData` for a :class:`DataConfig` (seeded subsets)."""
    from pyro_gen.data import dataset_splits, load_dataset

    splits = {}
    sizes = {"train": cfg.train_size, "valid": cfg.valid_size, "test": cfg.test_size}
    for split in ("train", "valid", "test"):
        if split not in dataset_splits(cfg.name):
            continue
        splits[split] = load_dataset(cfg.name, split, data_dir=cfg.data_dir, binarize=cfg.binarize, n=sizes[split], seed=cfg.seed)
    return splits


def build_model(cfg, data_shape):
    """The model of a :class:`ModelConfig` for data of ``data_shape``."""
    from pyro_gen.models import vae

    if cfg.kind != "vae":
        raise ConfigError(f"unknown model kind {cfg.kind!r}; the config-driven CLI knows 'vae' (declare other models in Python)")
    return vae(data_shape, cfg.latent_dim, cfg.hidden, cfg.net, cfg.likelihood, cfg.likelihood_scale)


def build_guide(config: RunConfig, model):
    from pyro_gen.guides import make_guide

    hidden = config.guide.hidden or config.model.hidden
    return make_guide(config.guide.name, model, hidden=hidden, net=config.model.net, global_guide=config.guide.global_guide)


def build_objective(cfg):
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
    splits = load_splits(config.data)
    train_data = splits["train"]
    # seed before the networks are built: their initial weights come from torch's global
    # generator, which a fresh process seeds at random (Trainer.fit seeds only later)
    pyro.set_rng_seed(config.train.seed)
    model = build_model(config.model, tuple(train_data.event_shape))
    guide = build_guide(config, model)
    t = config.train
    trainer = Trainer(
        model,
        guide,
        build_objective(config.objective),
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
    _write_json(run_dir / "training.json", training)
    return evaluate_run(run_dir, device=t.device)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def load_run(run_dir, device="cpu", checkpoint: str = "best.pt"):
    """Rebuild ``(config, model, guide, splits)`` of a run directory with its trained weights."""
    from pyro_gen.infer.trainer import initialize, load_checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a directory; give the run directory written by 'pyro-gen train'")
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"{run_dir} is not a pyro_gen run directory: it has no {CONFIG_FILE} (written by 'pyro-gen train')")
    config = load_config(run_dir / CONFIG_FILE)
    path = run_dir / checkpoint
    if not path.exists():
        path = run_dir / "last.pt"
    ckpt = load_checkpoint(path, map_location=device)
    splits = load_splits(config.data)
    model = build_model(config.model, tuple(splits["train"].event_shape)).to(device)
    guide = build_guide(config, model).to(device)
    # a forward pass creates lazy (autoguide) parameters before the weights are loaded
    initialize(model, guide, fixed_test_data(splits["train"], 0)[:2].to(device))
    model.load_state_dict(ckpt["model"])
    guide.load_state_dict(ckpt["guide"])
    model.eval(), guide.eval()
    return config, model, guide, splits


def evaluate_run(run_dir, nll_samples: int | None = None, device=None, figures: bool | None = None) -> dict:
    """Score a run's best checkpoint on its test split; write ``metrics.json`` (and figures)."""
    from pyro_gen.analysis import write_figures
    from pyro_gen.evaluation import evaluate

    run_dir = Path(run_dir)
    config = load_config(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).is_file() else None
    device = device or (config.train.device if config else "cpu")
    config, model, guide, splits = load_run(run_dir, device=device)
    k = nll_samples or config.eval.nll_samples
    test = splits["test"]
    x = fixed_test_data(test, config.data.seed)
    scores = evaluate(
        model, guide, x, num_samples=k, chunk_size=config.eval.chunk_size, seed=config.train.seed, progress=config.train.progress
    )
    training = json.loads((run_dir / "training.json").read_text()) if (run_dir / "training.json").exists() else {}
    metrics = {
        "test_nll": scores["nll"],
        "nll_samples": k,
        "test_elbo": scores["elbo"],
        "test_kl": scores["kl"],
        "test_reconstruction": scores["reconstruction"],
        "active_units": scores["active_units"],
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
            "seed": config.train.seed,
        },
    }
    _write_json(run_dir / METRICS_FILE, metrics)
    if figures if figures is not None else config.eval.images:
        write_figures(model, guide, x[:64], run_dir, seed=config.train.seed)
    return metrics


def sample_run(run_dir, num: int = 64, out=None, seed: int = 0) -> Path:
    """Write a grid of ``num`` samples from a run's model to ``out`` (default ``run_dir/samples.png``)."""
    from pyro_gen.analysis import save_image_grid
    from pyro_gen.analysis.plots import sample_images

    config, model, guide, _ = load_run(run_dir)
    if len(model.data_shape) != 3:
        raise ConfigError(f"sample grids need image data (C, H, W); this model's data have shape {tuple(model.data_shape)}")
    out = Path(out) if out else Path(run_dir) / "samples.png"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        images = sample_images(model, num)
    return save_image_grid(images, out, nrow=max(1, int(math.sqrt(num))))


# -- compare ------------------------------------------------------------------------------------
COMPARE_COLUMNS = ["guide", "test_nll", "test_elbo", "kl", "active_units", "seconds_per_epoch", "parameters", "nll_samples", "epochs"]


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
        "wall_seconds": time.time() - t0,
    }


def compare(config: RunConfig, guides, out_dir, jobs: int = 1) -> list[dict]:
    """Train and evaluate each guide on the same model and data; write ``compare.csv`` and ``compare.md``.

    With ``jobs > 1`` that many guides train at once in worker processes, sharing the CPU
    threads evenly (``seconds_per_epoch`` is then measured under that sharing).
    """
    from pyro_gen.guides import parse_guide_name

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
    tmp = out_dir / f".compare.csv.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COMPARE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out_dir / "compare.csv")
    d = config.data
    lines = [
        f"Data: {d.name} (train {d.train_size or 'all'}, test {d.test_size or 'all'}, subset seed {d.seed}); "
        f"model: {config.model.kind} latent {config.model.latent_dim}, hidden {config.model.hidden}, {config.model.net}, "
        f"{config.model.likelihood}; objective {config.objective.name}; {config.train.epochs} epochs max, batch "
        f"{config.train.batch_size}, lr {config.train.lr}, seed {config.train.seed}; test NLL by importance sampling "
        f"with K={config.eval.nll_samples}. Nats per datapoint.",
        "",
        "| " + " | ".join(COMPARE_COLUMNS) + " |",
        "|" + "---|" * len(COMPARE_COLUMNS),
    ]
    for r in rows:
        cells = [f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in COMPARE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    tmp = out_dir / f".compare.md.tmp{os.getpid()}"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out_dir / "compare.md")
