"""PSIS k-hat against ArviZ's ``psislw`` and against tails whose shape is known in closed form.

Known shapes used below:

* ``log w ~ Exponential(rate a)`` means ``w ~ Pareto(1, a)``: tail shape ``k = 1 / a``;
* target ``N(m, v I_d)``, proposal ``N(m, c^2 v I_d)``: ``log w = const + (1 - 1/c^2) |z - m|^2 / (2 v)``
  with ``|z - m|^2 / (c^2 v) ~ chi^2_d``, so ``P(w > s) ~ s^(-1 / (1 - c^2))`` for ``c < 1``:
  ``k = 1 - c^2``; for ``c > 1`` the weights are bounded (``k = -2 / d < 0``);
* a Normal proposal for a Cauchy or Student-t(2) target: weights with no finite mean (``k >= 1``).
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats
from torch import nn

from pyro_gen.analysis.psis import KhatResult, guide_khat, psis_khat, tail_length
from pyro_gen.errors import DataError
from pyro_gen.evaluation.likelihood import log_likelihood, log_weights
from pyro_gen.models import Latent, LatentModel, make_likelihood

arviz = pytest.importorskip("arviz")


@pytest.mark.skipif(not hasattr(arviz, "psislw"), reason="this ArviZ has no psislw")
@pytest.mark.parametrize("num_samples", [20, 100, 1000, 4000])
def test_khat_equals_arviz_psislw(num_samples):
    rng = np.random.default_rng(num_samples)
    n = 40
    # light to very heavy tails, a few log-weight scales, and one column spanning more than
    # the float range below its maximum (ArviZ clips the cutoff at log(tiny))
    lw = rng.standard_normal((num_samples, n)) * rng.uniform(0.1, 4.0, n) + 0.5 * rng.standard_t(1.5, (num_samples, n))
    lw[:, 0] = np.linspace(-2000.0, 0.0, num_samples)
    lw[:, 1] = rng.exponential(1.0, num_samples) - 300.0
    with np.errstate(all="ignore"):
        _, expected = arviz.psislw(lw.T.copy())  # ArviZ wants samples last
    ours = psis_khat(lw)
    assert ours.shape == (n,) and ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_tail_length_follows_the_paper():
    assert tail_length(100) == 20  # S / 5
    assert tail_length(4000) == 190  # 3 sqrt(S) = 189.7
    assert tail_length(4000, r_eff=0.5) == 269


def test_equal_weights_have_khat_minus_inf():
    # proposal == target: every log-weight is the same. Bounded weights have k < 0; constant
    # ones are the limit k -> -inf (ArviZ and loo answer inf, "cannot fit"; see the module docstring)
    assert torch.equal(psis_khat(torch.full((1000, 3), -2.5)), torch.full((3,), -math.inf, dtype=torch.float64))


def test_proposal_wider_than_target_gives_negative_khat():
    z = np.random.default_rng(0).standard_normal((4000, 20)) * 1.5
    khat = psis_khat(stats.norm.logpdf(z) - stats.norm(0, 1.5).logpdf(z))
    assert (khat < 0.0).all()  # bounded weights (true k = -2 in one dimension)


@pytest.mark.parametrize("target, mean_above", [(stats.cauchy(), 0.7), (stats.t(2), 0.65)], ids=["cauchy", "student_t2"])
def test_light_tailed_proposal_for_heavy_tailed_target_gives_large_khat(target, mean_above):
    # The true k is 1 (weights without a finite mean), but the tail's slowly varying factor
    # (w ~ exp(z^2 / 2) / |z|^(df + 1)) biases estimates from S = 4000 draws downwards. Measured
    # over seeds 0-3, the mean of 40 columns' k-hat is 0.72-0.78 for the Cauchy target and
    # 0.68-0.74 for Student-t(2), single columns ranging 0.39-0.97: every column is still
    # flagged as having infinite-variance weights (k > 0.5) or nearly so.
    z = np.random.default_rng(1).standard_normal((4000, 40))
    khat = psis_khat(target.logpdf(z) - stats.norm.logpdf(z))
    assert khat.mean() > mean_above and (khat > 0.35).all() and (khat > 0.5).double().mean() > 0.85


@pytest.mark.parametrize("true_k", [0.3, 0.5, 0.8])
def test_pareto_weights_recover_their_tail_shape(true_k):
    lw = torch.distributions.Exponential(1 / true_k).sample((10000, 40))  # w ~ Pareto(1, 1/k)
    khat = psis_khat(lw)
    assert abs(khat.mean().item() - true_k) < 0.05
    assert (khat - true_k).abs().median() < 0.15


def test_input_checks_and_shapes():
    assert psis_khat(torch.randn(500)).dim() == 0  # one column
    with pytest.raises(DataError, match=r"shape \(num_samples, N\)"):
        psis_khat(torch.randn(10, 2, 2))
    bad = torch.randn(100, 3)
    bad[5, 1] = float("nan")
    with pytest.raises(DataError, match="NaN or \\+inf"):
        psis_khat(bad)
    with pytest.raises(DataError, match="all -inf"):
        psis_khat(torch.full((100, 2), -math.inf))
    with pytest.raises(DataError, match="at least 2 samples"):
        psis_khat(torch.randn(1, 4))


# -- guides -----------------------------------------------------------------------------------
SIGMA = 0.8
POST_VAR = SIGMA**2 / (1 + SIGMA**2)  # z ~ N(0, I), x | z ~ N(z, SIGMA^2 I): p(z | x) = N(x / (1 + SIGMA^2), POST_VAR I)


def linear_model():
    return LatentModel([Latent("z", (2,))], nn.Identity(), make_likelihood("gaussian", scale=SIGMA), data_shape=(2,))


class ScaledPosterior(nn.Module):
    """q(z | x) = N(exact posterior mean, (width^2 * exact posterior variance) I): a guide with a known k."""

    def __init__(self, model, width):
        super().__init__()
        self.plate, self.width = model.data_plate, width

    def forward(self, x, *, batch_size=None, data_size=None):
        with self.plate(len(x), data_size):
            pyro.sample("z", dist.Normal(x / (1 + SIGMA**2), self.width * math.sqrt(POST_VAR)).to_event(1))


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(0)
    return torch.randn(30, 2) * math.sqrt(1 + SIGMA**2)


@pytest.mark.parametrize("width", [math.sqrt(0.5), 0.3, 1.5])
def test_guide_khat_recovers_the_known_tail_of_a_mis_scaled_posterior(width, data):
    model = linear_model()
    result = guide_khat(model, ScaledPosterior(model, width), data, num_samples=4000)
    assert isinstance(result, KhatResult) and result.khat.shape == (30,)
    summary = result.summary()
    if width < 1:
        assert abs(summary["khat_mean"] - (1 - width**2)) < 0.08  # k = 1 - width^2
    else:
        assert summary["khat_max"] < 0.0  # bounded weights
    if width == 0.3:  # k = 0.91: most datapoints flagged
        assert summary["khat_share_above_0.7"] >= 0.8
    else:
        assert summary["khat_share_above_0.7"] == 0.0
    assert summary["n"] == 30 and summary["khat_samples"] == 4000 and summary["khat_threshold"] == 0.7


def test_log_weights_are_the_draws_of_the_likelihood_estimate(data):
    model = linear_model()
    guide = ScaledPosterior(model, 0.8)
    lw = log_weights(model, guide, data, num_samples=300, chunk_size=1000, seed=3)  # several chunks
    assert lw.shape == (300, 30)
    expected = log_likelihood(model, guide, data, num_samples=300, chunk_size=1000, seed=3).log_px
    assert torch.allclose(lw.logsumexp(0) - math.log(300), expected, atol=1e-6)
    # and they are log p(x, z) - log q(z | x) (exact posterior: equal to log p(x) for every z)
    exact = ScaledPosterior(model, 1.0)
    marginal = dist.Normal(0.0, math.sqrt(1 + SIGMA**2)).log_prob(data).sum(-1)
    assert torch.allclose(log_weights(model, exact, data, num_samples=50), marginal.expand(50, 30), atol=1e-4)


@pytest.mark.parametrize("num_samples, chunk_size", [(40, 200), (300, 100), (7, 7)])
def test_weights_fn_hands_out_each_block_of_the_estimate_once_with_bounded_memory(num_samples, chunk_size, data):
    # chunk 200, K=40: 5 points per block; chunk 100, K=300: one point per block, in 3 passes; chunk = K: one point per block
    model = linear_model()
    guide = ScaledPosterior(model, 0.8)
    blocks = []
    result = log_likelihood(
        model, guide, data, num_samples=num_samples, chunk_size=chunk_size, seed=2, weights_fn=lambda d, lw: blocks.append((d, lw.clone()))
    )
    covered = [i for d, _ in blocks for i in range(d.start, d.stop)]
    assert covered == list(range(len(data)))  # every point once, in order
    assert all(lw.shape == (num_samples, d.stop - d.start) for d, lw in blocks)
    assert max(lw.numel() for _, lw in blocks) <= max(chunk_size, num_samples)
    lw = torch.cat([lw for _, lw in blocks], -1)
    # the very draws of the estimate: log-mean-exp is its log p(x), the mean its ELBO
    assert torch.allclose(lw.logsumexp(0) - math.log(num_samples), result.log_px, atol=1e-5)
    assert torch.allclose(lw.mean(0), result.elbo, atol=1e-5)
