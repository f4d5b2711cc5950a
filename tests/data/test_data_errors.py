"""Clear errors: unknown names, missing or damaged files, the data directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pyro_gen.data import DATA_DIR_ENV, dataset_names, load_dataset, resolve_data_dir
from pyro_gen.data.checksums import clear_cache
from pyro_gen.errors import ChecksumError, DataError, DataNotFoundError


def test_dataset_names():
    assert dataset_names() == sorted(
        [
            "binarized_mnist",
            "digits",
            "fashion_mnist",
            "frey_faces",
            "gmm2d",
            "grid25",
            "iris",
            "mnist",
            "ring8",
            "wine",
        ]
    )


def test_unknown_name_lists_known_ones():
    with pytest.raises(DataError, match="binarized_mnits") as err:
        load_dataset("binarized_mnits")
    assert "binarized_mnist" in str(err.value) and "frey_faces" in str(err.value)


def test_unknown_split_lists_valid_ones():
    with pytest.raises(DataError, match="validation") as err:
        load_dataset("ring8", "validation")
    assert "train, valid, test" in str(err.value)


def test_bad_binarize_value():
    with pytest.raises(DataError, match="dynamic"):
        load_dataset("binarized_mnist", binarize="dynamic")
    with pytest.raises(DataError, match="stochastic"):
        load_dataset("digits", binarize="stochastic")


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert resolve_data_dir() == tmp_path / "home" / ".pyro_gen" / "data"
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir("~/x") == tmp_path / "home" / "x"
    monkeypatch.setenv(DATA_DIR_ENV, "")
    assert resolve_data_dir() == tmp_path / "home" / ".pyro_gen" / "data"


@pytest.mark.parametrize("name", ["binarized_mnist", "frey_faces", "mnist", "fashion_mnist"])
def test_missing_file_message(tmp_path, name):
    with pytest.raises(DataNotFoundError) as err:
        load_dataset(name, "test", data_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg  # where it looked
    assert "data_dir argument" in msg and DATA_DIR_ENV in msg  # what sets the directory
    assert "download=True" in msg and f"pyro-gen download {name}" in msg  # how to get it
    assert isinstance(err.value, FileNotFoundError)


def test_missing_file_message_names_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(DataNotFoundError, match=f"set by the {DATA_DIR_ENV} environment variable"):
        load_dataset("frey_faces")


def test_missing_data_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataNotFoundError, match="does not exist") as err:
        load_dataset("binarized_mnist", data_dir=missing)
    assert str(missing) in str(err.value)
    assert not missing.exists()  # loading never creates directories


def test_garbage_npz(tmp_path):
    (tmp_path / "frey_faces.npz").write_bytes(b"this is not a zip file" * 100)
    with pytest.raises(DataError, match="corrupt"):
        load_dataset("frey_faces", data_dir=tmp_path)


def test_truncated_npz(shared_data, tmp_path):
    raw = (shared_data / "binarized_mnist.npz").read_bytes()
    (tmp_path / "binarized_mnist.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises((DataError, ChecksumError), match="binarized_mnist.npz"):
        load_dataset("binarized_mnist", "valid", data_dir=tmp_path)


def _frey_images(shared_data: Path) -> np.ndarray:
    return np.load(shared_data / "frey_faces.npz")["images"]


def test_wrong_content_npz_is_checksum_error(shared_data, tmp_path):
    images = _frey_images(shared_data).copy()
    images[7, 3, 4] ^= 1  # one pixel off
    np.savez(tmp_path / "frey_faces.npz", images=images)
    with pytest.raises(ChecksumError, match="frey_faces.npz") as err:
        load_dataset("frey_faces", data_dir=tmp_path)
    assert "687b39ec28b56c183474c235686975cf" in str(err.value)  # expected digest named


def test_wrong_shape_or_key_npz(shared_data, tmp_path):
    np.savez(tmp_path / "frey_faces.npz", images=_frey_images(shared_data)[:100])
    with pytest.raises(ChecksumError, match="expected uint8"):
        load_dataset("frey_faces", data_dir=tmp_path)
    np.savez(tmp_path / "frey_faces.npz", faces=_frey_images(shared_data))
    with pytest.raises(DataError, match="'images'"):
        load_dataset("frey_faces", data_dir=tmp_path)


def test_nan_in_file_is_data_error(tmp_path):
    images = np.full((1965, 28, 20), 0.5)
    images[0, 0, 0] = np.nan
    np.savez(tmp_path / "frey_faces.npz", images=images)
    with pytest.raises(DataError, match="NaN"):
        load_dataset("frey_faces", data_dir=tmp_path)


def test_same_content_other_container_is_accepted(shared_data, tmp_path):
    # Content checksums do not depend on compression or zip metadata.
    np.savez(tmp_path / "frey_faces.npz", images=_frey_images(shared_data))
    assert len(load_dataset("frey_faces", "valid", data_dir=tmp_path)) == 200


def test_replaced_file_is_checked_again(shared_data, tmp_path):
    clear_cache()
    shutil.copy(shared_data / "frey_faces.npz", tmp_path / "frey_faces.npz")
    load_dataset("frey_faces", data_dir=tmp_path)  # verified and remembered
    images = _frey_images(shared_data).copy()
    images[0, 0, 0] ^= 1
    np.savez(tmp_path / "frey_faces.npz", images=images)  # new size and mtime
    with pytest.raises(ChecksumError):
        load_dataset("frey_faces", data_dir=tmp_path)
