"""Downloading a file safely: temporary file, checksum, atomic rename."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tempfile
import urllib.request
from pathlib import Path

from pyro_gen.errors import ChecksumError, DataNotFoundError

_CHUNK = 1 << 16

#: Environment variable naming a mirror of the original files (a URL or a folder): a download of
#: ``https://host/path/name.ext`` then fetches ``MIRROR/name.ext`` instead. For machines that cannot
#: reach the original hosts but have the files; the checksums are verified all the same.
MIRROR_ENV = "PYRO_GEN_MIRROR"


def source_url(url: str) -> str:
    """``url``, or the same file name in the mirror named by ``$PYRO_GEN_MIRROR`` (a URL or a local folder)."""
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return url
    name = url.rsplit("/", 1)[-1]
    if "://" not in mirror:
        return (Path(mirror).expanduser().resolve() / name).as_uri()
    return mirror.rstrip("/") + "/" + name


def _progress_bar(total: int | None, desc: str, enabled: bool):
    """A tqdm bar if tqdm is installed and wanted, else ``None`` (tqdm is optional)."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)


def _stream(url: str, out, hashers: list, desc: str, progress: bool, timeout: float) -> None:
    """Copy the body of ``url`` into the open file ``out``, updating ``hashers``."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        bar = _progress_bar(total, desc, progress)
        try:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                for h in hashers:
                    h.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()


def download_file(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    sha256: str | None = None,
    *,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest``, verifying its checksum.

    The bytes are streamed into a temporary file in ``dest``'s directory (so the
    final rename stays on one file system and is atomic) and hashed on the way.
    Only when the download is complete and the checksums match is the file moved
    to ``dest`` with :func:`os.replace`. On any failure (network error, checksum
    mismatch, ``KeyboardInterrupt``) the temporary file is deleted, so ``dest``
    is either absent or complete and verified, never half written.

    :param url: any URL :func:`urllib.request.urlopen` opens (``https://``, ``file://``).
    :param dest: final path of the file; parent directories are created.
    :param md5: expected md5 hex digest, or ``None`` to skip.
    :param sha256: expected sha256 hex digest, or ``None`` to skip.
    :param progress: show a tqdm progress bar when tqdm is installed.
    :param timeout: seconds to wait for the server before giving up.
    :returns: ``dest`` as a :class:`~pathlib.Path`.
    :raises ChecksumError: a digest differs (nothing is written).
    :raises DataNotFoundError: the URL could not be fetched (nothing is written).
    """
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    hashers = {}
    if md5 is not None:
        hashers["md5"] = (hashlib.md5(), md5.lower())
    if sha256 is not None:
        hashers["sha256"] = (hashlib.sha256(), sha256.lower())

    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                _stream(
                    url,
                    out,
                    [h for h, _ in hashers.values()],
                    dest.name,
                    progress,
                    timeout,
                )
            except (OSError, ValueError, http.client.HTTPException) as err:
                # URLError, HTTPError, timeouts and connection resets are OSErrors;
                # a malformed URL is a ValueError; a cut-off body is an HTTPException.
                raise DataNotFoundError(
                    f"Could not download {url}: {err}. Check the network connection (and proxy settings) and try again; nothing was saved."
                ) from err
        for algorithm, (h, expected) in hashers.items():
            actual = h.hexdigest()
            if actual != expected:
                raise ChecksumError(
                    f"Checksum mismatch for {dest.name} downloaded from {url}: expected "
                    f"{algorithm} {expected}, got {actual}. The download is corrupt or the "
                    f"file changed upstream; nothing was saved. Delete any copy of "
                    f"{dest.name} you have and download it again."
                )
        # mkstemp creates the file readable by its owner only; give the final file
        # the usual permissions of a downloaded data file.
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        # BaseException so that Ctrl-C also cleans up the partial file.
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return dest
