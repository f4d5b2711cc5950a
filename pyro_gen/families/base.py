"""The protocol every model family implements, and the typed score record it writes.

A *family* is everything the run layer needs to know about one kind of model: the dataclasses of
its config sections, its checks, how it loads data, fits, rebuilds itself from a run directory,
scores, draws figures and samples, and (optionally) what ``analyze`` writes. The commands in
:mod:`pyro_gen.run` hold no branch on the kind of model; they call these hooks.

A command a family does not support raises :class:`Unsupported` (a :class:`ConfigError`) with
the family's own one-line reason (:attr:`Family.unsupported`).

The pattern follows torchvision's model registry (a name -> builder table read by
``get_model`` / ``list_models``, one test over every entry) and zuko's one file per flow family.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pyro_gen.errors import ConfigError

if typing.TYPE_CHECKING:  # pragma: no cover
    from pyro_gen.config import RunConfig
    from pyro_gen.run.rundir import RunDir


class Unsupported(ConfigError):
    """A command that a model family does not support."""


def finite(value):
    """A float for JSON, or ``None`` when it is NaN or infinite (JSON has no such numbers)."""
    return value if value is not None and math.isfinite(value) else None


@dataclass
class Scores(Mapping):
    """The test scores of a run, as written to ``metrics.json``: one typed record per family.

    Subclasses declare their fields (in the order of ``metrics.json``); a field whose JSON key
    is not an identifier names it in its metadata (``{"key": "khat_share_above_0.7"}``); fields that
    apply to some runs only share a ``group`` (see :meth:`to_json`).
    :meth:`summary` is the one line the CLI prints. The record reads like the dict it writes
    (``scores["test_nll"]``), so code that read ``metrics.json`` keeps working.
    """

    def to_json(self) -> dict:
        """The ``metrics.json`` object. A field in a ``group`` (its metadata) is left out when every field of
        its group is ``None``: the group does not apply to this run (a NUTS run has no epochs)."""
        fields = dataclasses.fields(self)
        present = {f.metadata["group"] for f in fields if "group" in f.metadata and getattr(self, f.name) is not None}
        return {
            f.metadata.get("key", f.name): getattr(self, f.name)
            for f in fields
            if "group" not in f.metadata or f.metadata["group"] in present
        }

    @classmethod
    def from_json(cls, data: dict):
        """The record of a ``metrics.json`` (keys of the record only; keys it does not know are refused)."""
        by_key = {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(by_key)
        if unknown:
            raise KeyError(f"keys {sorted(unknown)} are not fields of {cls.__name__}")
        return cls(**{by_key[k].name: v for k, v in data.items()})

    def summary(self) -> str:  # pragma: no cover - every family's record defines it
        raise NotImplementedError

    # the Mapping protocol, over the JSON form
    def __getitem__(self, key):
        return self.to_json()[key]

    def __iter__(self):
        return iter(self.to_json())

    def __len__(self):
        return len(self.to_json())


@dataclass
class EvalOptions:
    """What ``evaluate`` was asked for on the command line / in the Python call (``None``: the run's config)."""

    nll_samples: int | None = None
    device: str | None = None
    figures: bool | None = None


@dataclass
class AnalyzeOptions:
    """What ``analyze`` was asked for: see :func:`pyro_gen.run.analyze_run`."""

    points: int | None = None
    draws: int = 1000
    seed: int = 0
    khat_samples: int | None = None


class Family:
    """One kind of model behind the generic commands. Subclass it, set the class attributes, register it.

    :cvar name: the ``model.kind`` that selects the family.
    :cvar description: one line for ``pyro-gen list``.
    :cvar sections: config section name -> dataclass, for each section the family reads beyond
        the generic ``data`` / ``train`` / ``eval`` (it may replace those too, with subclasses).
    :cvar absent_sections: section name -> why the family has no such section (its error message).
    :cvar scores: the :class:`Scores` subclass of its ``metrics.json``.
    :cvar unsupported: command -> the one-line reason it is not supported.
    :cvar compare_columns: the score keys ``compare`` tabulates (``compare`` varies ``guide.name``).
    :cvar example: a small config (nested dicts) that trains in seconds on offline data: the family's
        example, and what the contract test (``tests/run/test_families.py``) runs every command on.
    :cvar bf16_refusal: why ``train.precision: bf16`` is refused for this family, or ``None`` where its
        training steps run under bf16 autocast with its densities in float32 (:mod:`pyro_gen.infer.precision`).
    """

    name: str = ""
    description: str = ""
    sections: dict[str, type] = {}
    absent_sections: dict[str, str] = {}
    scores: type[Scores] = Scores
    unsupported: dict[str, str] = {}
    compare_columns: tuple[str, ...] = ()
    example: dict = {}
    bf16_refusal: str | None = "its training steps have not been made safe for bf16 autocast"

    # -- config ---------------------------------------------------------------------------------
    def check(self, config: RunConfig) -> None:
        """Refuse combinations of settings that cannot work, before any data is loaded or file written."""

    def label(self, config: RunConfig) -> str:
        """A short label for a default run-directory name."""
        return self.name

    # -- data -----------------------------------------------------------------------------------
    def load_data(self, config: RunConfig, splits=("train", "valid", "test")) -> dict:
        """The splits the family uses (see :func:`pyro_gen.run.data.load_splits`)."""
        from pyro_gen.run.data import load_splits

        return load_splits(config.data, splits)

    def check_data(self, config: RunConfig, splits: dict) -> None:
        """Refuse data that the configured model cannot fit (shape, values, labels, sizes)."""

    # -- the commands ---------------------------------------------------------------------------
    def load_model(self, config: RunConfig, run: RunDir, device="cpu") -> tuple:
        """``(model, guide, splits)`` of a run with its trained weights (a model without a guide: ``guide`` is ``None``)."""
        model, guide, splits, _ = self.load(config, run, device)
        return model, guide, splits

    def load(self, config: RunConfig, run: RunDir, device="cpu"):
        raise self.refuse("load")

    def fit(self, config: RunConfig, splits: dict, run: RunDir, resume: bool) -> dict:
        """Fit the model into ``run``; returns what goes into ``training.json``."""
        raise self.refuse("train")

    def evaluate(self, config: RunConfig, run: RunDir, options: EvalOptions) -> Scores:
        """Score the run on its test split (and write its figures when asked); returns the record."""
        raise self.refuse("evaluate")

    def sample(self, config: RunConfig, run: RunDir, num: int | None, out: Path, seed: int) -> list[Path]:
        """Write samples of the fitted model; returns the paths written."""
        raise self.refuse("sample")

    def sample_images(self, config: RunConfig, run: RunDir, num: int, seed: int):
        """``(images, how)``: ``num`` images ``(num, C, H, W)`` in [0, 1] drawn from the fitted model with ``seed``, and
        how they were drawn, in a few words for titles. What ``sample`` writes for image data, and what a figure
        across families draws (``bench/family_grids.py``)."""
        raise self.refuse("sample")

    def write_image_samples(self, config: RunConfig, run: RunDir, num: int, out: Path, seed: int) -> Path:
        """The titled grid of :meth:`sample_images` at ``out``."""
        images, how = self.sample_images(config, run, num, seed)
        return save_sample_grid(images, how, config.data.name, seed, out)

    def analyze(self, config: RunConfig, run: RunDir, options: AnalyzeOptions) -> list[Path]:
        """Bayesian diagnostics into the run directory; returns the paths written."""
        raise self.refuse("analyze")

    def compare_row(self, scores: Scores) -> dict:
        """One row of ``compare``'s table."""
        return {c: scores.get(c) for c in self.compare_columns}

    def compare_caption(self, config: RunConfig) -> str:
        """The protocol line above ``compare``'s table."""
        return ""

    def density_row(self, config: RunConfig, scores: Scores) -> dict:
        """The run's test negative log-likelihood for a table across families (``compare --configs`` / ``--runs``):
        ``{"test_nll": nats per datapoint, "nll_method": how it was computed, "bits_per_dim": or None}``.

        The default reads the record's ``test_nll``, ``nll_method`` and ``bits_per_dim`` (the explicit
        densities write them); a family whose record has no NLL cannot enter such a table and says so.
        """
        if scores.get("test_nll") is None or not scores.get("nll_method"):
            raise Unsupported(f"model.kind: {self.name} reports no test log-likelihood, so it cannot enter a table of test NLLs")
        return {"test_nll": scores["test_nll"], "nll_method": scores["nll_method"], "bits_per_dim": scores.get("bits_per_dim")}

    def supports(self, command: str) -> bool:
        """True when the family implements ``command`` (``sample``, ``analyze``, ...) and does not refuse it."""
        return command not in self.unsupported and getattr(type(self), command) is not getattr(Family, command)

    def refuse(self, command: str) -> Unsupported:
        reason = self.unsupported.get(command, "the family does not implement it")
        return Unsupported(f"'{command}' is not available for model.kind: {self.name}: {reason}")


# -- shared by the families that train with the one Trainer ----------------------------------------
def make_trainer(config: RunConfig, model, guide, objective, run: RunDir | None, patience: int | None = None):
    """The one :class:`~pyro_gen.infer.trainer.Trainer`, set from the config's ``train`` section."""
    from pyro_gen.infer.trainer import Trainer

    t = config.train
    return Trainer(
        model, guide, objective, lr=t.lr, batch_size=t.batch_size, epochs=t.epochs, device=t.device, seed=t.seed,
        run_dir=None if run is None else run.path, patience=patience, progress=t.progress, clip_norm=t.clip_norm,
        lr_schedule=t.lr_schedule, threads="auto" if getattr(t, "threads", None) is None else t.threads,
        precision=getattr(t, "precision", "float32"), bind_cpus=getattr(t, "bind_cpus", False),
    )  # fmt: skip


def fit_with_trainer(trainer, train, valid, run: RunDir, resume: bool) -> list[dict]:
    """``trainer.fit``; a resume of a run killed before its first checkpoint starts it from the beginning.

    The config and the seed are the run's, so that start gives what the killed run would have given.
    """
    resume = resume and (run.path / run.LAST).is_file()
    return trainer.fit(train, valid, resume=resume)


def restore(model, guide, ckpt: dict, path, x=None) -> None:
    """Load a checkpoint's weights into ``model`` and ``guide`` (eval mode), refusing broken ones.

    A forward pass on ``x`` (two datapoints) first creates the guide's lazy parameters (autoguides),
    which a ``load_state_dict`` needs to exist. A model fitted without a guide (``guide=None``: an
    explicit density) has no lazy parameters, and ``x`` is not needed.
    """
    from pyro_gen.infer.trainer import initialize

    if guide is not None:
        initialize(model, guide, x[:2])
    model.load_state_dict(ckpt["model"])
    if guide is not None:
        guide.load_state_dict(ckpt["guide"])
    check_finite_weights(path, *(m for m in (model, guide) if m is not None))
    for m in (model, guide):
        if m is not None:
            m.eval()


def save_sample_grid(images, how: str, data_name: str, seed: int, out: Path) -> Path:
    """A square grid of sampled images, titled with how many, how they were drawn, the data and the seed."""
    from pyro_gen.analysis import save_image_grid

    n = len(images)
    return save_image_grid(images.cpu(), out, nrow=max(1, int(math.sqrt(n))), title=f"{n} {how} ({data_name}, seed {seed})")


def check_batch_size(config, n: int, what: str = "training points") -> None:
    """Refuse a ``train.batch_size`` larger than the ``n`` training datapoints, before anything is written."""
    if config.train.batch_size > n:
        raise ConfigError(
            f"train.batch_size {config.train.batch_size} is larger than the {n} {what}: lower train.batch_size or raise data.train_size"
        )


def check_finite_weights(path, *modules) -> None:
    """Refuse weights that hold NaN or infinite values: scoring them would give a NaN (or a huge) score, not an error."""
    import torch

    from pyro_gen.errors import TrainingDivergedError

    for module in modules:
        for name, value in module.state_dict().items():
            if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise TrainingDivergedError(
                    f"the weights in {path} are broken ({name} holds NaN or infinite values): the run diverged; "
                    "train it again with a lower train.lr or a train.clip_norm"
                )


def epochs_record(history: list[dict], epochs: int) -> dict:
    """The part of ``training.json`` every trained family writes (``epochs``: the configured number)."""
    return {
        "epochs": len(history),
        "stopped_early": len(history) < epochs,
        "seconds_per_epoch": sum(r["seconds"] for r in history) / max(len(history), 1),
        "final_train_loss": history[-1]["train_loss"] if history else math.nan,
        # the last epoch's intra-op threads and ranks (records of runs before issue #12 have neither), and rank 0's
        # CPUs when the ranks were bound to them (train.bind_cpus)
        **{k: history[-1][k] for k in ("threads", "ranks", "bound_cpus") if history and k in history[-1]},
    }
