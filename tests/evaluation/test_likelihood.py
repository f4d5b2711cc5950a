"""Importance-sampled log-likelihood against the exact marginal of a linear-Gaussian model.

z ~ N(0, I_2), x | z ~ N(W z + b, sigma^2 I_5) with known W, b, sigma, so
x ~ N(b, W W^T + sigma^2 I) exactly and the posterior p(z | x) is Gaussian with
precision I + W^T W / sigma^2. The guide is ``make_guide("normal", ...)`` with its
weights set by hand to a deliberately imperfect q(z | x): the exact posterior mean but a
diagonal covariance, 1.2 times too wide (the exact posterior correlation is -0.54), so the ELBO gap KL(q || p(z | x)) is known in
closed form too.
"""

import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal

from pyro_gen.evaluation import evaluate, log_likelihood
from pyro_gen.guides import make_guide
from pyro_gen.models import Latent, LatentModel, make_likelihood

SIGMA = 0.5
W = torch.tensor([[1.0, 0.6], [0.5, 0.2], [-0.3, 0.7], [1.0, 0.8], [0.2, -0.4]])
B = torch.tensor([0.5, -1.0, 0.0, 0.3, 1.0])
D, d = W.shape
POST_PRECISION = torch.eye(d) + W.T @ W / SIGMA**2
POST_COV = torch.linalg.inv(POST_PRECISION)
WIDEN = 1.2  # q's standard deviations relative to the exact posterior marginals'
Q_STD = WIDEN * POST_COV.diag().sqrt()


def linear_gaussian_model():
    decoder = nn.Linear(d, D)
    with torch.no_grad():
        decoder.weight.copy_(W)
        decoder.bias.copy_(B)
    decoder.requires_grad_(False)
    return LatentModel([Latent("z", shape=(d,))], decoder, make_likelihood("gaussian", scale=SIGMA), data_shape=(D,))


def posterior_mean(x):
    return (x - B) @ (W / SIGMA**2) @ POST_COV  # POST_COV is symmetric


def hand_set_guide(model):
    """make_guide("normal") with weights such that q(z | x) = N(posterior mean, diag(Q_STD^2))."""
    guide = make_guide("normal", model, hidden=(16,), input_transform=None)  # the weights are set by hand below
    (first,) = [m for m in guide.encoder.modules() if isinstance(m, nn.Linear)]
    head = guide.families[0].linear
    assert (first.in_features, first.out_features, head.in_features, head.out_features) == (D, 16, 16, 2 * d)
    with torch.no_grad():
        # h = relu([x, -x, 0]) so that h[:D] - h[D:2D] = x
        first.weight.zero_()
        first.bias.zero_()
        first.weight[:D] = torch.eye(D)
        first.weight[D : 2 * D] = -torch.eye(D)
        gain = (W / SIGMA**2) @ POST_COV  # (D, d): posterior mean = (x - b) @ gain
        head.weight.zero_()
        head.weight[:d, :D] = gain.T
        head.weight[:d, D : 2 * D] = -gain.T
        head.bias[:d] = -(B @ gain)
        raw = Q_STD - 1e-5  # scale = softplus(raw) + 1e-5
        head.bias[d:] = raw + torch.log(-torch.expm1(-raw))  # softplus^{-1}
    return guide


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = linear_gaussian_model()
    guide = hand_set_guide(model)
    marginal = MultivariateNormal(B, W @ W.T + SIGMA**2 * torch.eye(D))
    x = marginal.sample((20,))
    return model, guide, x, marginal.log_prob(x)


def test_hand_set_guide_is_the_intended_q(setup):
    model, guide, x, _ = setup
    (q,) = guide.posterior(x)
    assert torch.allclose(q.mean, posterior_mean(x), atol=1e-5)
    assert torch.allclose(q.stddev, Q_STD.expand(len(x), d), atol=1e-5)


def analytic_elbo(x):
    """E_q[log p(x | z)] and KL(q || p(z)) per datapoint for q = N(posterior mean, diag(Q_STD^2))."""
    mu = posterior_mean(x)
    resid = x - mu @ W.T - B
    trace = (W**2 @ Q_STD**2).sum()  # tr(W diag(Q_STD^2) W^T)
    recon = -0.5 * D * math.log(2 * math.pi * SIGMA**2) - ((resid**2).sum(-1) + trace) / (2 * SIGMA**2)
    kl = 0.5 * (Q_STD**2 + mu**2 - 1 - 2 * Q_STD.log()).sum(-1)
    return recon, kl


def test_elbo_parts_match_closed_form(setup):
    model, guide, x, exact = setup
    r = log_likelihood(model, guide, x, num_samples=5000)
    recon, kl = analytic_elbo(x)
    assert torch.allclose(r.reconstruction, recon, atol=0.15)
    assert torch.allclose(r.kl, kl, atol=0.08)
    assert torch.allclose(r.elbo, recon - kl, atol=0.12)
    assert abs(r.elbo.mean() - (recon - kl).mean()) < 0.03
    # ELBO = log p(x) - KL(q || p(z | x)); the gap does not depend on x here
    q_cov = torch.diag(Q_STD**2)
    gap = 0.5 * (torch.trace(POST_PRECISION @ q_cov) - d + torch.logdet(POST_COV) - torch.logdet(q_cov))
    assert torch.allclose(exact - (recon - kl), gap.expand(len(x)), atol=1e-4)
    assert gap > 0.2  # the guide is clearly imperfect
    assert torch.allclose(r.posterior_mean, posterior_mean(x), atol=0.04)


def test_importance_sampled_log_px_converges_to_exact(setup):
    model, guide, x, exact = setup
    r = log_likelihood(model, guide, x, num_samples=5000)
    assert r.log_px.shape == (len(x),)
    assert (r.log_px - exact).abs().max() < 0.1
    assert abs(r.log_px.mean() - exact.mean()) < 0.02
    # the ELBO from the same draws stays well below
    assert (r.elbo < exact - 0.1).all()


def test_estimate_lies_between_elbo_and_exact_and_gap_shrinks_with_k(setup):
    """On 500 datapoints: K = 1 is an ELBO estimate; larger K climbs to the exact value, never past it."""
    model, guide, _, _ = setup
    torch.manual_seed(1)
    marginal = MultivariateNormal(B, W @ W.T + SIGMA**2 * torch.eye(D))
    x = marginal.sample((500,))
    exact = marginal.log_prob(x)
    recon, kl = analytic_elbo(x)
    elbo, truth = (recon - kl).mean().item(), exact.mean().item()
    gaps = {}
    for k in (1, 10, 100, 1000):
        log_px = log_likelihood(model, guide, x, num_samples=k, seed=k).log_px
        est = log_px.mean().item()
        se = ((log_px - exact).std() / math.sqrt(len(x))).item()  # Monte Carlo standard error of the mean
        gaps[k] = truth - est
        print(f"K={k}: log p(x) estimate {est:.4f} (se {se:.4f}); ELBO {elbo:.4f}; exact {truth:.4f}")
        if k == 1:  # unbiased for the ELBO
            assert abs(est - elbo) < 4 * se
        else:
            assert elbo < est < truth + 4 * se + 1e-3
    assert gaps[1] > 0.3 and gaps[10] < gaps[1] - 0.2
    assert gaps[100] < gaps[10] + 0.01 and gaps[1000] < gaps[100] + 0.005
    assert abs(gaps[1000]) < 0.01


def test_same_seed_same_numbers_other_seed_other_numbers(setup):
    model, guide, x, _ = setup
    a = log_likelihood(model, guide, x, num_samples=50, seed=3)
    b = log_likelihood(model, guide, x, num_samples=50, seed=3)
    c = log_likelihood(model, guide, x, num_samples=50, seed=4)
    assert torch.equal(a.log_px, b.log_px) and torch.equal(a.elbo, b.elbo)
    assert not torch.equal(a.log_px, c.log_px)


def test_seeded_estimate_leaves_the_global_random_state_alone(setup):
    model, guide, x, _ = setup
    torch.manual_seed(123)
    log_likelihood(model, guide, x, num_samples=10, seed=0)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))


def test_chunk_size_changes_memory_not_the_estimate(setup):
    """Chunks of 37 (one draw per pass), 45 (two, with a remainder) and 100000 (one vectorized pass).

    The draws themselves depend on how they are vectorized, so the estimates agree to Monte
    Carlo error (small here: a proposal wider than the posterior), not bit for bit.
    """
    model, guide, x, exact = setup
    runs = {c: log_likelihood(model, guide, x, num_samples=401, chunk_size=c) for c in (37, 45, 100000)}
    for c, r in runs.items():
        assert r.log_px.shape == (len(x),) and r.chunk_size == c and r.num_samples == 401
        assert (r.log_px - runs[100000].log_px).abs().max() < 0.15
        assert (r.log_px - exact).abs().max() < 0.12
        assert abs(r.elbo.mean() - runs[100000].elbo.mean()) < 0.1
    # repeated with the same chunking: identical
    again = log_likelihood(model, guide, x, num_samples=401, chunk_size=37)
    assert torch.equal(again.log_px, runs[37].log_px)


def test_chunk_size_one_works(setup):
    """One (sample, datapoint) pair per pass: datapoints are split into batches of one."""
    model, guide, x, exact = setup
    xs = x[:3]
    r = log_likelihood(model, guide, xs, num_samples=30, chunk_size=1)
    assert r.log_px.shape == r.elbo.shape == r.kl.shape == (3,)
    assert r.posterior_mean.shape == (3, d)
    assert torch.isfinite(r.log_px).all()
    assert (r.log_px - exact[:3]).abs().max() < 0.2


def test_invalid_arguments_raise(setup):
    model, guide, x, _ = setup
    with pytest.raises(ValueError):
        log_likelihood(model, guide, x, num_samples=0)
    with pytest.raises(ValueError):
        log_likelihood(model, guide, x, chunk_size=0)


def test_evaluate_summary_matches_log_likelihood(setup):
    model, guide, x, exact = setup
    summary = evaluate(model, guide, x, num_samples=2000)
    assert summary["n"] == len(x) and summary["nll_samples"] == 2000
    assert abs(summary["nll"] + exact.mean().item()) < 0.03
    assert summary["elbo"] == pytest.approx(summary["reconstruction"] - summary["kl"], abs=1e-4)
    assert summary["active_units"] == d


class GlobalBiasDecoder(nn.Module):
    """The linear-Gaussian decoder plus a global bias latent: x | z, b ~ N(W z + B + b, sigma^2 I)."""

    def __init__(self):
        super().__init__()
        self.linear = linear_gaussian_model().decoder

    def forward(self, z, b):
        return self.linear(z) + b


def global_bias_model():
    return LatentModel(
        [Latent("z", shape=(d,)), Latent("b", shape=(D,), local=False)],
        GlobalBiasDecoder(),
        make_likelihood("gaussian", scale=SIGMA),
        data_shape=(D,),
    )


def test_model_with_a_global_latent_gives_finite_log_px_even_untrained():
    model = global_bias_model()
    guide = make_guide("normal", model, hidden=(16,), input_transform=None)  # the weights are set by hand below
    x = torch.randn(12, D)
    r = log_likelihood(model, guide, x, num_samples=20, chunk_size=50)
    assert r.log_px.shape == (12,)
    assert torch.isfinite(r.log_px).all() and torch.isfinite(r.elbo).all()
    assert (r.log_px >= r.elbo - 1e-4).all()  # log-mean-exp >= mean of the same log-weights


def test_global_latent_is_scored_at_the_guides_point_estimate(setup):
    """log p(x | b_hat) with z marginalized; the autoguide starts at b_hat = 0, where the marginal is known."""
    _, _, x, exact = setup
    model = global_bias_model()
    guide = hand_set_guide(model)
    (b_hat,) = guide.global_point_estimate(x).values()
    assert torch.equal(b_hat, torch.zeros(D))
    r = log_likelihood(model, guide, x, num_samples=2000)
    assert (r.log_px - exact).abs().max() < 0.1
    # a point estimate elsewhere moves the marginal with it: x ~ N(B + b_hat, W W^T + sigma^2 I)
    shift = torch.tensor([0.5, -0.5, 0.2, 0.0, 0.3])
    with torch.no_grad():
        guide.global_guide.locs.b.add_(shift)
    (b_hat,) = guide.global_point_estimate(x).values()
    assert torch.allclose(b_hat, shift)
    shifted = MultivariateNormal(B + shift, W @ W.T + SIGMA**2 * torch.eye(D)).log_prob(x)
    r = log_likelihood(model, guide, x, num_samples=2000)
    assert (r.log_px - shifted).abs().max() < 0.15
    assert (r.log_px - exact).abs().max() > 0.5


def test_evaluate_returns_its_protocol_under_one_key():
    """The README's factor-analysis snippet promises a ``protocol`` key: K, chunk, seed, datapoints, threads."""
    import torch
    from torch import nn

    from pyro_gen import Latent, LatentModel, evaluate, make_guide, make_likelihood

    fa = LatentModel([Latent("z", shape=(2,))], nn.Linear(2, 4), make_likelihood("gaussian", data_shape=(4,)), data_shape=(4,))
    result = evaluate(fa, make_guide("normal", fa, hidden=(8,)), torch.randn(30, 4), num_samples=7, seed=3)
    protocol = result["protocol"]
    assert (protocol["num_samples"], protocol["seed"], protocol["datapoints"]) == (7, 3, 30)
    assert "K=7" in protocol["estimator"] and protocol["global_latents"] == "none" and protocol["threads"] >= 1


def test_active_units_do_not_count_the_noise_of_k_draws():
    """A unit is active when Cov_x(E_q[z_u | x]) > 0.01: a collapsed unit (q = N(0, 1) for every x) has zero, however
    few draws K estimate E_q[z | x] (their noise, Var_q / K = 0.02 at K = 50, once passed the threshold)."""
    import pyro
    import pyro.distributions as dist

    from pyro_gen import Latent, LatentModel, make_likelihood
    from pyro_gen.evaluation import log_likelihood

    torch.manual_seed(0)
    model = LatentModel([Latent("z", shape=(3,))], torch.nn.Linear(3, 4), make_likelihood("gaussian", data_shape=(4,)), (4,))
    x = torch.randn(400, 4)

    def guide(x, **kwargs):  # unit 0 reads x (Var_x of its mean = 1), units 1 and 2 are collapsed
        loc = torch.zeros(len(x), 3)
        loc[:, 0] = x[:, 0]
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

    for k in (10, 50, 200):
        assert log_likelihood(model, guide, x, num_samples=k, seed=0).active_units == 1
    assert log_likelihood(model, guide, x, num_samples=1, seed=0).active_units is None  # one draw: not computable
