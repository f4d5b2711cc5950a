"""The GAN generator as a Pyro program: its sites, handlers on z, priors, labels, and explained errors.

The truth is the generator's own network called directly: conditioning the program on ``z``
(and ``y``) must give exactly what the network computes from those values.
"""

import math

import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch import nn

from pyro_gen.errors import ConfigError, DataError
from pyro_gen.infer.traces import get_traces
from pyro_gen.models import GANGenerator, gan, gan_critic
from pyro_gen.nn import DCGANCritic, MLPCritic


def test_conditioning_on_z_reproduces_the_network_output_exactly():
    g = gan((2,), latent_dim=3, hidden=(8,))
    z = torch.randn(5, 3)
    out = poutine.condition(g, data={"z": z})(batch_size=5)
    assert torch.equal(out, g.network(z))
    trace = poutine.trace(poutine.condition(g, data={"z": z})).get_trace(batch_size=5)
    assert torch.equal(trace.nodes["x"]["value"], g.network(z))
    # do-interventions too: latent arithmetic is just another z
    arith = z[0] - z[1] + z[2]
    assert torch.equal(poutine.do(g, data={"z": arith[None]})(batch_size=1), g.network(arith[None]))


def test_interpolating_z_for_a_dcgan_in_eval_mode():
    g = gan((1, 28, 28), latent_dim=4, net="dcgan", channels=(8, 4)).eval()
    z0, z1 = torch.randn(2, 4)
    t = torch.linspace(0, 1, 6)[:, None]
    path = (1 - t) * z0 + t * z1
    out = poutine.condition(g, data={"z": path})(batch_size=6)
    assert out.shape == (6, 1, 28, 28)
    assert torch.equal(out, g.network(path))
    assert ((out >= 0) & (out <= 1)).all()  # sigmoid output for data in [0, 1]


def test_trace_has_z_in_the_data_plate_and_x_as_a_deterministic_site():
    g = gan((2,), latent_dim=3, hidden=(8,))
    trace = poutine.trace(g).get_trace(batch_size=4)
    z, x = trace.nodes["z"], trace.nodes["x"]
    assert z["type"] == "sample" and not z["is_observed"]
    assert [f.name for f in z["cond_indep_stack"]] == ["data"] and [f.name for f in x["cond_indep_stack"]] == ["data"]
    assert z["value"].shape == (4, 3) and x["value"].shape == (4, 2)
    assert x["infer"].get("_deterministic")
    assert torch.equal(x["value"], g.network(z["value"]))
    assert "y" not in trace.nodes


def test_vectorized_particles_fold_and_restore_leading_dimensions():
    g = gan((1, 8, 8), latent_dim=3, net="dcgan", channels=(4,)).eval()
    trace, _ = get_traces(g, None, batch_size=5, num_particles=2)
    z, x = trace.nodes["z"]["value"], trace.nodes["x"]["value"]
    assert z.shape == (2, 5, 3) and x.shape == (2, 5, 1, 8, 8)
    assert torch.equal(x[1, 3], g.network(z[1, 3][None])[0])


def test_default_prior_is_standard_normal_and_any_prior_is_accepted():
    g = gan((2,), latent_dim=3, hidden=(8,))
    trace = poutine.trace(g).get_trace(batch_size=4)
    z = trace.nodes["z"]
    assert torch.allclose(z["fn"].log_prob(z["value"]), dist.Normal(0.0, 1.0).log_prob(z["value"]).sum(-1))

    u = gan((2,), latent_dim=3, hidden=(8,), prior=dist.Uniform(-1.0, 1.0))
    z = poutine.trace(u).get_trace(batch_size=200).nodes["z"]
    assert z["value"].shape == (200, 3) and (z["value"].abs() <= 1).all()
    assert torch.allclose(z["fn"].log_prob(z["value"]), torch.full((200,), 3 * math.log(0.5)))


def test_conditional_generator_observes_given_labels_and_samples_uniform_ones_otherwise():
    g = gan((2,), latent_dim=3, hidden=(8,), num_classes=4)
    y = torch.tensor([0, 3, 3, 1])
    trace = poutine.trace(g).get_trace(y=y)
    site = trace.nodes["y"]
    assert site["is_observed"] and torch.equal(site["value"], y)
    z = trace.nodes["z"]["value"]
    assert torch.equal(trace.nodes["x"]["value"], g.network(z, y))

    trace = poutine.trace(g).get_trace(batch_size=4000)
    site = trace.nodes["y"]
    assert not site["is_observed"]
    assert torch.allclose(site["fn"].probs, torch.full((4,), 0.25))
    freq = torch.bincount(site["value"], minlength=4) / 4000.0
    assert (freq - 0.25).abs().max() < 0.03
    assert torch.equal(trace.nodes["x"]["value"], g.network(trace.nodes["z"]["value"], site["value"]))


def test_generator_checks_data_and_labels_with_clear_errors():
    g = gan((2,), latent_dim=3, hidden=(8,))
    with pytest.raises(DataError, match=r"data_shape \(2,\)"):
        g(torch.zeros(4, 3))
    with pytest.raises(DataError, match="unconditional"):
        g(batch_size=3, y=torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="batch_size"):
        g()
    c = gan((2,), latent_dim=3, hidden=(8,), num_classes=3)
    with pytest.raises(DataError, match="2 class labels for 4 samples"):
        c(batch_size=4, y=torch.tensor([0, 1]))
    with pytest.raises(DataError, match=r"\[0, 3\)"):
        c(y=torch.tensor([0, 3]))
    with pytest.raises(DataError, match="integer"):
        c(y=torch.tensor([0.0, 1.0]))
    assert g(torch.zeros(4, 2)).shape == (4, 2)  # data only sets the number of samples; it is never scored


def test_network_output_of_the_wrong_size_is_explained():
    g = GANGenerator(nn.Linear(3, 5), (3,), (2,))
    with pytest.raises(DataError, match="needs 2 values per sample"):
        g(batch_size=4)


def test_factories_build_matching_generators_and_critics_and_refuse_unknown_networks():
    assert isinstance(gan_critic((2,), hidden=(8,)), MLPCritic)
    critic = gan_critic((1, 28, 28), net="dcgan", channels=(4, 8), pack=2, spectral_norm=True)
    assert isinstance(critic, DCGANCritic) and critic.in_shape == (1, 28, 28) and critic.pack == 2
    with pytest.raises(ConfigError, match="'mlp' or 'dcgan'"):
        gan((2,), net="resnet")
    with pytest.raises(ConfigError, match="net='dcgan'"):
        gan_critic((1, 28, 28), net="mlp")
    with pytest.raises(ConfigError, match="num_classes >= 2"):
        gan((2,), num_classes=1)
