"""A small reader for the IDX format of the MNIST-family files.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number
of dimensions), one big-endian ``uint32`` per dimension, then the values in C
order. Reading it ourselves keeps torchvision out of the loading path.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from pyro_gen.errors import DataError

# IDX type codes and the (big-endian) numpy types they stand for.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzip-compressed (``.gz``) or not.

    :param path: the file.
    :returns: an array with the file's shape and dtype (native byte order).
    :raises DataError: the file is truncated, too long, or not IDX.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (
        OSError,
        EOFError,
    ) as err:  # gzip raises BadGzipFile (an OSError) or EOFError
        raise DataError(f"Cannot read {path}: {err}. Delete it and download it again.") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()}).")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(shape) != ndim or len(raw) != expected:
        raise DataError(
            f"{path} is truncated or malformed: shape {shape} needs {expected} bytes, "
            f"the file has {len(raw)}. Delete it and download it again."
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)
