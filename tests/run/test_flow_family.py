"""The flow family (``model.kind: flow``) through the commands: scores by hand, figures, refusals, exact resume."""

import json
import math

import pytest
import torch
import yaml
from cli_support import assert_png, fails, run_cli

from pyro_gen.config import from_dict
from pyro_gen.data import load_dataset
from pyro_gen.data.toy import toy_log_density
from pyro_gen.errors import ConfigError
from pyro_gen.families import Unsupported, get_family
from pyro_gen.run import RunDir, analyze_run, compare, evaluate_run, sample_run, train, validate
from pyro_gen.run.data import fixed_test_data

torch.set_num_threads(1)

DIGITS = {
    "data": {"name": "digits", "train_size": 64, "valid_size": 16, "test_size": 20},
    "model": {"kind": "flow", "scales": 2, "channels": 4, "blocks": 1},
    "train": {"epochs": 1, "batch_size": 32, "progress": False},
}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("flow") / "digits"
    scores = train(from_dict(DIGITS), run_dir)
    return run_dir, scores


def test_an_image_flow_scores_its_dequantized_nll_in_nats_and_bits_per_dim(digits_run):
    run_dir, scores = digits_run
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["nll_method"] == "dequantized" and written["levels"] == 17 and written["test_points"] == 20
    assert written["bits_per_dim"] == pytest.approx(written["test_nll"] / (64 * math.log(2)), rel=1e-12)
    # by hand: the same seeded dequantization draw scored by the loaded model
    config = RunDir(run_dir).config()
    model, _, splits, _ = config.family.load(config, RunDir(run_dir))
    x = fixed_test_data(splits["test"], config.data.seed)
    from pyro_gen.rng import seeded

    with seeded(config.train.seed), torch.no_grad():
        nll = -model.log_prob(x)
    assert written["test_nll"] == pytest.approx(nll.mean().item(), rel=1e-6)
    assert "dequantized" in scores.summary() and "bits/dim" in scores.summary()
    for name in ("samples.png", "interpolation.png"):
        assert_png(run_dir / name, 64)


def test_the_interpolation_starts_and_ends_at_the_test_images(digits_run):
    run_dir, _ = digits_run
    config = RunDir(run_dir).config()
    model, _, splits, _ = config.family.load(config, RunDir(run_dir))
    x = splits["test"].x[:4]
    from pyro_gen.analysis.plots import latent_line

    line = latent_line(model.encode(x[:2]), model.encode(x[2:]), 5)
    assert torch.equal(model.decode(line[:, 0]), x[:2]) and torch.equal(model.decode(line[:, -1]), x[2:])


def test_a_flow_has_no_guide_to_compare_and_no_posterior_to_analyze(digits_run, tmp_path):
    run_dir, _ = digits_run
    with pytest.raises(ConfigError, match="model.kind: flow has no guide") as info:
        compare(from_dict(DIGITS), ["normal"], tmp_path / "cmp")
    assert "\n" not in str(info.value) and not (tmp_path / "cmp").exists()
    with pytest.raises(Unsupported, match="'analyze' is not available for model.kind: flow"):
        analyze_run(run_dir)
    with pytest.raises(ConfigError, match="does not apply to model.kind: flow"):
        from_dict({**DIGITS, "guide": {"name": "normal"}})


@pytest.mark.parametrize("architecture", ["realnvp", "spline"])
def test_a_2d_flow_writes_its_density_picture_and_its_kl_to_the_true_density(architecture, tmp_path):
    example = get_family("flow").example
    spline_only = {"bins": 4} if architecture == "spline" else {}  # other architectures refuse spline settings
    config = from_dict({**example, "model": {**example["model"], "architecture": architecture, **spline_only}})
    scores = train(config, tmp_path / "ring8")
    assert_png(tmp_path / "ring8" / "density.png", 200)
    test = load_dataset("ring8", "test", n=config.data.test_size, seed=config.data.seed).x
    true_nll = -toy_log_density("ring8", test).mean().item()
    assert scores["nll_method"] == "exact" and scores["bits_per_dim"] is None
    assert scores["model"].startswith(f"{architecture}:")
    assert scores["true_test_nll"] == pytest.approx(true_nll, rel=1e-9)
    assert scores["kl_estimate"] == pytest.approx(scores["test_nll"] - true_nll, rel=1e-9)
    paths = sample_run(tmp_path / "ring8", num=50)
    points = __import__("numpy").load(paths[1])
    assert points.shape == (50, 2)


def test_the_command_line_trains_evaluates_and_samples_a_flow(tmp_path, capsys):
    path = tmp_path / "flow.yaml"
    path.write_text(yaml.safe_dump(DIGITS))
    code, out = run_cli(["train", path, "--run-dir", tmp_path / "run"])
    assert code == 0 and "bits/dim" in out
    code, out = run_cli(["evaluate", tmp_path / "run"])
    assert code == 0 and "dequantized" in out
    assert run_cli(["sample", tmp_path / "run", "--num", "16"])[0] == 0 and (tmp_path / "run" / "samples.png").exists()
    assert "'analyze' is not available for model.kind: flow" in fails(["analyze", tmp_path / "run"], capsys)
    assert "--nll-samples" in fails(["evaluate", tmp_path / "run", "--nll-samples", "10"], capsys)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data": {"name": "frey_faces"}, "model": {"kind": "flow", "scales": 4}}, "7x5 \\(odd\\) before squeeze 3"),
        ({"model": {"kind": "flow", "architecture": "glow", "scales": 4}}, "odd"),
        ({"model": {"kind": "flow", "architecture": "glow", "norm": "batch"}}, "Glow's steps always begin with actnorm"),
        ({"model": {"kind": "flow", "alpha": 0.5}}, "model.alpha must be"),
        ({"model": {"kind": "flow", "scales": 0}}, "model.scales must be"),
        ({"model": {"kind": "flow", "architecture": "spline"}}, "spline couplings model vectors"),
        ({"data": {"name": "ring8"}, "model": {"kind": "flow", "architecture": "spline", "bins": 1}}, "model.bins must be"),
        ({"data": {"name": "ring8"}, "model": {"kind": "flow", "architecture": "spline", "bound": 0}}, "model.bound must be"),
        ({"train": {"batch_size": 1000, "epochs": 1}}, "larger than the 64 training points"),
        ({"model": {"kind": "flow", "bins": 32}}, "model.bins and model.bound shape spline couplings"),
    ],
)
def test_bad_settings_are_refused_in_one_line_before_anything_is_written(change, message, tmp_path):
    raw = {k: dict(v) for k, v in DIGITS.items()}
    for section, values in change.items():
        raw[section] = {**raw.get(section, {}), **values}
    with pytest.raises(ConfigError, match=message) as info:
        validate(from_dict(raw))
    assert "\n" not in str(info.value)


def test_a_run_stopped_after_one_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    """Actnorm's data-dependent initialization and the dequantization draws must not make a resumed run differ."""
    two = {**DIGITS, "train": {**DIGITS["train"], "epochs": 2}}
    train(from_dict(two), tmp_path / "straight")
    train(from_dict(DIGITS), tmp_path / "stopped")  # the same run, stopped after its first epoch
    RunDir(tmp_path / "stopped").save_config(from_dict(two))  # as a 2-epoch run killed after epoch 1 leaves it
    (tmp_path / "stopped" / "training.json").unlink()
    train(None, tmp_path / "stopped", resume=True)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert json.loads((tmp_path / "stopped" / "metrics.json").read_text())["test_nll"] == first["test_nll"]


def test_evaluate_again_gives_the_same_record(digits_run):
    run_dir, scores = digits_run
    assert evaluate_run(run_dir, figures=False).to_json() == scores.to_json()
