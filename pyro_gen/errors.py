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
