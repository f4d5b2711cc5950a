"""Declarative models: explained data errors, generation shapes, likelihood parameters, factor analysis."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pyro_gen.errors import ConfigError, DataError
from pyro_gen.guides import make_guide
from pyro_gen.infer.trainer import Trainer
from pyro_gen.models import Latent, LatentModel, make_likelihood, vae

SHAPE = (1, 4, 4)


@pytest.fixture
def model():
    return vae(SHAPE, latent_dim=2, hidden=(8,))


def run(model, x):
    return poutine.trace(model).get_trace(x)


def test_non_binary_data_under_bernoulli_suggests_binarizing(model):
    x = torch.bernoulli(torch.full((5, *SHAPE), 0.5))
    x[2, 0, 1, 1] = 0.5
    with pytest.raises(DataError) as info:
        run(model, x)
    message = str(info.value)
    assert "binary" in message and "binarize" in message.lower()
    assert "1 other values" in message and "0.5" in message


def test_nan_in_a_batch_is_reported(model):
    x = torch.bernoulli(torch.full((5, *SHAPE), 0.5))
    x[0, 0, 0, 0] = float("nan")
    x[3, 0, 2, 1] = float("inf")
    with pytest.raises(DataError, match="NaN") as info:
        run(model, x)
    assert "2 NaN or infinite values" in str(info.value)
    # a Gaussian model reports NaN the same way
    gaussian = vae(SHAPE, latent_dim=2, hidden=(8,), likelihood="gaussian")
    with pytest.raises(DataError, match="NaN"):
        run(gaussian, torch.where(torch.isfinite(x), x, torch.tensor(float("nan"))))


def test_data_shape_mismatch_names_both_shapes(model):
    x = torch.zeros(3, 1, 5, 5)
    with pytest.raises(DataError) as info:
        run(model, x)
    message = str(info.value)
    assert "(3, 1, 5, 5)" in message and "(1, 4, 4)" in message
    with pytest.raises(DataError, match=r"\(3, 16\)"):
        run(model, torch.zeros(3, 16))


def test_data_must_be_a_tensor(model):
    with pytest.raises(DataError, match="torch.Tensor"):
        model.check_data([[0.0]])


def test_decoder_with_wrong_output_size_says_how_many_outputs_are_needed():
    bad = LatentModel([Latent("z", shape=(2,))], nn.Linear(2, 10), make_likelihood("bernoulli"), data_shape=SHAPE)
    with pytest.raises(DataError) as info:
        run(bad, torch.zeros(3, *SHAPE))
    message = str(info.value)
    assert "16 outputs" in message and "(3, 10)" in message
    # a decoder-predicted scale needs two outputs per value
    two = LatentModel([Latent("z", shape=(2,))], nn.Linear(2, 16), make_likelihood("gaussian", scale="decoder"), data_shape=SHAPE)
    with pytest.raises(DataError, match="32 outputs"):
        run(two, torch.zeros(3, *SHAPE))


def test_other_likelihoods_check_their_support():
    cb = vae(SHAPE, latent_dim=2, hidden=(8,), likelihood="continuous_bernoulli")
    run(cb, torch.rand(3, *SHAPE))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        run(cb, torch.rand(3, *SHAPE) + 1.0)
    poisson = vae(SHAPE, latent_dim=2, hidden=(8,), likelihood="poisson")
    run(poisson, torch.poisson(torch.full((3, *SHAPE), 2.0)))
    with pytest.raises(DataError, match="counts"):
        run(poisson, torch.full((3, *SHAPE), 1.5))
    with pytest.raises(ConfigError, match="unknown likelihood 'cauchy'"):
        make_likelihood("cauchy")
    with pytest.raises(ConfigError, match="positive number"):
        make_likelihood("gaussian", scale=-1.0)


def test_model_declaration_errors():
    with pytest.raises(ConfigError, match="at least one Latent"):
        LatentModel([], nn.Identity(), make_likelihood("bernoulli"), SHAPE)
    with pytest.raises(ConfigError, match="unique"):
        LatentModel([Latent("z", (2,)), Latent("z", (2,))], nn.Identity(), make_likelihood("bernoulli"), SHAPE)
    with pytest.raises(ConfigError, match="unique"):
        LatentModel([Latent("x", (2,))], nn.Identity(), make_likelihood("bernoulli"), SHAPE)
    with pytest.raises(ConfigError, match="local latent"):
        LatentModel([Latent("g", (2,), local=False)], nn.Identity(), make_likelihood("bernoulli"), SHAPE)
    with pytest.raises(ConfigError, match="prior of latent 'z'"):
        Latent("z", (2,), prior="normal")


def test_generation_shapes(model):
    params = model(batch_size=7)
    assert params.shape == (7, *SHAPE)
    trace = poutine.trace(model).get_trace(batch_size=7)
    assert trace.nodes["z"]["value"].shape == (7, 2)
    x = trace.nodes["x"]["value"]
    assert x.shape == (7, *SHAPE) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(model.mean(params), torch.sigmoid(params))
    with pytest.raises(ValueError, match="batch_size"):
        model()


def test_decoder_predicted_scale_splits_locations_then_scales():
    """Gaussian with scale='decoder': the first half of the decoder's outputs are locations, the second half scales."""
    decoder = nn.Linear(2, 2 * 5)
    model = LatentModel([Latent("z", shape=(2,))], decoder, make_likelihood("gaussian", scale="decoder"), data_shape=(5,))
    params = model(batch_size=7)
    assert params.shape == (2, 7, 5)  # (params_per_value,) + batch + data_shape
    x = torch.randn(4, 5)
    trace = run(model, x)
    out = decoder(trace.nodes["z"]["value"])
    loc, scale = out[:, :5], F.softplus(out[:, 5:]) + 1e-3
    expected = torch.distributions.Normal(loc, scale).log_prob(x).sum(-1)
    assert torch.allclose(trace.nodes["x"]["fn"].log_prob(x), expected, atol=1e-5)
    assert torch.allclose(model.mean(decoder(torch.zeros(3, 2)).reshape(3, 2, 5).movedim(1, 0)), decoder(torch.zeros(3, 2))[:, :5])


def test_custom_prior_and_matrix_shaped_latent():
    """A Laplace prior broadcast to a (2, 3) latent: one site, log-density summed over all 6 values."""
    decoder = nn.Sequential(nn.Flatten(-2), nn.Linear(6, 5))
    model = LatentModel([Latent("z", shape=(2, 3), prior=dist.Laplace(0.0, 1.0))], decoder, make_likelihood("gaussian", scale=1.0), (5,))
    trace = run(model, torch.randn(4, 5))
    site = trace.nodes["z"]
    assert site["value"].shape == (4, 2, 3)
    expected = torch.distributions.Laplace(0.0, 1.0).log_prob(site["value"]).sum((-1, -2))
    assert torch.allclose(site["fn"].log_prob(site["value"]), expected)
    guide = make_guide("iaf:2", model, hidden=(8,))
    (q,) = guide.posterior(torch.randn(4, 5))
    assert q.sample().shape == (4, 2, 3)


def test_minibatch_scales_local_terms_by_data_size(model):
    """model(x, data_size=N) is a subsampled plate: Pyro scales local log-densities by N / batch."""
    x = torch.bernoulli(torch.full((4, *SHAPE), 0.5))
    trace = poutine.trace(model).get_trace(x, data_size=40)
    trace.compute_log_prob()
    full = poutine.trace(poutine.replay(model, trace=trace)).get_trace(x)
    full.compute_log_prob()
    assert torch.allclose(trace.log_prob_sum(), 10 * full.log_prob_sum())


# -- factor analysis: a model that is not a VAE, declared in a few lines ----------------------
D, K = 6, 2
W_TRUE = torch.tensor([[1.0, 0.0], [0.8, 0.5], [0.0, 1.2], [-0.6, 0.7], [0.5, -0.5], [1.0, 1.0]])
MU_TRUE = torch.linspace(-1.0, 1.0, D)
PSI_TRUE = torch.tensor([0.3, 0.5, 0.4, 0.6, 0.3, 0.5])  # noise standard deviations


class Loadings(nn.Module):
    def __init__(self):
        super().__init__()
        self.W = nn.Linear(K, D)  # x = W z + mu + noise

    def forward(self, z):
        return self.W(z)


def factor_analysis():
    likelihood = make_likelihood("gaussian", data_shape=(D,), scale="learned")
    return LatentModel([Latent("z", shape=(K,))], Loadings(), likelihood, data_shape=(D,))


def test_factor_analysis_recovers_the_data_covariance():
    x = torch.randn(1000, K) @ W_TRUE.T + MU_TRUE + PSI_TRUE * torch.randn(1000, D)
    sample_cov = torch.cov(x.T)
    fa = factor_analysis()
    guide = make_guide("normal", fa, hidden=(16,))
    Trainer(fa, guide, lr=0.03, batch_size=100, epochs=20, progress=False).fit(x)
    with torch.no_grad():
        W = fa.decoder.W.weight
        psi = fa.likelihood._scale(None)
        fitted = W @ W.T + torch.diag(psi**2)
        mu = fa.decoder.W.bias
    assert fitted.shape == (D, D)
    assert (fitted - sample_cov).abs().max() < 0.25
    assert (fitted - sample_cov).norm() / sample_cov.norm() < 0.1
    # not just the diagonal: the off-diagonal structure came from the loadings
    diagonal_only = torch.diag(sample_cov.diag())
    assert (diagonal_only - sample_cov).norm() / sample_cov.norm() > 0.5
    assert (mu - x.mean(0)).abs().max() < 0.1
    assert (psi - PSI_TRUE).abs().max() < 0.1
    # the model's own samples have that covariance too
    generated = pyro.condition(fa, data={})(batch_size=4000)
    assert generated.shape == (4000, D)


def test_factor_analysis_generates_from_its_marginal():
    """Untrained FA with loadings set by hand: generated x have covariance W W^T + Psi."""
    fa = factor_analysis()
    with torch.no_grad():
        fa.decoder.W.weight.copy_(W_TRUE)
        fa.decoder.W.bias.copy_(MU_TRUE)
        fa.likelihood.log_scale.copy_(torch.log(torch.expm1(PSI_TRUE - 1e-3)) - math.log(math.e - 1))
    assert torch.allclose(fa.likelihood._scale(None), PSI_TRUE, atol=1e-5)
    trace = poutine.trace(fa).get_trace(batch_size=20000)
    x = trace.nodes["x"]["value"]
    expected = W_TRUE @ W_TRUE.T + torch.diag(PSI_TRUE**2)
    assert (torch.cov(x.T) - expected).abs().max() < 0.1
    assert (x.mean(0) - MU_TRUE).abs().max() < 0.05


def test_standard_normal_prior_kl_is_the_general_normal_kl():
    """The closed form against the default N(0, I) prior equals torch's general Normal-Normal KL (independent
    formula), survives Pyro's plate expansion, and the Independent wrapper dispatches to it."""
    from torch.distributions.kl import _kl_normal_normal

    from pyro_gen.models.latent import StandardNormal

    torch.manual_seed(0)
    model = vae((8,), latent_dim=3, hidden=(4,))
    prior = model.prior(0)
    assert isinstance(prior.base_dist, StandardNormal) and model.prior(0) is prior  # built once
    q = dist.Normal(torch.randn(5, 3), torch.rand(5, 3) + 0.1).to_event(1)
    expanded = prior.expand((5,))
    assert isinstance(expanded.base_dist, StandardNormal)
    general = _kl_normal_normal(q.base_dist, dist.Normal(torch.zeros(5, 3), torch.ones(5, 3))).sum(-1)
    assert torch.allclose(torch.distributions.kl_divergence(q, expanded), general, atol=1e-6)


def test_default_prior_follows_the_model_to_another_dtype_and_refuses_a_non_zero_location():
    model = vae((8,), latent_dim=3, hidden=(4,))
    assert model.prior(0).mean.dtype == torch.float32
    model.double()
    assert model.prior(0).mean.dtype == torch.float64  # rebuilt on the moved buffers, not the cached float32 one
    state = model.state_dict()
    state["_prior_loc_0"] = torch.ones_like(state["_prior_loc_0"])
    with pytest.raises(DataError, match="_prior_loc_0"):
        model.load_state_dict(state)


def test_the_reference_tensor_follows_moves_and_replaced_submodules():
    """The per-batch dtype / device check finds its reference parameter once, and again when the tree changed."""
    model = vae((4,), latent_dim=2, hidden=(3,))
    first = model._reference_tensor()
    assert first is next(model.parameters())
    model.double()
    assert model._reference_tensor().dtype == torch.float64
    model.check_data(torch.rand(2, 4).round().double())
    model.decoder = nn.Sequential(nn.Linear(2, 4))  # a float32 decoder replaces the old one
    assert model._reference_tensor() is next(model.parameters()) and model._reference_tensor() is not first
    with pytest.raises(DataError, match="float64"):
        model.check_data(torch.rand(2, 4).round().double())
