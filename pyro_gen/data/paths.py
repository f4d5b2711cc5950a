"""Where datasets live on disk, and the errors raised when they are not there.

The data directory is chosen, in order, by the ``data_dir`` argument, the
``PYRO_GEN_DATA`` environment variable, and the default ``~/.pyro_gen/data``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pyro_gen.errors import DataError, DataNotFoundError

#: Environment variable that sets the data directory when no ``data_dir`` is passed.
DATA_DIR_ENV = "PYRO_GEN_DATA"

#: Data directory used when neither the argument nor the environment variable is set.
DEFAULT_DATA_DIR = Path("~/.pyro_gen/data")


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the data directory to use.

    :param data_dir: explicit directory; wins over everything else.
    :returns: ``data_dir`` if given, else ``$PYRO_GEN_DATA`` if set and non-empty,
        else ``~/.pyro_gen/data``, with ``~`` expanded. The directory is not created
        and need not exist.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    # An empty variable (``PYRO_GEN_DATA=``) is treated as unset rather than as
    # the current directory, which is almost never what was meant.
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_DIR.expanduser()


def data_dir_origin(data_dir: str | os.PathLike | None = None) -> str:
    """Say in words what chose the data directory, for error messages."""
    if data_dir is not None:
        return "set by the data_dir argument"
    if os.environ.get(DATA_DIR_ENV, "").strip():
        return f"set by the {DATA_DIR_ENV} environment variable"
    return f"the default; pass data_dir=... or set {DATA_DIR_ENV} to use another"


@dataclass(frozen=True)
class DataLocation:
    """A resolved data directory together with what chose it.

    :param root: the data directory.
    :param origin: words saying what set it (see :func:`data_dir_origin`).
    """

    root: Path
    origin: str

    @classmethod
    def resolve(cls, data_dir: str | os.PathLike | None = None) -> DataLocation:
        """Build a location from a ``data_dir`` argument (``None``: env var/default)."""
        return cls(resolve_data_dir(data_dir), data_dir_origin(data_dir))

    def describe(self) -> str:
        """One line naming the directory and what set it."""
        return f"Data directory: {self.root} ({self.origin})."

    def require(self, name: str, create: bool = False) -> Path:
        """Return the directory, creating it if ``create``, else failing clearly.

        :param name: dataset the directory is needed for (named in the error).
        :param create: create the directory (used when downloading).
        :raises DataNotFoundError: the directory does not exist and ``create`` is false.
        :raises DataError: the path exists but is not a directory.
        """
        if self.root.exists() and not self.root.is_dir():
            raise DataError(f"The data directory {self.root} ({self.origin}) is a file, not a directory.")
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise DataNotFoundError(
                f"Cannot load dataset {name!r}: the data directory {self.root} does not "
                f"exist ({self.origin}).\n{_how_to_get(name, self.root)}"
            )
        return self.root


def _how_to_get(name: str, root: Path, files: Iterable[str] = ()) -> str:
    copy = ", ".join(files)
    copy_hint = f", or copy {copy} into {root}" if copy else ""
    return (
        f"To get the data: load_dataset({name!r}, download=True), or run "
        f"`pyro-gen download {name}`{copy_hint}. To use data kept elsewhere, pass "
        f"data_dir=... or set the {DATA_DIR_ENV} environment variable."
    )


def not_found_error(
    name: str,
    split: str,
    location: DataLocation,
    looked_in: Iterable[Path],
    files: Iterable[str] = (),
) -> DataNotFoundError:
    """Build the error for a dataset whose files are missing.

    :param name: dataset name.
    :param split: split that was asked for.
    :param location: the data directory and what chose it.
    :param looked_in: every path that was tried, listed in the message.
    :param files: file names (relative to the data directory) a user could copy in.
    """
    paths = "\n".join(f"  {p}" for p in looked_in)
    return DataNotFoundError(
        f"Dataset {name!r} (split {split!r}) not found. Looked for:\n{paths}\n"
        f"{location.describe()}\n{_how_to_get(name, location.root, files)}"
    )
