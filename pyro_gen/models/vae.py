"""The variational autoencoder's generative model, declared like any other model.

``vae(...)`` returns a :class:`~pyro_gen.models.LatentModel` with one local latent
``z ~ N(0, I)`` and a decoder network; the encoder belongs to the guide
(:func:`pyro_gen.guides.make_guide`), so every variational family fits it.

Reference: Kingma & Welling, Auto-Encoding Variational Bayes, ICLR 2014.
"""

import math

from pyro_gen.errors import ConfigError
from pyro_gen.models.latent import Latent, LatentModel
from pyro_gen.models.likelihoods import make_likelihood
from pyro_gen.nn import MLP, ConvDecoder


def vae(
    data_shape, latent_dim: int = 40, hidden=(300, 300), net: str = "mlp", likelihood: str = "bernoulli", likelihood_scale="learned"
) -> LatentModel:
    """p(z) p(x | z) with a Normal prior and an MLP or transposed-conv decoder.

    :param data_shape: one datapoint's shape, e.g. ``(1, 28, 28)``.
    :param latent_dim: size of ``z``.
    :param hidden: hidden sizes; the MLP decoder mirrors them (``latent -> hidden[::-1] -> data``).
    :param net: ``"mlp"`` or ``"conv"``.
    :param likelihood: ``bernoulli``, ``gaussian``, ``laplace``, ``continuous_bernoulli`` or ``poisson``.
    :param likelihood_scale: for Gaussian / Laplace: a number, ``"learned"`` or ``"decoder"``.
    """
    data_shape = tuple(data_shape)
    lik = make_likelihood(likelihood, data_shape=data_shape, scale=likelihood_scale)
    out = lik.params_per_value * math.prod(data_shape)
    if net == "mlp":
        decoder = MLP(latent_dim, list(hidden)[::-1], out)
    elif net == "conv":
        if len(data_shape) != 3:
            raise ConfigError(f"net='conv' needs image data (C, H, W); data_shape is {data_shape}")
        decoder = ConvDecoder(latent_dim, data_shape, hidden=list(hidden)[0], params_per_pixel=lik.params_per_value)
    else:
        raise ConfigError(f"unknown network {net!r}; choose 'mlp' or 'conv'")
    return LatentModel([Latent("z", shape=(latent_dim,))], decoder, lik, data_shape)
