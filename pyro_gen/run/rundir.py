"""A run directory: one object for its paths, its config, its checkpoints, its metrics and its figures.

A run directory holds everything needed to re-make its results::

    config.yaml      the resolved config (read back with a safe YAML loader)
    metrics.jsonl    one JSON line per epoch                          (families trained by the Trainer)
    last.pt, best.pt checkpoints (torch.load(..., weights_only=True), with a digest of their bytes)
    posterior.nc     a NUTS posterior as ArviZ InferenceData          (a Gaussian mixture sampled by NUTS)
    training.json    epochs and time; written when fitting finished: the run is complete
    metrics.json     the test scores with their protocol (the family's typed record)
    *.png            figures

Every file problem is one clear :class:`~pyro_gen.errors.RunDirError` naming the file and what to
do: a missing or garbled ``config.yaml`` or ``metrics.json``, a damaged checkpoint. Nothing in a run
directory from someone else runs code (safe YAML, ``weights_only`` checkpoints).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from pyro_gen.errors import ConfigError, RunDirError


class RunDir:
    """The run directory at ``path`` (it need not exist yet)."""

    CONFIG = "config.yaml"
    METRICS = "metrics.json"
    HISTORY = "metrics.jsonl"
    TRAINING = "training.json"
    POSTERIOR = "posterior.nc"
    LAST = "last.pt"
    BEST = "best.pt"

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # -- what is there ------------------------------------------------------------------------
    def holds_run(self) -> bool:
        """True when a run was started here (a config or a checkpoint exists)."""
        return any((self.path / name).exists() for name in (self.CONFIG, self.LAST, self.BEST, self.POSTERIOR, self.HISTORY))

    def is_complete(self, config=None) -> bool:
        """True when fitting finished: ``training.json`` (written last, after the final checkpoint) records
        as many epochs as ``config`` asks for, or an early stop (a run whose config now asks for more epochs
        is not complete: ``--resume`` continues it)."""
        training = self.training() if (self.path / self.TRAINING).is_file() else None
        if training is None:
            return False
        if config is None or "epochs" not in training or training.get("stopped_early"):
            return True
        return training["epochs"] >= config.train.epochs

    def require(self) -> RunDir:
        """``self``, or a :class:`RunDirError` when the directory is not a run directory."""
        if not self.path.is_dir():
            raise RunDirError(f"{self.path} is not a directory; give the run directory written by 'pyro-gen train'")
        if not (self.path / self.CONFIG).is_file():
            present = [n for n in (self.LAST, self.BEST, self.POSTERIOR, self.HISTORY) if (self.path / n).exists()]
            if present:  # a run whose config is gone: its files cannot be read without it
                raise RunDirError(
                    f"{self.path / self.CONFIG} is missing: {self.path} holds a run ({', '.join(present)}) that cannot be read "
                    f"without its config; restore {self.CONFIG} from a copy of the run, or train the run again"
                )
            raise RunDirError(f"{self.path} is not a pyro_gen run directory: it has no {self.CONFIG} (written by 'pyro-gen train')")
        return self

    def start_fresh(self) -> None:
        """Make the directory for a new run; refuse one that already holds a run.

        Training anew into an old run's directory would mix two runs: a kill before the new run's
        first checkpoint would let ``--resume`` continue the *old* weights under the new config.
        """
        if self.holds_run():
            raise RunDirError(
                f"{self.path} already holds a run ({', '.join(n for n in (self.CONFIG, self.LAST, self.POSTERIOR) if (self.path / n).exists())}): "
                f"continue it with 'pyro-gen train --resume --run-dir {self.path}', or choose another --run-dir (or remove it)"
            )
        self.path.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def lock(self):
        """Hold the directory's lock: a second process writing the same run gets a clear error naming the holder."""
        from pyro_gen.io import run_lock

        self.path.mkdir(parents=True, exist_ok=True)
        with run_lock(self.path):
            yield self

    # -- config ---------------------------------------------------------------------------------
    def config(self):
        """The run's config (release 0.1 layouts included, see :mod:`pyro_gen.config`)."""
        from pyro_gen.config import load_config

        self.require()
        try:
            return load_config(self.path / self.CONFIG, legacy=True)
        except ConfigError as e:
            raise RunDirError(
                f"{self.path} is not a pyro_gen run directory: its {self.CONFIG} is not a pyro_gen config ({e}); "
                "restore it, or train the run again"
            ) from None

    def save_config(self, config) -> None:
        from pyro_gen.config import save_config

        save_config(config, self.path / self.CONFIG)

    # -- JSON files -----------------------------------------------------------------------------
    def write_json(self, name: str, obj) -> Path:
        from pyro_gen.io import atomic_path

        path = self.path / name
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(obj, indent=2) + "\n")
        return path

    def read_json(self, name: str, required: bool = False) -> dict:
        """A JSON object file of the run (``{}`` when absent and not ``required``)."""
        path = self.path / name
        if not path.exists():
            if required:
                raise RunDirError(f"{path} does not exist: the run has not been evaluated; run 'pyro-gen evaluate {self.path}'")
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RunDirError(f"{path} is damaged ({type(e).__name__}: {e}); {self._json_fix(name)}") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{path} is damaged (a JSON object was expected); {self._json_fix(name)}")
        return data

    def _json_fix(self, name: str) -> str:
        """What to do about a damaged JSON file ``name`` of the run."""
        if name != self.TRAINING:
            return f"remove it and run 'pyro-gen evaluate {self.path}' again"
        if (self.path / self.LAST).is_file():
            # evaluate alone would score the run without its training record; a resume rewrites it first
            return (
                f"remove it and run 'pyro-gen train --resume --run-dir {self.path}' (it rewrites {name} from "
                f"{self.HISTORY} and {self.LAST}, then scores the run)"
            )
        return "restore it from a copy of the run, or train the run again"

    def training(self) -> dict:
        """What fitting recorded in ``training.json`` (``{}`` before it finished)."""
        return self.read_json(self.TRAINING)

    def write_training(self, record: dict) -> Path:
        return self.write_json(self.TRAINING, record)

    def write_scores(self, scores) -> Path:
        """Write ``metrics.json`` from a family's typed :class:`~pyro_gen.families.Scores` record."""
        return self.write_json(self.METRICS, scores.to_json())

    def scores(self, family):
        """The typed record of ``metrics.json`` for ``family``."""
        data = self.read_json(self.METRICS, required=True)
        try:
            return family.scores.from_json(data)
        except (KeyError, TypeError) as e:
            raise RunDirError(
                f"{self.path / self.METRICS} does not hold {family.name} scores ({e}); run 'pyro-gen evaluate {self.path}'"
            ) from None

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint(self, prefer: str = BEST) -> Path:
        """The checkpoint to load: ``prefer`` when present, else ``last.pt`` (which one is recorded by the caller)."""
        for name in dict.fromkeys((prefer, self.LAST)):
            if (self.path / name).is_file():
                return self.path / name
        raise RunDirError(
            f"{self.path} has no checkpoint ({prefer} / {self.LAST}): its training did not finish an epoch; "
            f"continue it with 'pyro-gen train --resume --run-dir {self.path}'"
        )

    def load_checkpoint(self, prefer: str = BEST, device="cpu") -> tuple[dict, str]:
        """``(checkpoint, file name)``: the checkpoint chosen by :meth:`checkpoint`, verified and loaded."""
        from pyro_gen.infer.trainer import load_checkpoint

        path = self.checkpoint(prefer)
        return load_checkpoint(path, map_location=device), path.name

    def figure(self, name: str) -> Path:
        return self.path / name
