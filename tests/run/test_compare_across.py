"""``compare --configs`` / ``--runs``: one table of test NLLs across model families, each row saying how its NLL was computed."""

import csv
import json
import subprocess
import sys

import pytest

from pyro_gen.config import from_dict
from pyro_gen.errors import ConfigError
from pyro_gen.run import compare_configs, compare_runs

DATA = {"name": "digits", "binarize": "threshold", "train_size": 60, "valid_size": 20, "test_size": 20}
TRAIN = {"epochs": 1, "batch_size": 20, "progress": False}


def configs():
    return {
        "vae": from_dict({"data": DATA, "model": {"latent_dim": 2, "hidden": [8]}, "train": TRAIN, "eval": {"nll_samples": 10}}),
        "pixelcnn": from_dict({"data": DATA, "model": {"kind": "pixelcnn", "channels": 4, "layers": 1, "first_kernel": 3}, "train": TRAIN}),
    }


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("across")
    return out, compare_configs(configs(), out)


def test_one_table_holds_each_family_with_the_method_of_its_nll(compared):
    out, rows = compared
    by_kind = {r["kind"]: r for r in rows}
    assert by_kind["vae"]["nll_method"] == "importance sampling, K=10"
    assert by_kind["pixelcnn"]["nll_method"] == "exact"
    for name, row in zip(("vae", "pixelcnn"), rows):
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert row["test_nll"] == metrics["test_nll"]
        # bits per dimension of an 8x8 image: nats / (64 ln 2)
        assert row["bits_per_dim"] == pytest.approx(metrics["test_nll"] / (64 * 0.6931471805599453), rel=1e-6)
    with open(out / "compare.csv") as f:
        assert [r["kind"] for r in csv.DictReader(f)] == ["vae", "pixelcnn"]
    table = (out / "compare.md").read_text()
    assert "importance sampling, K=10" in table and "| exact |" in table and "digits" in table


def test_the_table_from_run_directories_is_the_same(compared, tmp_path):
    out, rows = compared
    again = compare_runs([out / "vae", out / "pixelcnn"], tmp_path)
    assert again == rows


def test_runs_on_different_test_sets_are_refused_by_name(compared, tmp_path):
    out, _ = compared
    other = configs()
    other["pixelcnn"].data.test_size = 30
    with pytest.raises(ConfigError, match="'pixelcnn' has data"):
        compare_configs(other, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_family_without_a_likelihood_is_refused_before_training(tmp_path):
    gan = from_dict({"data": {"name": "ring8", "train_size": 100, "test_size": 50}, "model": {"kind": "gan"}, "train": TRAIN})
    with pytest.raises(ConfigError, match="reports no test log-likelihood"):
        compare_configs({"gan": gan}, tmp_path / "g")
    assert not (tmp_path / "g").exists()


def test_the_command_line_takes_exactly_one_way_to_compare(compared, tmp_path):
    out, _ = compared
    cmd = [sys.executable, "-m", "pyro_gen", "compare", "--out", str(tmp_path / "c")]
    both = subprocess.run(cmd + ["--guides", "normal", "--runs", str(out / "vae")], capture_output=True, text=True)
    assert both.returncode != 0 and "exactly one of --guides" in both.stderr and "Traceback" not in both.stderr
    ok = subprocess.run(cmd + ["--runs", str(out / "vae"), str(out / "pixelcnn")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "(2 runs)" in ok.stdout and "| exact |" in ok.stdout
