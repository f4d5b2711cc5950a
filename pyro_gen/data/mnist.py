"""Grayscale MNIST and Fashion-MNIST from the official IDX files.

Splits: ``train`` is the first 50000 of the official 60000 training images,
``valid`` the last 10000, ``test`` the official 10000 test images. Labels are
always present.

Files are looked for in torchvision's layout, ``<data_dir>/MNIST/raw/`` and
``<data_dir>/FashionMNIST/raw/``, so a directory torchvision already filled is
reused. For MNIST's test split ``<data_dir>/mnist_test/`` is tried as well.
The gzip files are checked against the md5s published in torchvision's source
(``torchvision/datasets/mnist.py``). torchvision also leaves decompressed copies
next to them; those are used only when the ``.gz`` is gone, and since no digest
of them is published they get a structural check (shape, label range) only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pyro_gen.data.checksums import verify_file
from pyro_gen.data.container import ArrayData
from pyro_gen.data.idx import read_idx
from pyro_gen.data.paths import DataLocation, not_found_error
from pyro_gen.errors import DataError, DataNotFoundError

SPLITS = ("train", "valid", "test")
N_TRAIN = 50000  # the rest of the official 60000 is the validation split

#: Folder under the data directory (torchvision's class name) and the published
#: md5 of each gzip file, from torchvision's ``MNIST.resources`` and
#: ``FashionMNIST.resources``.
_SOURCES = {
    "mnist": (
        "MNIST",
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion_mnist": (
        "FashionMNIST",
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
}

NAMES = tuple(_SOURCES)


def _candidates(name: str, root: Path, filename: str) -> list[Path]:
    """Paths tried for one file, in order of preference."""
    folder, _ = _SOURCES[name]
    dirs = [root / folder / "raw"]
    if name == "mnist" and filename.startswith("t10k"):
        dirs.append(root / "mnist_test")
    # .gz first: only the compressed files have a published checksum.
    return [d / filename for d in dirs] + [d / filename[: -len(".gz")] for d in dirs]


def _find(name: str, root: Path, filename: str) -> Path | None:
    return next((p for p in _candidates(name, root, filename) if p.is_file()), None)


def _read(name: str, path: Path, n: int, kind: str) -> np.ndarray:
    """Read and check one IDX file (md5 of ``.gz`` files, shape and range always)."""
    if path.suffix == ".gz":
        verify_file(path, md5=_SOURCES[name][1][path.name])
    data = read_idx(path)
    shape = (n, 28, 28) if kind == "images" else (n,)
    if data.dtype != np.uint8 or data.shape != shape:
        raise DataError(
            f"{path} holds {data.dtype} {data.shape}, expected uint8 {shape}. It is not "
            f"the published file; delete it and download it again."
        )
    if kind == "labels" and data.max(initial=0) > 9:
        raise DataError(f"{path} holds labels above 9; delete it and download it again.")
    return data


def download(name: str, root: Path) -> None:
    """Download the four official files with torchvision into ``root/<Folder>/raw``.

    torchvision is imported here, not at module level, so the library works
    without it when the files are already present.
    """
    folder, _ = _SOURCES[name]
    try:
        import torchvision.datasets as tvd
    except ImportError as err:
        raise DataNotFoundError(
            f"Downloading {name!r} uses torchvision, which is not installed. Install it "
            f"(pip install torchvision), or download the four files "
            f"{', '.join(_SOURCES[name][1])} by hand into {root / folder / 'raw'}."
        ) from err
    cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
    try:
        # One call fetches all four files (train and test) and checks their md5s.
        cls(root=str(root), train=True, download=True)
    except RuntimeError as err:  # torchvision's "Error downloading ..." after all mirrors
        raise DataNotFoundError(
            f"Could not download {name!r} with torchvision: {err}. Check the network "
            f"connection, or copy the files into {root / folder / 'raw'}."
        ) from err


def load(name: str, split: str, location: DataLocation, download_missing: bool = False) -> ArrayData:
    """Load one split of ``mnist`` or ``fashion_mnist`` as grayscale in ``[0, 1]``."""
    location.require(name, create=download_missing)
    prefix = "t10k" if split == "test" else "train"
    files = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
    paths = [_find(name, location.root, f) for f in files]
    if None in paths and download_missing:
        download(name, location.root)
        paths = [_find(name, location.root, f) for f in files]
    if None in paths:
        looked = [p for f in files for p in _candidates(name, location.root, f)]
        folder = _SOURCES[name][0]
        raise not_found_error(name, split, location, looked, [f"{folder}/raw/{f}" for f in files])
    n = 10000 if split == "test" else 60000
    images = _read(name, paths[0], n, "images")
    labels = _read(name, paths[1], n, "labels")
    if split != "test":
        rows = slice(0, N_TRAIN) if split == "train" else slice(N_TRAIN, None)
        images, labels = images[rows], labels[rows]
    x = torch.from_numpy(images).to(torch.float32).div_(255.0).unsqueeze(1)
    y = torch.from_numpy(labels).long()
    return ArrayData(x, y, name=name, split=split, source=str(paths[0]))
