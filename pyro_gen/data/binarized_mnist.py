"""Statically binarized MNIST, the fixed split of Larochelle & Murray (2011).

This is the "static MNIST" benchmark of the VAE, IWAE, normalizing-flow,
VampPrior and Sylvester-flow papers: train 50000, valid 10000, test 10000
images, each pixel sampled once from the grayscale intensity and then frozen.

On disk the library keeps ``<data_dir>/binarized_mnist.npz`` with uint8
``(N, 784)`` arrays ``train``, ``valid``, ``test`` and the digit labels
``test_labels``. The test set is the MNIST test set sorted by digit (stable),
so its labels are known; train and valid are shuffled and unlabelled. Because
the test set is sorted, a test subset must be a random draw, never its first rows.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from pyro_gen.data.checksums import check_array, verify_array
from pyro_gen.data.container import ArrayData
from pyro_gen.data.download import download_file, source_url
from pyro_gen.data.paths import DataLocation, not_found_error
from pyro_gen.data.storage import read_npz, write_npz
from pyro_gen.errors import ChecksumError, DataError

NAME = "binarized_mnist"
FILENAME = "binarized_mnist.npz"
SPLITS = ("train", "valid", "test")
SPLIT_SIZES = {"train": 50000, "valid": 10000, "test": 10000}

#: Hugo Larochelle's original text files (784 space-separated 0/1 per line).
AMAT_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{split}.amat"
#: sha256 and size of the ``.amat`` files, as published by TensorFlow Datasets in
#: ``tensorflow_datasets/url_checksums/binarized_mnist.txt``.
AMAT_SHA256 = {
    "train": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "valid": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "test": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}
AMAT_SIZES = {"train": 78400000, "valid": 15680000, "test": 15680000}

#: :func:`~pyro_gen.data.checksums.array_md5` of each array of the ``.npz``, computed
#: once from a copy converted from the ``.amat`` files. Checked on load, so a wrong
#: or damaged local file fails loudly whatever zip container holds it.
CONTENT_MD5 = {
    "train": "8d4f0427d6c2572b5e9994e08bad66de",
    "valid": "3e33becd40c694040e5e6c812e2f4b50",
    "test": "fc34623e13bd64fed2f8b61365198339",
    "test_labels": "b5ecd903211971945a7c82c37040908e",
}

#: Number of test images of each digit 0..9 in MNIST. The binarized test set is
#: the MNIST test set sorted by digit, so its labels are these runs (the .amat
#: files carry no labels); the result is checked against CONTENT_MD5.
MNIST_TEST_DIGIT_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)


def parse_amat(path: Path, rows: int) -> np.ndarray:
    """Parse a binarized-MNIST ``.amat`` file into a uint8 ``(rows, 784)`` array.

    The format is so regular (single ``0``/``1`` characters separated by
    whitespace) that picking out the digit bytes is exact and far faster than a
    general text parser on 78 MB.
    """
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    is_digit = raw >= ord("0")
    space = raw[~is_digit]
    is_space = (space == ord(" ")) | (space == ord("\n")) | (space == ord("\r")) | (space == ord("\t"))
    if (raw > ord("1")).any() or not is_space.all():
        raise DataError(f"{path} holds characters other than 0, 1 and whitespace.")
    values = raw[is_digit] - ord("0")
    if values.size != rows * 784:
        raise DataError(f"{path} has {values.size} values, expected {rows} x 784.")
    return values.reshape(rows, 784)


def download(root: Path, progress: bool = True) -> Path:
    """Download the three ``.amat`` files, verify them and write the ``.npz``.

    The text files (110 MB) are kept in a temporary folder inside ``root`` and
    deleted once the compact ``.npz`` (under 4 MB) is written.

    :param root: the data directory (created if needed).
    :returns: path of the written ``.npz``.
    :raises ChecksumError: a download or the converted arrays do not match.
    """
    root.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{NAME}-download-", dir=root))
    try:
        arrays = {}
        for split in SPLITS:
            amat = download_file(
                source_url(AMAT_URL.format(split=split)),
                tmpdir / f"binarized_mnist_{split}.amat",
                sha256=AMAT_SHA256[split],
                progress=progress,
            )
            arrays[split] = parse_amat(amat, SPLIT_SIZES[split])
        arrays["test_labels"] = np.repeat(np.arange(10, dtype=np.uint8), MNIST_TEST_DIGIT_COUNTS)
        for key, expected in CONTENT_MD5.items():
            check_array(arrays[key], expected, f"array {key!r} converted from {AMAT_URL}")
        return write_npz(root / FILENAME, arrays)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def load(split: str, location: DataLocation, download_missing: bool = False) -> ArrayData:
    """Load one split (see :func:`pyro_gen.data.load_dataset`)."""
    location.require(NAME, create=download_missing)
    path = location.root / FILENAME
    if not path.is_file():
        if not download_missing:
            raise not_found_error(NAME, split, location, [path], [FILENAME])
        download(location.root)
    keys = [split, "test_labels"] if split == "test" else [split]
    arrays = read_npz(path, keys)
    for key, a in arrays.items():
        shape = (SPLIT_SIZES[split],) if key == "test_labels" else (SPLIT_SIZES[split], 784)
        if a.dtype != np.uint8 or a.shape != shape:
            raise ChecksumError(
                f"Array {key!r} of {path} is {a.dtype} {a.shape}, expected uint8 {shape}: "
                f"not the published data. Delete it and download it again."
            )
        verify_array(path, key, a, CONTENT_MD5[key])
    x = torch.from_numpy(arrays[split].reshape(-1, 1, 28, 28)).to(torch.float32)
    y = torch.from_numpy(arrays["test_labels"]).long() if split == "test" else None
    return ArrayData(x, y, name=NAME, split=split, binarization="static", source=str(path))
