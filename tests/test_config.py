"""Run configuration: key checking with suggestions, value types, overrides, safe YAML, round trip."""

from pathlib import Path

import pytest
import yaml

from pyro_gen.config import DataConfig, RunConfig, TrainConfig, from_dict, load_config, parse_override, save_config
from pyro_gen.errors import ConfigError
from pyro_gen.families.vae import ELBOConfig as ObjectiveConfig
from pyro_gen.families.vae import VAEGuideConfig as GuideConfig
from pyro_gen.families.vae import VAEModelConfig as ModelConfig

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- unknown keys --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, named, suggested",
    [
        ({"trian": {"epochs": 2}}, "'trian'", "'train'"),
        ({"train": {"epocs": 2}}, "'train.epocs'", "'train.epochs'"),
        ({"model": {"latentdim": 2}}, "'model.latentdim'", "'model.latent_dim'"),
        ({"objective": {"warmup": 2}}, "'objective.warmup'", "'objective.warmup_epochs'"),
        ({"model": {"kind": "gmm", "component": 2}}, "'model.component'", "'model.components'"),
        ({"model": {"kind": "gmm", "covariances": "full"}}, "'model.covariances'", "'model.covariance'"),
        ({"model": {"kind": "gmm"}, "train": {"num_sample": 10}}, "'train.num_sample'", "'train.num_samples'"),
        ({"model": {"kind": "gmm"}, "train": {"chain": 4}}, "'train.chain'", "'train.chains'"),
        ({"model": {"kind": "gan", "pak": 4}}, "'model.pak'", "'model.pack'"),
        ({"eval": {"khat_sample": 100}}, "'eval.khat_sample'", "'eval.khat_samples'"),
    ],
)
def test_unknown_key_is_named_with_the_closest_valid_key(raw, named, suggested):
    with pytest.raises(ConfigError) as info:
        from_dict(raw)
    message = str(info.value)
    assert f"unknown config key {named}" in message
    assert f"did you mean {suggested}?" in message


def test_unknown_key_in_a_yaml_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="'train.epocs'.*'train.epochs'"):
        load_config(write(tmp_path, "train:\n  epocs: 3\n"))


@pytest.mark.parametrize("override, named", [("train.epocs=3", "'train.epochs'"), ("trian.epochs=3", "'train'")])
def test_override_of_an_unknown_key_is_an_error(override, named):
    with pytest.raises(ConfigError, match=f"did you mean {named}"):
        load_config(None, [override])


@pytest.mark.parametrize("override", ["train.epochs", "=3", "epochs=3", "train.sub.epochs=3"])
def test_malformed_override_is_an_error(override):
    with pytest.raises(ConfigError, match="override"):
        load_config(None, [override])


# -- value types ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "section, key, value, kind",
    [
        ("train", "epochs", "ten", "vae"),
        ("train", "epochs", 2.5, "vae"),
        ("train", "epochs", True, "vae"),  # a bool is not an integer here
        ("train", "lr", "fast", "vae"),
        ("train", "progress", "yes please", "vae"),
        ("train", "progress", 1, "vae"),
        ("model", "hidden", 300, "vae"),
        ("train", "patience", "ten", "vae"),  # optional keys are checked too
        ("train", "clip_norm", "big", "vae"),
        ("data", "train_size", 1.5, "vae"),
        ("guide", "hidden", 300, "vae"),
        ("train", "device", 0, "vae"),
        ("train", "epochs", None, "vae"),  # null only where the key is optional
        ("model", "components", "three", "gmm"),
        ("model", "components", 2.0, "gmm"),
        ("train", "chains", None, "gmm"),
        ("train", "jit", "yes", "gmm"),
        ("train", "method", 1, "gmm"),
        ("eval", "khat_samples", 10.5, "vae"),
    ],
)
def test_wrong_value_type_is_an_error_naming_the_key(section, key, value, kind):
    raw = {"model": {"kind": kind}}
    raw.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError, match=f"'{section}.{key}'"):
        from_dict(raw)


def test_values_of_the_right_type_are_accepted():
    config = from_dict(
        {
            "train": {"lr": 1, "patience": 3, "clip_norm": None, "progress": False},
            "model": {"likelihood_scale": 0.5},
            "data": {"train_size": 100, "binarize": "dynamic"},
        }
    )
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)  # an integer is a fine number
    assert (config.train.patience, config.train.clip_norm, config.train.progress) == (3, None, False)
    assert config.model.likelihood_scale == 0.5
    assert from_dict({"model": {"likelihood_scale": "learned"}}).model.likelihood_scale == "learned"
    assert (config.data.train_size, config.data.binarize) == (100, "dynamic")


# -- overrides -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, path, value",
    [
        ("train.epochs=5", ["train", "epochs"], 5),
        ("train.lr=0.002", ["train", "lr"], 0.002),
        ("train.lr=1e-3", ["train", "lr"], 0.001),  # YAML 1.1 would read this as the string '1e-3'
        ("train.lr=2.5E-4", ["train", "lr"], 2.5e-4),
        ("train.lr=1.5e2", ["train", "lr"], 150.0),  # so would this (no sign in the exponent)
        ("model.hidden=[64, 32]", ["model", "hidden"], [64, 32]),
        ("train.patience=null", ["train", "patience"], None),
        ("train.patience=", ["train", "patience"], None),
        ("train.progress=false", ["train", "progress"], False),
        ("train.progress=true", ["train", "progress"], True),
        ("guide.name=planar:4", ["guide", "name"], "planar:4"),
        ("data.name=digits", ["data", "name"], "digits"),
        (" train.epochs =5", ["train", "epochs"], 5),
    ],
)
def test_override_values_are_parsed_as_yaml(text, path, value):
    got_path, got = parse_override(text)
    assert got_path == path
    assert got == value and type(got) is type(value)


def test_overrides_apply_on_top_of_the_file(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 40\n  lr: 0.002\nmodel:\n  hidden: [128, 128]\n")
    config = load_config(path, ["train.epochs=3", "train.lr=1e-3", "model.hidden=[8]", "train.patience=null", "train.progress=false"])
    assert (config.train.epochs, config.train.lr, config.model.hidden) == (3, 0.001, [8])
    assert config.train.patience is None and config.train.progress is False
    assert config.train.batch_size == TrainConfig().batch_size  # untouched keys keep their defaults
    assert config.model.latent_dim == ModelConfig().latent_dim


def test_exponent_floats_in_yaml_files_are_numbers(tmp_path):
    config = load_config(write(tmp_path, "train:\n  lr: 1e-3\n  clip_norm: 5e+1\nmodel:\n  likelihood_scale: 1e-2\n"))
    assert (config.train.lr, config.train.clip_norm, config.model.likelihood_scale) == (0.001, 50.0, 0.01)


def test_override_with_a_wrongly_typed_value_names_the_key():
    with pytest.raises(ConfigError, match="'train.epochs'"):
        load_config(None, ["train.epochs=many"])


# -- the guide shorthand ---------------------------------------------------------------------
def test_guide_shorthand_string_means_the_guide_name(tmp_path):
    config = load_config(write(tmp_path, "guide: planar:4\n"))
    assert config.guide == GuideConfig(name="planar:4")
    # an override of another guide key keeps the shorthand's name
    config = load_config(write(tmp_path, "guide: planar:4\n"), ["guide.global_guide=delta"])
    assert (config.guide.name, config.guide.global_guide) == ("planar:4", "delta")


@pytest.mark.parametrize("name", ["gmm_iris_map.yaml", "gmm_nuts.yaml"])
def test_shipped_gmm_configs_load_and_pass_the_run_checks(name):
    from pyro_gen.run import check_config

    config = load_config(REPO / "configs" / name)
    check_config(config)  # no ConfigError: a setting the run layer would refuse
    assert config.model.kind == "gmm" and config.model.components == 3 and config.model.covariance == "full"
    if name == "gmm_nuts.yaml":
        assert (config.data.name, config.train.method, config.train.chains) == ("gmm2d", "nuts", 4)
    else:
        assert (config.data.name, config.guide.name, config.train.method) == ("iris", "delta", "svi")


def test_gmm_and_sampler_keys_have_defaults_and_types():
    config = from_dict({"model": {"kind": "gmm", "components": 2}, "train": {"method": "nuts", "chains": 2}})
    assert (config.model.components, config.model.covariance) == (2, "diag")
    assert (config.train.num_samples, config.train.warmup, config.train.chains, config.train.jit) == (1000, 1000, 2, True)
    assert (
        from_dict({"eval": {"khat_samples": None}}).eval.khat_samples is None
        and from_dict({"eval": {"khat_samples": 0}}).eval.khat_samples == 0
    )


def test_shipped_quickstart_config_loads():
    config = load_config(REPO / "configs" / "quickstart.yaml")
    assert config.guide.name == "planar:4"
    assert (config.data.name, config.data.binarize, config.train.lr, config.train.patience) == ("digits", "dynamic", 0.002, 10)


# -- safe loading ----------------------------------------------------------------------------
def test_yaml_python_tags_are_refused_and_never_run(tmp_path, capfd):
    path = write(tmp_path, 'data: !!python/object/apply:os.system ["echo hacked"]\n')
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    captured = capfd.readouterr()
    assert "hacked" not in captured.out + captured.err


def test_yaml_python_tags_run_no_code_control_included(tmp_path):
    marker = tmp_path / "code-ran"
    text = f'data: !!python/object/apply:os.mkdir ["{marker}"]\n'
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, text))
    with pytest.raises(ConfigError):
        load_config(None, [f'data.name=!!python/object/apply:os.mkdir ["{marker}"]'])
    assert not marker.exists()
    yaml.unsafe_load(text)  # control: the payload is live, an unsafe loader would have run it
    assert marker.is_dir()


# -- file shape ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, kind", [("- train\n- model\n", "list"), ("just a string\n", "str"), ("42\n", "int")])
def test_config_that_is_not_a_mapping_is_a_clear_error(tmp_path, text, kind):
    with pytest.raises(ConfigError, match=f"must be a mapping.*got {kind}"):
        load_config(write(tmp_path, text))


def test_section_that_is_not_a_mapping_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="section 'train' must be a mapping"):
        load_config(write(tmp_path, "train: [1, 2]\n"))


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is empty .or only comments.: it would train every default"):
        load_config(write(tmp_path, "# nothing but a comment\n"))
    assert load_config(write(tmp_path, "train:\n", "empty_section.yaml")).train == TrainConfig()


def test_malformed_yaml_is_a_config_error_naming_the_file(tmp_path):
    path = write(tmp_path, "train: {epochs: 3\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path)


# -- round trip --------------------------------------------------------------------------------
def test_save_then_load_gives_an_equal_config(tmp_path):
    config = RunConfig(
        data=DataConfig(name="digits", binarize="dynamic", train_size=500, valid_size=None, seed=3),
        model=ModelConfig(latent_dim=2, hidden=[8, 4], likelihood="gaussian", likelihood_scale=0.25),
        guide=GuideConfig(name="iaf:2", hidden=[16]),
        objective=ObjectiveConfig(name="iwae", num_particles=5, beta=0.5, free_bits=1e-5),
        train=TrainConfig(epochs=3, lr=1e-4, patience=None, clip_norm=10.0, progress=False),
    )
    path = tmp_path / "config.yaml"
    save_config(config, path)
    assert load_config(path) == config
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary file left
    # the saved file is plain YAML: readable without pyro_gen, no Python tags
    assert "!!python" not in path.read_text()
    assert yaml.safe_load(path.read_text())["train"]["lr"] == 1e-4


def test_default_config_round_trips(tmp_path):
    save_config(RunConfig(), tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == RunConfig()


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_passes_every_check_before_training(path):
    """Every config in configs/ loads unchanged and passes the checks ``train`` makes before it writes anything."""
    from pyro_gen.errors import DataNotFoundError
    from pyro_gen.run import validate

    config = load_config(path)
    try:
        validate(config)
    except DataNotFoundError as e:  # only where the offline data directory is not set
        pytest.skip(str(e).splitlines()[0])


@pytest.mark.parametrize(
    ("override", "match"), [("model.prior=vamp:x", "model.prior: unknown prior"), ("model.top_latent_dim=0", "top_latent_dim")]
)
def test_vae_prior_and_hierarchy_keys_are_checked_before_training(override, match):
    from pyro_gen.config import apply_overrides, from_dict
    from pyro_gen.run import validate

    with pytest.raises(ConfigError, match=match):
        validate(from_dict(apply_overrides({"data": {"name": "digits"}}, [override])))
