"""The direct path of :func:`pyro_gen.infer.traces.get_traces` against the traced Pyro programs.

For a :class:`LatentModel` with continuous local latents and its :class:`AmortizedGuide`,
``get_traces`` builds the traces without Pyro's handlers. Here both paths run on the same
weights, data and seed, and must give the same sites, the same loss and the same gradients
(to 1e-6) for every guide family and objective option; programs the direct path does not
cover must be traced.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_gen.evaluation import log_likelihood
from pyro_gen.guides import make_guide
from pyro_gen.infer import ELBO, IWAE, get_traces
from pyro_gen.infer.traces import direct_path_applies, traced_only
from pyro_gen.models import Latent, LatentModel, make_likelihood, vae
from pyro_gen.models.priors import GaussianPrior, MixturePrior

FAMILIES = ["normal", "planar:2", "radial:2", "coupling:2", "iaf:2"]
OBJECTIVES = {
    "elbo": lambda: ELBO(),
    "elbo-mc-kl": lambda: ELBO(analytic_kl=False),
    "elbo-beta-free-bits": lambda: ELBO(beta=0.5, free_bits=0.2),
    "elbo-warmup-particles": lambda: ELBO(num_particles=3, warmup_epochs=4),
    "iwae": lambda: IWAE(num_particles=4),
}


@pytest.fixture(autouse=True)
def trainer_settings():
    """As the Trainer runs objectives: module-local parameters, Pyro's validation off."""
    with pyro.settings.context(module_local_params=True), pyro.validation_enabled(False):
        yield


def flat_vae(family: str):
    torch.manual_seed(0)
    model = vae((1, 4, 4), latent_dim=3, hidden=(8,))
    guide = make_guide(family, model, hidden=(8,))
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.4))
    perturb(model, guide)
    return model, guide, x, {}


def hierarchical(family: str):
    """z2 -> z1 -> x with a learned conditional prior and a Gaussian likelihood (top-down guide)."""
    torch.manual_seed(1)
    model = LatentModel(
        [Latent("z2", shape=(2,)), Latent("z1", shape=(3,), prior=GaussianPrior(2, 3, hidden=(6,)), parents=("z2",))],
        nn.Sequential(nn.Linear(3 + 2, 12)),
        make_likelihood("gaussian", data_shape=(6,), scale="learned"),
        data_shape=(6,),
    )
    model.decoder = _TwoInputs(model.decoder)
    guide = make_guide(family, model, hidden=(8,))
    x = torch.randn(4, 6)
    perturb(model, guide)
    return model, guide, x, {}


class _TwoInputs(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, z2, z1):
        return self.net(torch.cat([z2, z1], -1))[..., :6]


def conditional(family: str):
    """A conditional VAE (labels to the decoder and the guide) with a mixture prior and a constrained (Gamma) latent.

    Planar and radial flows have no inverse, and a constrained latent's log q inverts its flow from the
    constrained value (a ``KeyError`` from Pyro's cache, traced or not): the Gamma latent gets a
    normal family there.
    """
    torch.manual_seed(2)
    invertible = family.split(":")[0] in ("normal", "coupling", "iaf")
    rate_family = family if invertible else "normal"
    model = LatentModel(
        [Latent("z", shape=(3,), prior=MixturePrior(2, 3)), Latent("rate", shape=(2,), prior=dist.Gamma(2.0, 1.0))],
        _Conditional(),
        make_likelihood("bernoulli", data_shape=(5,)),
        data_shape=(5,),
        num_classes=3,
    )
    guide = make_guide({"z": family, "rate": rate_family}, model, hidden=(8,))
    x = torch.bernoulli(torch.full((6, 5), 0.5))
    perturb(model, guide)
    return model, guide, x, {"y": torch.tensor([0, 2, 1, 1, 0, 2])}


class _Conditional(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(3 + 2 + 3, 5)

    def forward(self, z, rate, y):
        y = nn.functional.one_hot(y, 3).to(z.dtype).expand(z.shape[:-1] + (3,))
        return self.net(torch.cat([z, rate.log(), y], -1))


@torch.no_grad()
def perturb(*modules):
    """Move every parameter off its initial value (fresh flows are the identity; zero layers hide bugs)."""
    g = torch.Generator().manual_seed(123)
    for m in modules:
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


SETUPS = {"flat": flat_vae, "hierarchical": hierarchical, "conditional": conditional}


def loss_and_grads(objective, model, guide, x, seed, **kwargs):
    params = [p for m in (model, guide) for p in m.parameters()]
    torch.manual_seed(seed)
    loss = objective(model, guide, x, **kwargs)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), grads, {k: float(v) for k, v in objective.last_metrics.items()}


def assert_close(a, b, what):
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-6), f"{what}: {a} vs {b}"


@pytest.mark.parametrize("setup", sorted(SETUPS))
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("data_size", [None, 1000])
def test_same_loss_and_gradients(setup, family, objective, data_size):
    model, guide, x, extra = SETUPS[setup](family)
    kwargs = dict(extra, data_size=data_size)
    assert direct_path_applies(model, guide, (x,), kwargs)
    obj = OBJECTIVES[objective]()
    obj.set_epoch(1)  # mid warm-up where there is one
    direct_loss, direct_grads, direct_metrics = loss_and_grads(obj, model, guide, x, 7, **kwargs)
    with traced_only():
        assert not direct_path_applies(model, guide, (x,), kwargs)
        traced_loss, traced_grads, traced_metrics = loss_and_grads(obj, model, guide, x, 7, **kwargs)
    assert math.isfinite(direct_loss.item())
    assert_close(direct_loss, traced_loss, "loss")
    assert direct_metrics.keys() == traced_metrics.keys()
    for k in direct_metrics:
        assert direct_metrics[k] == pytest.approx(traced_metrics[k], rel=1e-6, abs=1e-6), k
    nonzero = 0
    for a, b in zip(direct_grads, traced_grads):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b, "gradient")
            nonzero += bool(a.abs().sum() > 0)
    assert nonzero > len(direct_grads) // 2  # the comparison is not between two zero gradients


def _site_summary(trace):
    out = {}
    for name, site in trace.nodes.items():
        entry = {k: v for k, v in site.items() if k not in ("fn", "value", "args", "kwargs", "infer", "continuation")}
        if site["type"] == "sample":
            fn = site["fn"]
            entry["fn"] = (type(fn).__name__, tuple(getattr(fn, "batch_shape", ())), tuple(getattr(fn, "event_shape", ())))
            entry["infer"] = dict(site["infer"])
        value = site.get("value")
        if torch.is_tensor(value):
            entry["value"] = value.detach().clone()
        elif isinstance(value, list):
            entry["value"] = [v.detach().clone() for v in value]
        out[name] = entry
    return out


@pytest.mark.parametrize("setup", sorted(SETUPS))
@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("data_size", [None, 1000])
def test_same_sites(setup, num_particles, data_size):
    """Every site the handlers write (type, frames, scale, mask, distribution's type and shapes, value)."""
    model, guide, x, extra = SETUPS[setup]("iaf:2")
    kwargs = dict(extra, data_size=data_size)
    torch.manual_seed(3)
    direct = get_traces(model, guide, x, num_particles=num_particles, **kwargs)
    after_direct = torch.rand(3)  # the generator's state after the call: the same draws were made, no more, no fewer
    with traced_only():
        torch.manual_seed(3)
        traced = get_traces(model, guide, x, num_particles=num_particles, **kwargs)
        after_traced = torch.rand(3)
    assert torch.equal(after_direct, after_traced)
    for d, t in zip(direct, traced):
        ds, ts = _site_summary(d), _site_summary(t)
        assert list(ds) == list(ts)
        for name in ds:
            a, b = ds[name], ts[name]
            assert a.keys() == b.keys(), name
            for k in a:
                if k == "value" and torch.is_tensor(a[k]):
                    assert torch.equal(a[k], b[k]), (name, k)
                elif k == "value" and isinstance(a[k], list):
                    assert all(torch.equal(u, v) for u, v in zip(a[k], b[k])), (name, k)
                else:
                    assert a[k] == b[k], (name, k, a[k], b[k])


def test_the_evaluator_gives_the_same_numbers():
    model, guide, x, _ = flat_vae("planar:2")
    direct = log_likelihood(model, guide, x, num_samples=30, chunk_size=40, seed=5)
    with traced_only():
        traced = log_likelihood(model, guide, x, num_samples=30, chunk_size=40, seed=5)
    for field in ("log_px", "elbo", "reconstruction", "kl", "posterior_mean"):
        assert_close(getattr(direct, field), getattr(traced, field), field)


def test_programs_it_does_not_cover_are_traced():
    model, guide, x, _ = flat_vae("normal")
    assert direct_path_applies(model, guide, (x,), {})
    # a handler on the stack must see the sites
    with pyro.poutine.block():
        assert not direct_path_applies(model, guide, (x,), {})
    # arguments it does not know
    assert not direct_path_applies(model, guide, (x,), {"batch_size": 5})
    # labels for a model that reads none: the traced program refuses them
    assert not direct_path_applies(model, guide, (x,), {"y": torch.zeros(5, dtype=torch.long)})
    # a global latent (its guide is a Pyro autoguide)
    torch.manual_seed(0)
    glob = LatentModel(
        [Latent("z", shape=(2,)), Latent("w", shape=(2,), local=False)],
        _Sum(),
        make_likelihood("gaussian", data_shape=(2,), scale=1.0),
        data_shape=(2,),
    )
    assert not direct_path_applies(glob, make_guide("normal", glob, hidden=(4,)), (torch.randn(3, 2),), {})

    # a subclass that changes the program
    class Other(LatentModel):
        def forward(self, x=None, **kwargs):
            return super().forward(x, **kwargs)

    other = Other(model.latents, model.decoder, model.likelihood, model.data_shape)
    assert not direct_path_applies(other, guide, (x,), {})


class _Sum(nn.Module):
    def forward(self, z, w):
        return z + w


class _NoisyDecoder(nn.Module):
    """A decoder that calls a Pyro primitive itself: its site exists only in the traced program."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, z):
        noise = pyro.sample("decoder_noise", dist.Normal(torch.zeros(()), 1.0))  # one per datapoint (inside the plate)
        return self.net(z) + noise.unsqueeze(-1)


def test_a_program_with_its_own_pyro_calls_is_traced_with_the_same_draws():
    model, guide, x, _ = flat_vae("planar:2")
    model.decoder = _NoisyDecoder(model.decoder)
    assert direct_path_applies(model, guide, (x,), {})
    torch.manual_seed(4)
    first = get_traces(model, guide, x)
    with traced_only():
        torch.manual_seed(4)
        traced = get_traces(model, guide, x)
    # the direct run stopped at the decoder's sample site, rewound its draws and traced the call instead
    assert "decoder_noise" in first[0].nodes
    for a, b in zip(first, traced):
        for name, site in b.nodes.items():
            if torch.is_tensor(site.get("value")):
                assert torch.equal(a.nodes[name]["value"], site["value"]), name
    assert not direct_path_applies(model, guide, (x,), {})  # and from now on this pair is traced
