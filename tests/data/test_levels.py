"""Integer levels of quantized image sets (pyro_gen.data.levels, DatasetInfo.levels)."""

import pytest
import torch

from pyro_gen.data import dataset_info, load_dataset
from pyro_gen.data.levels import from_levels, to_levels
from pyro_gen.errors import DataError


@pytest.mark.parametrize(("name", "levels"), [("digits", 17), ("binarized_mnist", 2), ("mnist", 256), ("frey_faces", 256)])
def test_every_declared_level_count_matches_the_stored_values(name, levels, shared_data):
    assert dataset_info(name).levels == levels
    x = load_dataset(name, "test", data_dir=shared_data).x
    k = to_levels(x, levels)
    assert k.min() >= 0 and k.max() <= levels - 1
    assert torch.equal(from_levels(k, levels), x)


def test_binarized_views_have_two_levels_and_vectors_none():
    assert dataset_info("mnist", binarize="dynamic").levels == 2
    assert dataset_info("ring8").levels is None


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.tensor([0.5]), "not on the grid of 256"),
        (torch.tensor([1, 2]), "float tensor"),
        (torch.tensor([1.5]), r"lie in \[0, 1\]"),
        (torch.tensor([float("nan")]), r"lie in \[0, 1\]"),
    ],
)
def test_values_off_the_grid_are_refused_not_rounded(x, match):
    with pytest.raises(DataError, match=match):
        to_levels(x, 256)
