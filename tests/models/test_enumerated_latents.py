"""Discrete latents the model enumerates (``Latent(..., enumerate="parallel")``), priors that read labels, and the
Gaussian mixture as a declaration, each against brute-force enumeration or a closed form."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from pyro.ops.indexing import Vindex
from torch import nn

from pyro_gen import Latent, LatentModel
from pyro_gen.errors import ConfigError
from pyro_gen.evaluation import log_likelihood
from pyro_gen.guides import make_guide
from pyro_gen.infer.objectives import ELBO, IWAE
from pyro_gen.infer.trainer import TensorBatches, Trainer
from pyro_gen.models import gmm
from pyro_gen.models.priors import ClassNormal

# -- two discrete latents, one reading the other: c ~ Cat(w), d | c ~ Cat(V[c]), x ~ N(mu[c, d], s) --------------
W = torch.tensor([0.3, 0.7])
V = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]])
MU = torch.tensor([[[-3.0, 0.0], [0.0, 2.0], [1.0, -1.0]], [[2.0, 2.0], [-2.0, 1.0], [4.0, 0.5]]])
S = 0.8


def two_level_model():
    def observation(c, d):
        return dist.Normal(Vindex(MU)[..., c, d, :], S).to_event(1)

    return LatentModel(
        [
            Latent("c", prior=dist.Categorical(W), enumerate="parallel"),
            Latent("d", prior=lambda c: dist.Categorical(V[c]), parents=("c",), enumerate="parallel"),
        ],
        decoder=observation,
        likelihood=None,
        data_shape=(2,),
    )


def no_guide(x, **kwargs):
    """A guide with no sites: every latent of the model is enumerated."""


def brute_force_log_px(x):
    terms = [
        math.log(W[c]) + math.log(V[c, d]) + dist.Normal(MU[c, d], S).log_prob(x).sum(-1) for c, d in itertools.product(range(2), range(3))
    ]
    return torch.stack(terms).logsumexp(0)


def test_two_enumerated_latents_one_reading_the_other_are_summed_out_exactly():
    torch.manual_seed(0)
    model = two_level_model()
    x = torch.randn(6, 2) * 2
    exact = brute_force_log_px(x)
    # our ELBO and IWAE: with every latent enumerated, each bound is log p(x)
    assert torch.allclose(ELBO()(model, no_guide, x), -exact.mean(), atol=1e-5)
    assert torch.allclose(IWAE(num_particles=3)(model, no_guide, x), -exact.mean(), atol=1e-5)
    # Pyro's TraceEnum_ELBO on the same declaration agrees
    pyro_loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, no_guide, x) / len(x)
    assert abs(pyro_loss + exact.mean().item()) < 1e-5
    result = log_likelihood(model, no_guide, x, num_samples=4)
    assert torch.allclose(result.log_px, exact, atol=1e-5)
    assert "summed exactly" in result.protocol["estimator"]


def test_sampling_draws_the_discrete_latents_from_their_priors():
    model = two_level_model()
    with pyro.poutine.trace() as tr:
        pyro.set_rng_seed(0)
        model(batch_size=20000)
    c, d = tr.trace.nodes["c"]["value"], tr.trace.nodes["d"]["value"]
    assert abs(c.float().mean().item() - W[1].item()) < 0.01
    assert abs((d[c == 0] == 1).float().mean().item() - V[0, 1].item()) < 0.02


# -- a continuous latent whose prior reads an enumerated one: y ~ Cat(w), z | y ~ N(mu_y, 1), x | z ~ N(a z + b, s) --
WY, MUY, A, B, SX = torch.tensor([0.2, 0.5, 0.3]), torch.tensor([-2.0, 0.0, 3.0]), 1.5, 0.5, 0.7


def mixture_prior_model():
    return LatentModel(
        [
            Latent("y", prior=dist.Categorical(WY), enumerate="parallel"),
            Latent("z", shape=(1,), prior=lambda y: dist.Normal(MUY[y].unsqueeze(-1), 1.0).to_event(1), parents=("y",)),
        ],
        decoder=lambda y, z: dist.Normal(A * z + B, SX).to_event(1),
        likelihood=None,
        data_shape=(1,),
    )


def exact_mixture_prior_log_px(x):
    sd = math.sqrt(A * A + SX * SX)
    return torch.stack([WY[k].log() + dist.Normal(A * MUY[k] + B, sd).log_prob(x[:, 0]) for k in range(3)]).logsumexp(0)


def wide_guide(x, **kwargs):
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(torch.zeros(len(x), 1), 5.0).to_event(1))


def test_a_continuous_latent_reading_an_enumerated_one_has_its_exact_marginal_by_importance_sampling():
    torch.manual_seed(0)
    model, x = mixture_prior_model(), torch.randn(8, 1) * 3
    exact = exact_mixture_prior_log_px(x)
    result = log_likelihood(model, wide_guide, x, num_samples=50000, seed=0)
    assert torch.allclose(result.log_px, exact, atol=0.03)
    assert (result.elbo < exact).all()


def test_an_amortized_guide_for_it_trains_under_the_exact_enumerated_bound():
    torch.manual_seed(0)
    model = mixture_prior_model()
    y = torch.distributions.Categorical(WY).sample((400,))
    x = (A * (MUY[y] + torch.randn(400)) + B + SX * torch.randn(400)).unsqueeze(-1)
    guide = make_guide("normal", model, hidden=(32,))
    assert [lat.name for lat in guide.local_latents] == ["z"]  # no continuous family on the discrete site
    exact = -exact_mixture_prior_log_px(x).mean().item()
    trainer = Trainer(model, guide, objective=ELBO(num_particles=4), lr=1e-2, batch_size=100, epochs=40, progress=False, seed=0)
    trainer.fit(TensorBatches(x, 100))
    result = log_likelihood(model, guide, x, num_samples=2000, seed=0)
    # the bound approaches the exact marginal from above (in -log p); the IS estimate meets it
    assert exact <= -result.elbo.mean().item() < exact + 0.25
    assert abs(-result.log_px.mean().item() - exact) < 0.02


# -- the labels as a parent: p(z | y) of a conditional model ----------------------------------------------------------
def test_a_prior_reading_the_labels_gives_the_exact_conditional_marginal():
    torch.manual_seed(0)
    prior = ClassNormal(3, (1,))
    with torch.no_grad():
        prior.loc.copy_(torch.tensor([[-2.0], [0.5], [3.0]]))
    model = LatentModel(
        [Latent("z", shape=(1,), prior=prior, parents=("y",))],
        decoder=lambda z, y: z,
        likelihood=_fixed_gaussian(0.5),
        data_shape=(1,),
        num_classes=3,
    )
    assert "z" in model.priors  # a module prior: trained and saved with the model
    y = torch.tensor([0, 1, 2, 2, 0])
    x = torch.tensor([[-1.5], [0.0], [2.0], [4.0], [0.0]])

    def wide(x, y=None, **kwargs):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(torch.zeros(len(x), 1), 4.0).to_event(1))

    exact = dist.Normal(prior.loc.detach()[y, 0], math.sqrt(1 + 0.25)).log_prob(x[:, 0])
    result = log_likelihood(model, wide, x, num_samples=50000, seed=0, y=y)
    assert torch.allclose(result.log_px, exact, atol=0.03)
    # sampling reads the labels: each class's draws sit at its prior mean
    pyro.set_rng_seed(0)
    trace = pyro.poutine.trace(model).get_trace(batch_size=3000, y=torch.full((3000,), 2))
    assert abs(trace.nodes["z"]["value"].mean().item() - 3.0) < 0.1
    # the built guide reads the labels one-hot, not as a latent parent
    guide = make_guide("normal", model, hidden=(8,))
    Trainer(model, guide, lr=1e-2, batch_size=5, epochs=2, progress=False, seed=0).fit(TensorBatches(x, 5, y=y))


def _fixed_gaussian(scale):
    from pyro_gen.models.likelihoods import make_likelihood

    return make_likelihood("gaussian", data_shape=(1,), scale=scale)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Latent("y", prior=dist.Categorical(torch.ones(3)), local=False, enumerate="parallel"), "must be local"),
        (lambda: Latent("y", prior=dist.Normal(0.0, 1.0), enumerate="parallel"), "finite discrete support"),
        (lambda: Latent("y", prior=dist.Categorical(torch.ones(3)), enumerate="sequential"), "must be 'parallel'"),
        (lambda: Latent("y", enumerate="parallel"), "needs a discrete prior"),
        (lambda: LatentModel([Latent("z", prior=ClassNormal(3, 2), parents=("y",))], nn.Identity(), None, (2,)), "takes none"),
        (
            lambda: LatentModel(
                [
                    Latent("a", prior=dist.Categorical(torch.ones(2))),
                    Latent("b", prior=dist.Categorical(torch.ones(2)), enumerate="parallel"),
                ],
                nn.Identity(),
                None,
                (2,),
            ),
            "not both",
        ),
    ],
)
def test_declarations_that_cannot_be_summed_out_are_refused_by_name(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_an_objective_that_cannot_enumerate_refuses_by_name():
    from pyro_gen.infer.objectives import TraceObjective

    with pytest.raises(ConfigError, match=r"cannot sum out the model's enumerated latents \['c', 'd'\]"):
        TraceObjective(lambda m, g: 0)(two_level_model(), no_guide, torch.zeros(2, 2))
    with pytest.raises(ConfigError, match="beta"):
        ELBO(beta=0.5)(two_level_model(), no_guide, torch.zeros(2, 2))


# -- the Gaussian mixture is a declaration ----------------------------------------------------------------------------
@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_the_mixture_is_a_declared_model_whose_enumerated_bound_is_its_closed_form_density(covariance):
    torch.manual_seed(0)
    model = gmm(3, 2, covariance)
    assert isinstance(model, LatentModel)
    assignment = model.latents[-1]
    assert assignment.name == "assignment" and assignment.enumerated and assignment.parents == ("weights",)
    x = torch.randn(30, 2) * 2
    params = model.params_from_labels(x, torch.arange(30) % 3)

    def at_params(x, **kwargs):  # a point-mass guide on the globals
        for name in model.global_sites:
            pyro.sample(name, dist.Delta(params[name], event_dim=params[name].dim()))

    closed_form = model.log_density(x, params)
    loss = ELBO()(model, at_params, x)
    log_prior = sum(prior.log_prob(params[name]) for name, prior in model.global_priors().items())
    assert torch.allclose(loss, -(closed_form.mean() + log_prior / 30), atol=1e-4)
    pyro_loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, at_params, x) / len(x)
    assert abs(pyro_loss - loss.item()) < 1e-4


def test_the_readme_mixture_declaration_runs_as_written_and_finds_the_clusters():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "mixture = LatentModel(" in b)
    namespace = {"torch": torch, "dist": dist, "Latent": Latent, "LatentModel": LatentModel}
    exec(block, namespace)  # noqa: S102 - the README's own snippet
    mixture = namespace["mixture"]
    torch.manual_seed(0)
    centers = torch.tensor([[5.0, 0.0], [-5.0, -5.0], [0.0, 0.0]])
    x = torch.cat([torch.randn(100, 2) + c for c in centers])
    guide = make_guide("normal", mixture, global_guide="delta", hidden=(8,))
    Trainer(mixture, guide, "elbo", epochs=150, batch_size=300, lr=0.05, progress=False, seed=0).fit(x)
    locs = guide.global_guide.median()["locs"]
    # every true center has a fitted component within 0.3
    assert torch.cdist(centers, locs).min(1).values.max() < 0.3
