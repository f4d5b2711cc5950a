"""``gmm2d``: a synthetic 3-component Gaussian mixture in 2-D with known parameters.

The truth (:func:`gmm2d_truth`) is fixed: weights ``(0.3, 0.45, 0.25)``, means separated along
the first coordinate (so the ordering constraint of
:class:`~pyro_gen.models.gmm.GaussianMixture` identifies the components, and a posterior can
be compared with the truth component by component) and full covariances with correlations
``0.5, -0.3, 0``. It is given in the mixture model's parametrization (``weights``, ``locs``,
``scales``, ``corr_chol``), so ``model.log_density(x, gmm2d_truth())`` is the true density.

The points are generated, not stored: the same ``(split, n, seed)`` always gives the same
points, and each split has its own random stream ``numpy.random.default_rng([seed, split_code, 2])``.
Labels are the true components. Default sizes: 500 train, 200 valid, 1000 test.
"""

from __future__ import annotations

import numpy as np
import torch

from pyro_gen.data.container import ArrayData, check_seed, check_size

NAME = "gmm2d"
SPLITS = ("train", "valid", "test")
DEFAULT_SIZES = {"train": 500, "valid": 200, "test": 1000}
_SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
_NAME_CODE = 2  # after ring8 (0) and grid25 (1) in pyro_gen.data.toy: another stream for the same seed

_WEIGHTS = [0.3, 0.45, 0.25]
_LOCS = [[-3.0, -1.0], [0.0, 2.0], [3.0, -0.5]]
_SCALES = [[0.8, 0.6], [0.6, 1.0], [1.0, 0.7]]
_CORRELATIONS = [0.5, -0.3, 0.0]


def gmm2d_truth() -> dict[str, torch.Tensor]:
    """The true parameters, float64: ``weights (3,)``, ``locs (3, 2)``, ``scales (3, 2)``, ``corr_chol (3, 2, 2)``.

    Components are in increasing order of their mean's first coordinate.
    """
    rho = torch.tensor(_CORRELATIONS, dtype=torch.float64)
    corr = torch.eye(2, dtype=torch.float64).repeat(3, 1, 1)
    corr[:, 0, 1] = corr[:, 1, 0] = rho
    return {
        "weights": torch.tensor(_WEIGHTS, dtype=torch.float64),
        "locs": torch.tensor(_LOCS, dtype=torch.float64),
        "scales": torch.tensor(_SCALES, dtype=torch.float64),
        "corr_chol": torch.linalg.cholesky(corr),
    }


def load(split: str, n: int | None = None, seed: int = 0) -> ArrayData:
    """Generate ``n`` points of one split (default :data:`DEFAULT_SIZES`) with the split's own stream of ``seed``."""
    seed = check_seed(seed)
    n = DEFAULT_SIZES[split] if n is None else n
    n = check_size(n)
    truth = {k: v.numpy() for k, v in gmm2d_truth().items()}
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], _NAME_CODE])
    labels = rng.choice(len(truth["weights"]), size=n, p=truth["weights"])
    tril = truth["scales"][:, :, None] * truth["corr_chol"]  # Cholesky factor of each covariance
    noise = rng.standard_normal((n, 2))
    points = truth["locs"][labels] + np.einsum("nij,nj->ni", tril[labels], noise)
    return ArrayData(
        torch.from_numpy(points).to(torch.float32),
        torch.from_numpy(labels).long(),
        name=NAME,
        split=split,
        source="generated",
        seed=seed,
    )
