"""Real datasets, checked against truths that do not come from the loader."""

from __future__ import annotations

import hashlib
import re
import shutil

import numpy as np
import pytest
import torch

from pyro_gen.data import load_dataset
from pyro_gen.errors import ChecksumError

# Digit counts of the official MNIST test set (LeCun's page; also in the label file).
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def bmnist(shared_data):
    return {s: load_dataset("binarized_mnist", s, data_dir=shared_data) for s in ("train", "valid", "test")}


@pytest.fixture(scope="module")
def mnist_test(shared_data):
    return load_dataset("mnist", "test", data_dir=shared_data)


def test_shared_files_match_readme_md5(shared_data):
    readme = (shared_data / "README.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \|.*\| `([0-9a-f]{32})` \|$", readme, flags=re.MULTILINE)
    assert len(rows) == 4
    for name, md5 in rows:
        assert hashlib.md5((shared_data / name).read_bytes()).hexdigest() == md5, name


def test_binarized_mnist_splits(bmnist):
    sizes = {"train": 50000, "valid": 10000, "test": 10000}
    for split, data in bmnist.items():
        assert data.x.shape == (sizes[split], 1, 28, 28)
        assert data.x.dtype == torch.float32
        assert data.event_shape == (1, 28, 28)
        assert torch.equal(data.x, (data.x > 0.5).float())  # exactly 0 or 1
        assert data.binarization == "static"
        assert data.protocol() == {
            "name": "binarized_mnist",
            "split": split,
            "n": sizes[split],
            "binarization": "static",
        }
    assert bmnist["train"].y is None and bmnist["valid"].y is None
    y = bmnist["test"].y
    assert y.dtype == torch.int64
    assert torch.all(y[1:] >= y[:-1])  # sorted by digit
    assert torch.bincount(y).tolist() == MNIST_TEST_COUNTS


def test_binarized_test_is_mnist_test_sorted_by_digit(bmnist, mnist_test):
    order = torch.sort(mnist_test.y, stable=True).indices
    assert torch.equal(mnist_test.y[order], bmnist["test"].y)
    # Each binarized image was drawn from Bernoulli(grayscale): among all 10000
    # grayscale test images its source must have the highest likelihood.
    idx = torch.randperm(10000, generator=torch.Generator().manual_seed(0))[:50]
    xb = bmnist["test"].x[idx].flatten(1)
    p = mnist_test.x.flatten(1).clamp(1e-4, 1 - 1e-4)
    loglik = xb @ p.log().T + (1 - xb) @ (1 - p).log().T
    assert torch.equal(loglik.argmax(1), order[idx])


def test_binarized_test_subset_is_random_not_first_n(shared_data):
    sub = load_dataset("binarized_mnist", "test", data_dir=shared_data, n=1000, seed=3)
    assert len(sub) == 1000 and sub.protocol()["subset_seed"] == 3
    # The first 1000 test images are all zeros; a fair draw has every digit.
    assert set(sub.y.tolist()) == set(range(10))
    again = load_dataset("binarized_mnist", "test", data_dir=shared_data, n=1000, seed=3)
    assert torch.equal(sub.x, again.x)


def test_mnist_test(mnist_test):
    assert mnist_test.x.shape == (10000, 1, 28, 28)
    assert mnist_test.x.dtype == torch.float32 and mnist_test.y.dtype == torch.int64
    assert 0.0 == mnist_test.x.min() and mnist_test.x.max() == 1.0
    assert torch.bincount(mnist_test.y).tolist() == MNIST_TEST_COUNTS
    assert mnist_test.binarization is None


def test_mnist_binarize_options(shared_data, mnist_test):
    thr = load_dataset("mnist", "test", data_dir=shared_data, binarize="threshold")
    assert thr.binarization == "threshold"
    assert torch.equal(thr.x, (mnist_test.x > 0.5).float())
    dyn = load_dataset("mnist", "test", data_dir=shared_data, binarize="dynamic")
    assert dyn.binarization == "dynamic" and torch.equal(dyn.x, mnist_test.x)


def test_mnist_from_torchvision_layout(shared_data, tmp_path, mnist_test):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (shared_data / "mnist_test").iterdir():
        shutil.copy(f, raw / f.name)
    data = load_dataset("mnist", "test", data_dir=tmp_path)
    assert torch.equal(data.x, mnist_test.x) and torch.equal(data.y, mnist_test.y)
    assert data.source == str(raw / "t10k-images-idx3-ubyte.gz")


def test_mnist_uncompressed_fallback(shared_data, tmp_path, mnist_test):
    import gzip

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (shared_data / "mnist_test").iterdir():
        (raw / f.name[: -len(".gz")]).write_bytes(gzip.decompress(f.read_bytes()))
    data = load_dataset("mnist", "test", data_dir=tmp_path)
    assert torch.equal(data.x, mnist_test.x) and torch.equal(data.y, mnist_test.y)


def test_mnist_wrong_gz_is_checksum_error(shared_data, tmp_path):
    import gzip

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    shutil.copy(shared_data / "mnist_test" / "t10k-labels-idx1-ubyte.gz", raw)
    images = gzip.decompress((shared_data / "mnist_test" / "t10k-images-idx3-ubyte.gz").read_bytes())
    # Same valid IDX content, different gzip bytes: not the published file.
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(images, compresslevel=1))
    with pytest.raises(ChecksumError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_frey_faces_splits(shared_data):
    splits = {s: load_dataset("frey_faces", s, data_dir=shared_data) for s in ("train", "valid", "test")}
    assert {s: len(d) for s, d in splits.items()} == {
        "train": 1565,
        "valid": 200,
        "test": 200,
    }
    full = np.load(shared_data / "frey_faces.npz")["images"]
    for d in splits.values():
        assert d.x.shape[1:] == (1, 28, 20) and d.x.dtype == torch.float32 and d.y is None
        assert 0.0 <= d.x.min() and d.x.max() <= 1.0
    # The three splits partition the file: same multiset of images, nothing lost
    # or repeated.
    rows = torch.cat([d.x for d in splits.values()]).mul(255).round().to(torch.uint8)
    ours = sorted(r.tobytes() for r in rows.numpy().reshape(1965, -1))
    assert ours == sorted(r.tobytes() for r in full.reshape(1965, -1))
    # Shuffled, not consecutive frames of the video.
    first = torch.from_numpy(full[:1565]).float().div(255).unsqueeze(1)
    assert not torch.equal(splits["train"].x, first)
    # Fixed: loading again gives the same split.
    assert torch.equal(load_dataset("frey_faces", "test", data_dir=shared_data).x, splits["test"].x)


def test_digits_splits():
    from sklearn.datasets import load_digits

    splits = {s: load_dataset("digits", s) for s in ("train", "valid", "test")}
    assert {s: len(d) for s, d in splits.items()} == {
        "train": 1397,
        "valid": 200,
        "test": 200,
    }
    bunch = load_digits()
    x = torch.cat([d.x for d in splits.values()]).flatten(1).mul(16).round()
    y = torch.cat([d.y for d in splits.values()])
    ours = sorted(zip(map(tuple, x.long().tolist()), y.tolist(), strict=True))
    truth = sorted(
        zip(
            map(tuple, bunch.data.astype(int).tolist()),
            bunch.target.tolist(),
            strict=True,
        )
    )
    assert ours == truth
    assert splits["train"].event_shape == (1, 8, 8)
