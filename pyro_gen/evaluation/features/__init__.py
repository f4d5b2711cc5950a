"""Feature spaces in which sample-quality scores compare real and generated images.

The Frechet distance (FID when the features are Inception's; Heusel et al. 2017), the kernel
distance (KID; Binkowski et al. 2018) and improved precision/recall (Kynkaanniemi et al. 2019)
compare two sets of *features*; how meaningful they are depends on the embedding. This module
provides three embeddings behind one entry point, :func:`feature_space`:

* ``"mnist28"`` and ``"digits8"``, **domain feature extractors**: small CNN digit classifiers
  whose penultimate layer is the feature space, trained once on labelled images of the domain
  that are available offline, checked on held-out images, and cached on disk
  (:func:`domain_features`). This is the offline substitute for Inception features on digits.
  It follows the practice of scoring MNIST samples with an MNIST classifier's activations
  (e.g. the "FID on LeNet features" of Binkowski et al. 2018, Section 5).
* ``"inception"``: torchvision's Inception-v3 ``pool3`` activations (2048-d), built only when
  torchvision and its ImageNet weights are already on disk (:func:`inception_features`); nothing
  is ever downloaded here.
* ``"identity"``: the samples' own coordinates (the 2-D toy points, or raw pixels).

Each :class:`FeatureSpace` carries a one-line :attr:`~FeatureSpace.description` meant to be
recorded beside every score and figure: a Frechet distance is only comparable with another one
computed in the same space, on the same reference images.

**Which images train the domain extractors.** Scoring samples against the very images the
extractor was trained on would flatter the real data, so each extractor holds images out:

* ``mnist28`` is trained on 8000 of the 10000 official MNIST test images (grayscale, from
  ``load_dataset("mnist", "test")``), chosen by ``numpy.random.default_rng(0).permutation(10000)``
  (first 8000 indices); the other 2000 are its held-out set. During training half of each batch is
  Bernoulli-binarized (the process that made static binarized MNIST) so that binary and grayscale
  samples are embedded alike. Binarized MNIST's test set is the MNIST test set sorted stably by
  digit, so the held-out images exist there too: :func:`held_out_images` returns them from either
  dataset. Binarized MNIST's ``train`` and ``valid`` images (and grayscale MNIST's training
  images) were never seen by the extractor at all.
* ``digits8`` is trained on scikit-learn's 8x8 digits ``train`` split of :mod:`pyro_gen.data.digits`
  (1397 images); its held-out set is the ``valid`` and ``test`` splits (400 images), which
  :func:`held_out_images` returns.

**Cache.** The weights are stored as ``<cache>/features/domain-<name>-v<version>.pt`` with a JSON
file beside them holding their sha256, the full training protocol, the held-out accuracies and the
description. The cache directory is the ``cache_dir`` argument, else ``$PYRO_GEN_CACHE``, else
``~/.cache/pyro_gen`` (not the data directory, which is often read-only). Both files are written
atomically, the JSON last, so an interrupted build leaves no cache that looks complete; a cache
whose files do not match gives an error naming the file and how to rebuild it.

References:
  Heusel et al., GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium, NeurIPS 2017.
  Binkowski et al., Demystifying MMD GANs, ICLR 2018.
  Kynkaanniemi et al., Improved Precision and Recall Metric for Assessing Generative Models, NeurIPS 2019.
  Szegedy et al., Rethinking the Inception Architecture for Computer Vision, CVPR 2016.

**Modules.** :mod:`~pyro_gen.evaluation.features.space` (:class:`FeatureSpace`, the identity space),
:mod:`~pyro_gen.evaluation.features.domain` (the digit classifier, the protocols, the held-out images,
training), :mod:`~pyro_gen.evaluation.features.cache` (the cache and :func:`domain_features`),
:mod:`~pyro_gen.evaluation.features.inception`, and :mod:`~pyro_gen.evaluation.features.by_name`
(:func:`feature_space`, :func:`extract_features`). Import the names from this package.
"""

from pyro_gen.evaluation.features.by_name import FEATURE_SPACES, extract_features, feature_space, resolve_feature_space
from pyro_gen.evaluation.features.cache import (
    CACHE_DIR_ENV,
    CACHE_FORMAT,
    DEFAULT_CACHE_DIR,
    domain_cache_paths,
    domain_classifier,
    domain_features,
    resolve_cache_dir,
)
from pyro_gen.evaluation.features.domain import (
    DOMAIN_ALIASES,
    DOMAIN_PROTOCOLS,
    MNIST28_SPLIT,
    MNIST28_SPLIT_SEED,
    TRAINING_TIME,
    DigitClassifier,
    DomainProtocol,
    domain_name,
    held_out_images,
    mnist28_indices,
    train_domain_extractor,
)
from pyro_gen.evaluation.features.inception import INCEPTION_SIZE, INCEPTION_WEIGHTS_FILE, inception_features
from pyro_gen.evaluation.features.space import FeatureSpace, FeatureWeightsNotFoundError, identity_space

__all__ = [
    "CACHE_DIR_ENV",
    "CACHE_FORMAT",
    "DEFAULT_CACHE_DIR",
    "DOMAIN_ALIASES",
    "DOMAIN_PROTOCOLS",
    "FEATURE_SPACES",
    "INCEPTION_SIZE",
    "INCEPTION_WEIGHTS_FILE",
    "MNIST28_SPLIT",
    "MNIST28_SPLIT_SEED",
    "TRAINING_TIME",
    "DigitClassifier",
    "DomainProtocol",
    "FeatureSpace",
    "FeatureWeightsNotFoundError",
    "domain_cache_paths",
    "domain_classifier",
    "domain_features",
    "domain_name",
    "extract_features",
    "feature_space",
    "held_out_images",
    "identity_space",
    "inception_features",
    "mnist28_indices",
    "resolve_cache_dir",
    "resolve_feature_space",
    "train_domain_extractor",
]
