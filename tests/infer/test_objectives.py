"""Objectives against hand-written PyTorch and against Pyro's own ELBO."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch.nn import functional as F

from pyro_gen.guides import make_guide
from pyro_gen.infer import ELBO, IWAE, PyroELBO, TraceObjective, as_objective, get_traces, make_objective, trace_terms
from pyro_gen.infer.trainer import Trainer
from pyro_gen.models import Latent, LatentModel, make_likelihood, vae

LATENT = 3


@pytest.fixture(autouse=True)
def module_local_params():
    """The trainer and the evaluator run objectives under module-local params; so do these tests."""
    with pyro.settings.context(module_local_params=True):
        yield


@pytest.fixture
def vae_setup():
    torch.manual_seed(0)
    model = vae((1, 6, 6), latent_dim=LATENT, hidden=(8,))
    guide = make_guide("normal", model, hidden=(8,))
    x = torch.bernoulli(torch.full((7, 1, 6, 6), 0.3))
    return model, guide, x


def hand_elbo_terms(model, guide, x, seed):
    """Reconstruction and per-dimension KL per datapoint, written out in PyTorch with the library's noise order."""
    torch.manual_seed(seed)
    h = guide.encoder(x)
    loc, raw = guide.families[0].linear(h).chunk(2, -1)
    scale = F.softplus(raw) + 1e-5
    eps = torch.randn_like(loc)  # what Normal.rsample draws: a standard normal of loc's shape
    z = loc + scale * eps
    logits = model.decoder(z).reshape(x.shape)
    recon = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
    kl_dims = 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log())  # KL(N(loc, scale^2) || N(0, 1)) per dimension
    log_q = (-0.5 * eps**2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_prior = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    return recon, kl_dims, log_q - log_prior


def grads(model, guide, loss):
    params = list(model.parameters()) + list(guide.parameters())
    return torch.autograd.grad(loss, params, allow_unused=True)


def assert_same_grads(a, b, atol=1e-5):
    assert len(a) == len(b)
    for ga, gb in zip(a, b):
        if ga is None or gb is None:
            assert ga is None and gb is None
        else:
            assert torch.allclose(ga, gb, atol=atol, rtol=1e-4)


def test_elbo_equals_hand_written_elbo_and_gradients(vae_setup):
    model, guide, x = vae_setup
    torch.manual_seed(5)
    loss = ELBO()(model, guide, x)
    recon, kl_dims, _ = hand_elbo_terms(model, guide, x, seed=5)
    hand = -(recon - kl_dims.sum(-1)).mean()
    assert loss.item() == pytest.approx(hand.item(), abs=1e-5)
    torch.manual_seed(5)
    lib_grads = grads(model, guide, ELBO()(model, guide, x))
    recon, kl_dims, _ = hand_elbo_terms(model, guide, x, seed=5)
    hand_grads = grads(model, guide, -(recon - kl_dims.sum(-1)).mean())
    assert sum(g is not None and g.abs().sum() > 0 for g in hand_grads) == len(hand_grads)  # all parameters matter
    assert_same_grads(lib_grads, hand_grads)


def test_monte_carlo_elbo_equals_hand_written(vae_setup):
    model, guide, x = vae_setup
    torch.manual_seed(2)
    loss = ELBO(analytic_kl=False)(model, guide, x)
    recon, _, kl_mc = hand_elbo_terms(model, guide, x, seed=2)
    assert loss.item() == pytest.approx(-(recon - kl_mc).mean().item(), abs=1e-5)


def test_elbo_metrics_and_data_size_scaling(vae_setup):
    model, guide, x = vae_setup
    objective = ELBO()
    torch.manual_seed(3)
    loss = objective(model, guide, x, data_size=100)
    recon, kl_dims, _ = hand_elbo_terms(model, guide, x, seed=3)
    # per datapoint: a minibatch of a dataset of 100 local-only datapoints gives the same number
    assert loss.item() == pytest.approx(-(recon - kl_dims.sum(-1)).mean().item(), abs=1e-5)
    m = objective.last_metrics
    assert m["reconstruction"].item() == pytest.approx(recon.mean().item(), abs=1e-5)
    assert m["kl"].item() == pytest.approx(kl_dims.sum(-1).mean().item(), abs=1e-5)
    assert m["elbo"].item() == pytest.approx(-loss.item(), abs=1e-5)


def test_beta_zero_is_minus_reconstruction(vae_setup):
    model, guide, x = vae_setup
    torch.manual_seed(4)
    loss = ELBO(beta=0.0)(model, guide, x)
    recon, _, _ = hand_elbo_terms(model, guide, x, seed=4)
    assert loss.item() == pytest.approx(-recon.mean().item(), abs=1e-5)
    torch.manual_seed(4)
    loss = ELBO(beta=2.5)(model, guide, x)
    recon, kl_dims, _ = hand_elbo_terms(model, guide, x, seed=4)
    assert loss.item() == pytest.approx(-(recon - 2.5 * kl_dims.sum(-1)).mean().item(), abs=1e-5)


def test_warmup_schedule():
    objective = ELBO(beta=2.0, warmup_epochs=3)
    values = []
    for epoch in range(6):
        objective.set_epoch(epoch)
        values.append(objective.beta_now)
    assert values == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    objective = ELBO(beta=0.7)
    objective.set_epoch(0)
    assert objective.beta_now == pytest.approx(0.7)


def test_warmup_weights_the_kl_in_the_loss(vae_setup):
    model, guide, x = vae_setup
    objective = ELBO(warmup_epochs=4)
    objective.set_epoch(1)  # beta = 2 / 5
    torch.manual_seed(6)
    loss = objective(model, guide, x)
    recon, kl_dims, _ = hand_elbo_terms(model, guide, x, seed=6)
    assert loss.item() == pytest.approx(-(recon - 0.4 * kl_dims.sum(-1)).mean().item(), abs=1e-5)
    # the reported ELBO is the unweighted one
    assert objective.last_metrics["elbo"].item() == pytest.approx((recon - kl_dims.sum(-1)).mean().item(), abs=1e-5)


def test_free_bits_above_every_kl_dimension(vae_setup):
    model, guide, x = vae_setup
    lam = 50.0
    _, kl_dims, _ = hand_elbo_terms(model, guide, x, seed=7)
    assert (kl_dims.mean(0) < lam).all()
    torch.manual_seed(7)
    loss = ELBO(free_bits=lam, beta=0.5)(model, guide, x)
    recon, _, _ = hand_elbo_terms(model, guide, x, seed=7)
    assert loss.item() == pytest.approx(-recon.mean().item() + 0.5 * lam * LATENT, abs=1e-4)
    # the KL part contributes no gradient: same gradients as the reconstruction alone
    torch.manual_seed(7)
    free = grads(model, guide, ELBO(free_bits=lam)(model, guide, x))
    torch.manual_seed(7)
    recon_only = grads(model, guide, ELBO(beta=0.0)(model, guide, x))
    assert_same_grads(free, recon_only)
    torch.manual_seed(7)
    with_kl = grads(model, guide, ELBO()(model, guide, x))
    head_weight = [p is guide.families[0].linear.weight for p in list(model.parameters()) + list(guide.parameters())].index(True)
    assert not torch.allclose(with_kl[head_weight], recon_only[head_weight], atol=1e-4)


def test_free_bits_clamps_each_dimension_separately(vae_setup):
    """With lam between the dimensions' KLs, loss = -recon + sum_j max(KL_j, lam) (batch-mean KL_j)."""
    model, guide, x = vae_setup
    _, kl_dims, _ = hand_elbo_terms(model, guide, x, seed=8)
    per_dim = kl_dims.mean(0)
    lam = per_dim.median().item()
    assert (per_dim < lam).any() or (per_dim > lam).any()
    torch.manual_seed(8)
    loss = ELBO(free_bits=lam)(model, guide, x)
    recon, kl_dims, _ = hand_elbo_terms(model, guide, x, seed=8)
    expected = -recon.mean() + kl_dims.mean(0).clamp(min=lam).sum()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_iwae_with_one_sample_is_the_monte_carlo_elbo(vae_setup):
    model, guide, x = vae_setup
    torch.manual_seed(9)
    iwae = IWAE(num_particles=1)(model, guide, x)
    torch.manual_seed(9)
    elbo = ELBO(analytic_kl=False)(model, guide, x)
    assert iwae.item() == pytest.approx(elbo.item(), abs=1e-5)


def test_iwae_bound_is_above_the_elbo(vae_setup):
    model, guide, x = vae_setup
    torch.manual_seed(10)
    objective = IWAE(num_particles=50)
    loss = objective(model, guide, x)
    m = objective.last_metrics
    assert -loss.item() == pytest.approx(m["iwae_bound"].item())
    assert m["iwae_bound"] > m["elbo"]  # log-mean-exp >= mean on the same draws
    # and above an independent, precise ELBO estimate
    torch.manual_seed(11)
    elbo = -ELBO(num_particles=500)(model, guide, x)
    assert m["iwae_bound"] > elbo + 0.1
    # hand-written bound from the same traces
    torch.manual_seed(10)
    model_trace, guide_trace = get_traces(model, guide, x, num_particles=50)
    lw = trace_terms(model_trace, guide_trace).log_weight
    assert lw.shape == (50, len(x))
    bound = (torch.logsumexp(lw, 0) - math.log(50)).mean()
    assert bound.item() == pytest.approx(m["iwae_bound"].item(), abs=1e-4)


def test_elbo_matches_pyro_trace_elbo(vae_setup):
    model, guide, x = vae_setup
    for data_size in (None, 70):
        torch.manual_seed(12)
        ours = ELBO(analytic_kl=False)(model, guide, x, data_size=data_size)
        torch.manual_seed(12)
        pyros = PyroELBO(Trace_ELBO())(model, guide, x, data_size=data_size)
        assert ours.item() == pytest.approx(pyros.item(), abs=1e-4)


class GlobalBias(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 4)

    def forward(self, z, b):
        return self.linear(z) + b


def test_global_latent_terms_match_pyro_trace_elbo():
    """A global latent under an AutoNormal: its entropy counts and its terms are shared by all N datapoints."""
    model = LatentModel(
        [Latent("z", shape=(2,)), Latent("b", shape=(4,), local=False)], GlobalBias(), make_likelihood("gaussian", scale=0.5), (4,)
    )
    guide = make_guide("normal", model, hidden=(8,))
    x = torch.randn(6, 4)
    guide(x)  # create the autoguide's parameters
    losses = {}
    for data_size in (None, 60):
        torch.manual_seed(13)
        ours = ELBO(analytic_kl=False)(model, guide, x, data_size=data_size)
        torch.manual_seed(13)
        analytic = ELBO()(model, guide, x, data_size=data_size)
        torch.manual_seed(13)
        iwae = IWAE(num_particles=1)(model, guide, x, data_size=data_size)
        torch.manual_seed(13)
        pyros = PyroELBO(Trace_ELBO())(model, guide, x, data_size=data_size)
        assert ours.item() == pytest.approx(pyros.item(), abs=1e-4)
        assert iwae.item() == pytest.approx(pyros.item(), abs=1e-4)
        assert torch.isfinite(analytic)
        losses[data_size] = ours.item()
    assert losses[None] != pytest.approx(losses[60], abs=1e-3)  # global terms are divided by N, not the batch


def binary_images(n=200):
    protos = torch.tensor([[1, 1, 0, 0] * 4, [0, 0, 1, 1] * 4], dtype=torch.float).reshape(2, 1, 4, 4)
    idx = torch.randint(0, 2, (n,))
    flip = torch.rand(n, 1, 4, 4) < 0.1
    return torch.where(flip, 1 - protos[idx], protos[idx])


def small_vae():
    model = vae((1, 4, 4), latent_dim=2, hidden=(16,))
    return model, make_guide("normal", model, hidden=(16,))


def test_custom_objective_callable_trains():
    calls = []

    def neg_mc_elbo(model_trace, guide_trace):
        calls.append(1)
        return -trace_terms(model_trace, guide_trace).log_weight.mean()

    x = binary_images()
    model, guide = small_vae()
    trainer = Trainer(model, guide, neg_mc_elbo, lr=2e-2, batch_size=50, epochs=4, progress=False)
    assert isinstance(trainer.objective, TraceObjective)
    before = trainer.evaluate_loss([x])
    history = trainer.fit(x)
    assert len(calls) >= 16
    assert len(history) == 4
    assert trainer.evaluate_loss([x]) < before - 1.0


def test_pyro_trace_elbo_plugs_into_trainer():
    x = binary_images()
    model, guide = small_vae()
    trainer = Trainer(model, guide, Trace_ELBO(), lr=2e-2, batch_size=50, epochs=4, progress=False)
    assert isinstance(trainer.objective, PyroELBO)
    before = trainer.evaluate_loss([x])
    history = trainer.fit(x)
    assert all(math.isfinite(r["train_loss"]) for r in history)
    assert trainer.evaluate_loss([x]) < before - 1.0


def test_objective_factories_and_errors():
    assert isinstance(make_objective("elbo", beta=2.0), ELBO)
    assert make_objective("iwae", num_particles=3).num_particles == 3
    with pytest.raises(ValueError, match="unknown objective 'nope'"):
        make_objective("nope")
    with pytest.raises(ValueError, match="objective 'elbo'"):
        make_objective("elbo", bogus=1)
    with pytest.raises(ValueError):
        ELBO(beta=-1.0)
    with pytest.raises(ValueError):
        IWAE(num_particles=0)
    with pytest.raises(ValueError, match="objective must be"):
        as_objective(3)
    assert isinstance(as_objective(lambda m, g: 0.0), TraceObjective)


def test_model_without_observed_site_is_explained():
    def model(x, data_size=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide(x, data_size=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="no observed site"):
        ELBO()(model, guide, torch.zeros(3))


# -- the flow KL estimator -------------------------------------------------------------------
def _standard_normal(dim):
    return dist.Normal(torch.zeros(dim), torch.ones(dim)).to_event(1)


def test_flow_kl_is_the_analytic_kl_for_an_identity_flow():
    """A flow whose transforms are the identity: the estimator must return KL(q0 || p) exactly, whatever the sample."""
    from torch.distributions import kl_divergence
    from torch.distributions.transforms import AffineTransform

    from pyro_gen.infer.objectives import flow_kl

    base = dist.Normal(torch.tensor([0.3, -1.0, 2.0]), torch.tensor([0.5, 1.5, 0.2])).to_event(1)
    q = dist.TransformedDistribution(base, [AffineTransform(0.0, 1.0, event_dim=1)])
    z = q.rsample((7,))
    assert torch.allclose(flow_kl(q, _standard_normal(3), z), kl_divergence(base, _standard_normal(3)).expand(7))


@pytest.mark.parametrize("perturb", [0.05, 0.3])
def test_flow_kl_is_unbiased_and_near_the_base_has_less_variance_than_log_q_minus_log_p(perturb):
    """Against the plain Monte Carlo estimator log q(z) - log p(z) on planar flows moved away from their identity init.

    Unbiased at any distance from the base; the variance gain holds for a flow that is a modest correction
    of its base (0.5x here) and is not guaranteed far from it (0.9-1.1x at larger perturbations).
    """
    from pyro_gen.guides.families import make_family
    from pyro_gen.infer.objectives import flow_kl

    torch.manual_seed(0)
    family = make_family("planar", context_dim=4, dim=3, num_layers=3)
    with torch.no_grad():
        for prm in family.parameters():
            prm.add_(perturb * torch.randn_like(prm))
        q = family(torch.randn(4).expand(100000, 4))
        z = q.rsample()
        p = _standard_normal(3)
        cv, mc = flow_kl(q, p, z), q.log_prob(z) - p.log_prob(z)
    se = (mc.var() / len(mc) + cv.var() / len(cv)).sqrt()
    assert (cv.mean() - mc.mean()).abs() < 4 * se
    if perturb < 0.1:
        assert cv.std() < 0.8 * mc.std()


def test_flow_kl_declines_what_is_not_a_flow():
    from pyro_gen.infer.objectives import flow_kl

    q = _standard_normal(3)
    assert flow_kl(q, _standard_normal(3), q.sample()) is None


def test_flow_kl_stays_exact_when_a_wide_base_is_contracted_back_to_the_prior():
    """The failure the fixed control variate had: q0 = N(0, 30^2 I), f(z) = z / 30, so q = p and KL = 0.

    ``log q(z) - log p(z)`` is exactly 0 per draw, while the fixed control variate (coefficient 1) carries
    ``|z0|^2 / 2`` terms with a standard deviation of hundreds of nats; the fitted coefficient drops it.
    """
    import pyro.distributions as dist
    from torch.distributions.transforms import AffineTransform

    from pyro_gen.infer.objectives import control_variate_coefficient, flow_kl

    torch.manual_seed(0)
    dim = 3
    base = dist.Normal(torch.zeros(256, dim), 30.0 * torch.ones(256, dim)).to_event(1)
    q = dist.TransformedDistribution(base, [AffineTransform(0.0, 1.0 / 30.0, event_dim=1)])
    p = _standard_normal(dim)
    z = q.rsample()
    kl = flow_kl(q, p, z)
    assert kl.abs().max() < 1e-3
    # the old estimator (coefficient fixed at 1) on the same draws
    z0 = z * 30.0
    fixed = torch.distributions.kl_divergence(base, p) - (p.log_prob(z) - p.log_prob(z0)) - dim * math.log(1 / 30.0)
    assert fixed.std() > 100
    assert control_variate_coefficient(q.log_prob(z) - p.log_prob(z), fixed - (q.log_prob(z) - p.log_prob(z))) < 0.01


def test_control_variate_coefficient_is_one_for_a_perfectly_anticorrelated_control_and_zero_for_noise():
    from pyro_gen.infer.objectives import control_variate_coefficient

    torch.manual_seed(0)
    e = torch.randn(1000)
    assert control_variate_coefficient(e, -e) == pytest.approx(1.0)
    assert control_variate_coefficient(e, e) == 0.0  # would add variance: clipped at 0
    assert control_variate_coefficient(e[:1], -e[:1]) == 1.0  # one draw: no estimate, the default
