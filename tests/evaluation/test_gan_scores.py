"""The GAN scoring protocol (:mod:`pyro_gen.evaluation.gan_scores`) against truths computed independently of it.

Truths: the library's own frechet_distance / kid / precision_recall on the same sets (the protocol
must only package them); mode counts of points placed by hand on the ring8 modes; the digits8
held-out images of :func:`~pyro_gen.evaluation.held_out_images`. Sizes are passed as parameters
(40 samples, KID subsets of 30), never by patching module constants.
"""

import math

import pytest
import torch

from pyro_gen import gan
from pyro_gen.data import load_dataset
from pyro_gen.data.toy import toy_modes
from pyro_gen.evaluation import domain_features, frechet_distance, held_out_images, kid, precision_recall
from pyro_gen.evaluation.gan_scores import (
    KID_SUBSET_SIZE,
    QUALITY_SAMPLES,
    REFERENCE_KEYS,
    draw_samples,
    gan_image_scores,
    image_quality_scores,
    reference_images,
    sample_feature_space,
    seeded_subset,
    toy_coverage_scores,
)


@pytest.fixture(scope="module")
def digits_space(tmp_path_factory):
    """The digits8 feature space, built once into a module cache that ``$PYRO_GEN_CACHE`` points to."""
    cache_dir = tmp_path_factory.mktemp("feature-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYRO_GEN_CACHE", str(cache_dir))
        space = domain_features("digits8", progress=False)
        yield space


def _generator(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return gan((1, 8, 8), latent_dim=4, hidden=(16,), output="sigmoid").eval()


def test_image_scores_are_the_librarys_scores_with_their_protocol(digits_space):
    held = held_out_images("digits8").x
    real, samples = held[:40], draw_samples(_generator(0), 40, seed=1)
    scores, protocol = image_quality_scores(samples, real, digits_space, seed=0, kid_subset_size=30)
    assert scores["frechet_distance"] == pytest.approx(frechet_distance(real, samples, space=digits_space), rel=1e-9)
    assert (scores["precision"], scores["recall"]) == pytest.approx(precision_recall(real, samples, k=3, space=digits_space))
    assert scores["kid"] == pytest.approx(kid(real, samples, num_subsets=10, subset_size=30, seed=0, space=digits_space)[0], rel=1e-9)
    assert scores["kid_std"] > 0 and scores["num_samples"] == 40 and scores["feature_space"] == "domain:digits8"
    assert protocol["kid"].endswith("mean and std over 10 random subsets of 30") and protocol["real"] == 40
    assert protocol["feature_space"] == f"domain:digits8: {digits_space.description}"
    # sets no larger than a KID subset: one estimate on everything, no spread
    scores, protocol = image_quality_scores(samples, real, digits_space, seed=0)
    assert scores["kid_std"] is None and "one estimate on all 40 and 40 points" in protocol["kid"]
    assert scores["kid"] == pytest.approx(kid(real, samples, space=digits_space)[0], rel=1e-9)
    assert KID_SUBSET_SIZE == 1000 and QUALITY_SAMPLES == 2000


def test_gan_image_scores_draw_as_many_samples_as_real_images_and_measure_both_references(digits_space):
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    args = (_generator(0), _generator(1), train, test, "digits", 3, 0, 1)
    scores, protocol, samples, real = gan_image_scores(*args, num_samples=40, kid_subset_size=30, space=digits_space)
    assert samples.shape == (40, 1, 8, 8) and real.shape == (40, 1, 8, 8)
    assert torch.equal(real, seeded_subset(held_out_images("digits8").x, 40, 3))  # the held-out images, not the test split
    assert torch.equal(samples, draw_samples(args[0], 40, seed=3))
    assert scores == {**image_quality_scores(samples, real, digits_space, 3, kid_subset_size=30)[0], "references": scores["references"]}
    refs = scores["references"]
    assert set(refs) == {"untrained_generator", "train_split"} and all(tuple(r) == REFERENCE_KEYS for r in refs.values())
    untrained = draw_samples(args[1], 40, seed=3)
    assert refs["untrained_generator"]["frechet_distance"] == pytest.approx(frechet_distance(real, untrained, space=digits_space), rel=1e-9)
    assert 0 < refs["train_split"]["frechet_distance"] < refs["untrained_generator"]["frechet_distance"]  # real against real: the floor
    assert protocol["real_set"] == "400 digits valid+test images held out of the digits8 extractor's training"
    assert "(seed 1)" in protocol["references"]["untrained_generator"] and "(seed 4)" in protocol["references"]["train_split"]


def test_the_feature_space_and_the_real_images_are_chosen_by_dataset(digits_space):
    assert sample_feature_space("digits").description == digits_space.description  # the cached space, loaded
    assert sample_feature_space("fashion_mnist").name == sample_feature_space("frey_faces").name == "identity"
    test = load_dataset("digits", "test")
    images, words = reference_images("digits", test, digits_space, data_seed=0)
    assert torch.equal(images, held_out_images("digits8").x) and "held out" in words
    images, words = reference_images("digits", test, sample_feature_space("frey_faces"), data_seed=0)
    assert torch.equal(images, test.x) and words == "the digits test split"


def test_seeded_subset_keeps_the_original_order():
    x = torch.arange(100)
    subset = seeded_subset(x, 30, seed=2)
    assert len(subset) == 30 and len(set(subset.tolist())) == 30 and torch.equal(subset, subset.sort().values)
    assert torch.equal(seeded_subset(x, 30, seed=2), subset) and not torch.equal(seeded_subset(x, 30, seed=3), subset)
    assert seeded_subset(x, 100, seed=2) is x and seeded_subset(x, 500, seed=2) is x


def test_toy_coverage_counts_points_placed_on_the_modes():
    centers, std = toy_modes("ring8")
    on_modes = centers.repeat_interleave(torch.tensor([5, 5, 5, 5, 5, 5, 0, 10]), dim=0)  # mode 6 empty
    far = centers[:2] * 0 + torch.tensor([50.0, 50.0])  # far from every mode
    scores, protocol = toy_coverage_scores(torch.cat([on_modes, far]), "ring8")
    assert scores["modes_covered"] == 7 and scores["num_modes"] == 8 and scores["num_samples"] == 42
    assert scores["mode_counts"] == [5, 5, 5, 5, 5, 5, 0, 10] and scores["high_quality"] == pytest.approx(40 / 42)
    q = torch.tensor([5, 5, 5, 5, 5, 5, 10], dtype=torch.float64) / 40
    assert scores["reverse_kl"] == pytest.approx(float((q * (q * 8).log()).sum()))
    assert protocol == {
        "samples": 42,
        "num_std": 3.0,
        "min_count": 1,
        "estimator": (
            "VEEGAN protocol (Srivastava et al. 2017): 42 samples; a sample is of high quality within 3 standard deviations of its "
            "nearest mode; a mode is covered by 1 high-quality sample(s); reverse KL: KL(q || uniform) of the high-quality "
            "samples' histogram q over the modes"
        ),
    }
    # a stricter protocol, by parameter; no high-quality sample at all: reverse KL is not finite, recorded as None
    scores, protocol = toy_coverage_scores(torch.cat([on_modes, far]), "ring8", min_count=6)
    assert scores["modes_covered"] == 1 and protocol["min_count"] == 6
    scores, _ = toy_coverage_scores(far, "ring8")
    assert scores["modes_covered"] == 0 and scores["reverse_kl"] is None and not math.isnan(scores["high_quality"])
