"""A discrete latent summed out exactly, against a hand enumeration (issue #10 item 3).

The model: ``y ~ Categorical(pi)`` (K = 3), ``z ~ N(0, I_2)``, ``x = W z + mu_y + N(0, 0.5^2 I_4)``:
its marginal ``log p(x) = log sum_k pi_k N(x; mu_k, W W^T + 0.25 I)`` and, for a Gaussian guide, its
ELBO ``sum_k q(k|x) [log pi_k + E_q log p(x | z, k) - KL(q(z|x,k) || N(0, I))] + H[q(y|x)]`` are in
closed form.
"""

import math

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_gen import Latent, LatentModel, make_guide, make_likelihood
from pyro_gen.errors import ConfigError
from pyro_gen.infer import make_objective
from pyro_gen.infer.enumerate import enumerated_elbo, enumerated_log_likelihood

K, DZ, DX, SIGMA = 3, 2, 4, 0.5


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.randn(DX, DZ))
        self.mu = nn.Parameter(2 * torch.randn(K, DX))

    def forward(self, y, z):
        return z @ self.W.T + self.mu[y]


def mixture_model():
    torch.manual_seed(0)
    logits = torch.tensor([0.2, -0.3, 0.5])
    return LatentModel(
        [Latent("y", prior=dist.Categorical(logits=logits)), Latent("z", shape=(DZ,))],
        Decoder(),
        make_likelihood("gaussian", data_shape=(DX,), scale=SIGMA),
        data_shape=(DX,),
    )


def exact_log_px(model, x):
    W, mu = model.decoder.W, model.decoder.mu
    log_pi = model.latents[0].prior.logits.log_softmax(-1)
    cov = W @ W.T + SIGMA**2 * torch.eye(DX)
    return torch.stack([log_pi[k] + dist.MultivariateNormal(mu[k], cov).log_prob(x) for k in range(K)], -1).logsumexp(-1)


def hand_elbo(model, guide, x, labels=None):
    """The closed-form ELBO of the Gaussian guide, enumerating y by hand."""
    W, mu = model.decoder.W, model.decoder.mu
    log_pi = model.latents[0].prior.logits.log_softmax(-1)
    log_q_y = guide.discrete_log_probs(x)
    h = guide.encoder(x)
    per_k = []
    for k in range(K):
        onehot = torch.nn.functional.one_hot(torch.full((len(x),), k), K).float()
        q = guide.families[0](torch.cat([h, onehot], -1)).base_dist
        m, s = q.loc, q.scale
        resid = x - m @ W.T - mu[k]
        expected = -0.5 * DX * math.log(2 * math.pi * SIGMA**2) - ((resid**2).sum(-1) + ((s**2) @ (W**2).T).sum(-1)) / (2 * SIGMA**2)
        kl = 0.5 * (s**2 + m**2 - 1 - 2 * s.log()).sum(-1)
        per_k.append(log_pi[k] + expected - kl)
    per_k = torch.stack(per_k, -1)
    unlabelled = (log_q_y.exp() * per_k).sum(-1) - (log_q_y.exp() * log_q_y).sum(-1)
    if labels is None:
        return unlabelled
    labelled = per_k.gather(1, labels.clamp(min=0)[:, None])[:, 0]
    return torch.where(labels >= 0, labelled, unlabelled)


def draw(model, n: int):
    """``(x, y)``: ``n`` datapoints of the model with their components."""
    with torch.no_grad():
        y = model.latents[0].prior.sample((n,))
        return model.likelihood(model.decode(y, torch.randn(n, DZ)), 1).sample(), y


@pytest.fixture
def fitted():
    model = mixture_model()
    guide = make_guide("normal", model, hidden=(32,))
    x, y = draw(model, 400)
    objective = make_objective("elbo")
    optimizer = torch.optim.Adam(list(guide.parameters()), lr=1e-2)
    for _ in range(150):  # the guide only: the model stays at the truth
        optimizer.zero_grad()
        objective(model, guide, x, data_size=len(x)).backward()
        optimizer.step()
    return model, guide, x, y


def test_the_enumerated_elbo_equals_the_hand_enumeration(fitted):
    model, guide, x, y = fitted
    x = x[:20]
    torch.manual_seed(1)
    with torch.no_grad():
        ours, _ = enumerated_elbo(model, guide, x, num_particles=20000)
        by_hand = hand_elbo(model, guide, x)
    assert torch.allclose(ours, by_hand, atol=0.03), (ours - by_hand).abs().max()
    assert bool((by_hand <= exact_log_px(model, x) + 1e-4).all())  # a lower bound


def test_labelled_points_take_their_label_and_unlabelled_ones_the_sum(fitted):
    model, guide, x, y = fitted
    x, y = x[:20], y[:20].clone()
    y[::2] = -1  # half unlabelled
    torch.manual_seed(2)
    with torch.no_grad():
        ours, _ = enumerated_elbo(model, guide, x, labels=y, num_particles=20000)
        by_hand = hand_elbo(model, guide, x, labels=y)
    assert torch.allclose(ours, by_hand, atol=0.03)


def test_the_log_likelihood_sums_y_exactly(fitted):
    model, guide, x, _ = fitted
    x = x[:30]
    torch.manual_seed(3)
    ours = enumerated_log_likelihood(model, guide, x, num_samples=3000)
    assert torch.allclose(ours, exact_log_px(model, x).detach(), atol=0.05), (ours - exact_log_px(model, x)).abs().max()


def test_the_iwae_bound_is_between_the_elbo_and_the_log_likelihood(fitted):
    model, guide, x, _ = fitted
    x = x[:50]
    torch.manual_seed(4)
    with torch.no_grad():
        iwae = -make_objective("iwae", num_particles=500)(model, guide, x, data_size=len(x)).item()
        elbo = hand_elbo(model, guide, x).mean().item()
        exact = exact_log_px(model, x).mean().item()
    assert elbo - 0.02 <= iwae <= exact + 0.02


def test_the_guide_has_a_categorical_q_and_never_a_continuous_density_on_y():
    model = mixture_model()
    guide = make_guide("planar:2", model, hidden=(8,))
    qs = guide.posterior(torch.randn(5, DX))
    assert isinstance(qs[0], torch.distributions.Categorical) and qs[0].logits.shape == (5, K)
    with pytest.raises(ConfigError, match="summed out by enumeration"):
        model(torch.randn(5, DX))
    with pytest.raises(ConfigError, match="summed out by enumeration"):
        guide(torch.randn(5, DX))
    with pytest.raises(ConfigError, match="cannot sum out the discrete latent 'y'"):
        make_objective("elbo").__class__.__bases__[0](lambda m, g: 0.0)(model, guide, torch.randn(5, DX))


def test_other_discrete_latents_are_refused_by_name():
    with pytest.raises(ConfigError, match="latent 'y' has a discrete prior"):
        Latent("y", prior=dist.OneHotCategorical(logits=torch.zeros(10)))
    with pytest.raises(ConfigError, match="latent 'g' has a discrete prior"):
        Latent("g", prior=dist.Categorical(logits=torch.zeros(3)), local=False)


def test_evaluate_sums_the_discrete_latent_out(fitted):
    from pyro_gen import evaluate

    model, guide, x, _ = fitted
    scores = evaluate(model, guide, x[:30], num_samples=2000, seed=5)
    assert abs(-scores["nll"] - exact_log_px(model, x[:30]).mean().item()) < 0.05
    assert scores["active_units"] is None and math.isnan(scores["kl"])
    assert "summed exactly" in scores["protocol"]["estimator"]


def test_semi_supervised_training_through_the_trainer_uses_the_labels():
    from pyro_gen import TensorBatches, Trainer

    model = mixture_model()
    guide = make_guide("normal", model, hidden=(32,))
    x, y = draw(model, 300)
    labels = y.clone()
    labels[30:] = -1  # 10% labelled
    history = Trainer(model, guide, "elbo", epochs=30, batch_size=50, lr=5e-3, progress=False).fit(TensorBatches(x, 50, y=labels))
    assert all(math.isfinite(r["train_loss"]) for r in history)
    accuracy = (guide.discrete_log_probs(x).argmax(-1) == y).double().mean().item()
    assert accuracy > 0.9, accuracy  # the components are well separated: q(y | x) learns them


def test_the_classification_weight_adds_alpha_log_q_of_the_labelled_points(fitted):
    model, guide, x, y = fitted
    x, labels = x[:20], y[:20].clone()
    labels[10:] = -1
    torch.manual_seed(6)
    plain = make_objective("elbo")(model, guide, x, y=labels, data_size=20)
    torch.manual_seed(6)
    weighted = make_objective("elbo", classification_weight=3.0)(model, guide, x, y=labels, data_size=20)
    log_q = guide.discrete_log_probs(x[:10]).gather(1, labels[:10, None])[:, 0]
    assert torch.allclose(weighted, plain - 3.0 * log_q.sum() / 20, atol=1e-5)
