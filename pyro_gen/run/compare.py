"""``compare``: train several guides of one config and tabulate their scores (``compare.csv``, ``compare.md``).

Generic over families: each variant sets ``guide.name``; the columns and the caption are the
family's (:attr:`~pyro_gen.families.Family.compare_columns`, ``compare_row``, ``compare_caption``).
A family without a guide section cannot be compared this way and says so.
"""

from __future__ import annotations

import copy
import csv
import shutil
import time
from pathlib import Path

import torch

from pyro_gen.config import RunConfig
from pyro_gen.errors import ConfigError
from pyro_gen.io import atomic_path
from pyro_gen.run.commands import check_config, train


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
