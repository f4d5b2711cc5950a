"""GAN networks: image sizes, conditioning, projection heads, spectral normalization, packing, errors.

Truths: the DCGAN size arithmetic (side = start * 2**layers), the projection formula
``psi(phi(x)) + embed(y) . phi(x)`` evaluated by hand, and the largest singular value of each
spectrally normalized weight computed by ``torch.linalg.matrix_norm``.
"""

import pytest
import torch
from torch import nn

from pyro_gen.errors import ConfigError, DataError
from pyro_gen.nn import DCGANCritic, DCGANGenerator, MLPCritic, MLPGenerator, spectral_normalize
from pyro_gen.nn.gan import default_channels


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 64, 64)])
def test_dcgan_sizes_by_configuration(shape):
    g = DCGANGenerator(5, shape, channels=[4] * len(default_channels(shape[-1])))
    c = DCGANCritic(shape, channels=[4] * len(default_channels(shape[-1])))
    x = g(torch.randn(3, 5))
    assert x.shape == (3, *shape) and ((x >= 0) & (x <= 1)).all()
    assert c(x).shape == (3,)
    assert any(isinstance(m, nn.BatchNorm2d) for m in g.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in c.modules())  # the gradient penalty needs per-sample critics


def test_default_channels_follow_the_image_side():
    assert default_channels(28) == (128, 64)  # 7 -> 14 -> 28
    assert default_channels(32) == (256, 128, 64)  # 4 -> 8 -> 16 -> 32
    assert default_channels(64) == (512, 256, 128, 64)
    assert DCGANCritic((1, 28, 28)).head.linear.in_features == 128 * 7 * 7


def test_image_sizes_that_do_not_fit_are_explained():
    with pytest.raises(ConfigError, match="divisible by 8"):
        DCGANGenerator(5, (1, 28, 28), channels=(8, 8, 8))
    with pytest.raises(ConfigError, match="image shape"):
        DCGANCritic((28, 28))
    critic = DCGANCritic((1, 28, 28), channels=(4, 4))
    with pytest.raises(DataError, match="built for 1x28x28 images"):
        critic(torch.rand(2, 1, 32, 32))
    with pytest.raises(DataError, match=r"\(batch, 2\)"):
        MLPCritic(2, (8,))(torch.rand(2, 3))


def test_conditional_generators_concatenate_a_label_embedding():
    g = MLPGenerator(3, (8,), 2, num_classes=4, embed_dim=5)
    z, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 1])
    expected = g.net(torch.cat([z, g.labels.embed(y)], -1))
    assert torch.equal(g(z, y), expected)
    with pytest.raises(DataError, match="needs class labels"):
        g(z)
    with pytest.raises(DataError, match="5 class labels for 6 samples"):
        g(z, y[:5])
    with pytest.raises(DataError, match=r"\[0, 4\)"):
        g(z, torch.full((6,), 4))
    d = DCGANGenerator(3, (1, 8, 8), channels=(4,), num_classes=2)
    assert d(z, y % 2).shape == (6, 1, 8, 8)


def test_projection_critic_equals_its_formula():
    c = MLPCritic(2, (8, 6), num_classes=3)
    x, y = torch.randn(5, 2), torch.tensor([0, 2, 1, 1, 0])
    phi = c.features(x)
    by_hand = torch.stack(
        [(c.head.linear.weight[0] * phi[i]).sum() + c.head.linear.bias[0] + (c.head.embed.weight[y[i]] * phi[i]).sum() for i in range(5)]
    )
    assert torch.allclose(c(x, y), by_hand, atol=1e-6)
    with pytest.raises(DataError, match="needs class labels"):
        c(x)
    with pytest.raises(DataError, match="unconditional"):
        MLPCritic(2, (8,))(x, y)
    img = DCGANCritic((1, 8, 8), channels=(4,), num_classes=3)
    assert img(torch.rand(5, 1, 8, 8), y).shape == (5,)


def test_spectral_normalization_makes_every_layers_largest_singular_value_one():
    torch.manual_seed(0)
    for critic in (MLPCritic(2, (16, 16), spectral_norm=True), DCGANCritic((1, 8, 8), channels=(4, 8), spectral_norm=True)):
        x = torch.randn(4, *((2,) if isinstance(critic, MLPCritic) else (1, 8, 8)))
        for _ in range(30):  # one power iteration per training forward pass
            critic(x)
        critic.eval()
        layers = [m for m in critic.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        assert layers and all(hasattr(m, "parametrizations") for m in layers)
        for m in layers:
            sigma = torch.linalg.matrix_norm(m.weight.detach().reshape(m.weight.shape[0], -1), ord=2)
            assert sigma == pytest.approx(1.0, abs=1e-3)
        # the power-iteration vectors are buffers: checkpointed with the weights
        assert any(k.endswith("_u") for k in critic.state_dict())


def test_spectral_normalize_helper_wraps_linear_and_conv_layers_in_place():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    assert spectral_normalize(net) is net
    assert all(hasattr(m, "parametrizations") for m in net if isinstance(m, nn.Linear))


def test_packed_critics_read_pack_samples_at_once():
    assert MLPCritic(2, (8,), pack=4)(torch.randn(3, 8)).shape == (3,)
    assert DCGANCritic((1, 8, 8), channels=(4,), pack=2)(torch.rand(3, 2, 8, 8)).shape == (3,)
    with pytest.raises(ConfigError, match="pack"):
        MLPCritic(2, (8,), pack=0)
