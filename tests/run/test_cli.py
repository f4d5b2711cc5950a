"""End-to-end tests of the ``pyro-gen`` command line, through ``pyro_gen.cli.main([...])`` and the installed script.

Every run is tiny (scikit-learn's bundled 8x8 digits, 200 training images, latent 2, hidden [16],
K=10 importance samples; Gaussian mixtures on iris and on 60 points of gmm2d) and lives in a tmp
directory. Runs are trained once per module and shared: tests that would change them (evaluate,
resume, analyze) work on a copy.
"""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_support import assert_png as _assert_png
from cli_support import assert_train_refused_before_writing, run_cli
from cli_support import fails as _fails
from cli_support import read_jsonl as _read_jsonl

from pyro_gen.cli import main
from pyro_gen.infer.trainer import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
# The repository sits next to the ``shared`` folder (as in tests/data/conftest.py): <parent>/main/tests/test_cli.py.
SHARED_DATA = REPO.parent / "shared" / "data"
QUICKSTART = REPO / "configs" / "quickstart.yaml"

# quickstart.yaml made tiny: a few seconds of CPU per run, no progress bars in the test log
TINY = [
    "data.train_size=200",
    "data.valid_size=50",
    "data.test_size=50",
    "model.latent_dim=2",
    "model.hidden=[16]",
    "guide.name=planar:2",
    "eval.nll_samples=10",
    "train.progress=false",
]
EPOCHS = 2
RUN_FILES = [
    "config.yaml",
    "metrics.jsonl",
    "last.pt",
    "best.pt",
    "metrics.json",
    "samples.png",
    "reconstructions.png",
    "interpolation.png",
]
FIGURES = ["samples.png", "reconstructions.png", "interpolation.png"]


@pytest.fixture(autouse=True)
def _offline_data(monkeypatch):
    # never look in (or download into) ~/.pyro_gen/data
    monkeypatch.setenv("PYRO_GEN_DATA", str(SHARED_DATA))


_run = run_cli


def _train_tiny(run_dir: Path, epochs: int) -> tuple[int, str]:
    return _run(["train", QUICKSTART, *TINY, f"train.epochs={epochs}", "--run-dir", run_dir])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, str]:
    """One tiny 2-epoch run, trained once for the whole module (to save CPU); treat it as read-only."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYRO_GEN_DATA", str(SHARED_DATA))
        code, out = _train_tiny(run_dir, EPOCHS)
    assert code == 0, out
    return run_dir, out


def _copy_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    return copy


# -- train -----------------------------------------------------------------------------------------
def test_train_writes_every_file_of_a_run_directory(trained_run):
    run_dir, out = trained_run
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    assert not missing, f"missing from the run directory: {missing}"
    assert f"run directory: {run_dir}" in out
    assert "test NLL" in out and "K=10" in out


def test_train_config_yaml_holds_the_quickstart_config_with_the_overrides(trained_run):
    run_dir, _ = trained_run
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    # the overrides
    assert config["data"]["train_size"] == 200 and config["data"]["test_size"] == 50
    assert config["model"]["latent_dim"] == 2 and config["model"]["hidden"] == [16]
    assert config["guide"]["name"] == "planar:2"
    assert config["train"]["epochs"] == EPOCHS and config["train"]["progress"] is False
    assert config["eval"]["nll_samples"] == 10
    # what quickstart.yaml sets and no override touched
    assert config["data"]["name"] == "digits" and config["data"]["binarize"] == "dynamic"
    assert config["train"]["lr"] == 0.002 and config["train"]["batch_size"] == 64


def test_train_metrics_jsonl_has_one_line_per_epoch(trained_run):
    run_dir, _ = trained_run
    records = _read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    for r in records:
        # digits has a validation split, so every epoch is also scored on it
        assert torch.isfinite(torch.tensor([r["train_loss"], r["valid_loss"], r["seconds"]])).all(), r


def test_train_checkpoints_load_with_weights_only(trained_run):
    run_dir, _ = trained_run
    for name in ("last.pt", "best.pt"):
        # weights_only=True: a run directory from someone else cannot run code when loaded
        ckpt = load_checkpoint(run_dir / name)
        assert {"model", "guide", "optimizer", "epoch"} <= set(ckpt), name
        assert 1 <= ckpt["epoch"] <= EPOCHS
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == EPOCHS


def test_train_metrics_json_reports_scores_with_their_protocol(trained_run):
    run_dir, _ = trained_run
    m = json.loads((run_dir / "metrics.json").read_text())
    assert {"test_nll", "nll_samples", "test_elbo", "epochs", "seconds_per_epoch", "protocol"} <= set(m)
    assert m["nll_samples"] == 10  # the eval.nll_samples override
    assert m["epochs"] == EPOCHS
    assert m["seconds_per_epoch"] > 0
    assert m["guide"] == "planar:2"
    protocol = m["protocol"]
    assert protocol["test"]["name"] == "digits" and protocol["test"]["split"] == "test"
    assert protocol["test"]["n"] == 50 and protocol["test"]["subset_seed"] == 0
    assert protocol["train"]["n"] == 200
    assert "K=10" in protocol["nll_estimator"]


def test_train_importance_sampled_nll_is_at_most_the_negative_elbo(trained_run):
    # log p(x) is estimated as log-mean-exp of the same K log-weights whose mean is the ELBO,
    # so by Jensen the estimate is >= the ELBO for every datapoint, hence on average too
    run_dir, _ = trained_run
    m = json.loads((run_dir / "metrics.json").read_text())
    assert 0 < m["test_nll"] <= -m["test_elbo"] + 1e-3, m


def test_train_figures_are_valid_pngs(trained_run):
    run_dir, _ = trained_run
    for name in FIGURES:
        # 8x8 digits are drawn enlarged, so even one row of images is 32 pixels high
        _assert_png(run_dir / name, min_side=32)


# -- train --resume -----------------------------------------------------------------------------
def test_resume_continues_an_interrupted_run_bit_for_bit(trained_run, tmp_path):
    # An interrupted 2-epoch run is simulated by a 1-epoch run whose config.yaml then asks for 2:
    # resuming must add exactly epoch 2 and end where the uninterrupted fixture run ended.
    full_dir, _ = trained_run
    run_dir = tmp_path / "run"
    # train.seed alone decides the initial weights, whatever the global random state (a fresh process's is random)
    torch.manual_seed(12345)
    assert _train_tiny(run_dir, 1)[0] == 0
    [first] = _read_jsonl(run_dir / "metrics.jsonl")
    full_first = _read_jsonl(full_dir / "metrics.jsonl")[0]
    assert (first["train_loss"], first["valid_loss"]) == (full_first["train_loss"], full_first["valid_loss"]), "same seed, another epoch 1"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["train"]["epochs"] = EPOCHS
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    code, out = _run(["train", "--resume", "--run-dir", run_dir])
    assert code == 0, out

    resumed, full = _read_jsonl(run_dir / "metrics.jsonl"), _read_jsonl(full_dir / "metrics.jsonl")
    assert [r["epoch"] for r in resumed] == [1, 2]
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in full]
    assert [r["valid_loss"] for r in resumed] == [r["valid_loss"] for r in full]
    a = load_checkpoint(run_dir / "last.pt")
    b = load_checkpoint(full_dir / "last.pt")
    assert a["epoch"] == b["epoch"] == EPOCHS
    for part in ("model", "guide"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), f"{part} weights differ after resuming"
    m, m_full = json.loads((run_dir / "metrics.json").read_text()), json.loads((full_dir / "metrics.json").read_text())
    assert m["epochs"] == EPOCHS
    assert m["test_nll"] == pytest.approx(m_full["test_nll"], rel=1e-6)


def test_resume_of_a_finished_run_says_it_is_complete_and_changes_nothing(trained_run, tmp_path, capsys):
    run_dir = _copy_run(trained_run[0], tmp_path)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    message = _fails(["train", "--resume", "--run-dir", run_dir], capsys)
    assert "is complete" in message and f"pyro-gen evaluate {run_dir}" in message
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == EPOCHS
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == EPOCHS


def test_resume_refuses_config_and_overrides_instead_of_ignoring_them(trained_run, tmp_path, capsys):
    # the run continues with its own config.yaml; an override given here would silently do nothing
    run_dir = _copy_run(trained_run[0], tmp_path)
    message = _fails(["train", "--resume", "--run-dir", run_dir, "train.epochs=5"], capsys)
    assert "train.epochs=5" in message and "config.yaml" in message
    assert len(_read_jsonl(run_dir / "metrics.jsonl")) == EPOCHS


def test_resume_may_move_the_run_to_another_device(trained_run, tmp_path):
    # --device is the one setting a resumed run may change; it is recorded in the run's config
    run_dir = _copy_run(trained_run[0], tmp_path)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["train"]["device"] = "cuda"  # as if trained on a GPU machine
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "training.json").unlink()  # and stopped before its training finished
    code, out = _run(["train", "--resume", "--run-dir", run_dir, "--device", "cpu"])
    assert code == 0, out
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["device"] == "cpu"


def test_resume_needs_a_run_dir(capsys):
    assert "--run-dir" in _fails(["train", "--resume"], capsys)


def test_resume_of_a_directory_without_config_fails_clearly(tmp_path, capsys):
    message = _fails(["train", "--resume", "--run-dir", tmp_path], capsys)
    assert "cannot resume" in message and str(tmp_path) in message and "config.yaml" in message


# -- evaluate / sample ----------------------------------------------------------------------------
def test_evaluate_rewrites_metrics_json_with_the_requested_k(trained_run, tmp_path):
    run_dir = _copy_run(trained_run[0], tmp_path)
    for name in FIGURES:
        (run_dir / name).unlink()
    code, out = _run(["evaluate", run_dir, "--nll-samples", 7, "--no-figures"])
    assert code == 0, out
    assert "K=7" in out
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["nll_samples"] == 7 and "K=7" in m["protocol"]["nll_estimator"]
    assert m["epochs"] == EPOCHS  # training facts survive re-evaluation
    assert m["test_nll"] <= -m["test_elbo"] + 1e-3
    assert not any((run_dir / name).exists() for name in FIGURES), "--no-figures wrote figures"


def test_sample_writes_a_png_grid(trained_run, tmp_path):
    out_png = tmp_path / "grid.png"
    code, out = _run(["sample", trained_run[0], "--num", 16, "--out", out_png])
    assert code == 0, out
    assert str(out_png) in out
    # 16 samples -> a 4x4 grid of 8x8 digits drawn at 32x32
    _assert_png(out_png, min_side=4 * 32)


# -- compare -----------------------------------------------------------------------------------------
def test_compare_trains_each_guide_and_writes_csv_and_markdown(tmp_path):
    out_dir = tmp_path / "cmp"
    argv = ["compare", "--data", "digits", "--guides", "normal,planar:2", "--epochs", 1, "--train-size", 200, "--test-size", 50]
    # K=30 draws: enough for the k-hat columns' tail fits (at least 21)
    argv += ["--nll-samples", 30, "--seed", 0, "--device", "cpu", "--out", out_dir]
    # positional section.key=value overrides: binarize the digits for the (default) Bernoulli likelihood, keep the models tiny
    argv += [
        "data.binarize=dynamic",
        "model.latent_dim=2",
        "model.hidden=[16]",
        "data.valid_size=50",
        "train.progress=false",
        "eval.images=false",
    ]
    code, out = _run(argv)
    assert code == 0, out

    with open(out_dir / "compare.csv", newline="") as f:
        reader = csv.DictReader(f)
        columns, rows = reader.fieldnames, list(reader)
    required = ["guide", "test_nll", "test_elbo", "kl", "active_units", "seconds_per_epoch", "parameters", "nll_samples", "epochs"]
    assert columns == required + ["khat_mean", "khat_gt_0.7"], columns  # the k-hat columns come last
    assert [r["guide"] for r in rows] == ["normal", "planar:2"]  # one row per guide, in the order given
    for r in rows:
        assert int(r["nll_samples"]) == 30 and int(r["parameters"]) > 0
        assert float(r["test_nll"]) <= -float(r["test_elbo"]) + 1e-3
        assert -1 < float(r["khat_mean"]) < 5 and 0 <= float(r["khat_gt_0.7"]) <= 1
    # the flow adds parameters to the same encoder and decoder
    assert int(rows[1]["parameters"]) > int(rows[0]["parameters"])

    md = (out_dir / "compare.md").read_text()
    assert md.startswith("Data: digits (train 200, test 50, subset seed 0)")
    assert "K=30" in md.splitlines()[0] and "khat_gt_0.7: share of test points with k-hat > 0.7" in md.splitlines()[0]
    assert "| " + " | ".join(columns) + " |" in md
    assert sum(line.startswith("| normal |") or line.startswith("| planar:2 |") for line in md.splitlines()) == 2
    assert md.strip() in out  # the table is also printed

    for (name, folder), row in zip([("normal", "normal"), ("planar:2", "planar-2")], rows):
        m = json.loads((out_dir / folder / "metrics.json").read_text())
        assert m["guide"] == name and m["epochs"] == 1 and m["nll_samples"] == 30
        assert m["khat_samples"] == 30 and "the test NLL's own draws" in m["protocol"]["khat_estimator"]
        assert float(row["khat_mean"]) == pytest.approx(m["khat_mean"]) and float(row["khat_gt_0.7"]) == m["khat_share_above_0.7"]
        assert m["protocol"]["test"]["n"] == 50 and m["protocol"]["test"]["subset_seed"] == 0


def test_test_subset_is_a_seeded_random_draw():
    from pyro_gen.data import load_dataset

    a = load_dataset("digits", "test", n=50, seed=0).x
    b = load_dataset("digits", "test", n=50, seed=0).x
    c = load_dataset("digits", "test", n=50, seed=1).x
    whole = load_dataset("digits", "test").x
    assert torch.equal(a, b)  # same seed, same subset
    assert not torch.equal(a, c)  # another seed, another subset
    assert not torch.equal(a, whole[:50])  # a random draw, not the first rows of the split


# -- errors: exit status 2 and one clear line -----------------------------------------------------------
def test_unknown_dataset_is_a_clear_error(tmp_path, capsys):
    message = _fails(["compare", "--data", "nosuch", "--guides", "normal", "--epochs", 1, "--out", tmp_path / "cmp"], capsys)
    assert "'nosuch'" in message and "digits" in message  # names the problem and the known datasets


def test_unknown_guide_is_a_clear_error_before_any_training(tmp_path, capsys):
    out_dir = tmp_path / "cmp"
    message = _fails(["compare", "--data", "digits", "--guides", "normal,bogus:3", "--epochs", 1, "--out", out_dir], capsys)
    assert "bogus:3" in message and "planar" in message
    assert not (out_dir / "normal").exists(), "the valid guide was trained before the bad name was noticed"


def test_misspelt_config_key_names_it_and_suggests_the_right_one(tmp_path, capsys):
    message = _fails(["train", QUICKSTART, "train.epocs=3", "--run-dir", tmp_path / "run"], capsys)
    assert "train.epocs" in message and "did you mean 'train.epochs'" in message
    assert not (tmp_path / "run").exists()


def test_missing_data_says_where_it_looked_and_how_to_get_the_data(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    code = main(
        [
            "train",
            str(QUICKSTART),
            "data.name=binarized_mnist",
            "data.binarize=null",
            f"data.data_dir={empty}",
            "--run-dir",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    # the data module lists every path it tried, one per line, so this message is several lines
    first = err.splitlines()[0]
    assert first.startswith("pyro-gen train: error: ") and "binarized_mnist" in first and "not found" in first
    assert str(empty) in err
    assert "pyro-gen download" in err


def test_non_binary_data_under_bernoulli_is_one_clear_line(tmp_path, capsys):
    # the check runs inside the traced model, where Pyro appends a table of trace shapes to the
    # error; the user gets our message alone
    argv = ["compare", "--data", "digits", "--guides", "normal", "--epochs", 1, "--train-size", 50, "--test-size", 20, "--out", tmp_path]
    message = _fails([*argv, "model.hidden=[8]", "model.likelihood=bernoulli", "train.batch_size=16", "train.progress=false"], capsys)
    assert "binar" in message and "Trace Shapes" not in message


def test_evaluate_on_a_directory_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a run")
    message = _fails(["evaluate", tmp_path], capsys)
    assert "not a pyro_gen run directory" in message and str(tmp_path) in message


def test_sample_on_a_missing_directory(tmp_path, capsys):
    missing = tmp_path / "nosuch"
    message = _fails(["sample", missing], capsys)
    assert str(missing) in message and "not a directory" in message


# -- k-hat of the guide's importance weights -------------------------------------------------------
def test_khat_needs_enough_draws_and_says_so(trained_run):
    # the shared run has K=10 draws per test point: too few for a Pareto tail fit (at least 21)
    m = json.loads((trained_run[0] / "metrics.json").read_text())
    assert m["khat_mean"] is None and m["khat_share_above_0.7"] is None and m["khat_samples"] is None
    assert "too few for a tail fit" in m["protocol"]["khat_estimator"] and "eval.khat_samples" in m["protocol"]["khat_estimator"]


def test_khat_in_metrics_json_is_fitted_to_the_nll_estimate_own_draws(trained_run, tmp_path):
    from pyro_gen.analysis.psis import psis_khat
    from pyro_gen.evaluation.likelihood import log_weights
    from pyro_gen.run import fixed_test_data, load_run

    run_dir = _copy_run(trained_run[0], tmp_path)
    code, out = _run(["evaluate", run_dir, "--nll-samples", 25, "--no-figures"])
    assert code == 0, out
    assert "k-hat mean" in out
    m = json.loads((run_dir / "metrics.json").read_text())
    # recompute independently: the full (K, N) log-weight matrix with the run's seed, then one tail fit per column
    config, model, guide, splits = load_run(run_dir)
    x = fixed_test_data(splits["test"], config.data.seed)
    lw = log_weights(model, guide, x, num_samples=25, chunk_size=config.eval.chunk_size, seed=config.train.seed)
    assert m["test_nll"] == pytest.approx(-(lw.logsumexp(0) - math.log(25)).mean().item(), rel=1e-5)  # the same draws
    khat = psis_khat(lw)
    assert m["khat_mean"] == pytest.approx(khat[torch.isfinite(khat)].mean().item(), rel=1e-6)
    assert m["khat_max"] == pytest.approx(khat.max().item(), rel=1e-6)
    assert m["khat_share_above_0.7"] == pytest.approx((khat > 0.7).double().mean().item())
    assert m["khat_samples"] == 25


def test_khat_samples_asks_for_a_second_pass_or_none(trained_run, tmp_path):
    run_dir = _copy_run(trained_run[0], tmp_path)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["eval"]["khat_samples"] = 40
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    assert _run(["evaluate", run_dir, "--no-figures"])[0] == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["nll_samples"] == 10 and m["khat_samples"] == 40 and "second pass" in m["protocol"]["khat_estimator"]
    assert m["khat_mean"] is not None
    config["eval"]["khat_samples"] = 0
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    assert _run(["evaluate", run_dir, "--no-figures"])[0] == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["khat_mean"] is None and "eval.khat_samples: 0" in m["protocol"]["khat_estimator"]


# -- Gaussian mixtures ----------------------------------------------------------------------------------
GMM_IRIS = REPO / "configs" / "gmm_iris_map.yaml"
GMM_NUTS = REPO / "configs" / "gmm_nuts.yaml"
# gmm_nuts.yaml made tiny: 60 points, diagonal covariances, 2 chains of 10 draws after 10 warm-up steps
TINY_NUTS = [
    "data.train_size=60",
    "data.test_size=200",
    "model.covariance=diag",
    "train.num_samples=10",
    "train.warmup=10",
    "train.chains=2",
    "train.jit=false",
    "train.progress=false",
]


@pytest.fixture(scope="module")
def nuts_run(tmp_path_factory) -> Path:
    """One tiny NUTS run of the Gaussian mixture on gmm2d, trained once for the module; treat it as read-only."""
    run_dir = tmp_path_factory.mktemp("nuts") / "run"
    code, out = _run(["train", GMM_NUTS, *TINY_NUTS, "--run-dir", run_dir])
    assert code == 0, out
    return run_dir


def test_gmm_map_run_reaches_the_sklearn_em_fit_from_the_same_kmeans(tmp_path):
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    from pyro_gen.data import load_dataset
    from pyro_gen.infer.gmm_fit import kmeans
    from pyro_gen.models import gmm

    run_dir = tmp_path / "iris"
    code, out = _run(["train", GMM_IRIS, "train.epochs=300", "train.progress=false", "--run-dir", run_dir])
    assert code == 0, out
    assert "test log-likelihood" in out
    for name in ["config.yaml", "metrics.jsonl", "best.pt", "last.pt", "metrics.json", "clusters.png"]:
        assert (run_dir / name).is_file(), name
    _assert_png(run_dir / "clusters.png", min_side=100)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["guide"] == "delta" and m["epochs"] == 300 and "TraceEnum_ELBO" in m["objective"]
    assert m["protocol"]["train"]["n"] == 120 and m["protocol"]["test"]["n"] == 30 and m["protocol"]["method"] == "svi"
    # scikit-learn's EM, started from the same k-means partition, on the same standardized training split
    x = load_dataset("iris", "train").x
    init = gmm(3, 4, "full").params_from_labels(x, kmeans(x, 3, seed=0))
    covs = (init["scales"].unsqueeze(-1) * init["corr_chol"]).double()
    covs = covs @ covs.transpose(-1, -2)
    sk = SkGaussianMixture(
        3, covariance_type="full", weights_init=(init["weights"].double() / init["weights"].double().sum()).numpy(), means_init=init["locs"].double().numpy(),
        precisions_init=torch.linalg.inv(covs).numpy(), max_iter=2000, tol=1e-8,
    ).fit(x.double().numpy())  # fmt: skip
    assert abs(m["train_log_likelihood"] - sk.score(x.double().numpy())) < 0.01 * abs(sk.score(x.double().numpy()))
    test = load_dataset("iris", "test").x.double().numpy()
    assert abs(m["test_log_likelihood"] - sk.score(test)) < 0.05 * abs(sk.score(test))


def test_gmm_nuts_run_saves_its_posterior_as_inference_data(nuts_run):
    import arviz

    from pyro_gen.data import load_dataset

    assert {"config.yaml", "posterior.nc", "metrics.json", "training.json"} <= {p.name for p in nuts_run.iterdir()}
    assert not (nuts_run / "last.pt").exists()  # MCMC is not SGD: no trainer, no checkpoints
    idata = arviz.from_netcdf(str(nuts_run / "posterior.nc"))
    assert {"posterior", "sample_stats", "log_likelihood", "posterior_predictive", "observed_data"} <= set(idata.groups())
    assert idata.posterior["locs"].dims == ("chain", "draw", "component", "coordinate") and idata.posterior["locs"].shape == (2, 10, 3, 2)
    assert set(idata.posterior.data_vars) == {"weights", "locs", "scales"}  # the assignments are enumerated, not sampled
    assert (np.diff(idata.posterior["locs"].values[..., 0], axis=-1) > 0).all()  # ordered components: no label switching
    assert idata.sample_stats["diverging"].dtype == bool and idata.sample_stats["diverging"].shape == (2, 10)
    assert idata.log_likelihood["x"].shape == (2, 10, 60) and idata.posterior_predictive["x"].shape == (2, 10, 60, 2)
    np.testing.assert_array_equal(idata.observed_data["x"].values, load_dataset("gmm2d", "train", n=60).x.numpy())


def test_gmm_nuts_metrics_are_the_test_density_at_the_posterior_mean(nuts_run):
    import arviz
    from scipy import stats

    from pyro_gen.data import load_dataset

    m = json.loads((nuts_run / "metrics.json").read_text())
    assert m["guide"] == "nuts" and m["protocol"]["method"] == "nuts"
    assert m["protocol"]["nuts"] == {"num_samples": 10, "warmup": 10, "chains": 2}
    idata = arviz.from_netcdf(str(nuts_run / "posterior.nc"))
    assert m["divergences"] == int(idata.sample_stats["diverging"].values.sum())
    # independent check: scipy's mixture density at the posterior means, on the test split
    mean = {k: idata.posterior[k].values.mean((0, 1)) for k in ("weights", "locs", "scales")}
    x = load_dataset("gmm2d", "test", n=200).x.double().numpy()
    comps = [
        np.log(w) + stats.multivariate_normal(mu, np.diag(s**2)).logpdf(x)
        for w, mu, s in zip(mean["weights"], mean["locs"], mean["scales"])
    ]
    assert m["test_log_likelihood"] == pytest.approx(np.logaddexp.reduce(comps, 0).mean(), rel=1e-4)
    assert math.isfinite(m["test_lpd"]) and m["r_hat_max"] > 0.9 and m["ess_bulk_min"] > 0


def test_analyze_a_nuts_run_writes_summary_plots_and_loo(nuts_run, tmp_path):
    run_dir = _copy_run(nuts_run, tmp_path)
    code, out = _run(["analyze", run_dir])
    assert code == 0, out
    with open(run_dir / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["", "mean", "sd", "hdi_3%", "hdi_97%", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat"]
    import arviz

    idata = arviz.from_netcdf(str(run_dir / "posterior.nc"))
    by_name = {r[""]: r for r in rows}
    assert float(by_name["locs[1, 0]"]["mean"]) == pytest.approx(idata.posterior["locs"].values[..., 1, 0].mean(), abs=1e-3)
    assert float(by_name["weights[2]"]["r_hat"]) > 0.9
    for name in ["trace.png", "rank.png", "pair.png", "ppc.png", "loo_khat.png"]:
        _assert_png(run_dir / name, min_side=100)
    loo = json.loads((run_dir / "loo.json").read_text())
    assert loo["loo"]["n_data_points"] == 60 and len(loo["loo"]["pareto_k"]) == 60 and loo["loo"]["n_samples"] == 20
    assert sum(loo["loo"]["pareto_k_counts"].values()) == 60
    assert loo["loo"]["elpd_loo"] == pytest.approx(loo["waic"]["elpd_waic"], rel=0.05)  # two estimates of the same elpd


def test_analyze_a_vae_run_writes_local_posteriors_and_khat(trained_run, tmp_path):
    import arviz

    run_dir = _copy_run(trained_run[0], tmp_path)
    code, out = _run(["analyze", run_dir, "--points", 7, "--draws", 40, "--seed", 3])
    assert code == 0, out
    idata = arviz.from_netcdf(str(run_dir / "posterior_local.nc"))
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "data", "z_dim_1") and z.shape == (1, 40, 7, 2)
    chosen = z["data"].values
    assert len(set(chosen)) == 7 and (chosen < 50).all() and list(chosen) != list(range(7))  # a seeded draw, not the first rows
    with open(run_dir / "khat.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["datapoint"]) for r in rows] == list(chosen)
    assert all(math.isfinite(float(r["log_px"])) for r in rows) and all(float(r["khat"]) > -10 for r in rows)
    for name in ["khat_hist.png", "pair_local.png"]:
        _assert_png(run_dir / name, min_side=100)
    assert (run_dir / "summary.csv").read_text().startswith(",mean,sd,hdi_3%,hdi_97%")
    # the same seed draws the same points
    again = _copy_run(trained_run[0], tmp_path / "again")
    assert _run(["analyze", again, "--points", 7, "--draws", 40, "--seed", 3])[0] == 0
    assert list(arviz.from_netcdf(str(again / "posterior_local.nc")).posterior["data"].values) == list(chosen)


# -- Gaussian mixture and analyze errors: exit status 2 and one clear line ------------------------------
def test_analyze_on_a_directory_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a run")
    message = _fails(["analyze", tmp_path], capsys)
    assert "not a pyro_gen run directory" in message and "config.yaml" in message


def test_analyze_local_posteriors_of_a_mixture_is_refused(nuts_run, capsys):
    message = _fails(["analyze", nuts_run, "--points", 10], capsys)
    assert "--points" in message and "no local latent sites" in message and "drop --points" in message


def test_analyze_a_map_point_estimate_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "map"
    assert _run(["train", GMM_IRIS, "train.epochs=2", "train.progress=false", "eval.images=false", "--run-dir", run_dir])[0] == 0
    message = _fails(["analyze", run_dir], capsys)
    assert "MAP point estimate" in message and "guide.name=normal" in message and "train.method=nuts" in message
    assert "'sample' is not available for model.kind: gmm" in _fails(["sample", run_dir], capsys)
    assert "drop --nll-samples" in _fails(["evaluate", run_dir, "--nll-samples", 100], capsys)


@pytest.mark.parametrize(
    "config, overrides, expected",
    [
        (QUICKSTART, ["train.method=nuts"], "unknown config key 'train.method'"),
        (GMM_IRIS, ["train.method=hmc"], "train.method is 'hmc'; choose one of 'svi', 'nuts'"),
        (GMM_IRIS, ["guide.name=planar:2"], "guide.name is 'planar:2'; choose one of 'delta', 'normal'"),
        (GMM_IRIS, ["objective.beta=0.5"], "unknown config key 'objective.beta'"),
        (GMM_IRIS, ["model.covariance=spherical"], "model.covariance is 'spherical'; choose one of 'diag', 'full'"),
        (GMM_IRIS, ["data.name=digits"], "model.kind: gmm needs vector data"),
        (GMM_IRIS, ["data.valid_size=10"], "data.valid_size is set but 'iris' has no valid split"),
        (GMM_IRIS, ["model.component=2"], "did you mean 'model.components'"),
        (GMM_NUTS, ["train.num_sample=10"], "did you mean 'train.num_samples'"),
        (GMM_NUTS, ["train.chains=0"], "train.chains must be >= 1"),
        (QUICKSTART, ["eval.khat_samples=5"], "eval.khat_samples must be null"),
    ],
)
def test_bad_gmm_and_method_settings_are_one_clear_line(config, overrides, expected, tmp_path, capsys):
    assert_train_refused_before_writing(config, overrides, expected, tmp_path, capsys)


def test_resuming_a_nuts_run_is_refused(nuts_run, tmp_path, capsys):
    run_dir = _copy_run(nuts_run, tmp_path)
    assert "is complete" in _fails(["train", "--resume", "--run-dir", run_dir], capsys)


# -- the installed script -------------------------------------------------------------------------------
def _script() -> str:
    # the console script installed beside this interpreter (the project's virtualenv)
    script = Path(sys.executable).with_name("pyro-gen")
    if not script.exists():
        script = shutil.which("pyro-gen")
        if script is None:
            pytest.skip("the pyro-gen console script is not installed")
    return str(script)


def _script_env() -> dict:
    return {**os.environ, "PYRO_GEN_DATA": str(SHARED_DATA), "OMP_NUM_THREADS": "1"}


def test_installed_script_lists_datasets_guides_likelihoods_and_objectives():
    from pyro_gen.data import dataset_names
    from pyro_gen.guides import guide_names
    from pyro_gen.infer import objective_names
    from pyro_gen.models import likelihood_names

    proc = subprocess.run([_script(), "list"], capture_output=True, text=True, env=_script_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split(":")[0].strip(): line.split(":", 1)[1] for line in proc.stdout.splitlines() if ":" in line}
    assert {"datasets", "guides", "likelihoods", "objectives"} <= set(lines)
    for section, names in [
        ("datasets", dataset_names()),
        ("guides", guide_names()),
        ("likelihoods", likelihood_names()),
        ("objectives", objective_names()),
    ]:
        assert names, section
        assert [n.strip() for n in lines[section].split(",")] == list(names), section
    assert "digits" in lines["datasets"] and "planar" in lines["guides"] and "iwae" in lines["objectives"]


def test_installed_script_exits_with_status_2_on_a_user_error(tmp_path):
    # the shell sees main()'s return value as the process exit status
    proc = subprocess.run([_script(), "sample", str(tmp_path / "nosuch")], capture_output=True, text=True, env=_script_env(), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("pyro-gen sample: error: ") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("outcome, handshake", [("ok", True), ("error", False), ("crash", False)])
def test_the_end_handshake_with_other_ranks_only_follows_a_clean_run(monkeypatch, outcome, handshake):
    """After a failure the other ranks may be inside any collective; a closing all-reduce would mismatch theirs and abort
    this process before its error is shown (seen as a gloo 'collective mismatch' SIGABRT under torchrun)."""
    import torch  # noqa: F401  (main() leaves a process group only once torch is loaded)

    from pyro_gen import cli, distributed

    calls = []
    monkeypatch.setattr(distributed, "shutdown", lambda handshake=True: calls.append(handshake))

    def fake_main(args):
        if outcome == "crash":
            raise OSError("disk gone")
        return 0 if outcome == "ok" else 2

    monkeypatch.setattr(cli, "_main", fake_main)
    if outcome == "crash":
        with pytest.raises(OSError, match="disk gone"):
            cli.main(["list"])
    else:
        assert cli.main(["list"]) == (0 if outcome == "ok" else 2)
    assert calls == [handshake]
