"""scikit-learn's bundled tabular datasets ``iris`` and ``wine``, usable offline anywhere.

* ``iris``: 150 flowers, 4 measurements (cm), 3 species (Fisher 1936).
* ``wine``: 178 wines, 13 chemical measurements, 3 cultivars (Forina et al., UCI).

Every row is used. The data publish no split; we use a seeded 80/20 split (iris 120 / 30,
wine 142 / 36) by :func:`pyro_gen.data.splits.seeded_split` with ``numpy.random.default_rng(0)``.

**Standardized.** Each feature is centered and scaled by the *training split's* mean and
standard deviation (``ddof=0``), for both splits, so that no test statistic leaks into the
training data. The raw units differ by orders of magnitude (wine's proline is ~1000, its hue
~1), and the Gaussian mixture's weak default priors (``Normal(0, 10)`` means, ``LogNormal(0, 2)``
scales) assume data of unit scale. The raw values are ``x * std + mean`` with the
``standardization`` statistics of :func:`load`'s source. Labels are the classes.
"""

from __future__ import annotations

import numpy as np
import torch

from pyro_gen.data.container import ArrayData
from pyro_gen.data.splits import seeded_split
from pyro_gen.errors import DataError

SPLITS = ("train", "test")
SPLIT_SEED = 0
# rows, features, split sizes and md5 of numpy.random.default_rng(0).permutation(rows) (see seeded_split)
_TABLES = {
    "iris": ("load_iris", (150, 4), {"train": 120, "test": 30}, "1a91992ab40d26120fab0192867f233d"),
    "wine": ("load_wine", (178, 13), {"train": 142, "test": 36}, "b25becea1f7c4b047e0a4d33fb78cb4c"),
}
NAMES = tuple(_TABLES)


def raw_table(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole table as scikit-learn ships it: ``(features float64 (N, D), labels int64 (N,))``."""
    if name not in _TABLES:
        raise DataError(f"Unknown tabular dataset {name!r}; known: {', '.join(NAMES)}.")
    loader, shape, _, _ = _TABLES[name]
    # scikit-learn is slow to import and needed for these datasets only
    try:
        import sklearn.datasets
    except ImportError as err:
        raise DataError(f"The {name!r} dataset is read from scikit-learn, which is not installed (pip install scikit-learn).") from err
    bunch = getattr(sklearn.datasets, loader)()
    x, y = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)
    if x.shape != shape or not np.isfinite(x).all():
        raise DataError(f"scikit-learn's {name} data have shape {x.shape}, expected {shape} finite values.")
    return x, y


def split_indices(name: str) -> dict[str, np.ndarray]:
    """Row indices of each split into :func:`raw_table` (shuffled order)."""
    _, shape, sizes, md5 = _TABLES[name]
    return seeded_split(shape[0], sizes, SPLIT_SEED, md5)


def standardization(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` of each feature over the training split: the statistics :func:`load` standardizes with."""
    return _train_statistics(name, raw_table(name)[0])


def _train_statistics(name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    train = x[split_indices(name)["train"]]
    return train.mean(0), train.std(0)


def load(name: str, split: str) -> ArrayData:
    """Load one split, standardized by the training split's statistics (see the module docstring)."""
    x, y = raw_table(name)
    index = split_indices(name)[split]
    mean, std = _train_statistics(name, x)
    values = torch.from_numpy((x[index] - mean) / std).to(torch.float32)
    source = f"sklearn.datasets.{_TABLES[name][0]} (standardized by the train split's mean and std)"
    return ArrayData(values, torch.from_numpy(y[index]), name=name, split=split, source=source)
