"""Safe file writes and run-directory ownership.

* :func:`atomic_path`: a result file is either absent, the old one, or complete, never half-written;
  a full disk (or quota, file-size limit, read-only file system) becomes one :class:`~pyro_gen.errors.StorageError`
  naming the file, with the previous version untouched and the temporary file removed.
* :func:`run_lock` / :class:`RunLock`: one process at a time trains or writes in a run directory.
* :func:`remove_stale_temporaries`: sweeps the temporary files a killed process left behind.
"""

import contextlib
import errno
import os
import re
import threading
from pathlib import Path

from pyro_gen.errors import RunInUseError, StorageError

try:  # POSIX; on other systems the run lock is advisory only (see RunLock)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

#: errno values that mean "the storage cannot take this write", not "the program is wrong".
_NO_SPACE = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "no space left on device (disk quota exceeded)",
    errno.EFBIG: "no space left on device (the file is larger than the file system or this process's file-size limit allows)",
}
_READ_ONLY = {errno.EROFS: "the file system is read-only"}


def _temporary_name(path: Path) -> Path:
    # hidden, tagged with the writer's PID (so a sweep can tell a dead writer's file from a live one's),
    # and keeping the suffix (writers such as matplotlib choose the format by it)
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


#: Matches the temporary names :func:`atomic_path` makes; group 1 is the writer's PID.
_TEMPORARY = re.compile(r"^\..*\.tmp(\d+)(\.[^.]*)?$")


def storage_error(e: OSError, path) -> StorageError | None:
    """The :class:`StorageError` for a failed write of ``path``, or ``None`` when ``e`` is not a storage failure.

    Only full-disk and read-only errors are translated: any other ``OSError`` (a missing input file read
    inside an :func:`atomic_path` block, say) says something else and propagates unchanged.
    """
    path = Path(path)
    what = _NO_SPACE.get(e.errno) or _READ_ONLY.get(e.errno)
    if what is None:
        return None
    kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
    fix = "free space and resume" if e.errno in _NO_SPACE else "write to another directory, or make this one writable, and resume"
    return StorageError(f"could not write {path}: {what}; {kept}; {fix}", path=path, errno=e.errno)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else remove it.

    The temporary file keeps ``path``'s suffix (writers such as matplotlib choose the format by
    it) and lives in the same folder, so the final ``os.replace`` is an atomic rename. When the
    write (or the rename) fails for lack of space or on a read-only file system, the ``OSError``
    becomes a :class:`~pyro_gen.errors.StorageError` naming ``path``; the previous ``path`` is
    untouched either way.

    :raises StorageError: no space left (``ENOSPC``, ``EDQUOT``, ``EFBIG``) or read-only (``EROFS``).
    """
    path = Path(path)
    tmp = _temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        error = storage_error(e, path)
        if error is None:
            raise
        raise error from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder, extra=(), recursive: bool = False) -> list[Path]:
    """Remove the temporary files that writers killed mid-write left in ``folder`` (with ``recursive``, in its subfolders too).

    A file named like :func:`atomic_path`'s temporaries (``.NAME.tmpPID.SUFFIX``) is removed when
    process ``PID`` is gone; a live writer's file is left alone. ``extra`` names further files
    (relative to ``folder``) that only the caller writes and that are stale whenever it calls this,
    e.g. ``metrics.jsonl.tmp``. Call it while holding the folder's :func:`run_lock`. Not recursive by
    default: a run directory given as ``.`` must not send it sweeping through someone's home folder.

    :returns: the removed paths.
    """
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for p in (folder.rglob if recursive else folder.glob)(".*.tmp*"):
        m = _TEMPORARY.match(p.name)
        if m and p.is_file() and not (int(m.group(1)) != os.getpid() and _pid_alive(int(m.group(1)))):
            # our own PID: no write of ours is in progress while the caller sweeps (it holds the run lock)
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    for name in extra:
        p = folder / name
        if p.is_file():
            p.unlink()
            removed.append(p)
    return removed


# -- the run-directory lock ------------------------------------------------------------------
LOCK_NAME = ".lock"

# held locks of this process: resolved lock path -> [file descriptor, depth]
_held: dict[str, list] = {}
_held_guard = threading.Lock()


class RunLock:
    """Exclusive ownership of a run directory by one process, re-entrant within it.

    The lock is ``fcntl.flock`` on ``RUN/.lock``, and the holder writes its PID into the file
    so that a refused process can say who holds it. The kernel releases a ``flock`` when its
    holder dies, however it dies (``kill -9`` included), so a lock file left by a dead process
    is stale by construction and is simply taken over: no PID guessing, no timeout. The file
    itself stays (removing it would race with a process that has just opened it); its content
    is emptied on release.

    Taking the lock again in the same process (the run layer around training, then the
    :class:`~pyro_gen.infer.trainer.Trainer` inside) nests: only the outermost release unlocks.
    The lock is not inherited by ``exec``'d children (Python opens files non-inheritable).

    On systems without ``fcntl`` (Windows) the lock is a no-op.

    :param run_dir: the run directory (created if missing).
    :raises RunInUseError: another live process holds it.
    """

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._key = None

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        with _held_guard:
            if key in _held:
                _held[key][1] += 1
                self._key = key
                return self
            if fcntl is None:  # pragma: no cover
                _held[key] = [None, 1]
                self._key = key
                return self
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read_pid(fd)
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                who = f"process {holder}" if holder is not None else "another process"
                fix = f"wait for it to finish or stop it (kill {holder})" if holder is not None else "wait for it to finish"
                raise RunInUseError(
                    f"{self.run_dir} is in use by {who} (lock file {self.path}); {fix}, or use another run directory",
                    lock_path=self.path,
                    pid=holder,
                ) from None
            # ours now, whether the file was new, empty, or left by a dead holder
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _held[key] = [fd, 1]
            self._key = key
            return self

    def release(self) -> None:
        if self._key is None:
            return
        with _held_guard:
            entry = _held[self._key]
            entry[1] -= 1
            if entry[1] == 0:
                fd = entry[0]
                del _held[self._key]
                if fd is not None:
                    with contextlib.suppress(OSError):  # emptying is a courtesy; closing is what unlocks
                        os.ftruncate(fd, 0)
                    os.close(fd)
        self._key = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def run_lock(run_dir) -> RunLock:
    """``with run_lock(run_dir):`` own ``run_dir`` for the block (see :class:`RunLock`).

    :raises RunInUseError: another live process holds it; the message names the lock file and the holder's PID.
    """
    return RunLock(run_dir)
