"""Feature spaces for sample-quality scores, checked against truths known independently of them.

Truths: the digit labels shipped with scikit-learn and with binarized MNIST (held-out accuracies
are recomputed here from those labels, not read from the extractor's own report); binarized
MNIST's test set is a Bernoulli draw of the grayscale MNIST test images sorted by digit, so the
held-out images taken from either dataset must agree image by image; two halves of the same real
images are closer to each other than real images are to noise or to an untrained generator's
output; the sha256 of the cached weights file computed here with :mod:`hashlib`.

The digits8 extractor is trained by its full protocol (seconds). The mnist28 extractor is
trained on a small slice with a small budget in most tests; one test (about 20 s) runs its full protocol.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pyro_gen.evaluation.features as features
from pyro_gen import gan
from pyro_gen.data import load_dataset, resolve_data_dir
from pyro_gen.errors import ChecksumError, DataError, DataNotFoundError
from pyro_gen.evaluation import (
    FeatureSpace,
    FeatureWeightsNotFoundError,
    domain_features,
    extract_features,
    feature_space,
    frechet_distance,
    held_out_images,
    inception_features,
    kid,
    precision_recall,
    quality_scores,
    train_domain_extractor,
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # a test that forgets cache_dir= must not write into the user's ~/.cache
    monkeypatch.setenv(features.CACHE_DIR_ENV, str(tmp_path / "default-cache"))


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    """A cache directory holding the digits8 extractor, built once by its full protocol, and that space."""
    cache_dir = tmp_path_factory.mktemp("feature-cache")
    return cache_dir, domain_features("digits8", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def mnist_data_dir():
    data_dir = resolve_data_dir()
    try:
        load_dataset("mnist", "test", data_dir=data_dir)
        load_dataset("binarized_mnist", "test", data_dir=data_dir)
    except DataNotFoundError:
        pytest.skip(f"the MNIST test files and binarized_mnist.npz are not in {data_dir}")
    return data_dir


@pytest.fixture(scope="module")
def small_mnist_space(mnist_data_dir):
    """The mnist28 extractor trained on 2000 of its 8000 training images for 3 epochs (a few seconds)."""
    return train_domain_extractor("mnist28", data_dir=mnist_data_dir, epochs=3, num_train=2000)


def _halves(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[order[:n]], x[order[n : 2 * n]]


def _untrained_generator_images(like: torch.Tensor, n: int) -> torch.Tensor:
    torch.manual_seed(0)
    generator = gan((like[0].numel(),), latent_dim=8, output="sigmoid")
    with torch.no_grad():
        return generator(batch_size=n).reshape(n, *like.shape[1:])


# -- digits8: accuracy against scikit-learn's own labels ------------------------------------------------
def test_digits8_extractor_classifies_held_out_digits_by_sklearns_labels(digits_cache):
    from sklearn.datasets import load_digits

    _, space = digits_cache
    bunch = load_digits()
    sklearn_images = torch.from_numpy(bunch.images / 16.0).float().flatten(1)
    held, train = held_out_images("digits8"), load_dataset("digits", "train")
    assert len(held) == 400

    def sklearn_rows(images):
        distance, rows = torch.cdist(images.flatten(1), sklearn_images).min(1)
        assert distance.max() == 0  # every image is one of scikit-learn's, exactly
        return rows

    held_rows, train_rows = sklearn_rows(held.x), sklearn_rows(train.x)
    assert not set(held_rows.tolist()) & set(train_rows.tolist())  # held out means never trained on
    truth = torch.from_numpy(bunch.target)[held_rows]
    with torch.no_grad():
        predicted = space.extractor.classifier(held.x).argmax(1)
    accuracy = float((predicted == truth).double().mean())
    assert accuracy > 0.95
    assert space.info["held_out_accuracy"]["grayscale"] == pytest.approx(accuracy)
    assert space.feature_dim == 64 and space.info["num_train"] == 1397


def test_the_description_names_the_space_its_training_and_accuracy(digits_cache):
    cache_dir, space = digits_cache
    accuracy = space.info["held_out_accuracy"]["grayscale"]
    assert space.description.startswith("domain:digits8 (CNN digit classifier")
    assert f"held-out accuracy {accuracy:.4f}" in space.description and "1397 images" in space.description
    held = held_out_images("digits8")
    scores = quality_scores(held.x[:200], held.x[200:], space)
    assert scores.feature_space == space.description
    assert scores.as_dict()["feature_space"] == space.description
    # the dataset alias reaches the same cached space
    assert feature_space("digits", cache_dir=cache_dir).description == space.description
    assert space.as_dict()["name"] == "domain:digits8"


# -- the cache ----------------------------------------------------------------------------------------
def test_cache_round_trip_gives_identical_features(digits_cache, capsys):
    cache_dir, built = digits_cache
    capsys.readouterr()
    loaded = domain_features("digits8", cache_dir=cache_dir)
    assert capsys.readouterr().err == ""  # loaded, not retrained: a training says so on stderr
    held = held_out_images("digits8")
    assert torch.equal(extract_features(held.x, loaded), extract_features(held.x, built))
    assert loaded.description == built.description
    assert loaded.info["held_out_accuracy"] == built.info["held_out_accuracy"]
    assert loaded.info["train_seconds"] == built.info["train_seconds"]  # the recorded build's, not a new one's
    assert loaded.info["cache"]["weights"] == str(features.domain_cache_paths("digits8", cache_dir)[0])


def test_the_cache_records_checksum_protocol_and_accuracy(digits_cache):
    cache_dir, space = digits_cache
    weights, metadata = features.domain_cache_paths("digits8", cache_dir)
    record = json.loads(metadata.read_text())
    assert record["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["protocol"]["seed"] == 0 and record["protocol"]["epochs"] == 40
    assert record["protocol"]["training_data"].startswith("scikit-learn 8x8 digits")
    assert record["held_out_accuracy"] == space.info["held_out_accuracy"]
    assert record["description"] == space.description
    assert sorted(p.name for p in weights.parent.iterdir()) == [metadata.name, weights.name]  # no temporary files left


@pytest.fixture
def cache_copy(digits_cache, tmp_path):
    cache_dir, _ = digits_cache
    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    return copy, *features.domain_cache_paths("digits8", copy)


def test_a_corrupt_weights_file_gives_an_error_naming_it_and_the_rebuild(cache_copy):
    cache_dir, weights, _ = cache_copy
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="sha256") as caught:
        domain_features("digits8", cache_dir=cache_dir)
    assert str(weights) in str(caught.value) and "rebuild=True" in str(caught.value)


def test_weights_that_cannot_be_unpickled_give_an_error_naming_the_file(cache_copy):
    cache_dir, weights, metadata = cache_copy
    weights.write_bytes(b"not a torch file")
    record = json.loads(metadata.read_text())
    record["weights_sha256"] = hashlib.sha256(b"not a torch file").hexdigest()
    metadata.write_text(json.dumps(record))
    with pytest.raises(ChecksumError, match="cannot be loaded") as caught:
        domain_features("digits8", cache_dir=cache_dir)
    assert str(weights) in str(caught.value)


def test_a_corrupt_metadata_file_or_missing_weights_give_clear_errors(cache_copy):
    cache_dir, weights, metadata = cache_copy
    weights.unlink()
    with pytest.raises(ChecksumError, match="weights file is missing"):
        domain_features("digits8", cache_dir=cache_dir)
    metadata.write_text('{"format": 1, "protocol":')
    with pytest.raises(ChecksumError, match="not readable JSON") as caught:
        domain_features("digits8", cache_dir=cache_dir)
    assert str(metadata) in str(caught.value) and "rebuild=True" in str(caught.value)


def test_rebuild_repairs_a_corrupt_cache_with_the_same_seeded_weights(digits_cache, cache_copy):
    _, built = digits_cache
    cache_dir, weights, _ = cache_copy
    weights.write_bytes(b"damaged")
    rebuilt = domain_features("digits8", cache_dir=cache_dir, rebuild=True)
    held = held_out_images("digits8")
    assert torch.equal(extract_features(held.x, rebuilt), extract_features(held.x, built))  # training is seeded
    assert torch.equal(extract_features(held.x, domain_features("digits8", cache_dir=cache_dir)), extract_features(held.x, built))


def test_an_interrupted_write_leaves_no_cache_behind(tmp_path, capsys):
    weights, metadata = features.domain_cache_paths("digits8", tmp_path)
    weights.mkdir(parents=True)  # a folder where the weights file goes: the final rename of the write fails
    with pytest.raises(OSError):
        feature_space("digits", cache_dir=tmp_path, progress=False)
    assert [p.name for p in weights.parent.iterdir()] == [weights.name]  # no metadata, no temporary file
    assert not any(weights.iterdir())
    assert capsys.readouterr() == ("", "")  # progress=False trains in silence


def test_a_first_build_says_so_and_shows_its_epochs_unless_told_not_to(tmp_path, capsys):
    domain_features("digits8", cache_dir=tmp_path / "loud")
    err = capsys.readouterr().err
    folder = features.domain_cache_paths("digits8", tmp_path / "loud")[0].parent
    assert f"training the digits8 feature extractor once (a few seconds); it is cached in {folder}" in err
    assert "digits8 feature extractor" in err.splitlines()[-1] and "40/40" in err  # the tqdm bar over the 40 epochs
    domain_features("digits8", cache_dir=tmp_path / "loud")
    assert capsys.readouterr().err == ""  # loaded from the cache: nothing to say


# -- scores in the domain space -------------------------------------------------------------------------
def test_digits8_frechet_distance_separates_real_from_noise_and_an_untrained_generator(digits_cache):
    _, space = digits_cache
    real_a, real_b = _halves(held_out_images("digits8").x, 200)
    noise = torch.rand(real_a.shape, generator=torch.Generator().manual_seed(1))
    untrained = _untrained_generator_images(real_a, 200)
    between_halves = frechet_distance(real_a, real_b, space=space)
    assert 0 < between_halves < frechet_distance(real_a, noise, space=space) / 10
    assert between_halves < frechet_distance(real_a, untrained, space=space) / 10
    assert abs(kid(real_a, real_b, space=space)[0]) < kid(real_a, noise, space=space)[0] / 10
    assert precision_recall(real_a, real_b, space=space)[1] > 0.8 > 0.1 > precision_recall(real_a, untrained, space=space)[1]


def test_mnist28_held_out_images_agree_between_grayscale_and_binarized_mnist(mnist_data_dir):
    gray = held_out_images("mnist28", "mnist", data_dir=mnist_data_dir)
    binary = held_out_images("mnist28", "binarized_mnist", data_dir=mnist_data_dir)
    assert len(gray) == len(binary) == 2000
    # the static binarization is a Bernoulli draw of the grayscale image: same digit, pixels mostly equal
    assert sorted(gray.y.tolist()) == sorted(binary.y.tolist())
    by_digit = [(gray.x[gray.y == d], binary.x[binary.y == d]) for d in range(10)]
    matched = torch.cat([(g - b).abs().flatten(1).mean(1) for g, b in by_digit])
    shuffled = torch.cat([(g - b.roll(1, 0)).abs().flatten(1).mean(1) for g, b in by_digit])
    assert matched.mean() < 0.06 < 0.12 < shuffled.mean()
    split = features.mnist28_indices()
    assert len(split["train"]) == 8000 and not set(split["train"].tolist()) & set(split["held_out"].tolist())


def test_small_budget_mnist28_extractor_on_binarized_mnists_held_out_images(small_mnist_space, mnist_data_dir):
    held = held_out_images("mnist28", "binarized_mnist", data_dir=mnist_data_dir)
    with torch.no_grad():
        accuracy = float((small_mnist_space.extractor.classifier(held.x).argmax(1) == held.y).double().mean())
    assert accuracy > 0.9  # 3 epochs on 2000 images; the full protocol reaches about 0.98
    assert small_mnist_space.info["held_out_accuracy"]["binarized_mnist"] == pytest.approx(accuracy)
    assert "a random subset of" in small_mnist_space.description


def test_mnist28_frechet_distance_separates_real_from_noise_and_an_untrained_generator(small_mnist_space, mnist_data_dir):
    real_a, real_b = _halves(held_out_images("mnist28", "binarized_mnist", data_dir=mnist_data_dir).x, 500)
    noise = torch.bernoulli(torch.full(real_a.shape, 0.2), generator=torch.Generator().manual_seed(1))
    untrained = _untrained_generator_images(real_a, 500)
    between_halves = frechet_distance(real_a.flatten(1), real_b.flatten(1), space=small_mnist_space)  # flat images work too
    assert 0 < between_halves < frechet_distance(real_a, noise, space=small_mnist_space) / 10
    assert between_halves < frechet_distance(real_a, untrained, space=small_mnist_space) / 10


@pytest.mark.slow
def test_full_mnist28_protocol_is_accurate_and_quick(mnist_data_dir, tmp_path):
    space = domain_features("mnist28", data_dir=mnist_data_dir, cache_dir=tmp_path)
    held = held_out_images("mnist28", "binarized_mnist", data_dir=mnist_data_dir)
    with torch.no_grad():
        accuracy = float((space.extractor.classifier(held.x).argmax(1) == held.y).double().mean())
    assert accuracy > 0.97 and space.info["held_out_accuracy"]["grayscale"] > 0.97
    assert space.info["train_cpu_seconds"] < 60 * space.info["torch_threads"]  # CPU time: the wall time of a shared machine varies


# -- the entry point and its inputs ----------------------------------------------------------------------
def test_identity_space_and_the_space_argument_of_the_scores():
    x = torch.randn(50, 2, 3, dtype=torch.float64)
    y = torch.randn(60, 2, 3, dtype=torch.float64) + 1
    identity = feature_space("identity")
    assert identity.description.startswith("identity")
    assert torch.equal(extract_features(x, identity), x.flatten(1))
    assert frechet_distance(x, y, space="identity") == frechet_distance(x.flatten(1), y.flatten(1))
    assert precision_recall(x, y, space=identity) == precision_recall(x.flatten(1), y.flatten(1))


def test_unknown_spaces_and_wrong_inputs_are_refused(digits_cache):
    _, space = digits_cache
    with pytest.raises(DataError, match="unknown feature space 'fid'"):
        feature_space("fid")
    with pytest.raises(DataError, match="no domain feature extractor for 'frey_faces'.*no labels"):
        domain_features("frey_faces")
    with pytest.raises(DataError, match=r"shape \(N, 1, 8, 8\)"):
        extract_features(torch.rand(4, 1, 28, 28), space)
    with pytest.raises(DataError, match=r"values in \[0.0, 1.0\]"):
        extract_features(torch.full((4, 1, 8, 8), 255.0), space)
    assert extract_features(torch.rand(4, 64), space).shape == (4, 64)  # flat 8x8 images are reshaped


def test_a_feature_space_is_frozen(digits_cache):
    _, space = digits_cache
    assert isinstance(space, FeatureSpace)
    assert not any(p.requires_grad for p in space.parameters())
    space.train()
    assert not space.training and not space.extractor.classifier.training


# -- Inception: only the offline error paths can be tested without the weights -------------------------
def test_inception_without_weights_says_so_and_points_to_the_domain_extractors(tmp_path, monkeypatch):
    with pytest.raises(FeatureWeightsNotFoundError, match="not available offline") as caught:
        inception_features(weights_path=tmp_path / "missing.pth")
    assert str(tmp_path / "missing.pth") in str(caught.value) or "torchvision is not installed" in str(caught.value)
    assert "feature_space('mnist28')" in str(caught.value)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    with pytest.raises(FeatureWeightsNotFoundError, match="never downloads"):
        feature_space("inception")


def test_inception_weights_file_name_and_a_damaged_file(tmp_path):
    torchvision_models = pytest.importorskip("torchvision.models")
    assert torchvision_models.Inception_V3_Weights.IMAGENET1K_V1.url.endswith("/" + features.INCEPTION_WEIGHTS_FILE)
    damaged = tmp_path / features.INCEPTION_WEIGHTS_FILE
    damaged.write_bytes(b"truncated download")
    with pytest.raises(ChecksumError, match="does not start with the 0cc3c7bd"):
        inception_features(weights_path=damaged)


def test_inception_features_when_the_weights_are_on_disk():
    pytest.importorskip("torchvision")
    path = Path(torch.hub.get_dir()) / "checkpoints" / features.INCEPTION_WEIGHTS_FILE
    if not path.is_file():
        pytest.skip(f"torchvision's Inception-v3 weights are not in {path.parent}")
    space = inception_features()
    out = extract_features(torch.rand(2, 1, 28, 28), space)
    assert out.shape == (2, 2048) and torch.isfinite(out).all()
    assert space.description.startswith("inception:pool3")


def test_import_pyro_gen_does_not_import_torchvision():
    code = "import sys, pyro_gen, pyro_gen.evaluation.features; sys.exit('torchvision' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode == 0


def test_mnist28_split_is_the_documented_seeded_permutation():
    perm = np.random.default_rng(0).permutation(10000)
    split = features.mnist28_indices()
    assert np.array_equal(split["train"], perm[:8000]) and np.array_equal(split["held_out"], perm[8000:])
