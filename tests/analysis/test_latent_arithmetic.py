"""Latent vector arithmetic against analytic values on a generator whose classes are half-planes of z."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pyro_gen.analysis.latent_arithmetic import MissingClassError, latent_arithmetic
from pyro_gen.errors import ConfigError
from pyro_gen.models.gan import GANGenerator, gan


def identity_generator() -> GANGenerator:
    """x = z in 2-D (a linear layer set to the identity, so the program has parameters)."""
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.copy_(torch.eye(2))
        net.bias.zero_()
    return GANGenerator(net, (2,), (2,))


class SignClassifier(nn.Module):
    """Class 1 when x[0] > 0, else class 0 (logits +-x[0])."""

    def forward(self, x):
        return torch.stack([-x[:, 0], x[:, 0]], dim=-1)


def test_class_vectors_and_accuracy_match_the_half_normal_values():
    # z ~ N(0, I), class = [z0 > 0]: the class means are (+-sqrt(2/pi), 0). Moving a class-0 point
    # to class 1 adds 2 sqrt(2/pi) to z0; it lands in class 1 when z0 > -2 sqrt(2/pi), which for a
    # half-normal z0 < 0 has probability 2 (Phi(0) - Phi(-2a)). Each row also "moves" to its own class
    # (always right), so the expected accuracy is (1 + that) / 2.
    a = math.sqrt(2 / math.pi)
    normal = torch.distributions.Normal(0.0, 1.0)
    expected = (1 + 2 * float(normal.cdf(torch.tensor(0.0)) - normal.cdf(torch.tensor(-2 * a)))) / 2
    result = latent_arithmetic(identity_generator(), SignClassifier(), rows=20000, num_samples=20000, seed=0)
    torch.testing.assert_close(result.class_vectors[:, 0], torch.tensor([-a, a]), atol=0.03, rtol=0)
    torch.testing.assert_close(result.class_vectors[:, 1], torch.zeros(2), atol=0.03, rtol=0)
    assert result.target_accuracy == pytest.approx(expected, abs=0.01)
    assert result.class_counts.sum() == 20000
    assert result.images.shape == (20000, 2, 2)


def test_the_moved_codes_are_the_sources_plus_the_class_vector_difference():
    result = latent_arithmetic(identity_generator(), SignClassifier(), rows=5, num_samples=400, seed=3)
    v = result.class_vectors
    for r in range(5):
        own = int(result.source_classes[r])
        assert own == int(result.sources[r, 0] > 0)
        torch.testing.assert_close(result.images[r, own], result.sources[r])  # moving to its own class is a no-op
        torch.testing.assert_close(result.images[r, 1 - own], result.sources[r] - v[own] + v[1 - own])


def test_seeded_and_leaves_the_global_random_state_alone():
    generator = identity_generator()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    one = latent_arithmetic(generator, SignClassifier(), rows=3, num_samples=100, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    two = latent_arithmetic(generator, SignClassifier(), rows=3, num_samples=100, seed=7)
    assert torch.equal(one.images, two.images)


def test_refuses_a_conditional_generator_and_a_missing_class():
    conditional = gan((2,), latent_dim=2, hidden=(8,), num_classes=3)
    with pytest.raises(ConfigError, match="unconditional generator"):
        latent_arithmetic(conditional, SignClassifier())

    class AlwaysZero(nn.Module):
        def forward(self, x):
            return torch.stack([torch.ones(len(x)), torch.zeros(len(x))], -1)

    with pytest.raises(MissingClassError, match=r"no sample of class\(es\) \[1\]"):
        latent_arithmetic(identity_generator(), AlwaysZero(), num_samples=50)
    with pytest.raises(ConfigError, match="logits"):
        latent_arithmetic(identity_generator(), lambda x: x[:, 0], num_samples=50)
