"""Reading and writing the ``.npz`` files kept in the data directory."""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from pyro_gen.errors import DataError


def check_finite(array: np.ndarray, what: str) -> None:
    """Reject NaN or infinite values in a loaded array.

    Integer arrays cannot hold either and are not scanned.

    :param array: the loaded values.
    :param what: description of where they came from, for the message.
    :raises DataError: the array holds NaN or inf.
    """
    if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
        bad = int(array.size - np.isfinite(array).sum())
        raise DataError(
            f"{what} contains {bad} NaN or infinite values. The file is corrupt or not the published data; delete it and download it again."
        )


def read_npz(path: Path, keys: Iterable[str]) -> dict[str, np.ndarray]:
    """Load the arrays ``keys`` from the ``.npz`` file ``path``.

    Only the requested arrays are decompressed. Pickled objects are refused:
    a data file has no reason to contain code.

    :raises DataError: the file is not a readable ``.npz``, lacks a key, or holds
        NaN/inf values.
    """
    keys = list(keys)
    fix = "Delete it and download it again (download=True, or `pyro-gen download`)."
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f"{path} is a single .npy array, not an .npz archive. {fix}")
        with archive:
            missing = [k for k in keys if k not in archive.files]
            if missing:
                raise DataError(
                    f"{path} has no array named {', '.join(map(repr, missing))} "
                    f"(it has {', '.join(map(repr, archive.files)) or 'none'}). "
                    f"It is not the expected file. {fix}"
                )
            arrays = {k: archive[k] for k in keys}
    except DataError:
        raise
    except (
        OSError,
        ValueError,
        EOFError,
        KeyError,
        zipfile.BadZipFile,
        zlib.error,
    ) as err:
        # A truncated or garbage file surfaces as any of these, depending on
        # where the damage is (zip directory, member header, compressed stream).
        raise DataError(f"Cannot read {path}: it is corrupt or not an .npz file ({err}). {fix}") from err
    for k, a in arrays.items():
        check_finite(a, f"Array {k!r} of {path}")
    return arrays


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` as a compressed ``.npz``, atomically.

    The archive is written to a temporary file next to ``path`` and renamed
    into place, so a crash never leaves a half-written file that a later load
    would trip over.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path
