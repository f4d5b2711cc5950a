"""The PixelCNN distribution and model against independent truth.

* ``log_prob`` equals the sum of the per-pixel conditionals computed one pixel at a time, each from a
  forward pass on an image whose later pixels are replaced by noise (they must not matter);
* the probabilities of every 2x2 binary image (and every 2x2 image of 3 levels) sum to 1;
* the sampler's frequencies over the 16 binary 2x2 images match those probabilities (chi-square);
* the fast sampler gives the naive loop's draws from the same random numbers;
* bits per dimension by hand; bad input refused by name.
"""

import itertools
import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from scipy import stats

from pyro_gen.errors import ConfigError, DataError
from pyro_gen.infer.objectives import MaximumLikelihood
from pyro_gen.infer.trainer import TensorBatches, Trainer
from pyro_gen.models.pixelcnn import PixelCNNDistribution, autoregressive_sample, bits_per_dim, image_levels, pixelcnn


def _randomize(model, scale=0.7):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return model


def _images(levels, n, shape):
    return torch.randint(0, levels, (n, *shape)).float() / (levels - 1)


@pytest.mark.parametrize("levels", [2, 17])
@pytest.mark.parametrize("conditional", [False, True])
def test_log_prob_is_the_sum_of_the_conditionals_computed_one_pixel_at_a_time(levels, conditional):
    torch.manual_seed(0)
    shape = (1, 4, 3)
    model = _randomize(pixelcnn(shape, levels, channels=4, layers=3, first_kernel=3, num_classes=3 if conditional else None), 0.4)
    x = _images(levels, 5, shape)
    y = torch.tensor([0, 2, 1, 1, 0]) if conditional else None
    expected = torch.zeros(5)
    for i in range(12):
        r, c = divmod(i, 3)
        noisy = x.clone().flatten(1)
        noisy[:, i:] = _images(levels, 5, shape).flatten(1)[:, i:]  # the pixel itself and later ones: noise
        logits = model.network(noisy.reshape(5, *shape), y=y)[:, :, r, c]
        k = (x[:, 0, r, c] * (levels - 1)).round().long()
        if levels == 2:
            expected += torch.distributions.Bernoulli(logits=logits[:, 0]).log_prob(k.float())
        else:
            expected += torch.log_softmax(logits, -1).gather(1, k[:, None])[:, 0]
    got = model.distribution(y=y, batch_shape=(5,)).log_prob(x)
    assert got.shape == (5,)
    assert torch.allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("levels", [2, 3])
def test_the_probabilities_of_every_2x2_image_sum_to_one(levels):
    torch.manual_seed(1)
    model = _randomize(pixelcnn((1, 2, 2), levels, channels=4, layers=2, first_kernel=3))
    every = torch.tensor(list(itertools.product(range(levels), repeat=4))).float().reshape(-1, 1, 2, 2) / (levels - 1)
    total = model.distribution(batch_shape=(len(every),)).log_prob(every).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("method", ["fast", "naive"])
def test_sampled_2x2_binary_images_follow_the_exact_probabilities(method):
    torch.manual_seed(2)
    model = _randomize(pixelcnn((1, 2, 2), 2, channels=4, layers=2, first_kernel=3), 0.8)
    every = torch.tensor(list(itertools.product(range(2), repeat=4))).float().reshape(16, 1, 2, 2)
    probs = model.distribution(batch_shape=(16,)).log_prob(every).exp().detach()
    assert probs.min() < 0.03 and probs.max() > 0.1  # far from uniform: the test has something to detect
    n = 20000
    samples = model.distribution(batch_shape=(n,)).sample(method=method, generator=torch.Generator().manual_seed(0))
    codes = (samples.flatten(1).long() * torch.tensor([8, 4, 2, 1])).sum(1)
    counts = torch.bincount(codes, minlength=16).double().numpy()
    expected = (probs.double() / probs.double().sum()).numpy() * n  # the sum is 1 to 1e-7: renormalized for scipy's check
    assert stats.chisquare(counts, expected)[1] > 1e-3, (counts, expected)
    # the same check detects a wrong sampler: the frequencies of uniform images are rejected
    assert stats.chisquare(torch.full((16,), n / 16.0, dtype=torch.float64).numpy(), expected)[1] < 1e-6


@pytest.mark.parametrize("levels", [2, 5])
def test_the_fast_sampler_gives_the_naive_loops_draws(levels):
    torch.manual_seed(3)
    model = _randomize(pixelcnn((1, 6, 5), levels, channels=4, layers=3, first_kernel=3, num_classes=2), 0.5)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    draws = [
        autoregressive_sample(model.network, 6, (1, 6, 5), levels, y=y, method=m, generator=torch.Generator().manual_seed(7))
        for m in ("fast", "naive")
    ]
    assert torch.equal(draws[0], draws[1])
    assert set(torch.unique(draws[0] * (levels - 1)).tolist()) <= set(range(levels))


def test_bits_per_dimension_by_hand():
    # 100 nats per 784-pixel image: 100 / (784 * 0.6931471805599453) = 0.18401722
    assert bits_per_dim(100.0, 784) == pytest.approx(0.1840172, abs=1e-7)
    # a uniform model over 256 levels costs 8 bits per pixel: D ln 256 nats
    assert bits_per_dim(64 * math.log(256), 64) == pytest.approx(8.0)
    with pytest.raises(ConfigError, match="num_dims"):
        bits_per_dim(1.0, 0)


def test_an_untrained_softmax_model_is_near_uniform_and_its_bits_per_dim_say_so():
    torch.manual_seed(4)
    model = pixelcnn((1, 4, 4), 17, channels=4, layers=2, first_kernel=3)
    with torch.no_grad():
        model.network.head[-1].weight.zero_(), model.network.head[-1].bias.zero_()  # every conditional uniform
    x = _images(17, 3, (1, 4, 4))
    nll = -model.distribution(batch_shape=(3,)).log_prob(x)
    assert torch.allclose(nll, torch.full((3,), 16 * math.log(17)))
    assert bits_per_dim(nll[0].item(), 16) == pytest.approx(math.log2(17))


def test_the_model_is_a_pyro_program_observed_at_x_in_the_data_plate():
    model = pixelcnn((1, 3, 3), 2, channels=4, layers=2, first_kernel=3)
    x = _images(2, 4, (1, 3, 3))
    trace = poutine.trace(model).get_trace(x)
    site = trace.nodes["x"]
    assert site["is_observed"] and torch.equal(site["value"], x)
    assert [f.name for f in site["cond_indep_stack"]] == ["data"]
    assert isinstance(site["fn"], PixelCNNDistribution) and site["fn"].batch_shape == (4,)
    assert torch.allclose(MaximumLikelihood()(model, None, x), -site["fn"].log_prob(x).mean())
    drawn = model(batch_size=5)
    assert drawn.shape == (5, 1, 3, 3) and set(drawn.unique().tolist()) <= {0.0, 1.0}
    assert bool(site["fn"].support.check(drawn).all())


def test_a_class_conditional_model_draws_one_image_per_label():
    model = pixelcnn((1, 3, 3), 5, channels=4, layers=2, first_kernel=3, num_classes=3)
    drawn = model(y=torch.tensor([0, 2]))
    assert drawn.shape == (2, 1, 3, 3)
    with pytest.raises(ConfigError, match="pass y"):
        model(batch_size=2)
    with pytest.raises(DataError, match=r"lie in 0..2"):
        model(_images(5, 2, (1, 3, 3)), y=torch.tensor([0, 3]))
    with pytest.raises(ConfigError, match="takes no labels"):
        pixelcnn((1, 3, 3), 2, channels=4, layers=1)(batch_size=1, y=torch.tensor([0]))


def test_the_trainer_fits_it_by_maximum_likelihood():
    torch.manual_seed(5)
    # images whose pixels copy their left neighbour: learnable only through the causal connections
    first = torch.rand(64, 1, 4, 1).round()
    x = first.expand(64, 1, 4, 4).contiguous()
    model = pixelcnn((1, 4, 4), 2, channels=8, layers=2, first_kernel=3)
    before = -model.distribution(batch_shape=(64,)).log_prob(x).mean().item()
    Trainer(model, None, "mle", lr=1e-2, batch_size=32, epochs=30, progress=False, seed=0).fit(TensorBatches(x, 32))
    after = -model.distribution(batch_shape=(64,)).log_prob(x).mean().item()
    assert before > 8 and after < 4 * math.log(2) + 0.5  # the 4 first-column pixels are the only uncertainty


def test_bad_images_are_refused_by_name():
    model = pixelcnn((1, 3, 3), 2, channels=4, layers=1, first_kernel=3)
    with pytest.raises(DataError, match="Bernoulli pixels need binary images"):
        model(torch.full((2, 1, 3, 3), 0.5))
    with pytest.raises(DataError, match=r"dtype torch.uint8.*x.float\(\) / 1"):
        image_levels(torch.ones(2, 1, 3, 3, dtype=torch.uint8), 2)
    with pytest.raises(DataError, match=r"shape \(2, 1, 3, 4\) does not match"):
        model(torch.zeros(2, 1, 3, 4))
    with pytest.raises(DataError, match="NaN or infinite"):
        model(torch.full((1, 1, 3, 3), float("nan")))
    gray = pixelcnn((1, 3, 3), 256, channels=4, layers=1, first_kernel=3)
    eight_bit = torch.randint(0, 256, (2, 1, 3, 3))
    with pytest.raises(DataError, match="integer levels up to .* as floats.*divide them by 255"):
        gray(eight_bit.float())
    with pytest.raises(DataError, match=r"dtype torch.int64.*x.float\(\) / 255"):
        gray.distribution(batch_shape=(2,)).log_prob(eight_bit)
    with pytest.raises(DataError, match="not on the grid of 256 levels"):
        gray(torch.rand(2, 1, 3, 3))
    with pytest.raises(DataError, match=r"images must be shaped \(\.\.\., 1, 3, 3\)"):
        gray.distribution().log_prob(torch.zeros(3, 3))
    with pytest.raises(ConfigError, match="single-channel images"):
        pixelcnn((3, 8, 8), 2)
    with pytest.raises(ConfigError, match="levels must be an integer >= 2"):
        pixelcnn((1, 8, 8), 1)
    with pytest.raises(ConfigError, match="gives 1 logits per pixel, but 17 levels need 17"):
        PixelCNNDistribution(model.network, (1, 3, 3), 17)
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        model(batch_size=0)
    with pytest.raises(ConfigError, match="unknown sampler"):
        autoregressive_sample(model.network, 1, (1, 3, 3), 2, method="quick")


def test_pyro_validation_accepts_images_on_the_grid_and_rejects_others():
    model = pixelcnn((1, 2, 2), 3, channels=4, layers=1, first_kernel=3)
    d = PixelCNNDistribution(model.network, (1, 2, 2), 3, batch_shape=(2,), validate_args=True)
    assert d.support.check(torch.tensor([0.0, 0.5, 1.0, 0.5]).reshape(1, 1, 2, 2)).all()
    assert not d.support.check(torch.tensor([0.0, 0.3, 1.0, 0.5]).reshape(1, 1, 2, 2)).any()
    with pyro.validation_enabled():
        assert d.log_prob(_images(3, 2, (1, 2, 2))).shape == (2,)
