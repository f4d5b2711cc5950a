"""Run configuration: dataclasses read from YAML (safe loader) with ``key=value`` overrides.

A config has up to six sections. ``data``, ``train`` and ``eval`` are generic; the model family
named by ``model.kind`` (see :mod:`pyro_gen.families`) declares the dataclass of every section it
reads, so a VAE config cannot carry a GAN's keys, and a GAN config has no ``guide`` section.

Every key is checked on load: an unknown or misspelt key is an error that names it and suggests
the closest valid key, a value of the wrong type is an error naming the key, and every number is
range-checked by the bounds its field declares (:func:`setting`): sizes at least 1,
probabilities in [0, 1], and so on. A run directory stores the resolved config as
``config.yaml``, so any result can be re-made from it.

Run directories written by release 0.1 stored every field of one all-family layout (a GAN's
config held ``model.likelihood``, a VAE's ``model.pack``); :func:`from_dict` with ``legacy=True``
(used for a run directory's own ``config.yaml``) drops such keys of the old layout that the
family does not read: in that release they did nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pyro_gen.errors import ConfigError

#: Upper bound of any integer setting that sizes something (layer widths, latent sizes, sample
#: counts): far above any real use, it keeps a typo such as ``latent_dim: 4000000000`` from
#: trying to allocate the machine's memory.
HUGE = 10_000_000


def setting(default, *, low=None, high=None, low_open=False, high_open=False, choices=None, item_low=None, item_high=None, doc=""):
    """A config field with its checks: ``low`` / ``high`` bounds (closed unless ``*_open``),
    ``choices`` (allowed values), ``item_low`` / ``item_high`` (bounds of each entry of a list).

    The bounds are checked by :func:`check_section` when a config is read, so every command sees
    only values that make sense.
    """
    meta = {
        "low": low,
        "high": high,
        "low_open": low_open,
        "high_open": high_open,
        "choices": choices,
        "item_low": item_low,
        "item_high": item_high,
        "doc": doc,
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def size(default, high=HUGE, doc=""):
    """An integer size: at least 1 (``None`` allowed where the field's type says so)."""
    return setting(default, low=1, high=high, doc=doc)


def widths(default, doc=""):
    """A list of layer widths, each at least 1."""
    return setting(default, item_low=1, item_high=HUGE, doc=doc)


# -- the generic sections ------------------------------------------------------------------------
@dataclass
class DataConfig:
    """Which data, where it lives, and which seeded subsets to use."""

    name: str = "binarized_mnist"
    data_dir: str | None = None
    binarize: str | None = setting(None, choices=(None, "static", "threshold", "dynamic"))
    train_size: int | None = size(None)
    valid_size: int | None = size(None)
    test_size: int | None = size(None)
    seed: int = setting(0, low=0, high=2**63 - 1)


#: Training precisions (:mod:`pyro_gen.infer.precision`): ``float32``, or ``bf16`` (autocast, densities in float32).
PRECISIONS = ("float32", "bf16")


@dataclass
class TrainConfig:
    """Optimisation and hardware, read by every family that trains by gradient steps.

    ``lr_schedule``: ``constant`` or ``linear`` (every learning rate, both GAN players' included,
    falls linearly to zero over the run; see :class:`~pyro_gen.infer.trainer.Trainer`).
    """

    epochs: int = size(10)
    batch_size: int = size(128)
    lr: float = setting(1e-3, low=0, low_open=True, high=10)
    patience: int | None = size(None)
    seed: int = setting(0, low=0, high=2**63 - 1)
    device: str = "cpu"
    clip_norm: float | None = setting(None, low=0, low_open=True)
    lr_schedule: str = setting("constant", choices=("constant", "linear"))
    progress: bool = True
    #: torch's intra-op threads while training; null: chosen from the CPUs the process may use and the size of a
    #: step, one share per rank under torchrun (:func:`pyro_gen.infer.trainer.choose_threads`)
    threads: int | None = setting(None, low=1, high=1024)
    #: several ranks on one machine's CPUs (torchrun): true binds each to its own share of the CPUs the process may
    #: use, false leaves them to the scheduler (:func:`pyro_gen.infer.trainer.bind_rank_cpus`)
    bind_cpus: bool = False
    #: ``float32``, or ``bf16``: each training step's networks under bfloat16 autocast, every density and the loss in
    #: float32, validation and evaluation in float32 (:mod:`pyro_gen.infer.precision`); for CUDA, off by default
    precision: str = setting("float32", choices=PRECISIONS)


@dataclass
class EvalConfig:
    """Test-set evaluation after training (and for ``pyro-gen evaluate``): ``images`` writes the figures."""

    images: bool = True


@dataclass
class RunConfig:
    """A whole config: the generic sections and the sections of the family named by ``model.kind``.

    ``guide`` and ``objective`` are ``None`` for a family that has no such section (a GAN has no guide).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: typing.Any = None
    guide: typing.Any = None
    objective: typing.Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        if self.model is None:  # the default family, with every section at its defaults
            filled = from_dict({})
            self.model, self.guide, self.objective = filled.model, filled.guide, filled.objective
        # a generic section given as its base class takes the family's subclass (with the subclass's defaults)
        sections = self.family.sections
        for name in ("train", "eval"):
            cls, value = sections.get(name), getattr(self, name)
            if cls is not None and type(value) is not cls and isinstance(value, GENERIC_SECTIONS[name]):
                setattr(self, name, cls(**dataclasses.asdict(value)))

    @property
    def family(self):
        """The :class:`~pyro_gen.families.Family` of ``model.kind``."""
        from pyro_gen.families import get_family

        return get_family(self.model.kind)

    def to_dict(self) -> dict:
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


SECTION_NAMES = ("data", "model", "guide", "objective", "train", "eval")
GENERIC_SECTIONS = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}

#: Every key of the one config layout of release 0.1, by section; a run directory written by it
#: holds all of them (see the module docstring).
LEGACY_KEYS = {
    "model": {
        "kind", "latent_dim", "hidden", "net", "likelihood", "likelihood_scale", "components", "covariance", "critic_hidden",
        "channels", "critic_channels", "conditional", "spectral_norm", "pack", "prior",
    },
    "guide": {"name", "hidden", "global_guide"},
    "objective": {
        "name", "num_particles", "beta", "warmup_epochs", "free_bits", "analytic_kl", "n_critic", "lr_generator", "lr_critic",
        "betas", "gp_weight", "ema_decay",
    },
    "train": {
        "method", "epochs", "batch_size", "lr", "patience", "seed", "device", "clip_norm", "lr_schedule", "progress",
        "num_samples", "warmup", "chains", "jit",
    },
    "eval": {"nll_samples", "chunk_size", "images", "khat_samples"},
}  # fmt: skip


def _unknown(key: str, valid) -> ConfigError:
    close = difflib.get_close_matches(key.split(".")[-1], list(valid), n=1)
    hint = f"; did you mean {'.'.join(key.split('.')[:-1] + [close[0]])!r}?" if close else ""
    prefix = ".".join(key.split(".")[:-1])
    valid_keys = ", ".join(f"{prefix}.{v}" if prefix else v for v in valid)
    return ConfigError(f"unknown config key {key!r}{hint} Valid keys: {valid_keys}")


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list", type(None): "null"}


def _is_kind(kind, value) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind in (int, float):  # an integer is a fine number; a bool is neither
        return isinstance(value, int if kind is int else (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _annotation(cls, name: str):
    hints = typing.get_type_hints(cls)
    return hints[name]


def _check_type(key: str, value, annotation):
    """Reject values of the wrong kind (a string where a number is expected, ...), by the field's annotation."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    kinds = typing.get_args(annotation) if union else (annotation,)  # ``int | None`` -> (int, NoneType)
    kinds = tuple(typing.get_origin(k) or k for k in kinds)  # list[int] -> list
    for kind in kinds:
        if _is_kind(kind, value):
            if kind is float:
                value = float(value)
                if math.isnan(value):
                    raise ConfigError(f"config key {key!r} must be a number, got NaN")
            return value
    expected = " or ".join(_KIND_NAMES.get(k, getattr(k, "__name__", str(k))) for k in kinds)
    raise ConfigError(f"config key {key!r} must be {expected}, got {value!r}")


def _bound_text(meta) -> str:
    parts = []
    if meta["low"] is not None:
        parts.append(f"{'>' if meta['low_open'] else '>='} {meta['low']:g}")
    if meta["high"] is not None:
        parts.append(f"{'<' if meta['high_open'] else '<='} {meta['high']:g}")
    return " and ".join(parts)


def _in_bounds(value, low, high, low_open=False, high_open=False) -> bool:
    if low is not None and (value < low or (low_open and value == low)):
        return False
    return high is None or not (value > high or (high_open and value == high))


def check_section(name: str, section) -> None:
    """Check every field of a section against the bounds and choices it declares (:func:`setting`)."""
    for f in dataclasses.fields(section):
        meta, value, key = f.metadata, getattr(section, f.name), f"{name}.{f.name}"
        if not meta or value is None:
            continue
        if meta.get("choices") is not None and value not in meta["choices"]:
            choices = ", ".join(repr(c) for c in meta["choices"] if c is not None)
            raise ConfigError(f"{key} is {value!r}; choose one of {choices}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value}")
            if not _in_bounds(value, meta["low"], meta["high"], meta["low_open"], meta["high_open"]):
                raise ConfigError(f"{key} must be {_bound_text(meta)}, got {value:g}")
        if isinstance(value, list) and (meta.get("item_low") is not None or meta.get("item_high") is not None):
            ok = all(isinstance(v, int) and not isinstance(v, bool) and _in_bounds(v, meta["item_low"], meta["item_high"]) for v in value)
            if not ok:
                raise ConfigError(
                    f"{key} must be a list of integers from {meta['item_low']} to {meta['item_high']} (layer widths), e.g. [128, 128]; "
                    f"got {value}"
                )


def _section(name: str, cls, value: dict, legacy: bool):
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, v in value.items():
        if key not in fields:
            if legacy and key in LEGACY_KEYS.get(name, ()):
                continue  # a key of release 0.1's one layout that this family never read
            raise _unknown(f"{name}.{key}", sorted(fields))
        kwargs[key] = _check_type(f"{name}.{key}", v, _annotation(cls, key))
    section = cls(**kwargs)
    check_section(name, section)
    return section


def from_dict(raw: dict, legacy: bool = False) -> RunConfig:
    """Build a :class:`RunConfig` from nested dicts, checking every key, value type and range.

    The family named by ``model.kind`` (default ``vae``) chooses the dataclass of each section.
    ``legacy``: the config of a run directory written by release 0.1 (see the module docstring).
    """
    from pyro_gen.families import get_family

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections ({', '.join(SECTION_NAMES)}), got {type(raw).__name__}")
    raw = dict(raw)
    for name, value in list(raw.items()):
        if name not in SECTION_NAMES:
            raise _unknown(str(name), SECTION_NAMES)
        if name == "guide" and isinstance(value, str):
            value = {"name": value}
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"config section {name!r} must be a mapping, got {value!r}")
        raw[name] = value
    kind = raw.get("model", {}).get("kind", "vae")
    if not isinstance(kind, str):
        raise ConfigError(f"config key 'model.kind' must be a string naming a model family, got {kind!r}")
    family = get_family(kind)
    sections = {}
    for name in SECTION_NAMES:
        cls = family.sections.get(name, GENERIC_SECTIONS.get(name))
        if cls is None:
            given = raw.get(name)
            if given and not (legacy and set(given) <= LEGACY_KEYS.get(name, set())):
                raise ConfigError(
                    f"config section {name!r} does not apply to model.kind: {kind} ({family.absent_sections.get(name, 'no such section')}); "
                    f"remove the {name} section"
                )
            sections[name] = None
            continue
        sections[name] = _section(name, cls, raw.get(name, {}), legacy)
    return RunConfig(**sections)


class _SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` as a number (as YAML 1.2 does), not as the string ``'1e-3'``."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def _safe_load(text: str):
    return yaml.load(text, Loader=_SafeLoader)  # a SafeLoader: no Python tags, no code runs


def parse_override(text: str) -> tuple[list[str], object]:
    """``"train.epochs=5"`` -> ``(["train", "epochs"], 5)``; the value is read as YAML (safe)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.epochs=5")
    try:
        parsed = _safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: cannot read the value as YAML ({' '.join(str(e).split())})") from None
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides) -> dict:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (raw or {}).items()}
    for text in overrides or []:
        path, value = parse_override(text)
        if len(path) != 2:
            raise ConfigError(f"override {text!r} must name a section and a key, e.g. model.latent_dim=20")
        section, key = path
        if section not in SECTION_NAMES:
            raise _unknown(section, SECTION_NAMES)
        current = raw.get(section)
        if isinstance(current, str):  # "guide: planar:10" shorthand
            current = {"name": current}
        if current is not None and not isinstance(current, dict):
            raise ConfigError(f"config section {section!r} must be a mapping, got {current!r}")
        current = dict(current or {})
        current[key] = value
        raw[section] = current
    return raw


def read_yaml_mapping(path) -> dict:
    """The mapping of a YAML config file (safe loader); a :class:`ConfigError` naming the file for anything else.

    An empty or comment-only file is refused: it would silently train every default.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path} ({type(e).__name__}: {e})") from None
    try:
        raw = _safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    if raw is None:
        raise ConfigError(
            f"{path} is empty (or only comments): it would train every default on the default dataset; "
            "give at least a data section, e.g. 'data: {name: digits}'"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections ({', '.join(SECTION_NAMES)}), got {type(raw).__name__}")
    return raw


def load_config(path=None, overrides=(), legacy: bool = False) -> RunConfig:
    """Read a YAML config (a safe loader: no code runs) and apply ``key=value`` overrides."""
    raw = read_yaml_mapping(path) if path is not None else {}
    return from_dict(apply_overrides(raw, overrides), legacy=legacy)


def save_config(config: RunConfig, path) -> None:
    """Write the resolved config atomically."""
    from pyro_gen.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
