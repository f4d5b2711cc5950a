"""The model language against independent truth (issue #10): hierarchies, learned and constrained priors.

* a two-level linear-Gaussian hierarchy: its IS log-likelihood at large K matches the exact Gaussian
  marginal at the fitted parameters, the ELBO lies below it, for a normal and a flow guide;
* a constrained prior's guide: its log-density is the base density minus the log-Jacobian of
  ``biject_to(support)``, by hand;
* a learned prior reaches its closed-form maximum-likelihood optimum;
* the silent failures of the old language are clear errors naming the site, or correct.
"""

import math

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_gen import Latent, LatentModel, TensorBatches, Trainer, evaluate, make_guide, make_likelihood
from pyro_gen.errors import ConfigError
from pyro_gen.infer.objectives import ELBO
from pyro_gen.infer.traces import get_traces
from pyro_gen.models.priors import GaussianPrior, LearnedNormal, MixturePrior, Prior, VampPrior


class LinearGaussian(Prior):
    """p(z1 | z2) = N(A z2 + b, diag(s^2)): a top-down prior whose marginal is known in closed form."""

    def __init__(self, d2: int, d1: int):
        super().__init__()
        self.shape = (d1,)
        self.linear = nn.Linear(d2, d1)
        self.log_scale = nn.Parameter(torch.zeros(d1))

    def forward(self, z2):
        return dist.Normal(self.linear(z2), self.log_scale.exp()).to_event(1)


class Bottom(nn.Module):
    """The decoder reads z1 only (it gets every latent, in declaration order)."""

    def __init__(self, d1: int, dx: int):
        super().__init__()
        self.linear = nn.Linear(d1, dx)

    def forward(self, z2, z1):
        return self.linear(z1)


D2, D1, DX = 2, 3, 5


def two_level_model():
    return LatentModel(
        [Latent("z2", shape=(D2,)), Latent("z1", shape=(D1,), prior=LinearGaussian(D2, D1), parents=("z2",))],
        Bottom(D1, DX),
        make_likelihood("gaussian", data_shape=(DX,), scale="learned"),
        data_shape=(DX,),
    )


def exact_log_marginal(model, x: torch.Tensor) -> torch.Tensor:
    """log p(x) of the linear-Gaussian hierarchy at the model's parameters: x ~ N(W b + c, W (A A^T + S1) W^T + Sx)."""
    prior = model.priors["z1"]
    A, b, s1 = prior.linear.weight, prior.linear.bias, prior.log_scale.exp()
    W, c = model.decoder.linear.weight, model.decoder.linear.bias
    sx = model.likelihood(torch.zeros(1, DX), 1).base_dist.scale[0]
    cov_z1 = A @ A.T + torch.diag(s1**2)
    mean = W @ b + c
    cov = W @ cov_z1 @ W.T + torch.diag(sx**2)
    return dist.MultivariateNormal(mean, cov).log_prob(x)


@pytest.mark.parametrize("guide_name", ["normal", "iaf:2"])
def test_two_level_linear_gaussian_is_ll_matches_the_exact_marginal(guide_name):
    torch.manual_seed(0)
    truth = two_level_model()
    with torch.no_grad():
        x = truth(batch_size=1500)  # generated from a random member of the family
        x = truth.likelihood(x, 1).sample()
    model = two_level_model()
    guide = make_guide(guide_name, model, hidden=(32,))
    Trainer(model, guide, "elbo", epochs=40, batch_size=100, lr=3e-3, progress=False, seed=0).fit(x)
    test = x[:200]
    with torch.no_grad():
        exact = exact_log_marginal(model, test).mean().item()
    scores = evaluate(model, guide, test, num_samples=2000, seed=1)
    assert abs(-scores["nll"] - exact) < 0.1, (guide_name, -scores["nll"], exact)
    assert scores["elbo"] <= exact + 1e-3


def test_the_guide_follows_the_graph_top_down():
    model = two_level_model()
    guide = make_guide({"z2": "planar:2", "z1": "normal"}, model, hidden=(8,))
    # z1's family reads the features and z2's value; z2's family the features only
    assert guide.families[1].linear.in_features == 8 + D2
    assert guide.families[0].base.linear.in_features == 8
    model_trace, guide_trace = get_traces(model, guide, torch.randn(4, DX))
    assert list(n for n in guide_trace.nodes if n in ("z1", "z2")) == ["z2", "z1"]
    assert torch.equal(model_trace.nodes["z1"]["value"], guide_trace.nodes["z1"]["value"])
    with pytest.raises(ConfigError, match="missing \\['z1'\\]"):
        make_guide({"z2": "normal"}, model)


def test_module_priors_are_part_of_the_model():
    model = two_level_model()
    names = {n for n, _ in model.named_parameters()}
    assert {"priors.z1.linear.weight", "priors.z1.log_scale"} <= names
    assert "priors.z1.linear.weight" in model.state_dict()


@pytest.mark.parametrize(
    "prior, inverse_log_det",
    [
        # z = exp(u): log q(z) = log N(log z) - log z
        (dist.Gamma(2.0, 1.0), lambda z: torch.log(z)),
        (dist.HalfNormal(1.0), lambda z: torch.log(z)),
        (dist.LogNormal(0.0, 1.0), lambda z: torch.log(z)),
        # z = sigmoid(u): log q(z) = log N(logit z) - log z - log(1 - z)
        (dist.Beta(2.0, 3.0), lambda z: torch.log(z) + torch.log1p(-z)),
    ],
)
def test_a_constrained_priors_guide_density_is_a_hand_change_of_variables(prior, inverse_log_det):
    model = LatentModel([Latent("rate", shape=(2,), prior=prior)], nn.Linear(2, 3), make_likelihood("gaussian", data_shape=(3,)), (3,))
    guide = make_guide("normal", model, hidden=(8,))
    x = torch.randn(6, 3)
    _, guide_trace = get_traces(model, guide, x)
    site = guide_trace.nodes["rate"]
    z = site["value"]
    assert bool(prior.support.check(z).all()), "a draw outside the prior's support"
    base = guide.families[0](guide.encoder(x))  # q of the unconstrained variable
    u = torch.distributions.biject_to(prior.support).inv(z)
    by_hand = base.log_prob(u) - inverse_log_det(z).sum(-1)
    assert torch.allclose(site["fn"].log_prob(z), by_hand, atol=1e-5)


@pytest.mark.parametrize(
    "prior",
    [dist.Gamma(2.0, 2.0), dist.Beta(2.0, 2.0), dist.HalfNormal(1.0), dist.LogNormal(0.0, 0.5), dist.Dirichlet(torch.ones(4))],
)
def test_constrained_priors_train_on_their_support(prior):
    torch.manual_seed(0)
    shape = (4,)
    model = LatentModel([Latent("w", shape=shape, prior=prior)], nn.Linear(4, 6), make_likelihood("gaussian", data_shape=(6,)), (6,))
    guide = make_guide("normal", model, hidden=(16,))
    x = torch.randn(200, 6)
    history = Trainer(model, guide, "elbo", epochs=5, batch_size=50, progress=False).fit(x)
    assert all(math.isfinite(r["train_loss"]) for r in history)
    with torch.no_grad():
        _, guide_trace = get_traces(model, guide, x[:20])
    z = guide_trace.nodes["w"]["value"]
    assert bool(prior.support.check(z).all())
    if isinstance(prior, dist.Dirichlet):
        assert torch.allclose(z.sum(-1), torch.ones(20), atol=1e-5)


def test_a_learned_prior_reaches_its_closed_form_optimum():
    # x = z + N(0, 0.5^2), z ~ N(m, s^2) learned: the marginal N(m, s^2 + 0.25) is fitted by maximum
    # likelihood, so m -> mean(x) and s^2 -> var(x) - 0.25; a Gaussian guide makes the ELBO tight
    torch.manual_seed(0)
    x = 1.5 + math.sqrt(0.25 + 0.8**2) * torch.randn(4000, 1)
    prior = LearnedNormal((1,))
    model = LatentModel(
        [Latent("z", shape=(1,), prior=prior)], lambda z: z, make_likelihood("gaussian", data_shape=(1,), scale=0.5), data_shape=(1,)
    )
    guide = make_guide("normal", model, hidden=(16,))
    before = prior.loc.detach().clone()
    Trainer(model, guide, "elbo", epochs=60, batch_size=200, lr=1e-2, progress=False, seed=0).fit(x)
    assert not torch.equal(before, prior.loc.detach())
    scale = torch.nn.functional.softplus(prior.raw_scale).item()
    assert prior.loc.item() == pytest.approx(x.mean().item(), abs=0.05)
    assert scale**2 == pytest.approx(x.var(unbiased=False).item() - 0.25, abs=0.05)


@pytest.mark.parametrize("guide_name", ["normal", "planar:4", "iaf:2"])
def test_vamp_and_mixture_priors_train_with_every_guide_family(guide_name):
    torch.manual_seed(0)
    data = (torch.rand(120, 12) > 0.5).float()
    for prior in (VampPrior(5, (12,)), MixturePrior(3, 2)):
        model = LatentModel([Latent("z", shape=(2,), prior=prior)], nn.Linear(2, 12), make_likelihood("bernoulli"), (12,))
        guide = make_guide(guide_name, model, hidden=(16,))
        start = [p.detach().clone() for p in prior.parameters()]
        history = Trainer(model, guide, "elbo", epochs=2, batch_size=40, progress=False).fit(data)
        assert all(math.isfinite(r["train_loss"]) for r in history)
        assert any(not torch.equal(a, b.detach()) for a, b in zip(start, prior.parameters())), "the prior did not train"
        assert math.isfinite(evaluate(model, guide, data[:10], num_samples=30)["nll"])


def test_the_readme_hierarchical_vampprior_vae_trains_and_scores():
    from pyro_gen.nn import MLP, Select

    torch.manual_seed(0)
    hvae = LatentModel(
        latents=[
            Latent("z2", shape=(16,), prior=VampPrior(num_pseudo=50, data_shape=(784,))),
            Latent("z1", shape=(32,), prior=GaussianPrior(16, 32, hidden=(64,)), parents=("z2",)),
        ],
        decoder=Select(1, MLP(32, [300], 784)),
        likelihood=make_likelihood("bernoulli"),
        data_shape=(784,),
    )
    guide = make_guide({"z2": "iaf:2", "z1": "normal"}, hvae)
    assert "decoder.module.0.weight" in dict(hvae.named_parameters())  # the network is the model's
    x = (torch.rand(64, 784) > 0.5).float()
    Trainer(hvae, guide, "elbo", epochs=1, batch_size=32, progress=False).fit(x)
    assert math.isfinite(evaluate(hvae, guide, x[:8], num_samples=20)["nll"])


def test_a_gaussian_prior_of_parents_builds_a_hierarchical_vae():
    model = LatentModel(
        [Latent("z2", shape=(2,)), Latent("z1", shape=(4,), prior=GaussianPrior(2, 4, hidden=(8,)), parents=("z2",))],
        lambda z2, z1: nn.functional.pad(z1, (0, 6)),
        make_likelihood("bernoulli"),
        (10,),
    )
    samples = model(batch_size=7)
    assert samples.shape == (7, 10)


# -- the old language's silent failures, now errors naming the site -----------------------------------
def test_a_discrete_latent_that_cannot_be_enumerated_is_refused_by_name():
    # a OneHotCategorical latent used to train silently to a negative NLL on binary data (a continuous
    # guide on a discrete site); a local Categorical is summed out (tests/infer/test_enumerate.py)
    with pytest.raises(ConfigError, match="latent 'y' has a discrete prior"):
        Latent("y", prior=dist.OneHotCategorical(logits=torch.zeros(10)))
    with pytest.raises(ConfigError, match="latent 'y' has a discrete prior"):
        Latent("y", prior=dist.Bernoulli(0.5), shape=(3,))
    assert Latent("y", prior=dist.Categorical(logits=torch.zeros(10))).num_values == 10


def test_a_distribution_prior_with_trainable_tensors_is_refused_instead_of_frozen():
    loc = nn.Parameter(torch.zeros(2))
    with pytest.raises(ConfigError, match="'z'.*never trained.*LearnedNormal"):
        Latent("z", shape=(2,), prior=dist.Normal(loc, 1.0))


def test_parents_must_be_declared_first_and_globals_cannot_read_locals():
    lik = make_likelihood("bernoulli")
    with pytest.raises(ConfigError, match="names parent 'z2', which is declared after it"):
        LatentModel(
            [Latent("z1", shape=(2,), prior=GaussianPrior(2, 2), parents=("z2",)), Latent("z2", shape=(2,))], nn.Linear(4, 3), lik, (3,)
        )
    with pytest.raises(ConfigError, match="global latent 'g' cannot depend on local latent 'z'"):
        LatentModel(
            [Latent("z", shape=(2,)), Latent("g", shape=(2,), prior=GaussianPrior(2, 2), parents=("z",), local=False)],
            nn.Linear(4, 3),
            lik,
            (3,),
        )
    with pytest.raises(ConfigError, match="fixed distribution"):
        Latent("z1", shape=(2,), prior=dist.Normal(0.0, 1.0), parents=("z2",))


def test_count_data_trains_at_the_default_learning_rate():
    # raw counts up to ~1e3 into an encoder made the first loss 1e15 and the run diverge; the encoder now reads log1p(x)
    torch.manual_seed(0)
    rates = torch.exp(torch.randn(300, 1) + torch.linspace(0, 6, 20))
    x = torch.poisson(rates)
    model = LatentModel([Latent("z", shape=(2,))], nn.Linear(2, 20), make_likelihood("poisson"), (20,))
    guide = make_guide("normal", model, hidden=(32,))
    history = Trainer(model, guide, "elbo", epochs=15, batch_size=50, progress=False).fit(x)
    losses = [r["train_loss"] for r in history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


# -- covariates: a conditional model ----------------------------------------------------------------
class LabelDecoder(nn.Module):
    """x = W z + mu_y: the decoder gets the latents, then the labels."""

    def __init__(self, classes: int, dz: int, dx: int):
        super().__init__()
        self.linear, self.mu = nn.Linear(dz, dx), nn.Embedding(classes, dx)

    def forward(self, z, y):
        return self.linear(z) + self.mu(y)


def test_a_conditional_model_reads_its_labels_in_the_decoder_and_the_guide():
    torch.manual_seed(0)
    model = LatentModel(
        [Latent("z", shape=(2,))], LabelDecoder(3, 2, 6), make_likelihood("gaussian", data_shape=(6,), scale=0.3), (6,), num_classes=3
    )
    guide = make_guide("normal", model, hidden=(16,))
    assert guide.families[0].linear.in_features == 16 + 3  # q(z | x, y)
    y = torch.arange(3).repeat(40)
    with torch.no_grad():
        x = model.likelihood(model(batch_size=120, y=y), 1).sample()
    # the class means are what separates the labels: the samples of one label sit around its own mean
    means = torch.stack([x[y == k].mean(0) for k in range(3)])
    assert torch.allclose(means, model.decoder.mu.weight + model.decoder.linear.bias, atol=0.6)
    history = Trainer(model, guide, "elbo", epochs=3, batch_size=40, progress=False).fit(TensorBatches(x, 40, y=y))
    assert all(math.isfinite(r["train_loss"]) for r in history)
    with pytest.raises(ConfigError, match="conditions on class labels"):
        model(x)
    with pytest.raises(Exception, match="must lie in 0..2"):
        model(x, y=torch.full((120,), 5))


def test_labels_given_to_a_model_that_reads_none_are_refused_not_dropped():
    from pyro_gen import TensorBatches

    model = LatentModel([Latent("z", shape=(2,))], nn.Linear(2, 4), make_likelihood("gaussian", data_shape=(4,)), (4,))
    guide = make_guide("normal", model, hidden=(8,))
    x, y = torch.randn(20, 4), torch.zeros(20, dtype=torch.long)
    with pytest.raises(ConfigError, match="takes no labels"):
        model(x, y=y)
    with pytest.raises(Exception, match="takes no labels"):
        Trainer(model, guide, "elbo", epochs=1, batch_size=10, progress=False).fit(TensorBatches(x, 10, y=y))


# -- the VAE factory and config speak the language: named priors and a second level ----------------------------------
@pytest.mark.parametrize(
    ("prior", "kind"),
    [("normal", type(None)), ("learned", LearnedNormal), ("mog:3", MixturePrior), ("vamp:7", VampPrior)],
)
def test_the_vae_factory_builds_named_priors_and_a_two_level_hierarchy(prior, kind):
    from pyro_gen.models import vae

    flat = vae((1, 8, 8), 4, (16,), prior=prior)
    assert isinstance(flat.latents[0].prior, kind) and [lat.name for lat in flat.latents] == ["z"]
    deep = vae((1, 8, 8), 4, (16,), prior=prior, top_latent_dim=2)
    assert [lat.name for lat in deep.latents] == ["z2", "z1"]
    assert isinstance(deep.latents[0].prior, kind) and isinstance(deep.latents[1].prior, GaussianPrior)
    assert deep.latents[1].parents == ("z2",)
    guide = make_guide("planar:2", deep, hidden=(16,))
    x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.3))
    loss = ELBO()(deep, guide, x)
    loss.backward()
    # the prior's parameters (if any) get gradients: it is trained, not frozen
    for p in deep.priors.parameters():
        assert p.grad is not None


@pytest.mark.parametrize("bad", ["vamp:x", "mog:0", "gauss", "vamp:"])
def test_an_unknown_prior_name_is_refused_in_one_line(bad):
    from pyro_gen.models import vae

    with pytest.raises(ConfigError, match="unknown prior"):
        vae((4,), 2, (8,), likelihood="gaussian", prior=bad)


@pytest.mark.parametrize("kind", ["planar:2", "radial:2"])
def test_flows_without_an_inverse_live_on_a_constrained_support(kind):
    """A planar / radial guide pushed through biject_to(Gamma's support) scores its own draws: log q(y) is the base
    density minus the flow's and the bijection's log-determinants along the drawn chain (it once failed on a cache miss)."""
    torch.manual_seed(0)
    model = LatentModel([Latent("rate", shape=(4,), prior=dist.Gamma(2.0, 1.0))], nn.Linear(4, 10), make_likelihood("poisson"), (10,))
    guide = make_guide(kind, model, hidden=(8,))
    x = torch.poisson(torch.full((5, 10), 3.0))
    (q,) = guide.posterior(x)
    z = q.base_dist.rsample()
    log_q = q.base_dist.log_prob(z)
    for t in q.transforms:
        y = t(z)
        log_q = log_q - _sum_to_batch(t.log_abs_det_jacobian(z, y), log_q.shape)
        z = y
    assert (z > 0).all()  # on the Gamma's support
    torch.testing.assert_close(q.log_prob(z), log_q)
    loss = ELBO()(model, guide, x)
    loss.backward()
    assert torch.isfinite(loss)
    assert math.isfinite(evaluate(model, guide, x, num_samples=20)["nll"])


def _sum_to_batch(t, batch_shape):
    return t.reshape(tuple(batch_shape) + (-1,)).sum(-1) if t.dim() > len(batch_shape) else t


def test_the_mixture_priors_density_equals_torchs_mixture_same_family():
    """DiagonalNormalMixture (the MixturePrior's and VampPrior's distribution) scores by matrix products; the reference
    is torch's elementwise MixtureSameFamily, on draws near and far from the components, with leading batch dims."""
    from pyro_gen.models.priors import DiagonalNormalMixture

    torch.manual_seed(0)
    logits, locs, scales = torch.randn(50), torch.randn(50, 8) * 2, torch.rand(50, 8) * 0.9 + 0.05
    mine = DiagonalNormalMixture(logits, locs, scales)
    reference = dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(locs, scales).to_event(1))
    z = torch.cat([reference.sample((300,)), torch.randn(100, 8) * 3]).reshape(4, 100, 8)
    torch.testing.assert_close(mine.log_prob(z), reference.log_prob(z), rtol=1e-5, atol=1e-3)
    draws = mine.sample((40000,))
    torch.testing.assert_close(draws.mean(0), reference.mean, atol=0.06, rtol=0)
