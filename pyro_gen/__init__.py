"""pyro_gen: deep generative models written as Pyro programs.

Declare a model, pick a guide by name, fit it with one trainer and score it honestly::

    from pyro_gen import vae, make_guide, Trainer, evaluate
    from pyro_gen.data import load_dataset

    train = load_dataset("binarized_mnist", "train")
    model = vae(train.event_shape, latent_dim=40)
    guide = make_guide("planar:10", model)
    Trainer(model, guide, "elbo", epochs=10).fit(train)
    print(evaluate(model, guide, load_dataset("binarized_mnist", "test").x, num_samples=1000))

``import pyro_gen`` needs neither torchvision nor the dataset files.
"""

from pyro_gen.errors import (
    ChecksumError,
    ConfigError,
    DataError,
    DataNotFoundError,
    PyroGenError,
    RunDirError,
    SiteMismatchError,
    TrainingDivergedError,
)
from pyro_gen.evaluation import LikelihoodResult, evaluate, log_likelihood
from pyro_gen.guides import AmortizedGuide, guide_names, make_guide
from pyro_gen.infer import ELBO, IWAE, Adversarial, PyroELBO, TraceObjective, check_sites, get_traces, make_objective, trace_terms
from pyro_gen.infer.trainer import TensorBatches, Trainer
from pyro_gen.models import GANGenerator, Latent, LatentModel, gan, gan_critic, make_likelihood, vae

__version__ = "0.1.0"

__all__ = [
    "Adversarial",
    "AmortizedGuide",
    "ChecksumError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "ELBO",
    "GANGenerator",
    "IWAE",
    "Latent",
    "LatentModel",
    "LikelihoodResult",
    "PyroELBO",
    "PyroGenError",
    "RunDirError",
    "SiteMismatchError",
    "TensorBatches",
    "TraceObjective",
    "Trainer",
    "TrainingDivergedError",
    "check_sites",
    "evaluate",
    "gan",
    "gan_critic",
    "get_traces",
    "guide_names",
    "log_likelihood",
    "make_guide",
    "make_likelihood",
    "make_objective",
    "trace_terms",
    "vae",
]
