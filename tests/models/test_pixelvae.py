"""PixelVAE: the pixelcnn likelihood of a declared LatentModel (Gulrajani et al. 2017) against independent truth.

* ``log p(x | z)`` equals the per-pixel loop over the network with the decoder's output laid out by hand;
* for every z the probabilities of the 16 binary 2x2 images sum to 1 (particles and datapoints batched);
* the importance-sampled log-likelihood works unchanged and a tiny PixelVAE trains;
* sampling is autoregressive; bad settings are refused by name.
"""

import itertools

import pyro.poutine as poutine
import pytest
import torch

from pyro_gen import Latent, LatentModel, Trainer, evaluate, make_guide, make_likelihood
from pyro_gen.errors import ConfigError, DataError
from pyro_gen.infer.trainer import TensorBatches
from pyro_gen.nn import MLP


def _pixelvae(h=4, w=4, cond=3, levels=2, latent=2):
    likelihood = make_likelihood("pixelcnn", data_shape=(1, h, w), levels=levels, cond_channels=cond, channels=4, layers=2, first_kernel=3)
    return LatentModel([Latent("z", shape=(latent,))], MLP(latent, [8], cond * h * w), likelihood, (1, h, w))


def test_log_p_x_given_z_is_the_per_pixel_loop_over_the_decoders_feature_map():
    torch.manual_seed(0)
    model = _pixelvae()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    x, z = torch.rand(5, 1, 4, 4).round(), torch.randn(5, 2)
    site = poutine.trace(poutine.condition(model, data={"z": z})).get_trace(x).nodes["x"]
    # the decoder's flat output holds channel 0 of every pixel, then channel 1, ...: the feature map by hand
    cond = model.decoder(z).reshape(5, 3, 4, 4)
    expected = torch.zeros(5)
    for i in range(16):
        r, c = divmod(i, 4)
        noisy = x.clone().flatten(1)
        noisy[:, i:] = torch.rand(5, 16 - i).round()
        logit = model.likelihood.network(noisy.reshape(5, 1, 4, 4), cond=cond)[:, 0, r, c]
        expected += torch.distributions.Bernoulli(logits=logit).log_prob(x[:, 0, r, c])
    assert torch.allclose(site["fn"].log_prob(x), expected, atol=1e-4)


def test_for_every_z_the_2x2_images_probabilities_sum_to_one_with_particles_batched():
    torch.manual_seed(1)
    model = _pixelvae(2, 2, cond=2)
    every = torch.tensor(list(itertools.product(range(2), repeat=4))).float().reshape(16, 1, 2, 2)
    z = torch.randn(3, 1, 2).expand(3, 16, 2)  # 3 particles, each scoring the 16 images with one z
    d = poutine.trace(poutine.condition(model, data={"z": z})).get_trace(every).nodes["x"]["fn"]
    assert d.batch_shape == (3, 16)
    log_p = d.log_prob(every)
    assert log_p.shape == (3, 16)
    assert torch.allclose(log_p.exp().sum(-1), torch.ones(3), atol=1e-5)


def test_a_tiny_pixelvae_trains_and_its_importance_sampled_log_likelihood_works():
    torch.manual_seed(2)
    # two kinds of 4x4 image (a vertical or a horizontal bar): z can say which, the PixelCNN draws the bar
    bars = torch.zeros(2, 1, 4, 4)
    bars[0, 0, :, 1], bars[1, 0, 2, :] = 1, 1
    x = bars[torch.randint(0, 2, (128,))]
    x = torch.where(torch.rand_like(x) < 0.05, 1 - x, x)  # a little pixel noise
    model = _pixelvae()
    guide = make_guide("normal", model, hidden=[16])
    before = evaluate(model, guide, x[:32], num_samples=20, chunk_size=640)
    Trainer(model, guide, "elbo", lr=1e-2, batch_size=32, epochs=15, progress=False, seed=0).fit(TensorBatches(x, 32))
    after = evaluate(model, guide, x[:32], num_samples=20, chunk_size=640)
    assert after["nll"] < before["nll"] - 3
    assert after["nll"] <= -after["elbo"] + 1e-3  # the IS estimate is a tighter bound than the ELBO
    samples = poutine.trace(model).get_trace(batch_size=6).nodes["x"]["value"]
    assert samples.shape == (6, 1, 4, 4) and set(samples.unique().tolist()) <= {0.0, 1.0}


def test_a_softmax_pixelvae_scores_quantized_grayscale_images():
    model = _pixelvae(3, 3, levels=17)
    x = torch.randint(0, 17, (4, 1, 3, 3)).float() / 16
    guide = make_guide("normal", model, hidden=[8])
    assert torch.isfinite(torch.tensor(evaluate(model, guide, x, num_samples=5)["nll"]))
    with pytest.raises(DataError, match="not on the grid of 17 levels"):
        model(torch.rand(4, 1, 3, 3))


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"data_shape must be \(1, H, W\)"):
        make_likelihood("pixelcnn", data_shape=(784,))
    with pytest.raises(ConfigError, match="needs data_shape"):
        make_likelihood("pixelcnn")
    with pytest.raises(ConfigError, match="takes no options"):
        make_likelihood("bernoulli", levels=2)
    model = _pixelvae()
    with pytest.raises(ConfigError, match="no closed-form mean"):
        model.mean(model(batch_size=2))
    with pytest.raises(DataError, match="Bernoulli pixels need binary images"):
        model(torch.full((2, 1, 4, 4), 0.5))
    with pytest.raises(DataError, match="needs 48 values per datapoint"):
        LatentModel(
            [Latent("z", shape=(2,))], MLP(2, [8], 16), make_likelihood("pixelcnn", data_shape=(1, 4, 4), cond_channels=3), (1, 4, 4)
        )(batch_size=2)


def test_the_vae_config_builds_a_pixelvae_and_its_pictures_are_draws(tmp_path):
    """``model.likelihood: pixelcnn`` in a VAE config: the likelihood has the config's sizes and the dataset's
    levels; training, evaluation and ``sample`` work from the command API; grids show autoregressive draws
    (exactly 0 / 1 pixels), since the likelihood has no closed-form mean; non-image data are refused by name."""
    from PIL import Image

    from pyro_gen.config import load_config
    from pyro_gen.models.pixelcnn import PixelCNNLikelihood
    from pyro_gen.run import load_run, sample_run, train

    overrides = [
        "data.name=digits", "data.binarize=dynamic", "data.train_size=100", "data.valid_size=20", "data.test_size=20",
        "model.latent_dim=3", "model.hidden=[16]", "model.likelihood=pixelcnn", "model.pixelcnn_channels=6",
        "model.pixelcnn_layers=3", "model.pixelcnn_cond_channels=2", "model.pixelcnn_first_kernel=3",
        "train.epochs=1", "train.batch_size=50", "train.progress=false", "eval.nll_samples=5", "eval.khat_samples=0",
    ]  # fmt: skip
    scores = train(load_config(None, overrides), tmp_path / "run")
    assert torch.isfinite(torch.tensor(scores.test_nll)) and scores.test_nll > 0
    _, model, _, _ = load_run(tmp_path / "run")
    lik = model.likelihood
    assert isinstance(lik, PixelCNNLikelihood) and lik.levels == 2 and lik.params_per_value == 2 and len(lik.network.layers) == 3
    torch.manual_seed(0)
    images = model.picture(model(batch_size=6))
    assert ((images == 0) | (images == 1)).all() and images.shape == (6, 1, 8, 8)
    out = sample_run(tmp_path / "run", num=4, out=tmp_path / "s.png")
    assert Image.open(out[0]).size[0] > 0
    with pytest.raises(ConfigError, match="pixelcnn models quantized single-channel images"):
        bad = [o for o in overrides if not o.startswith(("data.binarize", "data.valid_size"))]
        train(load_config(None, [*bad, "data.name=iris", "data.train_size=50"]), tmp_path / "iris")
