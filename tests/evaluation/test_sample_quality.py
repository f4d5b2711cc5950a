"""Sample-quality scores against answers known in advance.

Truths: constructed samples whose mode counts are fixed by construction; the Rayleigh law
``P(||e|| <= 3 sigma) = 1 - exp(-9/2)`` for isotropic 2-D Gaussian noise; the Frechet distance
of Gaussians in closed form (diagonal covariances) and with SciPy's ``sqrtm``; KID and
precision/recall written out by hand with Python loops on tiny sets.
"""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from pyro_gen.data.toy import load, toy_modes
from pyro_gen.errors import DataError
from pyro_gen.evaluation import frechet_distance, kid, mode_coverage, precision_recall, toy_mode_coverage
from pyro_gen.evaluation.sample_quality import NUM_SAMPLES, frechet_distance_from_moments


# -- the toy definitions are the published ones ---------------------------------------------
def test_toy_mixtures_match_the_veegan_protocol_parameters():
    ring, ring_std = toy_modes("ring8")
    angles = torch.arange(8) * 2 * math.pi / 8
    assert torch.allclose(ring, torch.stack([2 * angles.cos(), 2 * angles.sin()], -1), atol=1e-6)  # radius 2, evenly spaced
    assert ring_std == 0.02
    grid, grid_std = toy_modes("grid25")
    values = (-4.0, -2.0, 0.0, 2.0, 4.0)
    assert {tuple(p) for p in grid.tolist()} == {(a, b) for a in values for b in values}
    assert grid_std == 0.05
    assert NUM_SAMPLES == 2500


# -- mode coverage ------------------------------------------------------------------------------
def test_samples_exactly_at_five_of_eight_modes():
    centers, std = toy_modes("ring8")
    samples = centers[torch.arange(NUM_SAMPLES) % 5]
    result = toy_mode_coverage(samples, "ring8")
    assert (result.modes_covered, result.num_modes, result.high_quality) == (5, 8, 1.0)
    assert result.counts.tolist() == [500] * 5 + [0] * 3
    assert result.reverse_kl == pytest.approx(math.log(8 / 5))  # sum_i (1/5) log((1/5) / (1/8))


def test_samples_far_from_every_mode_are_not_high_quality():
    result = toy_mode_coverage(torch.full((NUM_SAMPLES, 2), 10.0), "grid25")
    assert (result.modes_covered, result.high_quality) == (0, 0.0)
    assert math.isnan(result.reverse_kl)  # no high-quality sample: no mode histogram


def test_the_three_standard_deviation_threshold_and_the_min_count():
    centers, std = toy_modes("grid25")
    inside, outside = centers[0] + torch.tensor([2.9 * std, 0.0]), centers[1] + torch.tensor([0.0, 3.1 * std])
    samples = torch.cat([inside.repeat(30, 1), outside.repeat(70, 1), centers[2].repeat(10, 1)])
    result = mode_coverage(samples, centers, std)
    assert result.high_quality == pytest.approx(40 / 110)
    assert result.modes_covered == 2
    assert mode_coverage(samples, centers, std, min_count=20).modes_covered == 1  # PacGAN's rule
    q = torch.tensor([30 / 40, 10 / 40], dtype=torch.float64)
    assert result.reverse_kl == pytest.approx(float((q * (q * 25).log()).sum()))


def test_uniform_coverage_has_zero_reverse_kl():
    centers, _ = toy_modes("grid25")
    result = toy_mode_coverage(centers.repeat(100, 1), "grid25")
    assert result.modes_covered == 25 and result.reverse_kl == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", ["ring8", "grid25"])
def test_the_data_itself_covers_every_mode_with_the_rayleigh_fraction_of_high_quality(name):
    """For 2-D isotropic noise ||e|| / sigma is Rayleigh: P(||e|| <= 3 sigma) = 1 - exp(-4.5) = 0.98889."""
    x = load(name, "test", n=20000, seed=0).x
    result = toy_mode_coverage(x, name)
    assert result.modes_covered == result.num_modes
    assert result.high_quality == pytest.approx(1 - math.exp(-4.5), abs=0.004)
    assert result.reverse_kl < 0.01


def test_mode_coverage_rejects_bad_input():
    with pytest.raises(DataError, match="dimensions"):
        mode_coverage(torch.zeros(4, 3), torch.zeros(2, 2), 0.1)
    with pytest.raises(DataError, match="NaN"):
        toy_mode_coverage(torch.tensor([[math.nan, 0.0]]), "ring8")


# -- Frechet distance -----------------------------------------------------------------------------
def test_frechet_distance_of_diagonal_gaussians_has_a_closed_form():
    m1, m2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.5])
    s1, s2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    closed = float((m1 - m2).square().sum() + (s1 + s2 - 2 * (s1 * s2).sqrt()).sum())
    assert frechet_distance_from_moments(m1, torch.diag(s1), m2, torch.diag(s2)) == pytest.approx(closed, rel=1e-12)


def test_frechet_distance_of_full_covariances_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    c1, c2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)
    m1, m2 = rng.standard_normal(4), rng.standard_normal(4)
    reference = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * np.real(scipy.linalg.sqrtm(c1 @ c2)))
    assert frechet_distance_from_moments(m1, c1, m2, c2) == pytest.approx(reference, rel=1e-8)


def test_frechet_distance_of_feature_sets():
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    shift = torch.tensor([1.0, -2.0, 0.5])
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift.square().sum()), rel=1e-6)  # same covariance
    singular = torch.cat([x[:, :1], x[:, :1]], 1)  # rank-1 covariance: still finite and >= 0
    assert frechet_distance(singular, singular) == pytest.approx(0.0, abs=1e-6)


# -- KID -------------------------------------------------------------------------------------
def kid_by_hand(x, y):
    d = len(x[0])

    def k(a, b):
        return (sum(ai * bi for ai, bi in zip(a, b)) / d + 1) ** 3

    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(a, b) for a in x for b in y) / (m * n)
    return kxx + kyy - 2 * kxy


def test_kid_on_constructed_sets():
    # one dimension: k(0,0) = 1, k(1,1) = 8, k(0,1) = 1 -> 1 + 8 - 2 * 1 = 7
    assert kid([[0.0], [0.0]], [[1.0], [1.0]]) == (pytest.approx(7.0), 0.0)
    x = [[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]]
    y = [[1.0, 1.0], [-1.0, 0.0], [3.0, 2.0], [0.0, -2.0]]
    assert kid(x, y)[0] == pytest.approx(kid_by_hand(x, y), rel=1e-12)


def test_kid_of_a_set_with_itself_or_the_same_distribution_is_about_zero():
    g = torch.Generator().manual_seed(0)
    x, y, far = torch.randn(400, 4, generator=g), torch.randn(400, 4, generator=g), torch.randn(400, 4, generator=g) + 2.0
    baseline = kid(x, far)[0]
    assert baseline > 1.0
    assert abs(kid(x, x)[0]) < 0.01 * baseline
    assert abs(kid(x, y)[0]) < 0.01 * baseline
    mean, std = kid(x, far, num_subsets=10, subset_size=100)
    assert mean == pytest.approx(baseline, rel=0.2) and std > 0


# -- precision and recall ---------------------------------------------------------------------
def test_precision_recall_identical_disjoint_and_half_overlapping_sets():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 2, generator=g)
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    # half of the samples are real points, half far away: precision 1/2, and every real point is a sample
    fake = torch.cat([real, torch.randn(200, 2, generator=g) + 100.0])
    assert precision_recall(real, fake) == (0.5, 1.0)


def test_precision_recall_by_hand_on_a_line():
    """Real points 0, 1, 2, 3, 10 with k = 1: radii 1, 1, 1, 1, 7. Samples 0.5 (inside), 5 (inside the ball of 10) and 20 (outside)."""
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    fake = torch.tensor([[0.5], [5.0], [20.0]])
    precision, recall = precision_recall(real, fake, k=1)
    assert precision == pytest.approx(2 / 3)
    # fake radii (k = 1): 4.5, 4.5, 15; real points inside some fake ball: 0, 1, 2, 3 (0.5 +- 4.5), 10 (5 +- 4.5 no; 20 +- 15 yes)
    assert recall == 1.0
