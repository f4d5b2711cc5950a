"""Exceptions raised by pyro_gen.

Every error names the problem and the fix. They subclass the built-in exception a
user would catch anyway (``ValueError``, ``FileNotFoundError``), so code written
against plain Python keeps working.
"""


class PyroGenError(Exception):
    """Base class of all pyro_gen errors."""


class ConfigError(PyroGenError, ValueError):
    """A configuration (YAML file, ``key=value`` override or argument) is invalid."""


class DataError(PyroGenError, ValueError):
    """Data does not fit what a model or dataset expects (shape, range, NaN, ...)."""


class DataNotFoundError(PyroGenError, FileNotFoundError):
    """A dataset's files are not where pyro_gen looked for them."""


class ChecksumError(PyroGenError, ValueError):
    """A downloaded or local file does not match its published checksum."""


class SiteMismatchError(PyroGenError, ValueError):
    """A guide's sample sites do not match the model's latent sites."""


class RunDirError(PyroGenError, ValueError):
    """A directory is not a (complete) pyro_gen run directory."""


class TrainingDivergedError(PyroGenError, RuntimeError):
    """The loss became NaN or infinite during training."""


class CheckpointCorruptError(RunDirError):
    """A checkpoint file is damaged (its bytes do not match the digest written with them) or is no checkpoint at all.

    :ivar path: the refused file.
    """

    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.path = path


class RunInUseError(RunDirError):
    """Another process holds a run directory's lock (it is training or writing there).

    :ivar lock_path: the lock file (``RUN/.lock``).
    :ivar pid: the holder's process id, or ``None`` when it could not be read.
    """

    def __init__(self, message: str, lock_path=None, pid: int | None = None):
        super().__init__(message)
        self.lock_path, self.pid = lock_path, pid


class StorageError(PyroGenError, OSError):
    """Writing a file failed for lack of space (full disk, quota, file-size limit) or a read-only file system.

    It is an ``OSError`` (``errno`` is that of the failed write), so code that catches ``OSError`` keeps working.

    :ivar path: the file that could not be written; the previous version of it, if any, is untouched.
    """

    def __init__(self, message: str, path=None, errno: int | None = None):
        super().__init__(message)
        self.path, self.errno = path, errno

    def __str__(self):  # OSError would print "[Errno n] ..." only for (errno, strerror) args; keep the message as written
        return self.args[0]


class DeviceUnavailableError(ConfigError):
    """A device (``cuda``) was asked for but torch cannot use it on this machine.

    :ivar device: the device asked for, as a string.
    """

    def __init__(self, message: str, device: str | None = None):
        super().__init__(message)
        self.device = device


class TrainingInterrupted(PyroGenError):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint it resumes from exactly.

    Not a ``KeyboardInterrupt``: the stop was orderly, and the caller (the run layer) reports it
    like any other pyro_gen error, adding the exact command that resumes the run.

    :ivar signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
    :ivar epoch: the (1-based) epoch in which training stopped.
    :ivar batch: how many batches of that epoch were done; ``None`` when it stopped at the end of the epoch.
    :ivar checkpoint: the checkpoint written (``RUN/last.pt``).
    """

    def __init__(self, message: str, *, signal_name: str, epoch: int, batch: int | None, checkpoint=None):
        super().__init__(message)
        self.signal_name, self.epoch, self.batch, self.checkpoint = signal_name, epoch, batch, checkpoint
