"""scikit-learn's bundled 8x8 digits (1797 images), usable offline anywhere.

Pixel values 0..16 are scaled to ``[0, 1]``. The data has no official split; we
use 1397 / 200 / 200 images for train / valid / test after a shuffle with
``numpy.random.default_rng(0)`` (see :func:`pyro_gen.data.splits.seeded_split`).
Labels are the digits.
"""

from __future__ import annotations

import numpy as np
import torch

from pyro_gen.data.container import ArrayData
from pyro_gen.data.splits import seeded_split
from pyro_gen.errors import DataError

NAME = "digits"
SPLITS = ("train", "valid", "test")
SPLIT_SIZES = {"train": 1397, "valid": 200, "test": 200}
SPLIT_SEED = 0
# md5 of numpy.random.default_rng(0).permutation(1797) (see seeded_split).
_PERMUTATION_MD5 = "9e6eb27b9f438b35f0c5d4df5a1a6c7c"


def load(split: str) -> ArrayData:
    """Load one split (see :func:`pyro_gen.data.load_dataset`)."""
    # scikit-learn is slow to import and needed for this dataset only.
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise DataError("The 'digits' dataset is read from scikit-learn, which is not installed (pip install scikit-learn).") from err
    bunch = load_digits()
    images, target = np.asarray(bunch.images), np.asarray(bunch.target)
    if images.shape != (1797, 8, 8) or not np.isfinite(images).all():
        raise DataError(f"scikit-learn's digits have shape {images.shape}, expected (1797, 8, 8).")
    index = seeded_split(len(images), SPLIT_SIZES, SPLIT_SEED, _PERMUTATION_MD5)[split]
    x = torch.from_numpy(images[index] / 16.0).to(torch.float32).unsqueeze(1)
    y = torch.from_numpy(target[index]).long()
    return ArrayData(x, y, name=NAME, split=split, source="sklearn.datasets.load_digits")
