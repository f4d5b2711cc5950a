"""Fixed seeded train/valid/test splits for datasets that publish none."""

from __future__ import annotations

import hashlib

import numpy as np

from pyro_gen.errors import DataError


def seeded_split(n_total: int, sizes: dict[str, int], seed: int, expected_md5: str | None = None) -> dict[str, np.ndarray]:
    """Split ``range(n_total)`` by a seeded shuffle into consecutive blocks.

    The permutation is ``numpy.random.default_rng(seed).permutation(n_total)``;
    the first ``sizes[first]`` shuffled indices form the first split, and so on
    in the order of ``sizes``. Each split keeps the shuffled order.

    NumPy does not promise the same random stream forever. A split is part of a
    benchmark protocol, so when ``expected_md5`` (md5 of the permutation as
    little-endian int64) is given, a changed stream raises instead of silently
    changing the test set.

    :raises DataError: the sizes do not add up, or the permutation changed.
    """
    if sum(sizes.values()) != n_total:
        raise DataError(f"Split sizes {sizes} do not add up to {n_total}.")
    perm = np.random.default_rng(seed).permutation(n_total)
    if expected_md5 is not None:
        actual = hashlib.md5(perm.astype("<i8").tobytes()).hexdigest()
        if actual != expected_md5:
            raise DataError(
                f"numpy.random.default_rng({seed}).permutation({n_total}) is not the "
                f"permutation that defines this dataset's splits (md5 {actual}, expected "
                f"{expected_md5}); this NumPy version changed its random stream. Please "
                f"report this to pyro_gen."
            )
    out, start = {}, 0
    for split, size in sizes.items():
        out[split] = perm[start : start + size]
        start += size
    return out
