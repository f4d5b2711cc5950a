"""Run configuration: dataclasses read from YAML (safe loader) with ``key=value`` overrides.

Every key is checked on load: an unknown or misspelt key is an error that names it and
suggests the closest valid key, never silently ignored. A run directory stores the
resolved config as ``config.yaml``, so any result can be re-made from it.
"""

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pyro_gen.errors import ConfigError


@dataclass
class DataConfig:
    """Which data, where it lives, and which seeded subsets to use."""

    name: str = "binarized_mnist"
    data_dir: str | None = None
    binarize: str | None = None
    train_size: int | None = None
    valid_size: int | None = None
    test_size: int | None = None
    seed: int = 0


@dataclass
class ModelConfig:
    """The generative model, by ``kind``:

    * ``vae``: ``latent_dim``, ``hidden``, ``net`` (``mlp`` or ``conv``), ``likelihood``, ``likelihood_scale``;
    * ``gmm``: a Gaussian mixture of ``components`` components with ``covariance`` ``diag`` or ``full``;
    * ``gan``: a generator ``x = G(z)`` with ``z`` of size ``latent_dim`` and a critic, both ``net:
      mlp`` (vectors; generator ``hidden`` sizes, critic ``critic_hidden``, default ``hidden``) or
      ``net: dcgan`` (images; feature-map widths ``channels`` and ``critic_channels``, default by
      image size); ``conditional`` conditions both on the dataset's class labels; the critic can be
      spectrally normalized (``spectral_norm``) and score ``pack`` samples at once (PacGAN);
      ``prior`` is the distribution of ``z``: ``normal`` or ``uniform`` (on ``[-1, 1]``).
    """

    kind: str = "vae"
    latent_dim: int = 40
    hidden: list = field(default_factory=lambda: [300, 300])
    net: str = "mlp"
    likelihood: str = "bernoulli"
    likelihood_scale: float | str = "learned"
    components: int = 3
    covariance: str = "diag"
    critic_hidden: list | None = None
    channels: list | None = None
    critic_channels: list | None = None
    conditional: bool = False
    spectral_norm: bool = False
    pack: int = 1
    prior: str = "normal"


@dataclass
class GuideConfig:
    """The guide by name (``normal``, ``planar:10``, ...); its encoder uses the model's hidden sizes unless given.

    For ``model.kind: gmm`` the guide is an autoguide over the mixture's global sites:
    ``delta`` (MAP) or ``normal`` (mean-field Gaussian). A GAN (``model.kind: gan``) has no guide:
    its latent codes are not inferred, so this section stays at its defaults.
    """

    name: str = "normal"
    hidden: list | None = None
    global_guide: str = "normal"


@dataclass
class ObjectiveConfig:
    """The training objective and its options.

    A VAE: ``name`` ``elbo`` or ``iwae``, with ``num_particles``, ``beta``, ``warmup_epochs``,
    ``free_bits``, ``analytic_kl``. A GAN (``model.kind: gan``): ``name`` is the adversarial loss
    (``minimax``, ``non_saturating``, ``wgan_gp`` or ``hinge``); ``n_critic`` critic steps per
    generator step; ``lr_generator`` / ``lr_critic`` (``null``: ``train.lr``; two time-scale
    updates when they differ); ``betas`` of both Adam optimizers (``null``: ``[0.0, 0.9]`` for
    ``wgan_gp``, else ``[0.5, 0.999]``); ``gp_weight``, the gradient-penalty weight (``null``: 10 for
    ``wgan_gp``, else 0); ``ema_decay``: sample from a moving average of the generator's weights.
    """

    name: str = "elbo"
    num_particles: int = 1
    beta: float = 1.0
    warmup_epochs: int = 0
    free_bits: float = 0.0
    analytic_kl: bool = True
    n_critic: int = 1
    lr_generator: float | None = None
    lr_critic: float | None = None
    betas: list | None = None
    gp_weight: float | None = None
    ema_decay: float | None = None


@dataclass
class TrainConfig:
    """Optimisation and hardware.

    ``method: svi`` fits by stochastic gradient steps on the objective (the one trainer; a GAN's
    two players each have their own Adam, whose learning rate defaults to ``lr``);
    ``method: nuts`` (``model.kind: gmm`` only) samples the posterior with NUTS instead:
    ``num_samples`` draws per chain after ``warmup`` steps, ``chains`` chains (sequential when
    the machine has fewer free CPUs), ``jit`` compiles the potential energy.
    ``lr_schedule``: ``constant`` or ``linear`` (every learning rate, both GAN players' included,
    falls linearly to zero over the run; see :class:`~pyro_gen.infer.trainer.Trainer`).
    """

    method: str = "svi"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    patience: int | None = None
    seed: int = 0
    device: str = "cpu"
    clip_norm: float | None = None
    lr_schedule: str = "constant"
    progress: bool = True
    num_samples: int = 1000
    warmup: int = 1000
    chains: int = 1
    jit: bool = True


@dataclass
class EvalConfig:
    """Test-set evaluation after training (and for ``pyro-gen evaluate``).

    ``khat_samples``: importance draws per test point for the PSIS k-hat diagnostic of the
    guide. ``null`` (default): the test NLL's own ``nll_samples`` draws, at no extra cost;
    ``0``: no k-hat; another number: a second pass with that many draws.

    A GAN has no likelihood: it is scored by its samples (see :func:`pyro_gen.run.evaluate_run`),
    so only ``images`` (write the figures) applies to it.
    """

    nll_samples: int = 1000
    chunk_size: int = 32768
    images: bool = True
    khat_samples: int | None = None


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    guide: GuideConfig = field(default_factory=GuideConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig)}
_SECTION_TYPES = {
    "data": DataConfig,
    "model": ModelConfig,
    "guide": GuideConfig,
    "objective": ObjectiveConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}


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


def _check_type(key: str, value, annotation):
    """Reject values of the wrong kind (a string where a number is expected, ...), by the field's annotation."""
    kinds = typing.get_args(annotation) or (annotation,)  # ``int | None`` -> (int, NoneType)
    for kind in kinds:
        if _is_kind(kind, value):
            return float(value) if kind is float else value
    expected = " or ".join(_KIND_NAMES.get(k, getattr(k, "__name__", str(k))) for k in kinds)
    raise ConfigError(f"config key {key!r} must be {expected}, got {value!r}")


def from_dict(raw: dict) -> RunConfig:
    """Build a :class:`RunConfig` from nested dicts, checking every key and value type."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections ({', '.join(_SECTIONS)}), got {type(raw).__name__}")
    sections = {}
    for name, value in raw.items():
        if name not in _SECTION_TYPES:
            raise _unknown(str(name), _SECTION_TYPES)
        cls = _SECTION_TYPES[name]
        if name == "guide" and isinstance(value, str):
            value = {"name": value}
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"config section {name!r} must be a mapping, got {value!r}")
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, v in value.items():
            if key not in fields:
                raise _unknown(f"{name}.{key}", sorted(fields))
            kwargs[key] = _check_type(f"{name}.{key}", v, fields[key])
        sections[name] = cls(**kwargs)
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
        raise ConfigError(f"override {text!r}: cannot read the value as YAML ({e})") from None
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides) -> dict:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (raw or {}).items()}
    for text in overrides or []:
        path, value = parse_override(text)
        if len(path) != 2:
            raise ConfigError(f"override {text!r} must name a section and a key, e.g. model.latent_dim=20")
        section, key = path
        if section not in _SECTION_TYPES:
            raise _unknown(section, _SECTION_TYPES)
        current = raw.get(section)
        if isinstance(current, str):  # "guide: planar:10" shorthand
            current = {"name": current}
        current = dict(current or {})
        current[key] = value
        raw[section] = current
    return raw


def load_config(path=None, overrides=()) -> RunConfig:
    """Read a YAML config (a safe loader: no code runs) and apply ``key=value`` overrides."""
    raw = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = _safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a config must be a mapping of sections ({', '.join(_SECTIONS)}), got {type(raw).__name__}")
    return from_dict(apply_overrides(raw, overrides))


def save_config(config: RunConfig, path) -> None:
    """Write the resolved config atomically."""
    from pyro_gen.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
