"""Generative models as Pyro programs."""

from pyro_gen.models.gan import GANGenerator, gan, gan_critic
from pyro_gen.models.gmm import GaussianMixture, gmm
from pyro_gen.models.latent import Latent, LatentModel
from pyro_gen.models.likelihoods import (
    Bernoulli,
    ContinuousBernoulli,
    Gaussian,
    Laplace,
    Likelihood,
    Poisson,
    likelihood_names,
    make_likelihood,
)
from pyro_gen.models.vae import vae

__all__ = [
    "GANGenerator",
    "GaussianMixture",
    "Latent",
    "LatentModel",
    "Likelihood",
    "Bernoulli",
    "ContinuousBernoulli",
    "Gaussian",
    "Laplace",
    "Poisson",
    "likelihood_names",
    "make_likelihood",
    "gan",
    "gan_critic",
    "gmm",
    "vae",
]
