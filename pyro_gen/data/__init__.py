"""Datasets for pyro_gen: loading, splits, checksums and downloads.

Typical use::

    from pyro_gen.data import load_dataset

    train = load_dataset("binarized_mnist", "train")
    test = load_dataset("binarized_mnist", "test", n=1000, seed=0)  # random subset
    dataset_info("frey_faces").values  # "unit_interval": what the data hold, without loading them
    mnist = load_dataset("mnist", "train", binarize="dynamic", download=True)

Importing this package does not import torchvision, scikit-learn or scipy;
they are imported only by the code paths that need them.
"""

from pyro_gen.data.checksums import array_md5, file_digest
from pyro_gen.data.container import BINARIZATIONS, ArrayData
from pyro_gen.data.download import download_file
from pyro_gen.data.gmm2d import gmm2d_truth
from pyro_gen.data.paths import DATA_DIR_ENV, resolve_data_dir
from pyro_gen.data.registry import (
    VALUE_KINDS,
    DatasetInfo,
    dataset_info,
    dataset_names,
    dataset_splits,
    download_dataset,
    load_dataset,
)
from pyro_gen.data.toy import toy_modes

__all__ = [
    "BINARIZATIONS",
    "DATA_DIR_ENV",
    "VALUE_KINDS",
    "ArrayData",
    "DatasetInfo",
    "array_md5",
    "dataset_info",
    "dataset_names",
    "dataset_splits",
    "download_dataset",
    "download_file",
    "file_digest",
    "gmm2d_truth",
    "load_dataset",
    "resolve_data_dir",
    "toy_modes",
]
