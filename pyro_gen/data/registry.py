"""Loading datasets by name: :func:`load_dataset` and friends; :func:`dataset_info` says what each one holds."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyro_gen.data import binarized_mnist, digits, frey, gmm2d, mnist, tabular, toy
from pyro_gen.data.container import ArrayData, apply_binarization
from pyro_gen.data.paths import DataLocation
from pyro_gen.errors import DataError

#: Kinds of data values (:attr:`DatasetInfo.values`): ``"binary"`` (0 or 1), ``"unit_interval"``
#: (continuous in [0, 1], e.g. grayscale images scaled to [0, 1]), ``"counts"`` (non-negative
#: integers) and ``"real"`` (any real number, e.g. standardized measurements or 2-D points).
VALUE_KINDS = ("binary", "unit_interval", "counts", "real")


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset holds, declared without loading it (see :func:`dataset_info`).

    :ivar name: the dataset's name.
    :ivar values: the kind of values a model sees, one of :data:`VALUE_KINDS` (after binarization).
    :ivar image: datapoints are images ``(C, H, W)``; otherwise vectors ``(D,)``.
    :ivar data_shape: the shape of one datapoint, e.g. ``(1, 28, 28)`` or ``(2,)``.
    :ivar labels: the splits that have labels (``ArrayData.y``), e.g. ``("test",)``.
    :ivar splits: all splits, e.g. ``("train", "valid", "test")``.
    :ivar description: one line for tables and logs.
    :ivar binarize: the ``binarize`` option these values are for.
    :ivar levels: for quantized images, how many intensity levels the stored values take
        (``k / (levels - 1)`` for ``k = 0 .. levels - 1``): 2 for binary images, 256 for 8-bit
        grayscale, 17 for scikit-learn's 4-bit digits; ``None`` for continuous values. Discrete
        densities (a PixelCNN's softmax) and dequantized flows read it (:mod:`pyro_gen.data.levels`).
    """

    name: str
    values: str
    image: bool
    data_shape: tuple[int, ...]
    labels: tuple[str, ...]
    splits: tuple[str, ...]
    description: str
    binarize: str | None = None
    levels: int | None = None


@dataclass(frozen=True)
class _Spec:
    """How to load one dataset, and what it holds.

    :param load: ``load(split, location, download, n, seed) -> ArrayData``.
    :param binarize: values of ``load_dataset(binarize=...)`` this dataset accepts.
    :param values: the kind of values without binarization, one of :data:`VALUE_KINDS`.
    :param data_shape: the shape of one datapoint; 3-D shapes are images ``(C, H, W)``.
    :param labels: the splits with labels.
    :param description: one line for :attr:`DatasetInfo.description`.
    :param generated: the data is generated, ``n`` is its size (no subset).
    :param needs_files: the data lives in the data directory.
    :param levels: intensity levels of the stored values (see :attr:`DatasetInfo.levels`).
    """

    load: Callable[..., ArrayData]
    binarize: tuple[str | None, ...]
    values: str
    data_shape: tuple[int, ...]
    labels: tuple[str, ...]
    description: str
    splits: tuple[str, ...] = ("train", "valid", "test")
    generated: bool = False
    needs_files: bool = True
    levels: int | None = None


_GRAYSCALE = (None, "threshold", "dynamic")
_ALL = ("train", "valid", "test")


def _mnist_loader(name: str) -> Callable[..., ArrayData]:
    return lambda split, loc, dl, n, seed: mnist.load(name, split, loc, dl)


def _toy_loader(name: str) -> Callable[..., ArrayData]:
    return lambda split, loc, dl, n, seed: toy.load(name, split, n, seed)


_REGISTRY: dict[str, _Spec] = {
    "binarized_mnist": _Spec(
        lambda split, loc, dl, n, seed: binarized_mnist.load(split, loc, dl),
        # Already binary: "static" is accepted as a synonym of the default.
        binarize=(None, "static"),
        values="binary",
        data_shape=(1, 28, 28),
        labels=("test",),
        levels=2,
        description="Statically binarized MNIST (Larochelle & Murray 2011): 28x28 binary digits, 50000/10000/10000, test labels only",
    ),
    "mnist": _Spec(
        _mnist_loader("mnist"),
        _GRAYSCALE,
        values="unit_interval",
        data_shape=(1, 28, 28),
        labels=_ALL,
        levels=256,
        description="MNIST handwritten digits: 28x28 grayscale in [0, 1], 50000/10000/10000, digit labels",
    ),
    "fashion_mnist": _Spec(
        _mnist_loader("fashion_mnist"),
        _GRAYSCALE,
        values="unit_interval",
        data_shape=(1, 28, 28),
        labels=_ALL,
        levels=256,
        description="Fashion-MNIST clothing: 28x28 grayscale in [0, 1], 50000/10000/10000, class labels",
    ),
    "frey_faces": _Spec(
        lambda split, loc, dl, n, seed: frey.load(split, loc, dl),
        _GRAYSCALE,
        values="unit_interval",
        data_shape=(1, 28, 20),
        labels=(),
        levels=256,
        description="Frey faces (Roweis): 28x20 grayscale faces in [0, 1], 1565/200/200, no labels",
    ),
    "digits": _Spec(
        lambda split, loc, dl, n, seed: digits.load(split),
        _GRAYSCALE,
        values="unit_interval",
        data_shape=(1, 8, 8),
        labels=_ALL,
        levels=17,
        description="scikit-learn's 8x8 digits: grayscale in [0, 1], 1397/200/200, digit labels",
        needs_files=False,
    ),
    "iris": _Spec(
        lambda split, loc, dl, n, seed: tabular.load("iris", split),
        (None,),
        values="real",
        data_shape=(4,),
        labels=tabular.SPLITS,
        description="Iris (Fisher 1936): 4 standardized flower measurements, 120/30, 3 species as labels",
        splits=tabular.SPLITS,
        needs_files=False,
    ),
    "wine": _Spec(
        lambda split, loc, dl, n, seed: tabular.load("wine", split),
        (None,),
        values="real",
        data_shape=(13,),
        labels=tabular.SPLITS,
        description="Wine (UCI): 13 standardized chemical measurements, 142/36, 3 cultivars as labels",
        splits=tabular.SPLITS,
        needs_files=False,
    ),
    "gmm2d": _Spec(
        lambda split, loc, dl, n, seed: gmm2d.load(split, n, seed),
        (None,),
        values="real",
        data_shape=(2,),
        labels=_ALL,
        description="Generated 2-D mixture of 3 Gaussians with known parameters, component labels",
        generated=True,
        needs_files=False,
    ),
    "ring8": _Spec(
        _toy_loader("ring8"),
        (None,),
        values="real",
        data_shape=(2,),
        labels=_ALL,
        description="Generated 2-D ring of 8 Gaussians (VEEGAN's toy), mode labels",
        generated=True,
        needs_files=False,
    ),
    "grid25": _Spec(
        _toy_loader("grid25"),
        (None,),
        values="real",
        data_shape=(2,),
        labels=_ALL,
        description="Generated 2-D 5x5 grid of 25 Gaussians (VEEGAN's toy), mode labels",
        generated=True,
        needs_files=False,
    ),
}


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(_REGISTRY)


def _spec(name: str) -> _Spec:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise DataError(f"Unknown dataset {name!r}. Known datasets: {', '.join(dataset_names())}.")
    return _REGISTRY[name]


def dataset_splits(name: str) -> tuple[str, ...]:
    """Splits of dataset ``name``, e.g. ``("train", "valid", "test")``."""
    return _spec(name).splits


def dataset_info(name: str, binarize: str | None = None) -> DatasetInfo:
    """What dataset ``name`` holds, without loading it: kind of values, image or vector, labels, splits.

    :param name: dataset name (see :func:`dataset_names`).
    :param binarize: the ``binarize`` option of :func:`load_dataset`: ``"threshold"`` and
        ``"dynamic"`` make grayscale values binary (``"dynamic"`` batches are fresh 0/1 draws).
    :raises DataError: unknown name, or a ``binarize`` value the dataset does not accept.

    Example: ``default_likelihood(dataset_info("frey_faces").values)`` is the continuous
    Bernoulli (:func:`pyro_gen.models.likelihoods.default_likelihood`).
    """
    spec = _spec(name)
    _check_binarize(name, spec, binarize)
    binary = binarize in ("threshold", "dynamic")
    values = "binary" if binary else spec.values
    return DatasetInfo(
        name=name,
        values=values,
        image=len(spec.data_shape) == 3,
        data_shape=spec.data_shape,
        labels=spec.labels,
        splits=spec.splits,
        description=spec.description,
        binarize=binarize,
        levels=2 if binary else spec.levels,
    )


def _check_binarize(name: str, spec: _Spec, binarize) -> None:
    if not (binarize is None or isinstance(binarize, str)) or binarize not in spec.binarize:
        raise DataError(f"binarize={binarize!r} is not available for {name!r}; choose one of {', '.join(map(repr, spec.binarize))}.")


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    binarize: str | None = None,
    n: int | None = None,
    seed: int = 0,
) -> ArrayData:
    """Load a split of a dataset into memory.

    Datasets (see :func:`dataset_names`): ``binarized_mnist`` (static, test
    labels only), ``mnist`` and ``fashion_mnist`` (grayscale, 50000/10000/10000),
    ``frey_faces`` (1565/200/200, no labels), ``digits`` (scikit-learn 8x8,
    1397/200/200), the tabular ``iris`` (120/30) and ``wine`` (142/36) from scikit-learn
    (train and test only, standardized by the training split's statistics, see
    :mod:`pyro_gen.data.tabular`), the generated 2-D toys ``ring8`` and ``grid25`` and the
    3-component mixture ``gmm2d`` with known parameters (:func:`~pyro_gen.data.gmm2d_truth`).

    :param name: dataset name.
    :param split: ``"train"``, ``"valid"`` or ``"test"``.
    :param data_dir: data directory; default ``$PYRO_GEN_DATA``, else
        ``~/.pyro_gen/data`` (see :func:`~pyro_gen.data.resolve_data_dir`).
    :param download: fetch missing files from their original source (checksums
        verified). Existing files are never re-downloaded or overwritten.
    :param binarize: for grayscale images: ``None`` (keep grayscale),
        ``"threshold"`` (``x > 0.5``) or ``"dynamic"`` (fresh Bernoulli draw on
        every access, see :class:`~pyro_gen.data.ArrayData`). ``binarized_mnist``
        is already binary and accepts only ``None``/``"static"``; toys and tables accept ``None``.
    :param n: for file datasets, take a seeded random subset of ``n`` items
        (:meth:`ArrayData.subset`); for generated toys, the number of points to
        generate. ``None``: the whole split (toys: 100000 train, 10000 valid/test;
        ``gmm2d``: 500 train, 200 valid, 1000 test).
    :param seed: seed of the subset, or of the generated toy points.
    :raises DataError: unknown name, split or binarize value, or bad ``n``/``seed``.
    :raises DataNotFoundError: the files are not in the data directory.
    :raises ChecksumError: a file does not match its published checksum.
    """
    spec = _spec(name)
    if split not in spec.splits:
        raise DataError(f"Unknown split {split!r} for dataset {name!r}. Valid splits: {', '.join(spec.splits)}.")
    _check_binarize(name, spec, binarize)
    location = DataLocation.resolve(data_dir)
    data = spec.load(split, location, download, n, seed)
    if n is not None and not spec.generated:
        data = data.subset(n, seed)
    if binarize != "static":
        data = apply_binarization(data, binarize)
    return data


def download_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Make sure every split of ``name`` is present and verified, downloading if needed.

    Meant for ``pyro-gen download NAME``. Datasets without files (``digits``,
    ``iris``, ``wine``, the generated ones) need nothing and return at once.

    :returns: the data directory.
    """
    spec = _spec(name)
    location = DataLocation.resolve(data_dir)
    if spec.needs_files:
        for split in spec.splits:
            spec.load(split, location, True, None, 0)
    return location.root
