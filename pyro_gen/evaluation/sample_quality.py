"""Scores of samples, for models without a likelihood (GANs) or beside it.

* :func:`mode_coverage` / :func:`toy_mode_coverage`: modes covered, fraction of high-quality
  samples and reverse KL to the uniform mode distribution on the 2-D mixtures ``ring8`` and
  ``grid25``, with the protocol of VEEGAN (Srivastava et al. 2017): 2500 samples; a sample is
  *high quality* when it lies within 3 standard deviations of its nearest mode; a mode is
  *covered* when at least one high-quality sample is nearest to it (``min_count``; PacGAN's
  tables count a mode only from 20 samples on, Lin et al. 2018). The reverse KL is
  ``KL(q || uniform)`` where ``q`` is the histogram of the high-quality samples over the modes.
* :func:`frechet_distance`: the Frechet distance between Gaussians fitted to two feature sets
  (FID when the features are Inception's; Heusel et al. 2017).
* :func:`kid`: the unbiased squared MMD with the cubic polynomial kernel ``(x.y / d + 1)^3``
  (KID when the features are Inception's; Binkowski et al. 2018).
* :func:`precision_recall`: improved precision and recall with k-nearest-neighbour manifolds
  (Kynkaanniemi et al. 2019, ``k = 3``).

* :func:`quality_scores`: all three at once for real and generated samples embedded once in a
  feature space, with the space's description to record beside the numbers.

By default the functions take feature sets as ``(N, d)`` tensors (or arrays) and compute in
float64: the 2-D toy points themselves, or features computed elsewhere. With ``space=...`` they
take samples (images) and embed them first with
:func:`pyro_gen.evaluation.features.extract_features` in that feature space: a
:class:`~pyro_gen.evaluation.features.FeatureSpace` or a name (``"mnist28"``, ``"digits8"``,
``"inception"``, ``"identity"``; see :func:`~pyro_gen.evaluation.features.feature_space`).
A score is comparable only with scores computed in the same feature space on the same real
images, so record :attr:`FeatureSpace.description <pyro_gen.evaluation.features.FeatureSpace>`
(as :func:`quality_scores` does) with every figure.

References:
  Srivastava et al., VEEGAN: Reducing Mode Collapse in GANs using Implicit Variational Learning, NeurIPS 2017.
  Lin et al., PacGAN: The power of two samples in generative adversarial networks, NeurIPS 2018.
  Heusel et al., GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium, NeurIPS 2017.
  Binkowski et al., Demystifying MMD GANs, ICLR 2018.
  Kynkaanniemi et al., Improved Precision and Recall Metric for Assessing Generative Models, NeurIPS 2019.
"""

import math
import numbers
from dataclasses import dataclass

import torch

from pyro_gen.errors import DataError
from pyro_gen.evaluation.features import FeatureSpace, extract_features, resolve_feature_space
from pyro_gen.models.checks import check_data_tensor

#: Samples drawn per model in the VEEGAN / PacGAN mode-coverage protocol.
NUM_SAMPLES = 2500


def _features(x, name: str, space: FeatureSpace | str | None = None) -> torch.Tensor:
    """``x`` as a checked float64 ``(N, d)`` feature matrix, embedded in ``space`` first when one is given."""
    if space is not None:
        # samples (images or points): their rank is the feature space's to check
        x = extract_features(check_data_tensor(x, name, arrays=True), space)
    x = check_data_tensor(x, name, ndim=2, arrays=True)
    return x.detach().to("cpu", torch.float64)


@dataclass
class ModeCoverage:
    """Mode coverage of samples from a mixture with known modes.

    :ivar modes_covered: modes with at least ``min_count`` high-quality samples nearest to them.
    :ivar num_modes: number of modes.
    :ivar high_quality: fraction of samples within ``num_std`` standard deviations of their nearest mode.
    :ivar reverse_kl: ``KL(q || uniform)`` of the high-quality samples' mode histogram ``q``
        (``nan`` when no sample is of high quality).
    :ivar counts: high-quality samples per mode, ``(num_modes,)``.
    :ivar num_samples: number of samples scored.
    """

    modes_covered: int
    num_modes: int
    high_quality: float
    reverse_kl: float
    counts: torch.Tensor
    num_samples: int

    def as_dict(self) -> dict:
        return {
            "modes_covered": self.modes_covered,
            "num_modes": self.num_modes,
            "high_quality": self.high_quality,
            "reverse_kl": self.reverse_kl,
            "num_samples": self.num_samples,
        }


def mode_coverage(samples, centers, std: float, num_std: float = 3.0, min_count: int = 1) -> ModeCoverage:
    """Score samples against isotropic Gaussian modes at ``centers`` with standard deviation ``std``.

    :param samples: ``(N, d)`` samples.
    :param centers: ``(M, d)`` mode centers.
    :param std: the modes' per-coordinate standard deviation.
    :param num_std: a sample within ``num_std * std`` (Euclidean) of its nearest mode is of high quality.
    :param min_count: high-quality samples a mode needs to count as covered (VEEGAN: 1; PacGAN: 20).
    """
    x, c = _features(samples, "samples"), _features(centers, "centers")
    if x.shape[1] != c.shape[1]:
        raise DataError(f"samples have {x.shape[1]} dimensions but the modes {c.shape[1]}")
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (std, num_std, min_count)):
        raise DataError(f"std, num_std and min_count must be numbers; got std={std!r}, num_std={num_std!r}, min_count={min_count!r}")
    if not std > 0 or min_count < 1:
        raise DataError(f"std must be positive and min_count >= 1; got std={std}, min_count={min_count}")
    dist, nearest = torch.cdist(x, c).min(1)
    good = dist <= num_std * std
    counts = torch.bincount(nearest[good], minlength=len(c))
    num_good = int(good.sum())
    if num_good:
        q = counts.double() / num_good
        nz = q > 0
        # KL(q || 1/M) = sum_i q_i log(q_i M), with 0 log 0 = 0
        reverse_kl = float((q[nz] * (q[nz] * len(c)).log()).sum())
    else:
        reverse_kl = math.nan
    return ModeCoverage(int((counts >= min_count).sum()), len(c), num_good / len(x), reverse_kl, counts, len(x))


def toy_mode_coverage(samples, name: str, num_std: float = 3.0, min_count: int = 1) -> ModeCoverage:
    """:func:`mode_coverage` against the modes of the toy dataset ``name`` (``"ring8"`` or ``"grid25"``)."""
    from pyro_gen.data.toy import toy_modes

    centers, std = toy_modes(name)
    return mode_coverage(samples, centers, std, num_std=num_std, min_count=min_count)


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if len(x) < 2:
        raise DataError("a covariance needs at least 2 feature vectors")
    return x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clamped at 0)."""
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance_from_moments(mu1, cov1, mu2, cov2) -> float:
    """``||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^{1/2})``, the squared Frechet (2-Wasserstein) distance of two Gaussians.

    ``tr (C1 C2)^{1/2} = tr (C1^{1/2} C2 C1^{1/2})^{1/2}``: the right side is the root of a
    symmetric positive semi-definite matrix, computed stably by an eigendecomposition
    (``scipy.linalg.sqrtm`` of the non-symmetric product can return complex noise).
    """
    mu1, mu2, cov1, cov2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, mu2, cov1, cov2))
    d = mu1.shape[-1] if mu1.dim() == 1 else -1
    if mu1.shape != mu2.shape or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise DataError(
            f"shapes do not match: means {tuple(mu1.shape)}, {tuple(mu2.shape)}; covariances {tuple(cov1.shape)}, {tuple(cov2.shape)}"
        )
    s1 = _sqrtm_psd(cov1)
    middle = s1 @ cov2 @ s1
    tr_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * tr_sqrt)


def frechet_distance(x, y, space: FeatureSpace | str | None = None) -> float:
    """The Frechet distance between Gaussians fitted (mean, unbiased covariance) to feature sets ``x`` and ``y``.

    :param space: embed ``x`` and ``y`` (then samples, e.g. images) in this feature space first;
        ``None``: they are features already.
    """
    space = None if space is None else resolve_feature_space(space)
    x, y = _features(x, "x", space), _features(y, "y", space)
    if x.shape[1] != y.shape[1]:
        raise DataError(f"feature sets of different dimension: {x.shape[1]} and {y.shape[1]}")
    return frechet_distance_from_moments(*_moments(x), *_moments(y))


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> torch.Tensor:
    """``(gamma x.y + coef0)^degree`` with ``gamma = 1 / d`` by default: KID's kernel."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (gamma * x @ y.T + coef0) ** degree


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, kernel=polynomial_kernel) -> float:
    """The unbiased estimate of ``MMD^2``: within-set means exclude the diagonal (Gretton et al. 2012)."""
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise DataError("the unbiased MMD needs at least 2 samples in each set")
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * kxy.mean())


def kid(
    x, y, num_subsets: int = 1, subset_size: int | None = None, seed: int = 0, space: FeatureSpace | str | None = None
) -> tuple[float, float]:
    """Kernel (Inception) distance: the unbiased ``MMD^2`` with the cubic polynomial kernel.

    With ``num_subsets > 1`` (Binkowski et al. use 100 subsets of 1000) the estimate is averaged
    over random subsets of ``subset_size`` drawn without replacement from each set.

    :param space: embed ``x`` and ``y`` in this feature space first (see :func:`frechet_distance`).
    :returns: ``(mean, standard deviation over subsets)``; the deviation is 0 for one subset.
    """
    space = None if space is None else resolve_feature_space(space)
    x, y = _features(x, "x", space), _features(y, "y", space)
    if x.shape[1] != y.shape[1]:
        raise DataError(f"feature sets of different dimension: {x.shape[1]} and {y.shape[1]}")
    if num_subsets < 1:
        raise DataError(f"num_subsets must be >= 1, got {num_subsets}")
    if subset_size is None and num_subsets == 1:
        return mmd2_unbiased(x, y), 0.0
    size = min(len(x), len(y)) if subset_size is None else subset_size
    if not 2 <= size <= min(len(x), len(y)):
        raise DataError(f"subset_size must be in [2, {min(len(x), len(y))}], got {size}")
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor(
        [
            mmd2_unbiased(x[torch.randperm(len(x), generator=g)[:size]], y[torch.randperm(len(y), generator=g)[:size]])
            for _ in range(num_subsets)
        ],
        dtype=torch.float64,
    )
    return float(values.mean()), float(values.std()) if num_subsets > 1 else 0.0


def _cdist_exact(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # no matrix-product shortcut: a point's distance to itself is exactly 0
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(x: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """Distance from each point to its ``k``-th nearest neighbour in ``x``, itself excluded."""
    if len(x) <= k:
        raise DataError(f"k-nearest-neighbour radii with k={k} need more than {k} points, got {len(x)}")
    # the k+1-th smallest distance skips the point itself (distance 0)
    return torch.cat([_cdist_exact(x[i : i + chunk], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), chunk)])


def _in_manifold(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Whether each query point lies in some ball ``B(ref_j, radii_j)``."""
    return torch.cat([(_cdist_exact(query[i : i + chunk], ref) <= radii).any(1) for i in range(0, len(query), chunk)])


def precision_recall(real, fake, k: int = 3, space: FeatureSpace | str | None = None) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019).

    Each set's manifold is the union of balls around its points with radius the distance to
    the point's ``k``-th nearest neighbour. Precision is the fraction of ``fake`` inside the
    real manifold (are samples realistic?); recall the fraction of ``real`` inside the fake
    manifold (is the data's variety covered?).

    :param space: embed ``real`` and ``fake`` in this feature space first (see :func:`frechet_distance`).
    :returns: ``(precision, recall)``.
    """
    space = None if space is None else resolve_feature_space(space)
    real, fake = _features(real, "real", space), _features(fake, "fake", space)
    if real.shape[1] != fake.shape[1]:
        raise DataError(f"feature sets of different dimension: {real.shape[1]} and {fake.shape[1]}")
    precision = _in_manifold(fake, real, knn_radii(real, k)).double().mean()
    recall = _in_manifold(real, fake, knn_radii(fake, k)).double().mean()
    return float(precision), float(recall)


@dataclass
class QualityScores:
    """Frechet distance, KID and precision/recall of generated samples against real ones, in one feature space.

    :ivar frechet_distance: see :func:`frechet_distance` (FID when the space is Inception's).
    :ivar kid: mean KID over subsets (see :func:`kid`).
    :ivar kid_std: its standard deviation over subsets (0 for one subset).
    :ivar precision: fraction of generated samples inside the real manifold.
    :ivar recall: fraction of real samples inside the generated manifold.
    :ivar num_real: real samples scored.
    :ivar num_fake: generated samples scored.
    :ivar feature_space: the space's description, to record beside the numbers.
    """

    frechet_distance: float
    kid: float
    kid_std: float
    precision: float
    recall: float
    num_real: int
    num_fake: int
    feature_space: str

    def as_dict(self) -> dict:
        return dict(vars(self))


def quality_scores(
    real,
    fake,
    space: FeatureSpace | str = "identity",
    k: int = 3,
    kid_subsets: int = 1,
    kid_subset_size: int | None = None,
    seed: int = 0,
) -> QualityScores:
    """Embed real and generated samples once in ``space`` and score them every way.

    Use real images the feature extractor was not trained on as ``real``
    (:func:`pyro_gen.evaluation.features.held_out_images`), and the same real set for every model
    compared.

    :param real: real samples (images for a domain or Inception space, points for ``"identity"``).
    :param fake: generated samples of the same shape.
    :param space: a :class:`~pyro_gen.evaluation.features.FeatureSpace` or its name.
    :param k: neighbours of the precision/recall manifolds.
    :param kid_subsets: number of KID subsets (see :func:`kid`).
    :param kid_subset_size: size of each KID subset.
    :param seed: seed of the KID subsets.
    """
    space = resolve_feature_space(space)
    real_features, fake_features = _features(real, "real", space), _features(fake, "fake", space)
    kid_mean, kid_std = kid(real_features, fake_features, num_subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    precision, recall = precision_recall(real_features, fake_features, k=k)
    return QualityScores(
        frechet_distance=frechet_distance(real_features, fake_features),
        kid=kid_mean,
        kid_std=kid_std,
        precision=precision,
        recall=recall,
        num_real=len(real_features),
        num_fake=len(fake_features),
        feature_space=space.description,
    )
