"""The files of ``pyro-gen analyze`` against ArviZ's own numbers, computed directly on the same InferenceData."""

import csv
import json
import math

import numpy as np
import pytest

from pyro_gen.analysis import report

arviz = pytest.importorskip("arviz")


@pytest.fixture(scope="module")
def idata():
    """A conjugate Normal-mean posterior drawn exactly: 2 chains x 200 draws, 30 datapoints, with a log-likelihood."""
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, size=30)
    post_var = 1 / (1 / 100 + len(x))
    mu = rng.normal(post_var * x.sum(), math.sqrt(post_var), size=(2, 200))
    log_lik = -0.5 * (x - mu[..., None]) ** 2 - 0.5 * math.log(2 * math.pi)
    return arviz.from_dict(
        posterior={"mu": mu, "tau": np.exp(mu)},
        log_likelihood={"x": log_lik},
        observed_data={"x": x},
        sample_stats={"diverging": np.zeros((2, 200), dtype=bool)},
        dims={"x": ["data"]},
    )


def test_summary_csv_is_arviz_summary(idata, tmp_path):
    table = report.write_summary(idata, tmp_path / "summary.csv")
    with open(tmp_path / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    expected = arviz.summary(idata, hdi_prob=0.94)
    assert [r[""] for r in rows] == list(expected.index) == ["mu", "tau"]
    assert (
        list(rows[0])[1:]
        == list(expected.columns)
        == ["mean", "sd", "hdi_3%", "hdi_97%", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat"]
    )
    for r in rows:
        for column in expected.columns:
            assert float(r[column]) == pytest.approx(expected.loc[r[""], column], rel=1e-6, abs=1e-9)
    assert table.shape == expected.shape


def test_loo_json_is_arviz_loo_and_waic(idata, tmp_path):
    out = report.write_loo(idata, tmp_path / "loo.json", khat_plot=tmp_path / "khat.png")
    assert json.loads((tmp_path / "loo.json").read_text()) == out
    loo, waic = arviz.loo(idata, pointwise=True), arviz.waic(idata, pointwise=True)
    assert out["loo"]["elpd_loo"] == pytest.approx(loo.elpd_loo) and out["loo"]["p_loo"] == pytest.approx(loo.p_loo)
    assert out["waic"]["elpd_waic"] == pytest.approx(waic.elpd_waic) and out["loo"]["se"] == pytest.approx(loo.se)
    np.testing.assert_allclose(out["loo"]["pareto_k"], loo.pareto_k.values)
    assert out["loo"]["n_samples"] == 400 and out["loo"]["n_data_points"] == 30
    assert sum(out["loo"]["pareto_k_counts"].values()) == 30
    assert (tmp_path / "khat.png").read_bytes()[:4] == b"\x89PNG"


def test_non_finite_pareto_k_is_null_in_strict_json(tmp_path):
    # 8 draws: too few for a Pareto tail fit, so every k is infinite
    rng = np.random.default_rng(1)
    tiny = arviz.from_dict(posterior={"mu": rng.normal(size=(2, 4))}, log_likelihood={"x": rng.normal(size=(2, 4, 5))})
    out = report.write_loo(tiny, tmp_path / "loo.json")
    text = (tmp_path / "loo.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert out["loo"]["pareto_k"] == [None] * 5 and out["loo"]["pareto_k_counts"]["very bad (k > 1)"] == 5


def test_plots_and_khat_files(idata, tmp_path):
    paths = report.posterior_plots(idata, tmp_path, var_names=["mu", "tau"])
    assert sorted(p.name for p in paths) == ["pair.png", "rank.png", "trace.png"]  # no posterior predictive: no ppc
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    khat = np.array([0.1, 0.8, np.inf, -0.2])
    report.write_khat_table([3, 5, 8, 13], khat, [-1.0, -2.0, -3.0, -4.0], tmp_path / "khat.csv")
    with open(tmp_path / "khat.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["datapoint"]), float(r["khat"])) for r in rows] == [(3, 0.1), (5, 0.8), (8, math.inf), (13, -0.2)]
    report.khat_histogram(khat, tmp_path / "hist.png", num_samples=100)
    assert (tmp_path / "hist.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
