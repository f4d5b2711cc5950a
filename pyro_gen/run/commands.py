"""The generic commands: ``train``, ``evaluate``, ``sample`` and ``analyze`` on run directories.

None of them branches on the kind of model: the family named by ``model.kind``
(:mod:`pyro_gen.families`) does the family's part, and :class:`~pyro_gen.run.rundir.RunDir`
every file's. Each command that writes holds the run directory's lock.

Under ``torchrun`` (``torchrun --nproc_per_node N -m pyro_gen train CONFIG --run-dir D``) every rank runs
the command: they join the process group (:mod:`pyro_gen.distributed`), train and score together, and
rank 0 alone writes the run directory and holds its lock (the other ranks read it through
:class:`_ReadingRunDir`) and draws the figures.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from pyro_gen import distributed
from pyro_gen.config import RunConfig
from pyro_gen.errors import ConfigError, RunDirError
from pyro_gen.families import AnalyzeOptions, EvalOptions, Scores
from pyro_gen.run.data import check_device
from pyro_gen.run.rundir import RunDir


class _ReadingRunDir(RunDir):
    """A run directory as a rank other than 0 sees it in a data-parallel run: read like any, never written or locked."""

    def start_fresh(self) -> None:
        pass

    def save_config(self, config) -> None:
        pass

    def write_json(self, name: str, obj) -> Path:
        return self.path / name

    @contextlib.contextmanager
    def lock(self):
        yield self


def _run_dir(path) -> RunDir:
    """The run directory at ``path``; on a rank other than 0 of a data-parallel run, one that it only reads."""
    return RunDir(path) if distributed.is_main() else _ReadingRunDir(path)


def check_config(config: RunConfig) -> None:
    """Refuse combinations of settings that cannot work, before any data is loaded or any file written."""
    if not isinstance(config, RunConfig):
        raise ConfigError(f"expected a RunConfig (pyro_gen.config.load_config), got {type(config).__name__}")
    family = config.family
    if getattr(config.train, "precision", "float32") == "bf16" and family.bf16_refusal:
        raise ConfigError(f"train.precision: bf16 is not available for model.kind: {family.name}: {family.bf16_refusal}; use float32")
    family.check(config)


def validate(config: RunConfig, splits: dict | None = None) -> dict:
    """Every check ``train`` makes before it writes anything: the device, the family's settings, and the data
    against the model (loaded here unless ``splits`` are given). Returns the splits."""
    check_device(config.train.device, "train.device")
    check_config(config)
    family = config.family
    splits = family.load_data(config) if splits is None else splits
    family.check_data(config, splits)
    return splits


def train(config: RunConfig | None, run_dir, resume: bool = False, device: str | None = None) -> Scores:
    """Train the configured model into ``run_dir``, evaluate it on the test split and write its figures.

    ``resume=True`` continues the run in ``run_dir`` with its own ``config.yaml`` (``device`` may move
    it); a run killed at any moment, even before its first checkpoint, continues to the result an
    uninterrupted run gives. Returns the family's score record (the contents of ``metrics.json``).
    """
    run = RunDir(run_dir)
    if resume:
        if config is not None:
            raise ConfigError("resume=True continues the run with its own config.yaml: pass config=None")
        if not (run.path / run.CONFIG).is_file():
            raise RunDirError(f"cannot resume: {run.path} has no {run.CONFIG}, so it is not a run started by 'pyro-gen train'")
        config = run.config()
        if run.is_complete(config):
            raise RunDirError(
                f"{run.path} is complete (its training finished, see {run.TRAINING}); nothing to resume. Score it again with "
                f"'pyro-gen evaluate {run.path}', or train a new run into another --run-dir"
            )
    elif config is None:
        raise ConfigError("train needs a config (pyro_gen.config.load_config) unless resume=True")
    if device is not None:
        check_device(device)
        config.train.device = device
    distributed.setup(config.train.device)  # under torchrun: join the process group (gloo on CPU, NCCL on CUDA)
    run = _run_dir(run_dir)
    splits = validate(config)
    family = config.family
    with run.lock():
        if resume:
            if device is not None:  # a run may continue on another device; everything else stays as configured
                run.save_config(config)
        else:
            run.start_fresh()
        training = family.fit(config, splits, run, resume)
        run.write_training(training)  # written last: the run is complete
    distributed.barrier()  # every rank scores the run once rank 0 has written it
    return evaluate_run(run.path, device=config.train.device)


def evaluate_run(run_dir, nll_samples: int | None = None, device=None, figures: bool | None = None) -> Scores:
    """Score a run on its test split; write ``metrics.json`` (and figures). Returns the family's score record."""
    run = RunDir(run_dir)
    config = run.config()
    distributed.setup(device or config.train.device)
    run = _run_dir(run_dir)
    if not distributed.is_main():
        figures = False  # rank 0 draws them
    if nll_samples is not None and nll_samples < 1:
        raise ConfigError(f"--nll-samples must be a positive number of importance samples, got {nll_samples}")
    if device is not None:
        check_device(device)
    if not run.is_complete() and not (run.path / run.LAST).exists():
        raise RunDirError(
            f"{run.path} has no trained model yet (no {run.LAST}, no {run.TRAINING}); continue its training with "
            f"'pyro-gen train --resume --run-dir {run.path}'"
        )
    with run.lock():
        return config.family.evaluate(config, run, EvalOptions(nll_samples=nll_samples, device=device, figures=figures))


def sample_run(run_dir, num: int | None = None, out=None, seed: int = 0) -> list[Path]:
    """Write ``num`` samples from a run's model to ``out`` (default ``run_dir/samples.png``); returns the paths written."""
    if num is not None and num < 1:
        raise ConfigError(f"--num must be a positive number of samples, got {num}")
    run = RunDir(run_dir)
    config = run.config()
    out = Path(out) if out else run.path / "samples.png"
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: samples are written as a PNG image; give a path ending in .png")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    return config.family.sample(config, run, num, out, seed)


def analyze_run(run_dir, points: int | None = None, draws: int = 1000, seed: int = 0, khat_samples: int | None = None) -> list[Path]:
    """Bayesian diagnostics of a run with ArviZ, written into the run directory; returns the paths written.

    What is written is the family's (see its ``analyze``): a Gaussian mixture's posterior summary,
    trace / rank / pair / ppc plots and PSIS-LOO; a VAE's local posteriors and per-point k-hat.
    """
    from pyro_gen.analysis.psis import MIN_SAMPLES

    run = RunDir(run_dir)
    config = run.config()
    if points is not None and points < 1:
        raise ConfigError(f"--points must be a positive number of test points, got {points}")
    if draws < 4:
        raise ConfigError(f"--draws must be at least 4 (ESS and R-hat split each chain in two), got {draws}")
    if khat_samples is not None and khat_samples < MIN_SAMPLES:
        raise ConfigError(f"--khat-samples must be at least {MIN_SAMPLES}, the fewest draws whose tail can be fitted; got {khat_samples}")
    with run.lock():
        return config.family.analyze(config, run, AnalyzeOptions(points=points, draws=draws, seed=seed, khat_samples=khat_samples))
