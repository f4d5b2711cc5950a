"""Checksums of files and of array contents, with a per-process cache.

Two kinds of check are used:

* **file digests** (md5/sha256 of the bytes on disk) for files published upstream
  with a checksum (MNIST ``.gz`` files, the binarized-MNIST ``.amat`` files);
* **content digests** (md5 of an array's raw bytes) for the ``.npz`` files this
  library writes. A zip container's bytes depend on compression settings and
  timestamps, so two correct ``.npz`` files can differ byte for byte; the arrays
  inside cannot.

Hashing tens of megabytes on every load would slow down code that loads a dataset
many times, so a successful check is remembered for the rest of the process,
keyed by the file's real path, modification time and size: replacing or editing
the file changes the key and the check runs again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from pyro_gen.errors import ChecksumError

# Keys of checks that passed in this process (see the module docstring).
_VERIFIED: set[tuple] = set()

_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike, algorithm: str = "md5") -> str:
    """Hex digest of a file's bytes, read in chunks.

    :param path: file to hash.
    :param algorithm: any name :func:`hashlib.new` accepts (``"md5"``, ``"sha256"``).
    """
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def array_md5(array: np.ndarray) -> str:
    """md5 of an array's values in C order (independent of how it was stored)."""
    return hashlib.md5(np.ascontiguousarray(array).tobytes()).hexdigest()


def _file_key(path: Path, *what: object) -> tuple:
    st = path.stat()
    return (os.path.realpath(path), st.st_mtime_ns, st.st_size, *what)


def _mismatch(path: Path, what: str, algorithm: str, expected: str, actual: str) -> ChecksumError:
    return ChecksumError(
        f"Checksum mismatch for {path} ({what}): expected {algorithm} {expected}, "
        f"got {actual}. The file is corrupt, incomplete or not the published one. "
        f"Delete it and download it again (download=True, or `pyro-gen download`)."
    )


def verify_file(path: str | os.PathLike, md5: str | None = None, sha256: str | None = None) -> None:
    """Check a file against its published md5 and/or sha256 (cached per process).

    :raises ChecksumError: a digest differs; the message names the file and both digests.
    """
    path = Path(path)
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected is None:
            continue
        key = _file_key(path, "file", algorithm, expected)
        if key in _VERIFIED:
            continue
        actual = file_digest(path, algorithm)
        if actual != expected.lower():
            raise _mismatch(path, "file bytes", algorithm, expected, actual)
        _VERIFIED.add(key)


def check_array(array: np.ndarray, md5: str, what: str) -> None:
    """Check the content md5 of an array not (yet) stored in a file (no cache).

    :param what: description of the array for the message.
    :raises ChecksumError: the content differs from the published data.
    """
    actual = array_md5(array)
    if actual != md5:
        raise ChecksumError(
            f"Checksum mismatch for {what}: expected md5 {md5}, got {actual}. The "
            f"source file is not the published one or was converted wrongly; nothing "
            f"was saved."
        )


def verify_array(path: str | os.PathLike, key: str, array: np.ndarray, md5: str) -> None:
    """Check the content md5 of array ``key`` loaded from ``path`` (cached per process).

    :param path: file the array came from (used for the cache key and the message).
    :param key: name of the array inside the file.
    :param array: the loaded array.
    :param md5: expected :func:`array_md5` of the array.
    :raises ChecksumError: the content differs from the published data.
    """
    path = Path(path)
    cache_key = _file_key(path, "array", key, md5)
    if cache_key in _VERIFIED:
        return
    actual = array_md5(array)
    if actual != md5:
        raise _mismatch(path, f"contents of array {key!r}", "md5", md5, actual)
    _VERIFIED.add(cache_key)


def clear_cache() -> None:
    """Forget all checks that passed, so the next load verifies again."""
    _VERIFIED.clear()
