"""Frey faces (Brendan Frey, via Sam Roweis): 1965 grayscale 28x20 face images.

The face dataset of the original VAE paper. It has no official split; as in the
literature we use 1565 / 200 / 200 images for train / valid / test after a
shuffle with ``numpy.random.default_rng(0)`` (see
:func:`pyro_gen.data.splits.seeded_split`). No labels.

On disk: ``<data_dir>/frey_faces.npz`` with key ``images``, uint8 ``(1965, 28, 20)``.
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
from pyro_gen.data.splits import seeded_split
from pyro_gen.data.storage import read_npz, write_npz
from pyro_gen.errors import ChecksumError, DataError

NAME = "frey_faces"
FILENAME = "frey_faces.npz"
SPLITS = ("train", "valid", "test")
SPLIT_SIZES = {"train": 1565, "valid": 200, "test": 200}
SPLIT_SEED = 0
# md5 of numpy.random.default_rng(0).permutation(1965) (see seeded_split).
_PERMUTATION_MD5 = "2048cd8260ed8973e6697ccfb0777743"
SHAPE = (1965, 28, 20)

#: The original MATLAB file; ``ff`` is uint8 (560, 1965), one image per column.
URL = "https://cs.nyu.edu/~roweis/data/frey_rawface.mat"

#: array_md5 of the converted ``images`` array. Roweis' page publishes no checksum
#: and no authoritative one was found (one third-party project uses file md5
#: 5aeb024d42b8a6091f30e5eb18c8a48d, unconfirmed elsewhere), so a download is
#: verified by the content of the converted array instead: a file that converts
#: to exactly these values is the right data, whatever its container bytes.
CONTENT_MD5 = "687b39ec28b56c183474c235686975cf"


def convert_mat(path: Path) -> np.ndarray:
    """Read ``frey_rawface.mat`` into uint8 images of shape (1965, 28, 20).

    scipy is imported here only: it is needed for this one conversion.
    """
    from scipy.io import loadmat

    ff = loadmat(str(path))["ff"]
    if ff.shape != (28 * 20, SHAPE[0]):
        raise DataError(f"{path}: 'ff' has shape {ff.shape}, expected (560, 1965).")
    # Each column is one image stored row by row (20 pixels per row). The file
    # holds uint8; the content md5 checked by the caller catches any other case.
    return np.ascontiguousarray(ff.T.reshape(SHAPE)).astype(np.uint8)


def download(root: Path, progress: bool = True) -> Path:
    """Download the ``.mat`` file, convert and verify it, write the ``.npz``."""
    root.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{NAME}-download-", dir=root))
    try:
        mat = download_file(source_url(URL), tmpdir / "frey_rawface.mat", progress=progress)
        images = convert_mat(mat)
        check_array(images, CONTENT_MD5, f"Frey faces converted from {URL}")
        return write_npz(root / FILENAME, {"images": images})
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
    images = read_npz(path, ["images"])["images"]
    if images.dtype != np.uint8 or images.shape != SHAPE:
        raise ChecksumError(
            f"Array 'images' of {path} is {images.dtype} {images.shape}, expected uint8 "
            f"{SHAPE}: not the published data. Delete it and download it again."
        )
    verify_array(path, "images", images, CONTENT_MD5)
    index = seeded_split(SHAPE[0], SPLIT_SIZES, SPLIT_SEED, _PERMUTATION_MD5)[split]
    x = torch.from_numpy(images[index]).to(torch.float32).div_(255.0).unsqueeze(1)
    return ArrayData(x, None, name=NAME, split=split, source=str(path))
