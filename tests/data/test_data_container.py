"""ArrayData: subsets, dynamic binarization, batches, protocol; the 2-D toys."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from pyro_gen.data import ArrayData, load_dataset, toy_modes
from pyro_gen.errors import DataError


def _indexed(n: int = 100) -> ArrayData:
    """Data whose rows carry their own index, so subsets can be traced back."""
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    return ArrayData(x, torch.arange(n), name="idx", split="train")


def test_subset_seeded_without_replacement_not_first_n():
    data = _indexed(100)
    sub = data.subset(30, seed=5)
    rows = sub.x[:, 0].long()
    assert len(sub) == 30 and len(set(rows.tolist())) == 30  # no repeats
    assert torch.equal(rows, sub.y)  # labels follow their rows
    assert torch.all(rows[1:] > rows[:-1])  # documented: original order kept
    assert rows.tolist() != list(range(30))
    assert torch.equal(data.subset(30, seed=5).x, sub.x)
    assert not torch.equal(data.subset(30, seed=6).x, sub.x)
    assert sub.protocol() == {
        "name": "idx",
        "split": "train",
        "n": 30,
        "binarization": None,
        "subset_seed": 5,
        "subset_of": 100,
    }
    assert len(data.subset(100)) == 100 and len(data.subset(0)) == 0


def test_subset_is_roughly_uniform():
    data = _indexed(10)
    counts = torch.zeros(10)
    for seed in range(2000):
        counts[data.subset(3, seed=seed).x[:, 0].long()] += 1
    assert torch.allclose(counts / 2000, torch.full((10,), 0.3), atol=0.05)


def test_subset_too_large_names_both_numbers():
    with pytest.raises(DataError, match=r"101.*100"):
        _indexed(100).subset(101)
    with pytest.raises(DataError):
        _indexed(100).subset(-1)
    with pytest.raises(DataError):
        _indexed(100).subset(5, seed=-1)


def test_getitem_returns_x_only():
    data = _indexed(10)
    assert torch.equal(data[3], data.x[3])
    assert len(data) == 10 and data.event_shape == (1,)


def test_bad_container_inputs():
    with pytest.raises(DataError):
        ArrayData(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(DataError):
        ArrayData(torch.zeros(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(DataError):
        ArrayData(torch.zeros(4, 2), binarization="stochastic")


def test_dynamic_binarization_fresh_and_reproducible():
    data = load_dataset("digits", "valid", binarize="dynamic")
    assert data.binarization == "dynamic"
    torch.manual_seed(0)
    a, b = data[:50], data[:50]
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a, b)  # fresh draw per access
    torch.manual_seed(0)
    assert torch.equal(data[:50], a)  # reproducible from the seed
    # The draws average to the grayscale values.
    g = torch.Generator().manual_seed(1)
    mean = torch.stack([data.transform_batch(data.x, g) for _ in range(400)]).mean(0)
    assert (mean - data.x).abs().max() < 0.15


def test_dynamic_binarization_with_dataloader_each_epoch():
    data = load_dataset("digits", "valid", binarize="dynamic")
    loader = DataLoader(data, batch_size=200, shuffle=False)
    torch.manual_seed(0)
    epoch1, epoch2 = next(iter(loader)), next(iter(loader))
    assert not torch.equal(epoch1, epoch2)
    torch.manual_seed(0)
    assert torch.equal(next(iter(loader)), epoch1)


def test_iter_batches_covers_each_row_once():
    data = _indexed(23)
    g = torch.Generator().manual_seed(0)
    batches = list(data.iter_batches(5, generator=g))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(torch.cat(batches)[:, 0].long().tolist()) == list(range(23))
    assert len(list(data.iter_batches(5, drop_last=True))) == 4
    ordered = torch.cat(list(data.iter_batches(5, shuffle=False)))
    assert torch.equal(ordered, data.x)


def test_iter_batches_dynamic_draws():
    data = load_dataset("digits", "test", binarize="dynamic")
    e1 = torch.cat(list(data.iter_batches(64, shuffle=False, generator=torch.Generator().manual_seed(0))))
    e2 = torch.cat(list(data.iter_batches(64, shuffle=False, generator=torch.Generator().manual_seed(0))))
    assert torch.equal(e1, e2) and set(e1.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize(("name", "n_modes", "std"), [("ring8", 8, 0.02), ("grid25", 25, 0.05)])
def test_toy_modes_and_samples(name, n_modes, std):
    centers, s = toy_modes(name)
    assert centers.shape == (n_modes, 2) and s == std
    data = load_dataset(name, "train", n=20000, seed=1)
    assert data.x.shape == (20000, 2) and data.x.dtype == torch.float32
    assert data.y.dtype == torch.int64 and data.protocol()["seed"] == 1
    for m in range(n_modes):
        pts = data.x[data.y == m]
        assert len(pts) > 20000 / n_modes * 0.8  # modes drawn uniformly
        assert torch.allclose(pts.mean(0), centers[m], atol=5 * std / math.sqrt(len(pts)))
        assert torch.allclose(pts.std(0), torch.full((2,), std), rtol=0.15)


def test_toy_geometry():
    ring, _ = toy_modes("ring8")
    assert torch.allclose(ring.norm(dim=1), torch.full((8,), 2.0))
    grid, _ = toy_modes("grid25")
    assert sorted(set(grid.flatten().tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]


def test_toy_seeds_and_splits():
    a = load_dataset("ring8", "train", n=100, seed=0)
    assert torch.equal(a.x, load_dataset("ring8", "train", n=100, seed=0).x)
    assert not torch.equal(a.x, load_dataset("ring8", "train", n=100, seed=1).x)
    assert not torch.equal(a.x, load_dataset("ring8", "valid", n=100, seed=0).x)
    assert len(load_dataset("grid25", "test")) == 10000
    assert len(load_dataset("grid25", "train")) == 100000
    with pytest.raises(DataError, match="toy"):
        toy_modes("ring9")
