"""``compare``: train several guides of one config and tabulate their scores (``compare.csv``, ``compare.md``);
or tabulate the test NLLs of runs of any families on one dataset (:func:`compare_configs`, :func:`compare_runs`).

Generic over families: each variant sets ``guide.name``; the columns and the caption are the
family's (:attr:`~pyro_gen.families.Family.compare_columns`, ``compare_row``, ``compare_caption``).
A family without a guide section cannot be compared this way and says so.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import shutil
import time
from pathlib import Path

import torch

from pyro_gen.config import RunConfig
from pyro_gen.errors import ConfigError
from pyro_gen.families.base import Family
from pyro_gen.io import atomic_path
from pyro_gen.run.commands import check_config, train
from pyro_gen.run.rundir import RunDir


def _compare_one(config: RunConfig, name: str, run_dir: Path, threads: int | None) -> dict:
    """Train and evaluate one guide (runs in a worker process when ``jobs > 1``)."""
    if threads:
        torch.set_num_threads(threads)
    config = copy.deepcopy(config)
    config.guide.name = name
    t0 = time.time()
    scores = train(config, run_dir)
    return {**config.family.compare_row(scores), "wall_seconds": time.time() - t0}


def _check_variant(config: RunConfig, name: str) -> None:
    variant = copy.deepcopy(config)
    variant.guide.name = name
    check_config(variant)


def compare(config: RunConfig, guides, out_dir, jobs: int = 1) -> list[dict]:
    """Train and evaluate each guide on the same model and data; write ``compare.csv`` and ``compare.md``.

    With ``jobs > 1`` that many guides train at once in worker processes, sharing the CPU threads
    evenly (``seconds_per_epoch`` is then measured under that sharing). Every guide name is
    checked before anything is written; an output directory this call created is removed again
    when the first run fails before any row exists.
    """
    family = config.family
    if config.guide is None:
        raise ConfigError(
            f"compare trains several guides of one model, and model.kind: {family.name} has no guide "
            f"({family.absent_sections.get('guide', '')}); run 'pyro-gen train' once per setting"
        )
    guides = [g.strip() for g in guides if g.strip()]
    if not guides:
        raise ConfigError("compare needs at least one guide name, e.g. --guides normal,planar:10")
    if len(set(guides)) != len(guides):
        raise ConfigError(f"compare got a guide twice: {guides}")
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    for name in guides:
        _check_variant(config, name)  # fail before any training
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    dirs = {name: out_dir / name.replace(":", "-") for name in guides}
    for d in dirs.values():
        if d.exists() and any(d.iterdir()):
            raise ConfigError(f"{d} already holds a run: give compare a new --out directory (or remove {d})")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: dict = {}
    try:
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
    except BaseException:
        if created and not rows:
            shutil.rmtree(out_dir, ignore_errors=True)  # a failed compare leaves no empty output behind
        raise
    return [rows[g] for g in guides]


def _write_compare(rows, config: RunConfig, out_dir: Path) -> None:
    family = config.family
    columns = list(family.compare_columns)
    with atomic_path(out_dir / "compare.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [family.compare_caption(config), "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [f"{r[c]:.2f}" if isinstance(r[c], float) else "" if r[c] is None else str(r[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    with atomic_path(out_dir / "compare.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


# -- across families: one table of test NLLs ---------------------------------------------------------------------------
#: The columns of a table across families (``compare --configs`` / ``--runs``).
ACROSS_COLUMNS = ("run", "kind", "variant", "test_nll", "nll_method", "bits_per_dim", "parameters", "epochs", "seconds_per_epoch")


def _data_key(config: RunConfig) -> tuple:
    d = config.data
    return (d.name, d.binarize, d.test_size, d.seed if d.test_size else None)


def _variant(config: RunConfig) -> str:
    """What distinguishes a run within its family: its guide, else its model section in short."""
    if config.guide is not None and getattr(config.guide, "name", None):
        return f"guide {config.guide.name}"
    model = {k: v for k, v in vars(config.model).items() if k != "kind" and v is not None}
    return ", ".join(f"{k}={v}" for k, v in model.items())


def _across_row(name: str, run: RunDir) -> dict:
    config = run.config()
    family = config.family
    scores = run.scores(family)
    if scores is None:
        raise ConfigError(f"run {run.path} has no test scores: run 'pyro-gen evaluate {run.path}' first")
    density = family.density_row(config, scores)
    return {
        "run": name,
        "kind": family.name,
        "variant": _variant(config),
        **density,
        "parameters": scores.get("parameters"),
        "epochs": scores.get("epochs"),
        "seconds_per_epoch": scores.get("seconds_per_epoch"),
    }


def _check_one_dataset(configs: dict) -> None:
    keys = {name: _data_key(c) for name, c in configs.items()}
    first = next(iter(keys))
    for name, key in keys.items():
        if key != keys[first]:
            raise ConfigError(
                f"a table of test NLLs compares runs on one test set, but {name!r} has data (name, binarize, test_size, seed) "
                f"{key} and {first!r} has {keys[first]}: give every run the same data section"
            )


def compare_runs(run_dirs, out_dir) -> list[dict]:
    """One table of test NLLs from evaluated run directories of any families (``compare.csv``, ``compare.md``).

    Each row says how its NLL was computed: exactly (an explicit density: PixelCNN, a flow, the mixture
    at its estimate) or by importance sampling with K draws (a VAE: in expectation an upper bound on
    the NLL). Runs on different test sets are refused. Nothing is trained.
    """
    runs = {}
    for d in run_dirs:
        run = RunDir(d).require()
        name = run.path.name
        if name in runs:
            name = str(run.path)
        runs[name] = run
    if not runs:
        raise ConfigError("compare --runs needs at least one run directory")
    configs = {name: run.config() for name, run in runs.items()}
    _check_one_dataset(configs)
    rows = [_across_row(name, run) for name, run in runs.items()]
    _write_across(rows, next(iter(configs.values())), Path(out_dir))
    return rows


def compare_configs(configs: dict, out_dir) -> list[dict]:
    """Train and evaluate one run per config (``{name: RunConfig}``, any families, one dataset) into
    ``out_dir/<name>``, then write the table of :func:`compare_runs`. Every config is checked before any training."""
    if not configs:
        raise ConfigError("compare --configs needs at least one config")
    _check_one_dataset(configs)
    for config in configs.values():
        check_config(config)
        family = config.family
        if type(family).density_row is Family.density_row and "nll_method" not in {f.name for f in dataclasses.fields(family.scores)}:
            family.density_row(config, family.scores())  # a family whose record has no NLL: refused by name, before training
    out_dir = Path(out_dir)
    dirs = {name: out_dir / name for name in configs}
    for d in dirs.values():
        if d.exists() and any(d.iterdir()):
            raise ConfigError(f"{d} already holds a run: give compare a new --out directory (or remove {d})")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    done = []
    try:
        for name, config in configs.items():
            train(config, dirs[name])
            done.append(dirs[name])
            compare_runs(done, out_dir)
    except BaseException:
        if created and not done:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return compare_runs(done, out_dir)


def _write_across(rows, config: RunConfig, out_dir: Path) -> None:
    d = config.data
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "compare.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ACROSS_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    caption = (
        f"Test negative log-likelihood on {d.name} (binarize {d.binarize or 'none'}, test {d.test_size or 'all'} points), "
        "nats per datapoint; bits_per_dim for images (nats / (D ln 2)). nll_method says how each row's number was computed: "
        "'exact' is the model's exact log-likelihood; 'dequantized' a flow's continuous density of uniformly dequantized "
        "levels (an upper bound on the discrete NLL); 'importance sampling, K=...' a VAE's estimate log (1/K) sum p(x, z)/q(z | x) "
        "(a lower bound on log p(x) in expectation, so its NLL is high by the gap)."
    )
    lines = [caption, "", "| " + " | ".join(ACROSS_COLUMNS) + " |", "|" + "---|" * len(ACROSS_COLUMNS)]
    for r in rows:
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else "" if r[c] is None else str(r[c]) for c in ACROSS_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    with atomic_path(out_dir / "compare.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
