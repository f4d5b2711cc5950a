"""The tabular datasets ``iris`` and ``wine`` and the synthetic ``gmm2d``, against truths the loaders do not compute.

Independent truth: scikit-learn's own arrays (every row appears once, unchanged up to the
documented standardization), the published class counts, and the recorded mixture parameters
(moments of many generated points, scipy's density).
"""

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.datasets import load_iris, load_wine

from pyro_gen.data import dataset_names, dataset_splits, gmm2d_truth, load_dataset
from pyro_gen.data.tabular import standardization
from pyro_gen.errors import DataError

TABLES = {
    "iris": (load_iris, 4, {"train": 120, "test": 30}, [50, 50, 50]),
    "wine": (load_wine, 13, {"train": 142, "test": 36}, [59, 71, 48]),
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_table_splits_hold_every_row_once_standardized_by_the_train_split(name):
    loader, dim, sizes, counts = TABLES[name]
    bunch = loader()
    assert dataset_splits(name) == ("train", "test") and name in dataset_names()
    splits = {s: load_dataset(name, s) for s in ("train", "test")}
    for split, data in splits.items():
        assert data.x.shape == (sizes[split], dim) and data.x.dtype == torch.float32 and data.y.dtype == torch.int64
    train = splits["train"].x.double()
    torch.testing.assert_close(train.mean(0), torch.zeros(dim, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(train.std(0, correction=0), torch.ones(dim, dtype=torch.float64), atol=1e-5, rtol=0)
    # undoing the standardization gives back scikit-learn's rows, each exactly once, with its label
    mean, std = standardization(name)
    raw = np.concatenate([s.x.double().numpy() * std + mean for s in splits.values()])
    labels = np.concatenate([s.y.numpy() for s in splits.values()])
    order, expected = np.lexsort(raw.T[::-1]), np.lexsort(bunch.data.T[::-1])
    np.testing.assert_allclose(raw[order], bunch.data[expected], atol=1e-4)
    np.testing.assert_array_equal(labels[order], bunch.target[expected])
    assert np.bincount(labels).tolist() == counts
    # a seeded shuffle, not the file's order (the files are sorted by class)
    assert len(set(splits["test"].y.tolist())) == 3


def test_table_errors_name_the_valid_choices():
    with pytest.raises(DataError, match="Unknown split 'valid' for dataset 'iris'. Valid splits: train, test"):
        load_dataset("iris", "valid")
    with pytest.raises(DataError, match="binarize='dynamic' is not available for 'wine'"):
        load_dataset("wine", "train", binarize="dynamic")
    assert len(load_dataset("wine", "train", n=40, seed=1)) == 40  # a seeded subset, as for every file dataset


def test_gmm2d_points_follow_the_recorded_truth():
    truth = gmm2d_truth()
    data = load_dataset("gmm2d", "train", n=20000, seed=3)
    x, y = data.x.double().numpy(), data.y.numpy()
    assert data.x.shape == (20000, 2) and data.protocol()["seed"] == 3
    np.testing.assert_allclose(np.bincount(y) / len(y), truth["weights"].numpy(), atol=0.015)
    tril = truth["scales"].unsqueeze(-1) * truth["corr_chol"]
    covs = (tril @ tril.transpose(-1, -2)).numpy()
    for k in range(3):
        np.testing.assert_allclose(x[y == k].mean(0), truth["locs"][k].numpy(), atol=0.06)
        np.testing.assert_allclose(np.cov(x[y == k].T), covs[k], atol=0.08)
    # the means are ordered along the first coordinate, as the ordered mixture model expects
    assert (truth["locs"][1:, 0] > truth["locs"][:-1, 0]).all()
    # the truth is in the model's parametrization: its log_density is the scipy mixture density
    from pyro_gen.models import gmm

    ours = gmm(3, 2, "full").log_density(torch.from_numpy(x[:50]), truth).numpy()
    comps = [
        np.log(w) + stats.multivariate_normal(m, c).logpdf(x[:50]) for w, m, c in zip(truth["weights"].numpy(), truth["locs"].numpy(), covs)
    ]
    np.testing.assert_allclose(ours, np.logaddexp.reduce(comps, 0), rtol=1e-10)


def test_gmm2d_is_reproducible_with_one_stream_per_split_and_seed():
    a = load_dataset("gmm2d", "train", n=100, seed=0)
    assert torch.equal(a.x, load_dataset("gmm2d", "train", n=100, seed=0).x)
    assert not torch.equal(a.x, load_dataset("gmm2d", "test", n=100, seed=0).x)
    assert not torch.equal(a.x, load_dataset("gmm2d", "train", n=100, seed=1).x)
    assert [len(load_dataset("gmm2d", s)) for s in dataset_splits("gmm2d")] == [500, 200, 1000]
    with pytest.raises(DataError, match="positive integer"):
        load_dataset("gmm2d", "train", n=0)
