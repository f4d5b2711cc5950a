"""Scores for fitted models: importance-sampled log-likelihood, ELBO, KL, active units; sample quality and its feature spaces; a GAN's scoring protocol."""

from pyro_gen.evaluation.features import (
    FeatureSpace,
    FeatureWeightsNotFoundError,
    domain_classifier,
    domain_features,
    extract_features,
    feature_space,
    held_out_images,
    inception_features,
    train_domain_extractor,
)
from pyro_gen.evaluation.gan_scores import gan_image_scores, image_quality_scores, sample_feature_space, toy_coverage_scores
from pyro_gen.evaluation.likelihood import LikelihoodResult, evaluate, log_likelihood
from pyro_gen.evaluation.sample_quality import (
    ModeCoverage,
    QualityScores,
    frechet_distance,
    kid,
    mode_coverage,
    precision_recall,
    quality_scores,
    toy_mode_coverage,
)

__all__ = [
    "FeatureSpace",
    "FeatureWeightsNotFoundError",
    "LikelihoodResult",
    "ModeCoverage",
    "QualityScores",
    "domain_classifier",
    "domain_features",
    "evaluate",
    "extract_features",
    "feature_space",
    "frechet_distance",
    "gan_image_scores",
    "held_out_images",
    "image_quality_scores",
    "inception_features",
    "kid",
    "log_likelihood",
    "mode_coverage",
    "precision_recall",
    "quality_scores",
    "sample_feature_space",
    "toy_coverage_scores",
    "toy_mode_coverage",
    "train_domain_extractor",
]
