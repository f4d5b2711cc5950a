"""What a new user met on a fresh clone (issue #9, item 8), each now a clear line or a correct, recorded behaviour."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_support import fails, run_cli

from pyro_gen.families.gan import GANScores
from pyro_gen.infer.trainer import load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
TINY = [
    "train.epochs=1", "data.train_size=60", "data.valid_size=20", "data.test_size=20", "model.hidden=[8]", "model.latent_dim=2",
    "train.batch_size=20", "eval.nll_samples=25", "train.progress=false", "eval.images=false",
]  # fmt: skip
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("newcomer") / "run"
    code, out = run_cli(["train", QUICKSTART, *TINY, "--run-dir", run_dir])
    assert code == 0, out
    return run_dir


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    shutil.copytree(run_dir, tmp_path / "copy")
    return tmp_path / "copy"


@NO_CUDA
def test_evaluate_on_cuda_without_cuda_blames_the_flag_not_the_checkpoint(finished_run, tmp_path, capsys):
    message = fails(["evaluate", _copy(finished_run, tmp_path), "--device", "cuda"], capsys)
    assert "--device cuda: torch sees no CUDA device on this machine; use --device cpu" in message
    assert "checkpoint" not in message


@NO_CUDA
def test_train_on_cuda_without_cuda_answers_in_the_flags_words(tmp_path, capsys):
    message = fails(["train", QUICKSTART, *TINY, "--device", "cuda", "--run-dir", tmp_path / "run"], capsys)
    assert "use --device cpu" in message and "device='cpu'" not in message
    assert not (tmp_path / "run").exists()


def test_a_fresh_train_into_a_directory_holding_a_run_is_refused(finished_run, tmp_path, capsys):
    # killed before its first epoch, such a run would let --resume continue the old weights under the new config
    run_dir = _copy(finished_run, tmp_path)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    message = fails(["train", QUICKSTART, *TINY, "model.latent_dim=3", "--run-dir", run_dir], capsys)
    assert "already holds a run" in message and "--resume" in message
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_a_failed_compare_leaves_no_output_directory(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--data", "digits", "--guides", "normal", "--epochs", 1, "--train-size", 40, "--test-size", 20, "--out", out]
    message = fails([*argv, "model.hidden=[8]", "model.likelihood=bernoulli", "train.batch_size=20", "train.progress=false"], capsys)
    assert "binar" in message
    assert not out.exists()


def test_nan_weights_are_an_error_not_a_nan_score(finished_run, tmp_path, capsys):
    run_dir = _copy(finished_run, tmp_path)
    before = (run_dir / "metrics.json").read_text()
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(run_dir / name)
        ckpt["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
        save_checkpoint(ckpt, run_dir / name)
    message = fails(["evaluate", run_dir], capsys)
    assert "broken" in message and "best.pt" in message
    assert (run_dir / "metrics.json").read_text() == before  # nothing silently rewritten


def test_evaluate_records_which_checkpoint_it_scored(finished_run, tmp_path):
    run_dir = _copy(finished_run, tmp_path)
    assert json.loads((run_dir / "metrics.json").read_text())["checkpoint"] == "best.pt"
    (run_dir / "best.pt").unlink()
    code, out = run_cli(["evaluate", run_dir, "--no-figures"])
    assert code == 0, out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["checkpoint"] == "last.pt" and metrics["protocol"]["checkpoint"] == "last.pt"


def test_a_comment_only_config_is_refused_instead_of_training_every_default(tmp_path, capsys):
    config = tmp_path / "empty.yaml"
    config.write_text("# my settings, to be written\n")
    assert "is empty (or only comments)" in fails(["train", config, "--run-dir", tmp_path / "run"], capsys)
    assert "needs a config file" in fails(["train", "--run-dir", tmp_path / "run"], capsys)
    assert not (tmp_path / "run").exists()


def test_frey_faces_compare_chooses_a_continuous_likelihood_from_the_dataset_and_says_so(tmp_path):
    out = tmp_path / "cmp"
    argv = ["compare", "--data", "frey_faces", "--guides", "normal,iaf:2", "--epochs", 1, "--train-size", 256, "--test-size", 16]
    code, printed = run_cli([*argv, "--nll-samples", 25, "--out", out, "model.hidden=[16]", "model.latent_dim=2", "train.progress=false"])
    assert code == 0, printed
    for guide in ("normal", "iaf-2"):
        run_dir = out / guide
        assert "likelihood: continuous_bernoulli" in (run_dir / "config.yaml").read_text()  # the resolved config
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["likelihood"].startswith("continuous_bernoulli (chosen from the dataset: frey_faces holds")
    # a user's explicit choice still wins
    code, printed = run_cli([*argv[:4], "normal", *argv[5:], "--out", tmp_path / "g", "model.likelihood=gaussian", "model.hidden=[16]"])
    assert code == 0, printed
    assert json.loads((tmp_path / "g" / "normal" / "metrics.json").read_text())["likelihood"].startswith("gaussian (given in the config")


def test_the_gan_headline_leads_with_the_informative_figures():
    # an untrained, collapsed generator has precision 1 and recall 0: the line must not read as a success
    scores = GANScores(
        frechet_distance=993.0, kid=40.0, kid_std=None, precision=1.0, recall=0.0, feature_space="domain:mnist28", num_samples=2000,
        references={"untrained_generator": {"frechet_distance": 993.0}, "train_split": {"frechet_distance": 4.9}},
    )  # fmt: skip
    line = scores.summary()
    assert line.startswith("Frechet distance 993 (untrained generator 993, real images 4.9), recall 0.000")
    assert line.index("recall") < line.index("precision")
