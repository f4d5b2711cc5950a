"""The PixelCNN family through the command line: exact scores, samples, refusals, and an exact resume after kill -9.

Truths from outside the family: the test NLL recomputed from the checkpoint with the distribution's
``log_prob``, bits per dimension by the formula, and an uninterrupted run's checkpoints and metrics.
"""

import copy
import json
import math
import signal

import pytest
import torch
import yaml
from checkpoint_support import assert_same
from cli_support import assert_png, fails, run_cli
from test_run_reliability import history, paused, succeeds, temporaries

from pyro_gen.config import from_dict
from pyro_gen.errors import ConfigError
from pyro_gen.families import get_family
from pyro_gen.infer.trainer import load_checkpoint
from pyro_gen.models.pixelcnn import pixelcnn
from pyro_gen.run import sample_run, train
from pyro_gen.run.data import load_splits


def _config(tmp_path, **train):
    config = copy.deepcopy(get_family("pixelcnn").example)
    config["train"].update(train)
    path = tmp_path / "pixelcnn.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, config


def test_train_evaluate_sample_and_the_refusals_from_the_command_line(tmp_path, capsys):
    path, config = _config(tmp_path)
    run = tmp_path / "run"
    code, out = run_cli(["train", path, "--run-dir", run])
    assert code == 0, out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["nll_method"] == "exact" and metrics["levels"] == 17 and metrics["test_images"] == 30
    assert metrics["bits_per_dim"] == pytest.approx(metrics["test_nll"] / (64 * math.log(2)), rel=1e-12)
    assert f"test NLL {metrics['test_nll']:.3f} nats per image (exact)" in out
    # the same number from the checkpoint, with the distribution's log_prob on the test images as loaded here
    m = config["model"]
    model = pixelcnn((1, 8, 8), 17, m["channels"], m["layers"], m["first_kernel"])
    model.load_state_dict(load_checkpoint(run / metrics["checkpoint"])["model"])
    test = load_splits(from_dict(config).data, ("test",))["test"].x  # the run's seeded subset of 30
    with torch.no_grad():
        nll = -model.distribution(batch_shape=(30,)).log_prob(test).mean().item()
    assert metrics["test_nll"] == pytest.approx(nll, rel=1e-5)
    assert_png(run / "samples.png", 64)

    assert run_cli(["evaluate", run])[0] == 0
    assert json.loads((run / "metrics.json").read_text()) == metrics
    code, _ = run_cli(["sample", run, "--num", "4", "--out", tmp_path / "four.png"])
    assert code == 0 and (tmp_path / "four.png").exists()
    assert "a PixelCNN's test NLL is exact: drop --nll-samples" in fails(["evaluate", run, "--nll-samples", "10"], capsys)
    message = fails(["compare", "--config", path, "--guides", "normal", "--out", tmp_path / "cmp"], capsys)
    assert "model.kind: pixelcnn has no guide" in message
    assert "'analyze' is not available for model.kind: pixelcnn" in fails(["analyze", run], capsys)


def test_a_dataset_that_is_not_images_or_a_guide_section_is_refused_by_name(tmp_path, capsys):
    path = tmp_path / "iris.yaml"
    path.write_text(yaml.safe_dump({"data": {"name": "iris"}, "model": {"kind": "pixelcnn"}}))
    assert "a PixelCNN models quantized images (1, H, W), but 'iris'" in fails(["train", path, "--run-dir", tmp_path / "r"], capsys)
    path.write_text(yaml.safe_dump({"data": {"name": "digits"}, "model": {"kind": "pixelcnn"}, "guide": "normal"}))
    assert "config section 'guide' does not apply to model.kind: pixelcnn" in fails(["train", path, "--run-dir", tmp_path / "r"], capsys)
    path.write_text(yaml.safe_dump({"data": {"name": "digits"}, "model": {"kind": "pixelcnn", "kernel": 4}}))
    assert "model.kernel must be odd" in fails(["train", path, "--run-dir", tmp_path / "r"], capsys)


@pytest.mark.slow
def test_kill_9_mid_training_then_resume_ends_identical_to_an_uninterrupted_run(tmp_path):
    path, _ = _config(tmp_path, epochs=3)
    config = yaml.safe_load(path.read_text())
    config["eval"] = {"images": False}
    path.write_text(yaml.safe_dump(config))
    reference, run = tmp_path / "reference", tmp_path / "run"
    succeeds("train", path, "--run-dir", reference)
    # 100 images in batches of 25: 4 batches per epoch; draw 1 is the initialization pass, 7 is in epoch 2
    child = paused("train", path, "--run-dir", run, at=7, fault_dir=tmp_path / "faults")
    child.kill()
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    succeeds("train", "--resume", "--run-dir", run)
    for name in ("last.pt", "best.pt"):
        assert_same(load_checkpoint(reference / name), load_checkpoint(run / name), name)
    assert history(run) == history(reference)
    ours, theirs = (json.loads((r / "metrics.json").read_text()) for r in (run, reference))
    assert ours.pop("seconds_per_epoch") is not None and theirs.pop("seconds_per_epoch") is not None
    assert ours == theirs
    assert temporaries(run) == []


def test_a_class_conditional_run_reads_the_labels(tmp_path):
    config = copy.deepcopy(get_family("pixelcnn").example)
    config["model"]["conditional"] = True
    config["eval"] = {"images": False}
    scores = train(from_dict(config), tmp_path / "run")
    assert "conditional on 10 classes" in scores["model"]
    # the label embedding starts at zero: it moved only if the trainer gave the model the labels
    weights = load_checkpoint(tmp_path / "run" / "last.pt")["model"]["network.label_embedding.weight"]
    assert weights.abs().sum() > 0
    assert sample_run(tmp_path / "run", num=10)[0].exists()


def test_a_network_too_large_to_allocate_is_refused_before_anything_is_built(tmp_path):
    config = from_dict({"data": {"name": "digits"}, "model": {"kind": "pixelcnn", "channels": 4096, "layers": 1000}})
    with pytest.raises(ConfigError, match="make a network of about 4.2e\\+11 weights"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
