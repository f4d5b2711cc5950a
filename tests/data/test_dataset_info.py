"""Every dataset declares what it holds (kind of values, image or vector, labels), and the declaration matches the data."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pyro_gen.data import VALUE_KINDS, DatasetInfo, dataset_info, dataset_names, load_dataset
from pyro_gen.errors import ConfigError, DataError, DataNotFoundError
from pyro_gen.models.likelihoods import default_likelihood, likelihood_names, make_likelihood

N = 200  # datapoints loaded (or generated) per split


def values_kind_holds(values: str, x: torch.Tensor) -> bool:
    """Whether every value of ``x`` is of the declared kind."""
    if not torch.isfinite(x).all():
        return False
    if values == "binary":
        return bool(((x == 0) | (x == 1)).all())
    if values == "unit_interval":
        return bool(((x >= 0) & (x <= 1)).all())
    if values == "counts":
        return bool(((x >= 0) & (x == x.round())).all())
    return values == "real"


def load_splits(name: str, shared_data, binarize=None) -> dict:
    """Every split of ``name`` that is here, as a seeded subset of at most ``N`` datapoints."""
    loaded = {}
    for split in dataset_info(name).splits:
        try:
            data = load_dataset(name, split, data_dir=shared_data, binarize=binarize)
        except DataNotFoundError:
            continue  # mnist's train/valid and fashion_mnist are not offline
        loaded[split] = data.subset(min(N, len(data)), seed=0)
    if not loaded:
        pytest.skip(f"no split of {name!r} is in the offline data directory")
    return loaded


@pytest.mark.parametrize("name", dataset_names())
def test_the_declaration_matches_the_loaded_data(name, shared_data):
    info = dataset_info(name)
    assert info.name == name and info.values in VALUE_KINDS and info.description and "\n" not in info.description
    for split, data in load_splits(name, shared_data).items():
        assert data.x.shape[1:] == info.data_shape, split
        assert data.x.dim() == (4 if info.image else 2), split
        assert values_kind_holds(info.values, data.x), (split, info.values)
        if info.values == "unit_interval" and split == "train":
            # not secretly binary: grayscale data have grey levels
            assert not values_kind_holds("binary", data.x)
        if info.values == "real":
            assert not values_kind_holds("unit_interval", data.x)  # not secretly in [0, 1]
        assert (data.y is not None) == (split in info.labels), split
        if data.y is not None:
            assert data.y.shape == (len(data.x),) and data.y.dtype == torch.int64


@pytest.mark.parametrize("name", [n for n in dataset_names() if dataset_info(n).values == "unit_interval"])
@pytest.mark.parametrize("binarize", ["threshold", "dynamic"])
def test_binarized_grayscale_data_are_declared_and_are_binary(name, binarize, shared_data):
    info = dataset_info(name, binarize=binarize)
    assert info.values == "binary" and info.binarize == binarize
    for data in load_splits(name, shared_data, binarize).values():
        batch = data.transform_batch(data.x, torch.Generator().manual_seed(0))  # a dynamic draw
        assert values_kind_holds("binary", batch)


def test_the_declarations_are_complete():
    infos = [dataset_info(n) for n in dataset_names()]
    assert {i.values for i in infos} == {"binary", "unit_interval", "real"}  # no count data today
    assert all(set(i.labels) <= set(i.splits) for i in infos)
    assert all(i.image == (len(i.data_shape) == 3) for i in infos)
    assert dataset_info("binarized_mnist").labels == ("test",)
    assert dataset_info("binarized_mnist", binarize="static").values == "binary"
    assert dataset_info("frey_faces").labels == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        infos[0].values = "real"
    assert isinstance(infos[0], DatasetInfo)


@pytest.mark.parametrize(
    "name, binarize, match",
    [
        ("nope", None, "Unknown dataset"),
        (3, None, "Unknown dataset"),
        ("iris", "threshold", "not available"),
        ("mnist", "static", "not available"),
    ],
)
def test_bad_names_and_binarize_values_are_explained(name, binarize, match):
    with pytest.raises(DataError, match=match) as info:
        dataset_info(name, binarize=binarize)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "values, likelihood",
    [("binary", "bernoulli"), ("unit_interval", "continuous_bernoulli"), ("counts", "poisson"), ("real", "gaussian")],
)
def test_default_likelihood_of_each_kind_exists_and_accepts_such_data(values, likelihood):
    name, reason = default_likelihood(values)
    assert name == likelihood and name in likelihood_names()
    assert reason and "\n" not in reason
    examples = {
        "binary": torch.tensor([[0.0, 1.0], [1.0, 1.0]]),
        "unit_interval": torch.tensor([[0.0, 0.3], [0.75, 1.0]]),
        "counts": torch.tensor([[0.0, 3.0], [12.0, 1.0]]),
        "real": torch.tensor([[-2.5, 0.3], [7.0, 1.0]]),
    }
    make_likelihood(name, data_shape=(2,)).validate(examples[values])  # no error


def test_every_dataset_has_a_default_likelihood_that_accepts_it(shared_data):
    for name in dataset_names():
        info = dataset_info(name)
        likelihood = make_likelihood(default_likelihood(info.values)[0], data_shape=info.data_shape)
        try:
            data = load_dataset(name, "test", data_dir=shared_data)
        except DataNotFoundError:
            continue
        likelihood.validate(data.x[:N])


@pytest.mark.parametrize("values", ["grayscale", "", None, 3, "Binary"])
def test_unknown_value_kinds_are_refused(values):
    with pytest.raises(ConfigError, match="unknown kind of data values") as info:
        default_likelihood(values)
    assert "\n" not in str(info.value)
