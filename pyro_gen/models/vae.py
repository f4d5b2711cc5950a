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
from pyro_gen.models.priors import GaussianPrior, make_prior
from pyro_gen.nn import MLP, ConvDecoder, Select


def vae(
    data_shape,
    latent_dim: int = 40,
    hidden=(300, 300),
    net: str = "mlp",
    likelihood: str = "bernoulli",
    likelihood_scale="learned",
    prior: str = "normal",
    top_latent_dim: int | None = None,
    likelihood_options: dict | None = None,
) -> LatentModel:
    """p(z) p(x | z) with a Normal (or learned) prior and an MLP or transposed-conv decoder; optionally two levels.

    :param data_shape: one datapoint's shape, e.g. ``(1, 28, 28)``.
    :param latent_dim: size of ``z``.
    :param hidden: hidden sizes; the MLP decoder mirrors them (``latent -> hidden[::-1] -> data``).
    :param net: ``"mlp"`` or ``"conv"``.
    :param likelihood: ``bernoulli``, ``gaussian``, ``laplace``, ``continuous_bernoulli``, ``poisson`` or ``pixelcnn``
        (PixelVAE: an autoregressive likelihood conditioned on the decoder's feature maps).
    :param likelihood_scale: for Gaussian / Laplace: a number, ``"learned"`` or ``"decoder"``.
    :param prior: the prior of the top latent by name (:func:`~pyro_gen.models.priors.make_prior`):
        ``normal`` (N(0, I)), ``learned``, ``mog:K`` (a mixture of K Gaussians) or ``vamp:K`` (a VampPrior with K
        pseudo-inputs, Tomczak & Welling 2018).
    :param top_latent_dim: a second level: ``z2`` of this size on top, and ``z1`` (``latent_dim``) drawn
        from ``N(mu(z2), sigma(z2))`` by an MLP with the first hidden width (a two-level hierarchical VAE,
        Sonderby et al. 2016); the decoder reads ``z1``.
    :param likelihood_options: the ``pixelcnn`` likelihood's options (``levels``, ``channels``, ``layers``,
        ``cond_channels``, ``first_kernel``, ...; :class:`~pyro_gen.models.pixelcnn.PixelCNNLikelihood`).
    """
    data_shape = tuple(data_shape)
    lik = make_likelihood(likelihood, data_shape=data_shape, scale=likelihood_scale, **(likelihood_options or {}))
    out = lik.params_per_value * math.prod(data_shape)
    if top_latent_dim is not None:
        if isinstance(top_latent_dim, bool) or not isinstance(top_latent_dim, int) or top_latent_dim < 1:
            raise ConfigError(f"top_latent_dim must be a positive integer (the size of z2) or None, got {top_latent_dim!r}")
        latents = [
            Latent("z2", shape=(top_latent_dim,), prior=make_prior(prior, top_latent_dim, data_shape)),
            Latent("z1", shape=(latent_dim,), prior=GaussianPrior(top_latent_dim, latent_dim, hidden=(list(hidden)[0],)), parents=("z2",)),
        ]
    else:
        latents = [Latent("z", shape=(latent_dim,), prior=make_prior(prior, latent_dim, data_shape))]
    if net == "mlp":
        decoder = MLP(latent_dim, list(hidden)[::-1], out)
    elif net == "conv":
        if len(data_shape) != 3:
            raise ConfigError(f"net='conv' needs image data (C, H, W); data_shape is {data_shape}")
        decoder = ConvDecoder(latent_dim, data_shape, hidden=list(hidden)[0], params_per_pixel=lik.params_per_value)
    else:
        raise ConfigError(f"unknown network {net!r}; choose 'mlp' or 'conv'")
    if top_latent_dim is not None:
        decoder = Select(1, decoder)  # x depends on z1 only: p(z2) p(z1 | z2) p(x | z1)
    return LatentModel(latents, decoder, lik, data_shape)
