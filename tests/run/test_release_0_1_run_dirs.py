"""Run directories written by release 0.1 (one all-family config layout, checkpoints without a digest) still load.

The fixtures in ``tests/fixtures/release_0_1`` were made by the code at commit 4b4b8cb (tiny runs:
a quick-start VAE on 60 digits, a MAP and a NUTS Gaussian mixture on iris / gmm2d, a ring8 GAN);
``evaluate`` must give the scores that release wrote, and ``sample`` / ``analyze`` must work.
"""

import json
import shutil
from pathlib import Path

import pytest

from pyro_gen.run import analyze_run, evaluate_run, sample_run

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "release_0_1"


def _copy(name: str, tmp_path) -> Path:
    run_dir = tmp_path / name
    shutil.copytree(FIXTURES / name, run_dir)
    return run_dir


@pytest.mark.parametrize(
    "name, keys",
    [
        ("vae", ("test_nll", "test_elbo", "test_kl", "active_units", "khat_mean")),
        ("gmm_map", ("test_log_likelihood", "train_log_likelihood")),
        ("gmm_nuts", ("test_log_likelihood", "train_log_likelihood", "test_lpd", "divergences")),
        ("gan_ring8", ("modes_covered", "high_quality", "mode_counts")),
    ],
)
def test_evaluate_gives_the_scores_release_0_1_wrote(name, keys, tmp_path):
    run_dir = _copy(name, tmp_path)
    old = json.loads((run_dir / "metrics.json").read_text())
    new = evaluate_run(run_dir, figures=False)
    for key in keys:
        assert new[key] == pytest.approx(old[key], rel=1e-5, abs=1e-6), key
    assert json.loads((run_dir / "metrics.json").read_text())[keys[0]] == pytest.approx(old[keys[0]], rel=1e-5)


@pytest.mark.parametrize("name", ["vae", "gan_ring8"])
def test_sample_works_on_a_release_0_1_run(name, tmp_path):
    run_dir = _copy(name, tmp_path)
    paths = sample_run(run_dir, num=16)
    assert paths and all(p.exists() and p.stat().st_size > 0 for p in paths)


@pytest.mark.parametrize("name, expected", [("vae", "khat.csv"), ("gmm_nuts", "loo.json")])
def test_analyze_works_on_a_release_0_1_run(name, expected, tmp_path):
    run_dir = _copy(name, tmp_path)
    kwargs = {"points": 5, "draws": 40} if name == "vae" else {"draws": 40}
    paths = analyze_run(run_dir, **kwargs)
    assert (run_dir / expected) in paths and (run_dir / expected).exists()
