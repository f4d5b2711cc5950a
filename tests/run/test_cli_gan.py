"""End-to-end tests of GAN runs through the config, the run directory and the ``pyro-gen`` command line.

Every run is tiny (512 ring8 points, a 2-16-2 generator and a 2-16-1 critic, 2 epochs of 8 batches;
dcgan_mnist.yaml with one 8-wide layer on 200 of scikit-learn's 8x8 digits) and lives in a tmp directory.
Runs are trained once per module and shared: tests that would change them work on a copy.
"""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_support import assert_png as _assert_png
from cli_support import assert_train_refused_before_writing, run_cli
from cli_support import fails as _fails
from cli_support import read_jsonl as _read_jsonl

from pyro_gen.infer.trainer import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"  # as in tests/test_cli.py
RING8 = REPO / "configs" / "gan_ring8.yaml"
GRID25 = REPO / "configs" / "gan_grid25.yaml"
DCGAN_MNIST = REPO / "configs" / "dcgan_mnist.yaml"
QUICKSTART = REPO / "configs" / "quickstart.yaml"

# gan_ring8.yaml made tiny: a second or two of CPU per run
TINY = [
    "data.train_size=512",
    "data.test_size=300",
    "model.hidden=[16]",
    "train.batch_size=64",
    "train.progress=false",
]
EPOCHS = 2
RUN_FILES = ["config.yaml", "metrics.jsonl", "last.pt", "best.pt", "training.json", "metrics.json", "samples.png"]
COVERAGE_KEYS = {"modes_covered", "num_modes", "high_quality", "reverse_kl", "num_samples", "mode_counts"}
# dcgan_mnist.yaml on 8x8 digits: one stride-2 layer each way, 8 feature maps
TINY_DCGAN = [
    "data.name=digits",
    "data.train_size=200",
    "data.test_size=100",
    "model.net=dcgan",
    "model.latent_dim=4",
    "model.channels=[8]",
    "model.critic_channels=[8]",
    "train.batch_size=50",
    "train.progress=false",
    "train.epochs=1",
]


@pytest.fixture(autouse=True)
def _offline_data(monkeypatch):
    monkeypatch.setenv("PYRO_GEN_DATA", str(SHARED_DATA))


_run = run_cli


def _train_tiny(run_dir: Path, epochs: int, *overrides) -> tuple[int, str]:
    return _run(["train", RING8, *TINY, f"train.epochs={epochs}", *overrides, "--run-dir", run_dir])


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory) -> tuple[Path, str]:
    """One tiny 2-epoch ring8 GAN, trained once for the module; treat it as read-only."""
    run_dir = tmp_path_factory.mktemp("gan") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYRO_GEN_DATA", str(SHARED_DATA))
        code, out = _train_tiny(run_dir, EPOCHS)
    assert code == 0, out
    return run_dir, out


@pytest.fixture(scope="module")
def dcgan_run(tmp_path_factory) -> Path:
    """dcgan_mnist.yaml made tiny, on 8x8 digits (1 epoch); treat it as read-only."""
    run_dir = tmp_path_factory.mktemp("dcgan") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYRO_GEN_DATA", str(SHARED_DATA))
        code, out = _run(["train", DCGAN_MNIST, *TINY_DCGAN, "--run-dir", run_dir])
    assert code == 0, out
    return run_dir


def _copy_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    return copy


def _assert_same(a, b, where: str) -> None:
    """Nested checkpoint contents (dicts, lists, tensors, numbers) are exactly equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), f"{where} differs"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# -- train -----------------------------------------------------------------------------------------
def test_train_writes_every_file_of_a_gan_run_directory(gan_run):
    run_dir, out = gan_run
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    assert not missing, f"missing from the run directory: {missing}"
    assert f"run directory: {run_dir}" in out
    assert "modes covered" in out and "2500 samples, 3 std" in out
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["kind"] == "gan" and config["model"]["hidden"] == [16]  # the override
    assert config["objective"] == {**config["objective"], "name": "non_saturating", "ema_decay": 0.99}  # from gan_ring8.yaml


def test_train_metrics_jsonl_logs_both_players_per_epoch(gan_run):
    run_dir, _ = gan_run
    records = _read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    for r in records:
        assert math.isfinite(r["train_critic_loss"]) and math.isfinite(r["train_generator_loss"]), r
        assert r["train_loss"] == r["train_critic_loss"]
        assert "valid_loss" not in r  # a GAN is selected by no validation score


def test_train_checkpoints_hold_both_players_and_both_optimizers(gan_run):
    run_dir, _ = gan_run
    last = load_checkpoint(run_dir / "last.pt")
    best = load_checkpoint(run_dir / "best.pt")
    assert last["epoch"] == best["epoch"] == EPOCHS  # without a validation score every epoch is the "best"
    assert set(last["optimizers"]) == {"critic", "generator"}
    assert last["step"] == EPOCHS * (512 // 64)  # full batches only
    keys = set(last["objective"])
    assert any(k.startswith("critic.") for k in keys) and any(k.startswith("ema.") for k in keys)
    training = json.loads((run_dir / "training.json").read_text())
    assert training["epochs"] == EPOCHS and training["generator_steps"] == EPOCHS * 8


def test_train_metrics_json_has_the_mode_coverage_with_its_protocol(gan_run):
    from pyro_gen.evaluation import toy_mode_coverage
    from pyro_gen.run import draw_samples, load_gan_run

    run_dir, _ = gan_run
    m = json.loads((run_dir / "metrics.json").read_text())
    assert COVERAGE_KEYS <= set(m)
    assert m["num_modes"] == 8 and 0 <= m["modes_covered"] <= 8 and 0 <= m["high_quality"] <= 1
    assert m["num_samples"] == 2500 and sum(m["mode_counts"]) == round(m["high_quality"] * 2500)
    q = m["protocol"]["sample_quality"]
    assert (q["samples"], q["num_std"], q["min_count"]) == (2500, 3.0, 1) and "VEEGAN" in q["estimator"]
    assert m["protocol"]["test"]["name"] == "ring8" and m["protocol"]["test"]["n"] == 300
    assert m["protocol"]["train"]["n"] == 512 and m["protocol"]["seed"] == 0
    assert m["epochs"] == EPOCHS and m["objective"] == "non_saturating" and "moving average" in m["sampler"]
    assert m["parameters"] == m["generator_parameters"] + m["critic_parameters"] > 0
    # independently: 2500 samples of the weight average, seeded with train.seed, scored by the library
    run = load_gan_run(run_dir)
    assert run.sampler is run.objective.ema
    coverage = toy_mode_coverage(draw_samples(run.sampler, 2500, seed=0), "ring8", num_std=3.0)
    assert (coverage.modes_covered, coverage.high_quality) == (m["modes_covered"], m["high_quality"])
    assert coverage.counts.tolist() == m["mode_counts"]


def test_train_scatter_shows_samples_over_the_data(gan_run):
    _assert_png(gan_run[0] / "samples.png", min_side=300)


# -- resume ------------------------------------------------------------------------------------------
def test_resume_continues_both_players_and_optimizers_bit_for_bit(gan_run, tmp_path):
    # an interrupted 2-epoch run is a 1-epoch run whose config.yaml then asks for 2
    full_dir, _ = gan_run
    run_dir = tmp_path / "run"
    torch.manual_seed(12345)  # train.seed alone decides the initial weights
    assert _train_tiny(run_dir, 1)[0] == 0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["train"]["epochs"] = EPOCHS
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    code, out = _run(["train", "--resume", "--run-dir", run_dir])
    assert code == 0, out

    resumed, full = _read_jsonl(run_dir / "metrics.jsonl"), _read_jsonl(full_dir / "metrics.jsonl")
    assert [r["epoch"] for r in resumed] == [1, 2]
    for key in ("train_critic_loss", "train_generator_loss", "train_critic_real", "train_critic_fake"):
        assert [r[key] for r in resumed] == [r[key] for r in full], key
    a = load_checkpoint(run_dir / "last.pt")
    b = load_checkpoint(full_dir / "last.pt")
    assert a["epoch"] == b["epoch"] == EPOCHS and a["step"] == b["step"]
    for part in ("model", "objective", "optimizers"):  # generator; critic and weight average; both Adams
        _assert_same(a[part], b[part], part)
    m, m_full = json.loads((run_dir / "metrics.json").read_text()), json.loads((full_dir / "metrics.json").read_text())
    assert {k: m[k] for k in COVERAGE_KEYS} == {k: m_full[k] for k in COVERAGE_KEYS}


def test_resume_of_a_finished_gan_run_says_it_is_complete(gan_run, tmp_path, capsys):
    run_dir = _copy_run(gan_run[0], tmp_path)
    before = (run_dir / "metrics.jsonl").read_text()
    assert "is complete" in _fails(["train", "--resume", "--run-dir", run_dir], capsys)
    assert (run_dir / "metrics.jsonl").read_text() == before
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == EPOCHS


# -- evaluate / sample ------------------------------------------------------------------------------
def test_evaluate_rewrites_the_same_scores_and_the_scatter(gan_run, tmp_path):
    run_dir = _copy_run(gan_run[0], tmp_path)
    before = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").unlink()
    (run_dir / "samples.png").unlink()
    code, out = _run(["evaluate", run_dir, "--no-figures"])
    assert code == 0, out
    assert "modes covered" in out
    assert not (run_dir / "samples.png").exists(), "--no-figures wrote a figure"
    assert json.loads((run_dir / "metrics.json").read_text()) == before  # seeded: the same samples, the same scores
    assert _run(["evaluate", run_dir])[0] == 0
    _assert_png(run_dir / "samples.png", min_side=300)


def test_sample_writes_a_scatter_and_the_points(gan_run, tmp_path):
    out_png = tmp_path / "points.png"
    code, out = _run(["sample", gan_run[0], "--num", 100, "--out", out_png, "--seed", 3])
    assert code == 0, out
    assert str(out_png) in out and str(tmp_path / "points.npy") in out
    _assert_png(out_png, min_side=300)
    points = np.load(tmp_path / "points.npy")
    assert points.shape == (100, 2) and points.dtype == np.float32 and np.isfinite(points).all()
    # the seed decides the points
    assert _run(["sample", gan_run[0], "--num", 100, "--out", tmp_path / "again.png", "--seed", 3])[0] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "again.npy"), points)
    assert _run(["sample", gan_run[0], "--num", 100, "--out", tmp_path / "other.png", "--seed", 4])[0] == 0
    assert not np.array_equal(np.load(tmp_path / "other.npy"), points)


def test_load_run_of_a_gan_gives_the_sampling_generator_and_no_guide(gan_run):
    from pyro_gen.models.gan import GANGenerator
    from pyro_gen.run import load_run

    config, model, guide, splits = load_run(gan_run[0])
    assert config.model.kind == "gan" and isinstance(model, GANGenerator) and guide is None
    assert set(splits) == {"train", "test"}
    assert model(batch_size=5).shape == (5, 2)


# -- images: a DCGAN -----------------------------------------------------------------------------------
def test_dcgan_run_scores_samples_in_a_recorded_feature_space(dcgan_run):
    m = json.loads((dcgan_run / "metrics.json").read_text())
    assert {"frechet_distance", "kid", "kid_std", "precision", "recall", "feature_space", "num_samples"} <= set(m)
    # the real set is the 400 digits the digits8 extractor held out of its training, as many samples
    assert m["feature_space"] == "domain:digits8" and m["num_samples"] == 400
    assert m["frechet_distance"] > 0 and 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
    q = m["protocol"]["sample_quality"]
    assert q["feature_space"].startswith("domain:digits8: ")  # the library's trained digit-classifier features
    assert q["samples"] == 400 and q["real"] == 400
    assert q["real_set"] == "400 digits valid+test images held out of the digits8 extractor's training"
    assert m["sampler"] == "the moving average of the generator's weights (objective.ema_decay 0.999)"
    assert m["model"] == "gan: dcgan generator (latent 4) and critic, spectral norm"


def test_dcgan_frechet_distance_is_the_librarys_on_the_same_samples(dcgan_run):
    from pyro_gen.evaluation import frechet_distance, held_out_images, precision_recall
    from pyro_gen.run import draw_samples, load_gan_run

    m = json.loads((dcgan_run / "metrics.json").read_text())
    run = load_gan_run(dcgan_run)
    samples = draw_samples(run.sampler, 400, seed=0)
    real = held_out_images("digits8").x
    # the same samples scored by the library's functions in the same (cached digits8) feature space
    assert m["frechet_distance"] == pytest.approx(frechet_distance(real, samples, space="digits8"), rel=1e-6)
    assert (m["precision"], m["recall"]) == pytest.approx(precision_recall(real, samples, k=3, space="digits8"))


def test_dcgan_scores_come_with_an_untrained_generator_and_the_training_split_as_references(dcgan_run):
    from pyro_gen.config import load_config
    from pyro_gen.evaluation import frechet_distance, held_out_images
    from pyro_gen.run import build_gan, draw_samples, load_gan_run

    m = json.loads((dcgan_run / "metrics.json").read_text())
    refs = m["references"]
    assert set(refs) == {"untrained_generator", "train_split"}
    # real against real is the floor; a generator at its initial weights is far above it
    assert 0 < refs["train_split"]["frechet_distance"] < refs["untrained_generator"]["frechet_distance"]
    assert refs["train_split"]["frechet_distance"] < 0.5 * refs["untrained_generator"]["frechet_distance"]
    # the untrained reference is the training run's starting point, rebuilt here by hand
    run = load_gan_run(dcgan_run)
    config = load_config(dcgan_run / "config.yaml")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        untrained, _ = build_gan(config, run.splits["train"])
    untrained.eval()
    real = held_out_images("digits8").x
    expected = frechet_distance(real, draw_samples(untrained, 400, seed=0), space="digits8")
    assert refs["untrained_generator"]["frechet_distance"] == pytest.approx(expected, rel=1e-6)
    assert "initial weights" in m["protocol"]["sample_quality"]["references"]["untrained_generator"]


def _set_eval(run_dir, **settings) -> None:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["eval"].update(settings)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def test_a_larger_test_split_is_subsampled_to_as_many_points_as_samples(dcgan_run, tmp_path):
    run_dir = _copy_run(dcgan_run, tmp_path)
    _set_eval(run_dir, quality_samples=40)  # fewer than the 400 held-out images
    assert _run(["evaluate", run_dir, "--no-figures"])[0] == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["num_samples"] == 40 and m["protocol"]["sample_quality"]["real"] == 40
    assert "one estimate on all 40 and 40 points" in m["protocol"]["sample_quality"]["kid"] and m["kid_std"] is None
    # sets larger than KID's subsets: mean and spread over random subsets
    _set_eval(run_dir, kid_subset_size=30)
    assert _run(["evaluate", run_dir, "--no-figures"])[0] == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    assert "over 10 random subsets of 30" in m["protocol"]["sample_quality"]["kid"] and m["kid_std"] > 0


def test_dcgan_figures_are_a_sample_grid_and_a_latent_interpolation(dcgan_run):
    # 8x8 digits are drawn enlarged to 32x32: 8 rows of samples, 8 rows of 10 interpolation steps
    _assert_png(dcgan_run / "samples.png", min_side=8 * 32)
    _assert_png(dcgan_run / "interpolation.png", min_side=8 * 32)


def test_the_feature_space_is_chosen_by_dataset_not_by_image_shape():
    from pyro_gen.run import sample_feature_space

    assert sample_feature_space("digits").name == "domain:digits8"
    # Fashion-MNIST and Frey faces are images too, but no digit classifier describes them: raw pixels
    assert sample_feature_space("fashion_mnist").name == "identity"
    assert sample_feature_space("frey_faces").name == "identity"


class HashDigits(torch.nn.Module):
    """A stand-in digit classifier: the label is a hash of the image, so every class occurs
    (``classes`` < 10: some never do). The tiny test DCGAN draws too few kinds of digits for the
    real classifier to find all ten."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.classes = classes

    def forward(self, x):
        label = (x.flatten(1).sum(1) * 1000).long() % self.classes
        return torch.nn.functional.one_hot(label, 10).float()


def _evaluate_with_classifier(run_dir: Path, classifier, monkeypatch) -> dict:
    import pyro_gen.evaluation.features

    monkeypatch.setattr(pyro_gen.evaluation.features, "domain_classifier", lambda *args, **kwargs: classifier)
    assert _run(["evaluate", run_dir])[0] == 0
    return json.loads((run_dir / "metrics.json").read_text())


def test_dcgan_latent_arithmetic_is_measured_and_drawn(dcgan_run, tmp_path, monkeypatch):
    from pyro_gen.analysis.latent_arithmetic import latent_arithmetic
    from pyro_gen.run import load_gan_run

    run_dir = _copy_run(dcgan_run, tmp_path)
    (run_dir / "arithmetic.png").unlink(missing_ok=True)
    m = _evaluate_with_classifier(run_dir, HashDigits(), monkeypatch)
    expected = latent_arithmetic(load_gan_run(run_dir).sampler, HashDigits(), rows=8, num_samples=2000, seed=0)
    got = m["latent_arithmetic"]
    assert got["target_accuracy"] == pytest.approx(expected.target_accuracy) and got["chance"] == 0.1
    assert got["class_counts"] == expected.class_counts.tolist() and sum(got["class_counts"]) == 2000
    assert got["rows"] == 8 and "z - v_(its class) + v_c" in got["protocol"]
    # 8 rows: the source sample, then it moved to each of the 10 classes (8x8 digits drawn at 32x32)
    _assert_png(run_dir / "arithmetic.png", min_side=8 * 32)


def test_a_digit_the_generator_never_draws_leaves_the_arithmetic_out(dcgan_run, tmp_path, monkeypatch):
    run_dir = _copy_run(dcgan_run, tmp_path)
    (run_dir / "arithmetic.png").unlink(missing_ok=True)
    m = _evaluate_with_classifier(run_dir, HashDigits(classes=9), monkeypatch)  # no sample is ever a 9
    assert "latent_arithmetic" not in m and not (run_dir / "arithmetic.png").exists()
    assert "frechet_distance" in m  # the rest of the evaluation is unaffected


def test_conditional_dcgan_draws_one_code_per_row_and_one_class_per_column(tmp_path):
    import matplotlib.image

    from pyro_gen.run import class_grid, load_gan_run

    run_dir = tmp_path / "cond"
    assert _run(["train", DCGAN_MNIST, *TINY_DCGAN, "model.conditional=true", "--run-dir", run_dir])[0] == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    assert "latent_arithmetic" not in m  # the class is an input of a conditional generator, not a direction in z
    height, width = matplotlib.image.imread(run_dir / "classes.png").shape[:2]  # 8 rows x 10 columns of 32-pixel cells
    assert width > height >= 8 * 32
    generator = load_gan_run(run_dir).sampler
    grid = class_grid(generator, rows=3, seed=5).reshape(3, 10, 1, 8, 8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        codes = generator.prior().sample((3,))
    with torch.no_grad():
        for c in (0, 4, 9):
            torch.testing.assert_close(grid[:, c], generator.generate(codes, torch.full((3,), c)))


def test_interpolation_conditions_the_generators_z_site(dcgan_run):
    from pyro_gen.run import gan_interpolation, load_gan_run

    generator = load_gan_run(dcgan_run).sampler
    rows = gan_interpolation(generator, rows=3, steps=5, seed=7).reshape(3, 5, 1, 8, 8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        start, end = generator.prior().sample((2, 3))
    with torch.no_grad():  # the ends of each row are the generator's images of the two codes
        torch.testing.assert_close(rows[:, 0], generator.generate(start))
        torch.testing.assert_close(rows[:, -1], generator.generate(end))
        torch.testing.assert_close(rows[:, 2], generator.generate((start + end) / 2))


def test_sample_of_a_dcgan_writes_an_image_grid(dcgan_run, tmp_path):
    out_png = tmp_path / "grid.png"
    code, out = _run(["sample", dcgan_run, "--num", 16, "--out", out_png])
    assert code == 0, out
    assert out.strip() == f"wrote {out_png}"
    _assert_png(out_png, min_side=4 * 32)


def test_conditional_gan_trains_on_the_datasets_labels(tmp_path):
    run_dir = tmp_path / "cond"
    code, out = _train_tiny(run_dir, 1, "model.conditional=true", "eval.images=false")
    assert code == 0, out
    from pyro_gen.run import load_gan_run

    run = load_gan_run(run_dir)
    assert run.generator.num_classes == 8 and run.objective.critic.num_classes == 8  # ring8's modes are its labels
    m = json.loads((run_dir / "metrics.json").read_text())
    assert "conditional on 8 classes" in m["model"] and m["num_samples"] == 2500


def test_a_uniform_prior_draws_codes_in_the_unit_square(tmp_path):
    from pyro_gen.run import load_gan_run

    run_dir = tmp_path / "uniform"
    assert _train_tiny(run_dir, 1, "model.prior=uniform", "eval.images=false")[0] == 0
    generator = load_gan_run(run_dir).generator
    z = generator.prior().sample((2000,))
    assert z.shape == (2000, 2) and z.min() >= -1 and z.max() <= 1
    assert z.mean(0).abs().max() < 0.05 and (z.var(0) - 1 / 3).abs().max() < 0.03  # Uniform(-1, 1): variance 1/3


# -- the shipped configs ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path, data, net, pack", [(RING8, "ring8", "mlp", 1), (GRID25, "grid25", "mlp", 1), (DCGAN_MNIST, "binarized_mnist", "dcgan", 1)]
)
def test_shipped_gan_configs_load_and_pass_the_run_checks(path, data, net, pack):
    from pyro_gen.config import load_config
    from pyro_gen.run import check_config

    config = load_config(path)
    check_config(config)
    assert (config.model.kind, config.data.name, config.model.net, config.model.pack) == ("gan", data, net, pack)


# -- errors: exit status 2 and one clear line, before anything is written -------------------------------
@pytest.mark.parametrize(
    "config, overrides, expected",
    [
        (RING8, ["model.packs=4"], "unknown config key 'model.packs'; did you mean 'model.pack'?"),
        (RING8, ["objective.n_critc=5"], "did you mean 'objective.n_critic'?"),
        (RING8, ["objective.ema_decay=high"], "config key 'objective.ema_decay' must be a number or null"),
        (RING8, ["model.conditional=1"], "config key 'model.conditional' must be true or false"),
        # gan_ring8.yaml sizes MLPs (model.hidden): the wrong network is reported, not its leftover option
        (
            RING8,
            ["model.net=dcgan"],
            "model.net: dcgan builds convolutional networks for images (C, H, W), but 'ring8' has points of shape (2,): use model.net=mlp",
        ),
        (
            DCGAN_MNIST,
            ["data.name=frey_faces", "model.conditional=true"],
            "'frey_faces' has no labels in its train split: set model.conditional=false",
        ),
        (
            RING8,
            ["data.name=digits", "data.train_size=500", "data.test_size=100"],
            "model.net: mlp builds a GAN for vectors (D,), but 'digits' has images of shape (1, 8, 8): use model.net=dcgan",
        ),
        (RING8, ["objective.name=elbo"], "objective.name is 'elbo'; choose one of 'minimax', 'non_saturating', 'wgan_gp', 'hinge'"),
        (RING8, ["objective.name=wasserstein"], "choose one of 'minimax', 'non_saturating', 'wgan_gp', 'hinge'"),
        (RING8, ["model.net=conv"], "model.net is 'conv'; choose one of 'mlp', 'dcgan'"),
        (RING8, ["model.conditional=true", "model.pack=2"], "a conditional GAN cannot be packed"),
        (RING8, ["objective.beta=0.5"], "unknown config key 'objective.beta'"),
        (RING8, ["guide.name=planar:2"], "config section 'guide' does not apply to model.kind: gan (a GAN has no guide"),
        (RING8, ["eval.nll_samples=10"], "unknown config key 'eval.nll_samples'"),
        (RING8, ["train.patience=3"], "train.patience stops on a validation score, and a GAN has none"),
        (RING8, ["data.valid_size=100"], "remove data.valid_size"),
        (RING8, ["model.channels=[8]"], "but model.net is 'mlp'"),
        (DCGAN_MNIST, ["data.name=digits", "model.hidden=[64]"], "model.hidden sizes an MLP, but model.net is 'dcgan'"),
        (RING8, ["objective.betas=[0.5]"], "objective.betas must be two numbers in [0, 1)"),
        (RING8, ["objective.ema_decay=1.0"], "objective.ema_decay must be >= 0 and < 1"),
        (RING8, ["objective.n_critic=0"], "objective.n_critic must be >= 1"),
        (RING8, ["data.train_size=100"], "train.batch_size 256 is larger than the 100 training points"),
        (RING8, ["train.method=nuts"], "unknown config key 'train.method'"),
        (QUICKSTART, ["model.pack=4"], "unknown config key 'model.pack'"),
        (QUICKSTART, ["objective.n_critic=5"], "unknown config key 'objective.n_critic'"),
        (RING8, ["model.prior=cauchy"], "model.prior is 'cauchy'; choose one of 'normal', 'uniform'"),
        (QUICKSTART, ["model.prior=uniform"], "model.prior: unknown prior 'uniform'"),
        (QUICKSTART, ["train.lr_schedule=cosine"], "train.lr_schedule is 'cosine'; choose one of 'constant', 'linear'"),
    ],
)
def test_bad_gan_settings_are_one_clear_line(config, overrides, expected, tmp_path, capsys):
    assert_train_refused_before_writing(config, overrides, expected, tmp_path, capsys)


def test_vae_only_commands_refuse_a_gan_run(gan_run, tmp_path, capsys):
    run_dir = _copy_run(gan_run[0], tmp_path)
    message = _fails(["analyze", run_dir], capsys)
    assert "'analyze' is not available for model.kind: gan" in message and "no posterior" in message and "metrics.json" in message
    assert "drop --nll-samples" in _fails(["evaluate", run_dir, "--nll-samples", 100], capsys)
    message = _fails(["compare", "--config", RING8, "--guides", "normal", "--out", tmp_path / "cmp"], capsys)
    assert "compare trains several guides of one model, and model.kind: gan has no guide" in message
    assert not (tmp_path / "cmp").exists()


def test_resume_checks_the_runs_config_again(gan_run, tmp_path, capsys):
    # a config.yaml edited into a setting that cannot work is refused before the checkpoint is touched
    run_dir = _copy_run(gan_run[0], tmp_path)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["objective"]["n_critic"] = 0
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    assert "objective.n_critic" in _fails(["train", "--resume", "--run-dir", run_dir], capsys)


def test_list_names_the_adversarial_losses():
    from pyro_gen.infer.adversarial import LOSSES

    code, out = _run(["list"])
    assert code == 0
    assert "gan losses:  " + ", ".join(LOSSES) in out
