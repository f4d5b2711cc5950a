"""How a GAN is scored by its samples: the protocol, its sizes, and the dictionaries recorded in ``metrics.json``.

A GAN has no likelihood; it is scored by what it draws:

* on the 2-D toy mixtures (:data:`TOY_DATASETS`): **mode coverage** by the VEEGAN protocol
  (Srivastava et al. 2017), :func:`toy_coverage_scores`;
* on anything else: **Frechet distance, KID and improved precision / recall** of its samples
  against real images in one feature space (:func:`sample_feature_space`), :func:`image_quality_scores`,
  with two references measured the same way (:func:`gan_image_scores`): the same generator at its
  initial weights (the ceiling) and real training images (the floor).

Every function returns ``(scores, protocol)``: the numbers, and the words that say how they were
measured (sizes, estimators, feature space, reference set), to be stored side by side. Every sample
count and subset size is a parameter whose default is the protocol's constant below.

References:
  Srivastava et al., VEEGAN: Reducing Mode Collapse in GANs using Implicit Variational Learning, NeurIPS 2017.
  Heusel et al., GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium, NeurIPS 2017.
  Binkowski et al., Demystifying MMD GANs, ICLR 2018.
  Kynkaanniemi et al., Improved Precision and Recall Metric for Assessing Generative Models, NeurIPS 2019.
"""

from __future__ import annotations

import math

import torch

from pyro_gen.evaluation.features import DOMAIN_ALIASES, FeatureSpace, feature_space, held_out_images, identity_space
from pyro_gen.evaluation.sample_quality import NUM_SAMPLES, quality_scores, toy_mode_coverage
from pyro_gen.rng import seeded

#: 2-D mixtures with known modes: a GAN on them is scored by mode coverage.
TOY_DATASETS = ("ring8", "grid25")
#: The mode-coverage protocol of VEEGAN (Srivastava et al. 2017): samples within this many
#: standard deviations of their nearest mode are of high quality; a mode is covered by one of them.
TOY_NUM_STD, TOY_MIN_COUNT = 3.0, 1
#: Samples of the toy protocol (that of VEEGAN / PacGAN).
TOY_SAMPLES = NUM_SAMPLES
#: Samples scored against the real images elsewhere (fewer when there are fewer real images): the
#: precision / recall neighbourhoods cost O(N^2 d), which 2000 keeps to seconds on a CPU.
QUALITY_SAMPLES = 2000
#: KID: the unbiased MMD^2 averaged over this many random subsets of this size (Binkowski et al. 2018).
KID_SUBSETS, KID_SUBSET_SIZE = 10, 1000
#: Neighbours of the k-NN manifolds of improved precision and recall (Kynkaanniemi et al. 2019).
PR_NEIGHBOURS = 3
#: Samples drawn per generator call by :func:`draw_samples`, to bound the memory of image batches.
SAMPLE_CHUNK = 500
#: The score keys of each reference in ``scores["references"]``.
REFERENCE_KEYS = ("frechet_distance", "kid", "kid_std", "precision", "recall")


def _finite(value):
    """A float for JSON, or None when it is NaN or infinite (JSON has no such numbers)."""
    return value if value is not None and math.isfinite(value) else None


@torch.no_grad()
def draw_samples(generator, num: int, seed: int, y: torch.Tensor | None = None, chunk: int = SAMPLE_CHUNK) -> torch.Tensor:
    """``num`` samples from a generator program, seeded without touching the global random state.

    :param generator: a GAN generator program (called as ``generator(batch_size=n)``, or with ``y=``).
    :param num: samples to draw.
    :param seed: seed of torch's generator on the generator's device, restored afterwards.
    :param y: class labels, one per sample, for a conditional generator (default: drawn uniformly by the program).
    :param chunk: samples drawn per call, to bound the memory of image batches.
    :returns: ``(num, *data_shape)`` samples on the CPU.
    """
    device = next(generator.parameters()).device
    with seeded(seed, device):
        chunks = []
        for start in range(0, num, chunk):
            n = min(chunk, num - start)
            kwargs = {"batch_size": n} if y is None else {"batch_size": n, "y": y[start : start + n].to(device)}
            chunks.append(generator(**kwargs))
    return torch.cat(chunks).cpu()


def digit_domain(data_name: str) -> str | None:
    """The trained domain feature space of a digit dataset (``mnist28``, ``digits8``), else ``None``.

    Chosen by dataset, not by image shape: fashion_mnist has MNIST's shape but is no digit set.
    """
    return DOMAIN_ALIASES.get(data_name)


def sample_feature_space(data_name: str, data_dir=None, progress: bool = True) -> FeatureSpace:
    """The feature space of a GAN's Frechet distance, KID and precision / recall: the one place that chooses it.

    Digit datasets (``binarized_mnist``, ``mnist``, ``digits``) are compared in the library's
    trained, cached digit-classifier features (:func:`pyro_gen.evaluation.features.domain_features`,
    offline; trained on first use, which ``progress`` announces on stderr); other data in its own
    coordinates (flattened pixels for other images, e.g. Frey faces or Fashion-MNIST: no extractor of
    the library was trained on them). Record the space's name and description beside the scores:
    figures from different spaces are not comparable.
    """
    domain = digit_domain(data_name)
    return feature_space(domain, data_dir=data_dir, progress=progress) if domain else identity_space()


def seeded_subset(x: torch.Tensor, num: int, seed: int) -> torch.Tensor:
    """``num`` rows of ``x`` chosen at random with ``seed``, in their original order (all of ``x`` when it has no more)."""
    if num >= len(x):
        return x
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[order[:num].sort().values]


def fixed_images(split, seed: int, x: torch.Tensor | None = None) -> torch.Tensor:
    """The images of a split (or images ``x`` of the same dataset) as scored: dynamically binarized data are binarized once, with ``seed``."""
    return split.transform_batch(split.x if x is None else x, generator=torch.Generator().manual_seed(seed))


def reference_images(data_name: str, test, space: FeatureSpace, data_seed: int, data_dir=None) -> tuple[torch.Tensor, str]:
    """The real images a GAN's samples are compared with, and their description.

    Digit data scored in the library's domain features use the images its extractor was *not*
    trained on (:func:`~pyro_gen.evaluation.features.held_out_images`): the extractor was trained on
    most of MNIST's test images, whose features it would flatter. Other data use the test split.
    Dynamically binarized data are binarized once, with ``data_seed``.

    :param data_name: the dataset's name (``config.data.name``).
    :param test: the test split (an :class:`~pyro_gen.data.container.ArrayData`).
    :param space: the feature space the scores are computed in (:func:`sample_feature_space`).
    :param data_seed: seed of the one binarization of dynamically binarized data (``config.data.seed``).
    :param data_dir: data directory of the held-out images.
    """
    domain = digit_domain(data_name)
    if domain is not None and space.name == f"domain:{domain}":
        held = held_out_images(domain, dataset=data_name, data_dir=data_dir)
        return fixed_images(
            test, data_seed, held.x
        ), f"{len(held.x)} {data_name} {held.split} images held out of the {domain} extractor's training"
    return fixed_images(test, data_seed), f"the {data_name} test split"


def image_quality_scores(
    samples: torch.Tensor,
    real: torch.Tensor,
    space: FeatureSpace,
    seed: int,
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    k: int = PR_NEIGHBOURS,
) -> tuple[dict, dict]:
    """Frechet distance, KID and precision / recall of ``samples`` against ``real`` in a feature space; ``(scores, protocol)``.

    KID is the mean (and spread) over ``kid_subsets`` random subsets of ``kid_subset_size`` points when
    both sets are larger than that; otherwise one estimate on all points and ``kid_std`` is ``None``
    (subsets as large as the sets would all be the same set).

    :param samples: generated samples.
    :param real: real images (or points), as many as the samples for comparable precision / recall radii.
    :param space: the :class:`~pyro_gen.evaluation.features.FeatureSpace` to compare them in.
    :param seed: seed of KID's subsets.
    :param k: neighbours of the k-NN manifolds of precision and recall.
    :returns: ``scores`` (``frechet_distance``, ``kid``, ``kid_std``, ``precision``, ``recall``,
        ``feature_space``, ``num_samples``) and ``protocol`` (``samples``, ``real``, ``feature_space``,
        and the estimators of ``frechet_distance``, ``kid``, ``precision_recall`` in words).
    """
    subsets = min(len(samples), len(real)) > kid_subset_size
    q = quality_scores(
        real, samples, space, k=k, kid_subsets=kid_subsets if subsets else 1,
        kid_subset_size=kid_subset_size if subsets else None, seed=seed,
    )  # fmt: skip
    if subsets:
        kid_estimator = f"unbiased MMD^2, cubic polynomial kernel, mean and std over {kid_subsets} random subsets of {kid_subset_size}"
    else:
        kid_estimator = f"unbiased MMD^2, cubic polynomial kernel, one estimate on all {len(real)} and {len(samples)} points"
    scores = {
        "frechet_distance": q.frechet_distance,
        "kid": q.kid,
        "kid_std": q.kid_std if subsets else None,
        "precision": q.precision,
        "recall": q.recall,
        "feature_space": space.name,
        "num_samples": len(samples),
    }
    protocol = {
        "samples": len(samples),
        "real": len(real),
        "feature_space": f"{space.name}: {space.description}",
        "frechet_distance": "squared Frechet distance of Gaussians fitted to the real and the generated features (FID in Inception features)",
        "kid": kid_estimator,
        "precision_recall": f"k-NN manifolds with k={k} (Kynkaanniemi et al. 2019)",
    }
    return scores, protocol


def gan_image_scores(
    sampler,
    untrained,
    train,
    test,
    data_name: str,
    seed: int,
    data_seed: int,
    init_seed: int,
    data_dir=None,
    num_samples: int = QUALITY_SAMPLES,
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    space: FeatureSpace | None = None,
    progress: bool = True,
) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    """A GAN's image scores (:func:`image_quality_scores`) with two references measured the same way.

    ``min(num_samples, len(real))`` samples are drawn from ``sampler`` (seed ``seed``) and compared
    with as many real images (:func:`reference_images`, a seeded subset when there are more); then

    * ``untrained_generator``: as many samples of ``untrained`` (the same architecture at its initial
      weights, built by the caller with ``init_seed``), the ceiling a trained generator must come well under;
    * ``train_split``: as many training images (a random subset, seed ``seed + 1``), the floor (real against real).

    :param sampler: the trained generator to score (e.g. its weights' moving average).
    :param untrained: the same generator at its initial weights.
    :param train: the training split; ``test``: the test split.
    :param data_name: the dataset's name; chooses the feature space and the real images.
    :param seed: seed of the samples, of the real subset and of KID's subsets.
    :param data_seed: seed of the one binarization of dynamically binarized data.
    :param init_seed: the seed ``untrained`` was built with (recorded in the protocol).
    :param data_dir: data directory (domain extractors' images).
    :param space: the feature space (default :func:`sample_feature_space` of ``data_name``).
    :param progress: passed to :func:`sample_feature_space`.
    :returns: ``(scores, protocol, samples, real)``; ``scores["references"]`` holds each reference's
        :data:`REFERENCE_KEYS`, ``protocol["real_set"]`` and ``protocol["references"]`` say what they are.
    """
    space = sample_feature_space(data_name, data_dir, progress=progress) if space is None else space
    real, real_name = reference_images(data_name, test, space, data_seed, data_dir)
    num = min(num_samples, len(real))
    # as many real points as samples: the k-NN radii of precision / recall depend on a set's size
    real = seeded_subset(real, num, seed)
    samples = draw_samples(sampler, num, seed)
    options = {"kid_subsets": kid_subsets, "kid_subset_size": kid_subset_size}
    scores, protocol = image_quality_scores(samples, real, space, seed, **options)
    protocol["real_set"] = real_name
    rows = seeded_subset(torch.arange(len(train.x)), num, seed + 1)
    train_images = fixed_images(train, data_seed, train.x[rows])
    references = {
        "untrained_generator": image_quality_scores(draw_samples(untrained, num, seed), real, space, seed, **options)[0],
        "train_split": image_quality_scores(train_images, real, space, seed, **options)[0],
    }
    scores["references"] = {name: {k: ref[k] for k in REFERENCE_KEYS} for name, ref in references.items()}
    protocol["references"] = {
        "untrained_generator": f"{num} samples of the generator at its initial weights (seed {init_seed})",
        "train_split": f"{num} random images of the training split (seed {seed + 1}): real against real, the floor",
    }
    return scores, protocol, samples, real


def toy_coverage_scores(
    samples: torch.Tensor, dataset_name: str, num_std: float = TOY_NUM_STD, min_count: int = TOY_MIN_COUNT
) -> tuple[dict, dict]:
    """Mode coverage of samples on a 2-D toy mixture by the VEEGAN protocol; ``(scores, protocol)``.

    A sample is of high quality within ``num_std`` standard deviations of its nearest mode; a mode is
    covered by ``min_count`` high-quality samples; the reverse KL is ``KL(q || uniform)`` of the
    high-quality samples' histogram ``q`` over the modes (``None`` when it is not finite).

    :param samples: ``(N, 2)`` samples (the protocol draws :data:`TOY_SAMPLES`).
    :param dataset_name: ``"ring8"`` or ``"grid25"`` (:data:`TOY_DATASETS`).
    :returns: ``scores`` (the :class:`~pyro_gen.evaluation.ModeCoverage` fields, ``reverse_kl`` and
        ``mode_counts``) and ``protocol`` (``samples``, ``num_std``, ``min_count``, ``estimator`` in words).
    """
    coverage = toy_mode_coverage(samples, dataset_name, num_std=num_std, min_count=min_count)
    scores = {**coverage.as_dict(), "reverse_kl": _finite(coverage.reverse_kl), "mode_counts": coverage.counts.tolist()}
    n = len(samples)
    protocol = {
        "samples": n,
        "num_std": num_std,
        "min_count": min_count,
        "estimator": (
            f"VEEGAN protocol (Srivastava et al. 2017): {n} samples; a sample is of high quality within "
            f"{num_std:g} standard deviations of its nearest mode; a mode is covered by {min_count} high-quality "
            "sample(s); reverse KL: KL(q || uniform) of the high-quality samples' histogram q over the modes"
        ),
    }
    return scores, protocol
