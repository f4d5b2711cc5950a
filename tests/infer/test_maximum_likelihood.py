"""The maximum-likelihood objective (explicit densities, no guide) against closed forms."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_gen.errors import ConfigError
from pyro_gen.infer.objectives import MaximumLikelihood
from pyro_gen.infer.trainer import TensorBatches, Trainer


class DiagonalGaussian(nn.Module):
    max_plate_nesting = 1

    def __init__(self, dim=2, latent=False):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.latent = latent

    def forward(self, x=None, batch_size=None):
        with pyro.plate("data", x.shape[0] if x is not None else batch_size):
            if self.latent:
                pyro.sample("z", dist.Normal(0.0, 1.0))
            return pyro.sample("x", dist.Normal(self.loc, self.log_scale.exp()).to_event(1), obs=x)


def test_the_loss_is_the_exact_negative_log_likelihood_per_datapoint():
    torch.manual_seed(0)
    model, x = DiagonalGaussian(), torch.randn(7, 2)
    expected = -torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1).mean()
    assert torch.allclose(MaximumLikelihood()(model, None, x, data_size=100), expected)


def test_fitting_reaches_the_closed_form_maximum_likelihood_estimate():
    torch.manual_seed(0)
    x = torch.randn(1000, 2) * torch.tensor([2.0, 0.5]) + torch.tensor([1.0, -1.0])
    model = DiagonalGaussian()
    Trainer(model, None, objective="mle", lr=0.05, batch_size=100, epochs=40, progress=False, seed=0).fit(TensorBatches(x, 100))
    assert torch.allclose(model.loc.detach(), x.mean(0), atol=0.05)
    assert torch.allclose(model.log_scale.exp().detach(), x.std(0, unbiased=False), atol=0.05)


def test_a_latent_site_is_refused_by_name():
    with pytest.raises(ConfigError, match="samples the latent 'z'"):
        MaximumLikelihood()(DiagonalGaussian(latent=True), None, torch.zeros(3, 2))


def test_a_guide_is_refused():
    with pytest.raises(ConfigError, match="guide=None"):
        MaximumLikelihood()(DiagonalGaussian(), DiagonalGaussian(), torch.zeros(3, 2))
