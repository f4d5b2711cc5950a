"""A seeded fuzz of configs: every nonsense variant is refused with one clear line, never a traceback, never accepted.

Variants start from each family's ``example`` config and the shipped configs, and change one thing:
a value of the wrong type, a zero / negative / huge / NaN / infinite size, an unknown key, a bad
guide name, a batch larger than the data, an empty or non-mapping YAML file. Each is by
construction a setting no run can use, so it must end in a :class:`~pyro_gen.errors.PyroGenError`
from ``pyro-gen train`` (exit status 2, one line on stderr) before anything is written. Controls:
valid variants of the same configs pass every check.
"""

import dataclasses
import math
import random
from pathlib import Path

import pytest
import yaml

from pyro_gen.cli import main
from pyro_gen.config import HUGE, from_dict, load_config
from pyro_gen.families import family_names, get_family
from pyro_gen.run import validate

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["quickstart.yaml", "gmm_iris_map.yaml", "gan_ring8.yaml"]  # small enough to validate on offline data
NUM_VARIANTS = 330


def _bases() -> list[dict]:
    bases = [get_family(kind).example for kind in family_names() if kind in ("vae", "gmm", "gan")]
    bases += [yaml.safe_load((REPO / "configs" / name).read_text()) for name in SHIPPED]
    return bases


def _fields(raw: dict) -> list[tuple[str, dataclasses.Field]]:
    """Every (section, field) of the config's family, with its declared checks."""
    config = from_dict(raw)
    out = []
    for section in ("data", "model", "guide", "objective", "train", "eval"):
        obj = getattr(config, section)
        if obj is not None:
            out += [(section, f) for f in dataclasses.fields(obj) if f.name not in ("kind", "data_dir", "device", "name")]
    return out


def _bad_values(field: dataclasses.Field, default) -> list:
    """Values that no run can use for this field (by its type and its declared bounds)."""
    meta = field.metadata or {}
    values = [{"a": 1}]  # a mapping is never a setting's value
    kind = type(default) if default is not None else None
    if isinstance(default, bool):
        return values + ["yes please", 1, 0.5, [True]]
    if meta.get("choices") is not None:
        values += ["no-such-choice", 3, [meta["choices"][-1]]]
    if meta.get("item_low") is not None:  # widths
        values += [[0], [-4], [HUGE * 10], ["wide"], [1.5], "300"]
    if meta.get("low") is not None:
        low = meta["low"]
        values += [low - 1, -1e9] + ([low] if meta.get("low_open") else [])
        if isinstance(low, int) and low >= 1:
            values.append(0)
    if meta.get("high") is not None:
        values += [meta["high"] * 10 + 1]
    if kind in (int, float) or meta.get("low") is not None:
        values += ["many", [3], float("nan")] + ([float("inf")] if kind is float or meta.get("low") is not None else [])
        if kind is int or (meta.get("low") == 1 and not isinstance(default, float)):
            values.append(2.5)
    return values


def _variants(seed: int = 0) -> list[tuple[str, object]]:
    """``(description, raw YAML text or mapping)`` of nonsense configs, seeded."""
    rng = random.Random(seed)
    bases = _bases()
    variants: list[tuple[str, object]] = [
        ("empty file", ""),
        ("comments only", "# nothing here\n"),
        ("a list", "- data\n- model\n"),
        ("a number", "3\n"),
        ("a string", "just words\n"),
        ("a section that is a list", {"train": [1, 2]}),
        ("a section that is a number", {"model": 4}),
        ("model.kind unknown", {"model": {"kind": "transformer"}}),
        ("model.kind not a string", {"model": {"kind": 3}}),
    ]
    for base in bases:
        for guide in ("planar:0", "iaf:x", "normal:3", "", "planar:99999999999999999999", "iaf:-1", "flow"):
            if "guide" in from_dict(base).to_dict():
                variants.append((f"guide {guide!r}", {**base, "guide": {"name": guide}}))
        variants.append(("batch larger than the data", {**base, "train": {**base.get("train", {}), "batch_size": 1_000_000}}))
    while len(variants) < NUM_VARIANTS:
        base = rng.choice(bases)
        raw = yaml.safe_load(yaml.safe_dump(base))
        roll = rng.random()
        if roll < 0.12:  # an unknown key
            section = rng.choice(["data", "model", "train", "eval"])
            key = rng.choice(["epoch", "lr_rate", "hiden", "latentdim", "samples", "sead", "batchsize", "pak"])
            raw.setdefault(section, {})[key] = 3
            variants.append((f"unknown key {section}.{key}", raw))
            continue
        section, field = rng.choice(_fields(base))
        default = getattr(getattr(from_dict(base), section), field.name)
        value = rng.choice(_bad_values(field, default))
        raw.setdefault(section, {})
        if isinstance(raw[section], str):
            raw[section] = {"name": raw[section]}
        raw[section][field.name] = value
        variants.append((f"{section}.{field.name}={value!r}", raw))
    return variants


VARIANTS = _variants()


def test_the_fuzz_has_at_least_300_variants():
    assert len(VARIANTS) >= 300


@pytest.mark.parametrize("index", range(len(VARIANTS)), ids=[d for d, _ in VARIANTS])
def test_every_nonsense_config_is_refused_with_one_clear_line(index, tmp_path, capsys):
    description, raw = VARIANTS[index]
    path = tmp_path / "config.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
    capsys.readouterr()
    code = main(["train", str(path), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2, f"{description}: accepted (exit {code})"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyro-gen train: error: "), f"{description}: {err}"
    assert not (tmp_path / "run").exists(), f"{description}: wrote the run directory before refusing"


@pytest.mark.parametrize("base", range(len(_bases())))
def test_valid_variants_of_the_same_configs_pass_every_check(base, tmp_path):
    raw = _bases()[base]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path, ["train.epochs=1", "train.seed=7", "data.seed=3"])
    validate(config)
    assert config.train.seed == 7 and math.isfinite(config.train.lr)
