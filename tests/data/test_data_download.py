"""Downloads, run offline through ``file://`` URLs, and import hygiene."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_gen.data import (
    download_dataset,
    download_file,
    load_dataset,
)
from pyro_gen.errors import ChecksumError, DataNotFoundError

PAYLOAD = b"pyro_gen test payload\n" * 5000


@pytest.fixture
def source(tmp_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "payload.bin").write_bytes(PAYLOAD)
    return src / "payload.bin"


def test_download_file_ok(source, tmp_path):
    dest = tmp_path / "out" / "sub" / "payload.bin"
    got = download_file(
        source.as_uri(),
        dest,
        md5=hashlib.md5(PAYLOAD).hexdigest(),
        sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        progress=False,
    )
    assert got == dest and dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["payload.bin"]


def test_download_file_bad_checksum_leaves_nothing(source, tmp_path):
    out = tmp_path / "out"
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as err:
        download_file(source.as_uri(), out / "payload.bin", sha256=wrong, progress=False)
    msg = str(err.value)
    assert "payload.bin" in msg and wrong in msg and hashlib.sha256(PAYLOAD).hexdigest() in msg
    assert list(out.iterdir()) == []  # neither the file nor a temporary file


def test_download_file_missing_url_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DataNotFoundError, match="Could not download"):
        download_file((tmp_path / "absent.bin").as_uri(), out / "absent.bin", progress=False)
    assert list(out.iterdir()) == []


def test_download_file_interrupted_leaves_nothing(source, tmp_path, monkeypatch):
    import pyro_gen.data.download as dl

    def interrupted(url, out, hashers, desc, progress, timeout):
        out.write(PAYLOAD[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(dl, "_stream", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        download_file(source.as_uri(), out / "payload.bin", progress=False)
    assert list(out.iterdir()) == []


def _write_amat(a: np.ndarray, path: Path) -> None:
    """Write rows of 0/1 in the original .amat layout ("0 1 ... 0\\n")."""
    buf = np.full((a.shape[0], 2 * a.shape[1]), ord(" "), dtype=np.uint8)
    buf[:, 0::2] = a + ord("0")
    buf[:, -1] = ord("\n")
    path.write_bytes(buf.tobytes())


def test_binarized_mnist_download_and_conversion(shared_data, tmp_path, monkeypatch):
    # Rebuilding the .amat files from the offline copy reproduces the sha256s
    # published by TensorFlow Datasets, so this runs the real verification.
    src = tmp_path / "src"
    src.mkdir()
    with np.load(shared_data / "binarized_mnist.npz") as z:
        for split in ("train", "valid", "test"):
            _write_amat(z[split], src / f"binarized_mnist_{split}.amat")
    monkeypatch.setenv("PYRO_GEN_MIRROR", str(src))
    data_dir = tmp_path / "data"
    test = load_dataset("binarized_mnist", "test", data_dir=data_dir, download=True)
    assert sorted(p.name for p in data_dir.iterdir()) == ["binarized_mnist.npz"]
    ref = load_dataset("binarized_mnist", "test", data_dir=shared_data)
    assert torch.equal(test.x, ref.x) and torch.equal(test.y, ref.y)


def test_binarized_mnist_download_rejects_wrong_file(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for split in ("train", "valid", "test"):
        (src / f"binarized_mnist_{split}.amat").write_text("0 1\n")
    monkeypatch.setenv("PYRO_GEN_MIRROR", str(src))
    data_dir = tmp_path / "data"
    with pytest.raises(ChecksumError, match="binarized_mnist_train.amat"):
        load_dataset("binarized_mnist", data_dir=data_dir, download=True)
    assert list(data_dir.iterdir()) == []  # no npz, no temporary folder


def test_frey_download_and_conversion(shared_data, tmp_path, monkeypatch):
    from scipy.io import savemat

    images = np.load(shared_data / "frey_faces.npz")["images"]
    mat = tmp_path / "frey_rawface.mat"
    savemat(mat, {"ff": images.reshape(1965, 560).T})  # the original layout
    monkeypatch.setenv("PYRO_GEN_MIRROR", tmp_path.as_uri())
    data_dir = tmp_path / "data"
    got = load_dataset("frey_faces", "test", data_dir=data_dir, download=True)
    assert torch.equal(got.x, load_dataset("frey_faces", "test", data_dir=shared_data).x)
    assert sorted(p.name for p in data_dir.iterdir()) == ["frey_faces.npz"]


def test_frey_download_rejects_other_content(shared_data, tmp_path, monkeypatch):
    from scipy.io import savemat

    images = np.load(shared_data / "frey_faces.npz")["images"][::-1]  # right shape, wrong data
    mat = tmp_path / "frey_rawface.mat"
    savemat(mat, {"ff": images.reshape(1965, 560).T})
    monkeypatch.setenv("PYRO_GEN_MIRROR", tmp_path.as_uri())
    data_dir = tmp_path / "data"
    with pytest.raises(ChecksumError, match="Frey"):
        load_dataset("frey_faces", data_dir=data_dir, download=True)
    assert list(data_dir.iterdir()) == []


def test_existing_wrong_file_is_not_overwritten(shared_data, tmp_path):
    images = np.load(shared_data / "frey_faces.npz")["images"][::-1]
    np.savez(tmp_path / "frey_faces.npz", images=images)
    with pytest.raises(ChecksumError):
        load_dataset("frey_faces", data_dir=tmp_path, download=True)


def test_mnist_download_without_torchvision(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(DataNotFoundError, match="torchvision") as err:
        load_dataset("mnist", data_dir=tmp_path, download=True)
    assert "train-images-idx3-ubyte.gz" in str(err.value)


def test_download_dataset(shared_data, tmp_path):
    # Files present and valid: only verified, nothing written (the folder is read-only).
    assert download_dataset("frey_faces", data_dir=shared_data) == shared_data
    assert download_dataset("ring8", data_dir=tmp_path / "x") == tmp_path / "x"
    assert not (tmp_path / "x").exists()


def test_import_does_not_pull_optional_dependencies():
    code = (
        "import sys, pyro_gen, pyro_gen.data; "
        "bad = [m for m in ('torchvision', 'sklearn', 'scipy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
