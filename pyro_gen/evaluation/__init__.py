"""Scores for fitted models: importance-sampled log-likelihood, ELBO, KL, active units; sample quality."""

from pyro_gen.evaluation.likelihood import LikelihoodResult, evaluate, log_likelihood
from pyro_gen.evaluation.sample_quality import (
    ModeCoverage,
    frechet_distance,
    kid,
    mode_coverage,
    precision_recall,
    toy_mode_coverage,
)

__all__ = [
    "LikelihoodResult",
    "ModeCoverage",
    "evaluate",
    "frechet_distance",
    "kid",
    "log_likelihood",
    "mode_coverage",
    "precision_recall",
    "toy_mode_coverage",
]
