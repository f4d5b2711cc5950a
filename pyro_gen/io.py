"""Atomic file writes: a result file is either absent, the old one, or complete, never half-written."""

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else remove it.

    The temporary file keeps ``path``'s suffix (writers such as matplotlib choose the format by
    it) and lives in the same folder, so the final ``os.replace`` is an atomic rename.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
