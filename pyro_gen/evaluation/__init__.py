"""Scores for fitted models: importance-sampled log-likelihood, ELBO, KL, active units."""

from pyro_gen.evaluation.likelihood import LikelihoodResult, evaluate, log_likelihood

__all__ = ["LikelihoodResult", "evaluate", "log_likelihood"]
