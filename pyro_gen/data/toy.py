"""2-D Gaussian-mixture toys for mode-coverage studies (GANs, VAEs, flows).

* ``ring8``: 8 Gaussians evenly spaced on a circle of radius 2, std 0.02.
* ``grid25``: 25 Gaussians at ``{-4, -2, 0, 2, 4}^2``, std 0.05.

Each sample picks a mode uniformly at random; its label is the mode index
(the row of :func:`toy_modes`'s centers). Data is generated, not stored: the
same ``(name, split, n, seed)`` always gives the same points, and the splits use
different random streams derived from ``seed``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pyro_gen.data.container import ArrayData, check_seed, check_size
from pyro_gen.errors import DataError

SPLITS = ("train", "valid", "test")
DEFAULT_SIZES = {"train": 100000, "valid": 10000, "test": 10000}

_RING_ANGLES = [2 * math.pi * k / 8 for k in range(8)]
_GRID = (-4.0, -2.0, 0.0, 2.0, 4.0)
_MODES: dict[str, tuple[list[tuple[float, float]], float]] = {
    "ring8": ([(2 * math.cos(a), 2 * math.sin(a)) for a in _RING_ANGLES], 0.02),
    "grid25": ([(gx, gy) for gx in _GRID for gy in _GRID], 0.05),
}
NAMES = tuple(_MODES)

# Integers mixed into the seed so that each (dataset, split) has its own stream.
_SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
_NAME_CODES = {"ring8": 0, "grid25": 1}


def toy_modes(name: str) -> tuple[torch.Tensor, float]:
    """Mode centers and per-coordinate standard deviation of a toy dataset.

    :param name: ``"ring8"`` or ``"grid25"``.
    :returns: ``(centers, std)``: float32 tensor ``(M, 2)`` and the std of every mode.
    :raises DataError: unknown name.
    """
    if not isinstance(name, str) or name not in _MODES:
        raise DataError(f"Unknown toy dataset {name!r}; known toys: {', '.join(NAMES)}.")
    centers, std = _MODES[name]
    return torch.tensor(centers, dtype=torch.float32), std


def load(name: str, split: str, n: int | None = None, seed: int = 0) -> ArrayData:
    """Generate ``n`` points of one split of a toy dataset.

    :param n: number of points; default 100000 for train, 10000 for valid/test.
    :param seed: non-negative integer; the split's stream is
        ``numpy.random.default_rng([seed, split_code, name_code])``.
    """
    centers, std = toy_modes(name)
    seed = check_seed(seed)
    n = DEFAULT_SIZES[split] if n is None else n
    n = check_size(n)
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], _NAME_CODES[name]])
    labels = rng.integers(len(centers), size=n)
    points = centers.numpy().astype(np.float64)[labels] + std * rng.standard_normal((n, 2))
    return ArrayData(
        torch.from_numpy(points).to(torch.float32),
        torch.from_numpy(labels).long(),
        name=name,
        split=split,
        source="generated",
        seed=seed,
    )


def toy_log_density(name: str, x: torch.Tensor) -> torch.Tensor:
    """The true log-density of a toy dataset at points ``x`` ``(N, 2)``: an equal-weight mixture of isotropic Gaussians.

    ``log p(x) = logsumexp_m [ -log M + log N(x; c_m, std^2 I) ]`` over the ``M`` modes of :func:`toy_modes`,
    in float64 (the modes are narrow: far from them a float32 log-density would underflow). Used to
    estimate ``KL(p_true || p_model) = E_p_true[log p_true(x) - log p_model(x)]`` from true samples.
    """
    centers, std = toy_modes(name)
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.dim() != 2 or x.shape[1] != 2:
        raise DataError(f"points of {name!r} are 2-D: x must be (N, 2), got shape {tuple(x.shape)}")
    squared = ((x[:, None, :] - centers.double()[None]) ** 2).sum(-1)
    log_normal = -squared / (2 * std**2) - 2 * math.log(std) - math.log(2 * math.pi)
    return torch.logsumexp(log_normal, dim=1) - math.log(len(centers))
