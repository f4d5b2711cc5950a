"""Feature spaces in which sample-quality scores compare real and generated images.

The Frechet distance (FID when the features are Inception's; Heusel et al. 2017), the kernel
distance (KID; Binkowski et al. 2018) and improved precision/recall (Kynkaanniemi et al. 2019)
compare two sets of *features*; how meaningful they are depends on the embedding. This module
provides three embeddings behind one entry point, :func:`feature_space`:

* ``"mnist28"`` and ``"digits8"``, **domain feature extractors**: small CNN digit classifiers
  whose penultimate layer is the feature space, trained once on labelled images of the domain
  that are available offline, checked on held-out images, and cached on disk
  (:func:`domain_features`). This is the offline substitute for Inception features on digits.
  It follows the practice of scoring MNIST samples with an MNIST classifier's activations
  (e.g. the "FID on LeNet features" of Binkowski et al. 2018, Section 5).
* ``"inception"``: torchvision's Inception-v3 ``pool3`` activations (2048-d), built only when
  torchvision and its ImageNet weights are already on disk (:func:`inception_features`); nothing
  is ever downloaded here.
* ``"identity"``: the samples' own coordinates (the 2-D toy points, or raw pixels).

Each :class:`FeatureSpace` carries a one-line :attr:`~FeatureSpace.description` meant to be
recorded beside every score and figure: a Frechet distance is only comparable with another one
computed in the same space, on the same reference images.

**Which images train the domain extractors.** Scoring samples against the very images the
extractor was trained on would flatter the real data, so each extractor holds images out:

* ``mnist28`` is trained on 8000 of the 10000 official MNIST test images (grayscale, from
  ``load_dataset("mnist", "test")``), chosen by ``numpy.random.default_rng(0).permutation(10000)``
  (first 8000 indices); the other 2000 are its held-out set. During training half of each batch is
  Bernoulli-binarized (the process that made static binarized MNIST) so that binary and grayscale
  samples are embedded alike. Binarized MNIST's test set is the MNIST test set sorted stably by
  digit, so the held-out images exist there too: :func:`held_out_images` returns them from either
  dataset. Binarized MNIST's ``train`` and ``valid`` images (and grayscale MNIST's training
  images) were never seen by the extractor at all.
* ``digits8`` is trained on scikit-learn's 8x8 digits ``train`` split of :mod:`pyro_gen.data.digits`
  (1397 images); its held-out set is the ``valid`` and ``test`` splits (400 images), which
  :func:`held_out_images` returns.

**Cache.** The weights are stored as ``<cache>/features/domain-<name>-v<version>.pt`` with a JSON
file beside them holding their sha256, the full training protocol, the held-out accuracies and the
description. The cache directory is the ``cache_dir`` argument, else ``$PYRO_GEN_CACHE``, else
``~/.cache/pyro_gen`` (not the data directory, which is often read-only). Both files are written
atomically, the JSON last, so an interrupted build leaves no cache that looks complete; a cache
whose files do not match gives an error naming the file and how to rebuild it.

References:
  Heusel et al., GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium, NeurIPS 2017.
  Binkowski et al., Demystifying MMD GANs, ICLR 2018.
  Kynkaanniemi et al., Improved Precision and Recall Metric for Assessing Generative Models, NeurIPS 2019.
  Szegedy et al., Rethinking the Inception Architecture for Computer Vision, CVPR 2016.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pyro_gen.data.checksums import file_digest
from pyro_gen.data.container import ArrayData
from pyro_gen.data.registry import load_dataset
from pyro_gen.data.splits import seeded_split
from pyro_gen.errors import ChecksumError, DataError, DataNotFoundError
from pyro_gen.io import atomic_path
from pyro_gen.rng import seeded

logger = logging.getLogger(__name__)

#: Environment variable that sets the cache directory when no ``cache_dir`` is passed.
CACHE_DIR_ENV = "PYRO_GEN_CACHE"
#: Cache directory used when neither the argument nor the environment variable is set.
DEFAULT_CACHE_DIR = Path("~/.cache/pyro_gen")
#: Version of the JSON metadata layout written beside cached weights.
CACHE_FORMAT = 1

#: File name of torchvision's Inception-v3 ImageNet weights
#: (``torchvision.models.Inception_V3_Weights.IMAGENET1K_V1.url``); the hex part is the start of
#: its sha256, which torch.hub checks on download and :func:`inception_features` checks on load.
INCEPTION_WEIGHTS_FILE = "inception_v3_google-0cc3c7bd.pth"
#: Inception-v3's input resolution.
INCEPTION_SIZE = 299


class FeatureWeightsNotFoundError(DataNotFoundError):
    """The weights (or the package) a feature extractor needs are not available offline."""


# -- the domain classifier ----------------------------------------------------------------------
class DigitClassifier(nn.Module):
    """A small CNN digit classifier whose penultimate layer is a feature space.

    ``conv3x3(c1)-ReLU-maxpool2 -> conv3x3(c2)-ReLU-maxpool2 -> linear(feature_dim)-ReLU -> linear(10)``
    on single-channel square images whose side is a multiple of 4 (28 for MNIST, 8 for digits).

    :param image_size: side of the input images.
    :param channels: widths ``(c1, c2)`` of the two convolutions.
    :param feature_dim: width of the penultimate layer, the feature space.
    :param num_classes: number of classes.
    """

    def __init__(self, image_size: int, channels: tuple[int, int] = (16, 32), feature_dim: int = 128, num_classes: int = 10):
        super().__init__()
        if image_size < 4 or image_size % 4:
            raise DataError(f"DigitClassifier needs an image side that is a multiple of 4 (two 2x2 poolings), got {image_size}")
        c1, c2 = channels
        side = image_size // 4
        self.image_size = image_size
        self.feature_dim = feature_dim
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * side * side, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations, ``(N, feature_dim)``."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, ``(N, num_classes)``."""
        return self.head(self.body(x))


class _Penultimate(nn.Module):
    """Calls a :class:`DigitClassifier`'s :meth:`~DigitClassifier.features`; keeps the whole classifier reachable."""

    def __init__(self, classifier: DigitClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x)


# -- feature spaces ---------------------------------------------------------------------------------
class FeatureSpace(nn.Module):
    """A frozen embedding of samples, with the words that say which one it is.

    Calling it maps a batch to ``(N, feature_dim)`` features; :func:`extract_features` does so in
    batches without gradients and returns float64 on the CPU, the form the scores in
    :mod:`pyro_gen.evaluation.sample_quality` take. A feature space stays in evaluation mode
    (``train()`` is a no-op) and its parameters do not require gradients.

    :param name: short name, e.g. ``"domain:mnist28"``, ``"inception:pool3"``, ``"identity"``.
    :param description: one line to record beside every score computed in this space.
    :param extractor: the module mapping ``(N, *image_shape)`` inputs to features.
    :param feature_dim: width of the features (``None`` for the identity, whose width is the data's).
    :param image_shape: the ``(C, H, W)`` the extractor takes; flat ``(N, C*H*W)`` and ``(N, H, W)``
        inputs are reshaped to it. ``None``: no fixed shape.
    :param value_range: closed interval the inputs must lie in (images in ``[0, 1]``, as
        :func:`~pyro_gen.data.load_dataset` returns them), or ``None`` for no check.
    :param info: facts about the space to record with the scores (training protocol, accuracies,
        cache files); plain JSON-able values.
    """

    def __init__(
        self,
        name: str,
        description: str,
        extractor: nn.Module,
        feature_dim: int | None,
        image_shape: tuple[int, ...] | None = None,
        value_range: tuple[float, float] | None = None,
        info: dict | None = None,
    ):
        super().__init__()
        self.name = name
        self.description = description
        self.extractor = extractor
        self.feature_dim = feature_dim
        self.image_shape = None if image_shape is None else tuple(image_shape)
        self.value_range = value_range
        self.info = dict(info or {})
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FeatureSpace:
        """Stay in evaluation mode: a feature space whose batch statistics moved would no longer be the recorded one."""
        return super().train(False)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, feature_dim={self.feature_dim}"

    def as_dict(self) -> dict:
        """The space's name, description, width and :attr:`info`, to store beside scores."""
        return {"name": self.name, "description": self.description, "feature_dim": self.feature_dim, **self.info}

    def _as_images(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_shape is None:
            return x
        shape = self.image_shape
        if x.dim() == 2 and x.shape[1] == math.prod(shape):
            x = x.reshape(len(x), *shape)
        elif x.dim() == len(shape) and shape[0] == 1 and tuple(x.shape[1:]) == shape[1:]:
            x = x.unsqueeze(1)
        if tuple(x.shape[1:]) != shape:
            raise DataError(
                f"the {self.name} feature space takes images of shape (N, {', '.join(map(str, shape))}) "
                f"(or flat (N, {math.prod(shape)})); got {tuple(x.shape)}"
            )
        return x

    def _check_range(self, x: torch.Tensor) -> None:
        if self.value_range is None or len(x) == 0:
            return
        low, high = self.value_range
        # a small tolerance: decoders' sigmoid outputs and resampling can overshoot by rounding only
        if x.min() < low - 1e-4 or x.max() > high + 1e-4:
            raise DataError(
                f"the {self.name} feature space takes values in [{low}, {high}] (images as load_dataset returns them); "
                f"got values in [{float(x.min()):.4g}, {float(x.max()):.4g}]. Rescale the samples first (e.g. uint8 / 255)."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a batch, ``(N, feature_dim)``."""
        x = self._as_images(x)
        self._check_range(x)
        out = self.extractor(x)
        return out.flatten(1) if out.dim() > 2 else out


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise DataError(f"samples need a batch dimension; got shape {tuple(x.shape)}")
        return x.flatten(1)


def identity_space() -> FeatureSpace:
    """The samples' own coordinates, flattened: right for low-dimensional data such as the 2-D toys."""
    return FeatureSpace("identity", "identity (the samples' own coordinates, flattened; no embedding)", _Flatten(), None)


def _space_device(space: FeatureSpace) -> tuple[torch.device, torch.dtype | None]:
    for p in space.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), None


def extract_features(x, space: FeatureSpace | str = "identity", batch_size: int = 256, **space_options) -> torch.Tensor:
    """Embed samples in a feature space, in batches and without gradients.

    :param x: samples, a tensor or array: images ``(N, C, H, W)`` (or flat / ``(N, H, W)``, see
        :class:`FeatureSpace`) with values in ``[0, 1]``, or points ``(N, d)`` for ``"identity"``.
    :param space: a :class:`FeatureSpace`, or a name for :func:`feature_space`.
    :param batch_size: samples embedded at once.
    :param space_options: passed to :func:`feature_space` when ``space`` is a name
        (``data_dir``, ``cache_dir``, ``device``).
    :returns: ``(N, feature_dim)`` float64 features on the CPU.
    """
    space = resolve_feature_space(space, **space_options)
    x = torch.as_tensor(x).detach()
    if len(x) == 0:
        raise DataError("no samples to embed")
    device, dtype = _space_device(space)
    if dtype is not None:
        # a network computes in its own precision; the identity keeps float64 toy points exact
        x = x.to(dtype)
    elif not x.is_floating_point():
        x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        raise DataError(f"the samples contain {int((~torch.isfinite(x)).sum())} NaN or infinite values")
    with torch.no_grad():
        chunks = [space(x[i : i + batch_size].to(device)).to("cpu", torch.float64) for i in range(0, len(x), batch_size)]
    return torch.cat(chunks)


# -- domain feature extractors -------------------------------------------------------------------
@dataclass(frozen=True)
class DomainProtocol:
    """Everything that determines a domain extractor's weights; stored beside them in the cache.

    :ivar name: the domain, e.g. ``"mnist28"``.
    :ivar version: bumped whenever the protocol changes, so old caches are not reused.
    :ivar image_size: side of the single-channel images.
    :ivar channels: convolution widths of the :class:`DigitClassifier`.
    :ivar feature_dim: width of the feature space.
    :ivar training_data: the labelled images trained on, in words.
    :ivar held_out_data: the images the accuracy is measured on, in words.
    :ivar epochs: passes over the training images.
    :ivar batch_size: images per step.
    :ivar max_lr: peak learning rate of Adam under a one-cycle schedule (Smith & Topin 2019).
    :ivar max_shift: each training image is shifted by a random ``(dy, dx)`` in
        ``[-max_shift, max_shift]`` pixels (zero padded), a translation augmentation.
    :ivar bernoulli_prob: fraction of training images replaced by a Bernoulli draw of their pixels.
    :ivar seed: seed of the initialization, the batch order and the augmentation.
    :ivar min_accuracy: a trained extractor scoring below this on the held-out images is not cached.
    """

    name: str
    version: int
    image_size: int
    channels: tuple[int, int]
    feature_dim: int
    training_data: str
    held_out_data: str
    epochs: int
    batch_size: int
    max_lr: float
    max_shift: int
    bernoulli_prob: float
    seed: int
    min_accuracy: float

    def as_dict(self) -> dict:
        out = asdict(self)
        out["channels"] = list(self.channels)
        out["architecture"] = (
            f"conv3x3({self.channels[0]})-relu-maxpool2-conv3x3({self.channels[1]})-relu-maxpool2-"
            f"linear({self.feature_dim})-relu[features]-linear(10)"
        )
        out["optimizer"] = "Adam (torch defaults), OneCycleLR to max_lr, cross-entropy"
        return out


#: The official MNIST test images split for the ``mnist28`` extractor: ``train`` 8000 / ``held_out``
#: 2000 after ``numpy.random.default_rng(0).permutation(10000)``.
MNIST28_SPLIT = {"train": 8000, "held_out": 2000}
MNIST28_SPLIT_SEED = 0
# md5 of numpy.random.default_rng(0).permutation(10000) as little-endian int64 (see seeded_split)
_MNIST28_PERMUTATION_MD5 = "49738992633c8de88350bd82adfc55a2"

DOMAIN_PROTOCOLS: dict[str, DomainProtocol] = {
    "mnist28": DomainProtocol(
        name="mnist28",
        version=1,
        image_size=28,
        channels=(16, 32),
        feature_dim=128,
        training_data=(
            "8000 of the 10000 official MNIST test images (grayscale; numpy default_rng(0) permutation, first 8000), "
            "half of each batch Bernoulli-binarized"
        ),
        held_out_data="the other 2000 MNIST test images (also in binarized_mnist's test set, see held_out_images)",
        epochs=10,
        batch_size=64,
        max_lr=3e-3,
        max_shift=2,
        bernoulli_prob=0.5,
        seed=0,
        min_accuracy=0.97,
    ),
    "digits8": DomainProtocol(
        name="digits8",
        version=1,
        image_size=8,
        channels=(16, 32),
        feature_dim=64,
        training_data="scikit-learn 8x8 digits, pyro_gen's 'train' split (1397 images), half of each batch Bernoulli-binarized",
        held_out_data="the 'valid' and 'test' splits (400 images)",
        epochs=40,
        batch_size=64,
        max_lr=3e-3,
        max_shift=0,
        bernoulli_prob=0.5,
        seed=0,
        min_accuracy=0.95,
    ),
}

#: Dataset names accepted for the domain they belong to.
DOMAIN_ALIASES = {"mnist": "mnist28", "binarized_mnist": "mnist28", "digits": "digits8"}


def _domain_name(name: str) -> str:
    key = name[len("domain:") :] if isinstance(name, str) and name.startswith("domain:") else name
    key = DOMAIN_ALIASES.get(key, key)
    if key not in DOMAIN_PROTOCOLS:
        known = sorted(DOMAIN_PROTOCOLS) + sorted(DOMAIN_ALIASES)
        raise DataError(
            f"no domain feature extractor for {name!r}; known: {', '.join(known)}. Frey faces have no labels to train one; "
            f"use feature_space('inception') where its weights are available."
        )
    return key


def _mnist28_indices() -> dict[str, np.ndarray]:
    """Indices into the official MNIST test set of the extractor's training and held-out images."""
    return seeded_split(10000, MNIST28_SPLIT, MNIST28_SPLIT_SEED, _MNIST28_PERMUTATION_MD5)


def _binarized_rows(official_labels: np.ndarray, official_indices: np.ndarray) -> np.ndarray:
    """Rows of binarized MNIST's test set holding the given official MNIST test images.

    Binarized MNIST's test set is the official test set sorted stably by digit, so official image
    ``order[j]`` sits at row ``j`` with ``order = argsort(labels, stable)``.
    """
    order = np.argsort(official_labels, kind="stable")
    row_of = np.empty_like(order)
    row_of[order] = np.arange(len(order))
    return row_of[official_indices]


def held_out_images(space: str = "mnist28", dataset: str | None = None, data_dir=None) -> ArrayData:
    """The labelled images of a domain that its feature extractor was *not* trained on.

    Use them (or, for MNIST, binarized MNIST's unlabelled ``valid``/``train`` images, which the
    extractor never saw either) as the real reference set of Frechet distance, KID and
    precision/recall, so that the real data is not flattered by the extractor having fit it.

    :param space: ``"mnist28"`` or ``"digits8"`` (or a dataset alias such as ``"digits"``).
    :param dataset: for ``mnist28``: ``"binarized_mnist"`` (default; the static binary images) or
        ``"mnist"`` (grayscale); for ``digits8``: ``"digits"``.
    :param data_dir: data directory (see :func:`~pyro_gen.data.load_dataset`).
    :returns: the images with their labels, in the dataset's own row order; 2000 for ``mnist28``,
        400 for ``digits8``.
    """
    name = _domain_name(space)
    if name == "digits8":
        if dataset not in (None, "digits"):
            raise DataError(f"the digits8 held-out images come from 'digits', not {dataset!r}")
        valid, test = load_dataset("digits", "valid"), load_dataset("digits", "test")
        return ArrayData(torch.cat([valid.x, test.x]), torch.cat([valid.y, test.y]), name="digits", split="valid+test", source=valid.source)
    dataset = "binarized_mnist" if dataset is None else dataset
    if dataset not in ("mnist", "binarized_mnist"):
        raise DataError(f"the mnist28 held-out images come from 'mnist' or 'binarized_mnist', not {dataset!r}")
    held_out = _mnist28_indices()["held_out"]
    official = load_dataset("mnist", "test", data_dir=data_dir)
    if dataset == "mnist":
        rows = torch.from_numpy(np.sort(held_out))
        return ArrayData(official.x[rows], official.y[rows], name="mnist", split="test", source=official.source)
    binarized = load_dataset("binarized_mnist", "test", data_dir=data_dir)
    rows = torch.from_numpy(np.sort(_binarized_rows(official.y.numpy(), held_out)))
    return ArrayData(
        binarized.x[rows], binarized.y[rows], name="binarized_mnist", split="test", binarization="static", source=binarized.source
    )


def _domain_data(protocol: DomainProtocol, data_dir, download: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_held_out, y_held_out)`` of a domain's protocol."""
    if protocol.name == "digits8":
        train = load_dataset("digits", "train")
        held = held_out_images("digits8")
        return train.x, train.y, held.x, held.y
    official = load_dataset("mnist", "test", data_dir=data_dir, download=download)
    index = {k: torch.from_numpy(v) for k, v in _mnist28_indices().items()}
    return official.x[index["train"]], official.y[index["train"]], official.x[index["held_out"]], official.y[index["held_out"]]


def _augment(x: torch.Tensor, protocol: DomainProtocol, generator: torch.Generator) -> torch.Tensor:
    if protocol.bernoulli_prob > 0:
        binarize = torch.rand(len(x), 1, 1, 1, generator=generator) < protocol.bernoulli_prob
        x = torch.where(binarize, torch.bernoulli(x, generator=generator), x)
    if protocol.max_shift > 0:
        # each image moves by its own (dy, dx): crop a side x side window out of the zero-padded
        # image at a random offset (one shift per batch gave about 0.3 points less held-out accuracy)
        s, side, n = protocol.max_shift, x.shape[-1], len(x)
        offsets = torch.randint(0, 2 * s + 1, (n, 2), generator=generator)
        window = torch.arange(side)
        rows = (offsets[:, 0, None] + window)[:, :, None]
        cols = (offsets[:, 1, None] + window)[:, None, :]
        x = F.pad(x, (s, s, s, s))[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)
    return x


def _accuracy(classifier: DigitClassifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    with torch.no_grad():
        correct = sum(
            int((classifier(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum()) for i in range(0, len(x), batch_size)
        )
    return correct / len(x)


def _description(protocol: DomainProtocol, report: dict) -> str:
    acc = report["held_out_accuracy"]
    static = f", {acc['binarized_mnist']:.4f} on binarized_mnist's copies" if "binarized_mnist" in acc else ""
    trained_on = protocol.training_data if "train_subset" not in report else f"a random subset of [{protocol.training_data}]"
    return (
        f"domain:{protocol.name} (CNN digit classifier, {protocol.feature_dim}-d penultimate layer, protocol v{protocol.version}, "
        f"{protocol.epochs} epochs; trained on {report['num_train']} images: {trained_on}; held-out accuracy {acc['grayscale']:.4f} "
        f"({acc['bernoulli']:.4f} on a Bernoulli draw{static}) on {report['num_held_out']} images: {protocol.held_out_data})"
    )


def train_domain_extractor(
    name: str = "mnist28",
    data_dir=None,
    download: bool = False,
    epochs: int | None = None,
    num_train: int | None = None,
) -> FeatureSpace:
    """Train a domain feature extractor by its protocol, without caching it (see :func:`domain_features`).

    Training runs on the CPU with its own seeded random streams (torch's global generator is left
    as it was), so the same machine and library versions give the same weights.

    :param name: ``"mnist28"`` or ``"digits8"`` (or a dataset alias).
    :param data_dir: data directory of the training images (MNIST's test files for ``mnist28``).
    :param download: let :func:`~pyro_gen.data.load_dataset` download missing MNIST files.
    :param epochs: override the protocol's epochs (a smaller budget, e.g. for tests).
    :param num_train: train on only the first ``num_train`` of the protocol's training images
        (they are in a random order, so this is a random subset).
    :returns: the frozen :class:`FeatureSpace`; its ``info`` holds the protocol, the held-out
        accuracies (on the grayscale images and on a seeded Bernoulli draw of them) and the time taken.
    """
    protocol = DOMAIN_PROTOCOLS[_domain_name(name)]
    if epochs is not None:
        protocol = replace(protocol, epochs=epochs)
    x_train, y_train, x_held, y_held = _domain_data(protocol, data_dir, download)
    if num_train is not None:
        if not 1 <= num_train <= len(x_train):
            raise DataError(f"num_train must be in [1, {len(x_train)}], got {num_train}")
        x_train, y_train = x_train[:num_train], y_train[:num_train]
    start, start_cpu = time.perf_counter(), time.process_time()
    with seeded(protocol.seed):
        classifier = DigitClassifier(protocol.image_size, protocol.channels, protocol.feature_dim)
    generator = torch.Generator().manual_seed(protocol.seed)
    steps_per_epoch = math.ceil(len(x_train) / protocol.batch_size)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=protocol.max_lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, protocol.max_lr, total_steps=protocol.epochs * steps_per_epoch)
    classifier.train()
    for _ in range(protocol.epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for i in range(0, len(x_train), protocol.batch_size):
            batch = order[i : i + protocol.batch_size]
            loss = F.cross_entropy(classifier(_augment(x_train[batch], protocol, generator)), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    classifier.eval()
    # CPU time as well as wall time: on a shared machine the wall time says little about the cost
    train_seconds, train_cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    bernoulli_held = torch.bernoulli(x_held, generator=torch.Generator().manual_seed(protocol.seed + 1))
    accuracy = {"grayscale": _accuracy(classifier, x_held, y_held), "bernoulli": _accuracy(classifier, bernoulli_held, y_held)}
    if protocol.name == "mnist28":
        # the same held-out digits as binarized MNIST stores them, when that file is at hand
        try:
            static = held_out_images("mnist28", "binarized_mnist", data_dir=data_dir)
            accuracy["binarized_mnist"] = _accuracy(classifier, static.x, static.y)
        except DataNotFoundError:
            pass
    report = {
        "protocol": protocol.as_dict(),
        "num_train": len(x_train),
        "num_held_out": len(x_held),
        "held_out_accuracy": accuracy,
        "train_seconds": round(train_seconds, 2),
        "train_cpu_seconds": round(train_cpu_seconds, 2),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    if num_train is not None:
        report["train_subset"] = f"the first {num_train} of the protocol's (shuffled) training images"
    logger.info(
        "trained the %s feature extractor in %.1f s: held-out accuracy %s", protocol.name, train_seconds, report["held_out_accuracy"]
    )
    return _domain_space(protocol, classifier, report, _description(protocol, report))


def _domain_space(protocol: DomainProtocol, classifier: DigitClassifier, report: dict, description: str) -> FeatureSpace:
    return FeatureSpace(
        f"domain:{protocol.name}",
        description,
        _Penultimate(classifier),
        protocol.feature_dim,
        image_shape=(1, protocol.image_size, protocol.image_size),
        value_range=(0.0, 1.0),
        info=report,
    )


def resolve_cache_dir(cache_dir=None) -> Path:
    """The cache directory: ``cache_dir`` if given, else ``$PYRO_GEN_CACHE`` if set, else ``~/.cache/pyro_gen``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else DEFAULT_CACHE_DIR.expanduser()


def domain_cache_paths(name: str, cache_dir=None) -> tuple[Path, Path]:
    """``(weights, metadata)`` paths of a domain extractor's cache."""
    protocol = DOMAIN_PROTOCOLS[_domain_name(name)]
    stem = f"domain-{protocol.name}-v{protocol.version}"
    folder = resolve_cache_dir(cache_dir) / "features"
    return folder / f"{stem}.pt", folder / f"{stem}.json"


def _corrupt(path: Path, problem: str, protocol: DomainProtocol, weights: Path, metadata: Path) -> ChecksumError:
    return ChecksumError(
        f"The cached {protocol.name} feature extractor file {path} is unusable: {problem}. Rebuild it with "
        f"pyro_gen.evaluation.domain_features({protocol.name!r}, rebuild=True) (it retrains in under a minute), "
        f"or delete {weights} and {metadata} and call domain_features again."
    )


def _write_cache(space: FeatureSpace, protocol: DomainProtocol, weights: Path, metadata: Path) -> None:
    weights.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(weights) as tmp:
        torch.save(space.extractor.classifier.state_dict(), tmp)
        sha256 = file_digest(tmp, "sha256")
    record = {
        "format": CACHE_FORMAT,
        "space": space.name,
        "description": space.description,
        "weights_file": weights.name,
        "weights_sha256": sha256,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **space.info,
    }
    # the metadata goes last: a cache without it is an interrupted build and is simply rebuilt
    with atomic_path(metadata) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")


def _load_cache(protocol: DomainProtocol, weights: Path, metadata: Path) -> FeatureSpace:
    try:
        record = json.loads(metadata.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _corrupt(metadata, f"it is not readable JSON ({err})", protocol, weights, metadata) from err
    if not isinstance(record, dict) or record.get("format") != CACHE_FORMAT:
        raise _corrupt(metadata, f"it is not a format-{CACHE_FORMAT} feature-extractor record", protocol, weights, metadata)
    expected_protocol = json.loads(json.dumps(protocol.as_dict()))
    if record.get("protocol") != expected_protocol:
        raise _corrupt(metadata, "its training protocol differs from this version of pyro_gen's", protocol, weights, metadata)
    missing = [k for k in ("description", "weights_sha256", "held_out_accuracy", "num_train", "num_held_out") if k not in record]
    if missing:
        raise _corrupt(metadata, f"it lacks {', '.join(missing)}", protocol, weights, metadata)
    if not weights.is_file():
        raise _corrupt(weights, "the weights file is missing", protocol, weights, metadata)
    actual = file_digest(weights, "sha256")
    if actual != record["weights_sha256"]:
        raise _corrupt(
            weights, f"its sha256 is {actual}, but {metadata.name} records {record['weights_sha256']}", protocol, weights, metadata
        )
    classifier = DigitClassifier(protocol.image_size, protocol.channels, protocol.feature_dim)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        classifier.load_state_dict(state)
    except Exception as err:  # any failure to unpickle or to match the architecture means the same thing here
        raise _corrupt(weights, f"its weights cannot be loaded ({type(err).__name__}: {err})", protocol, weights, metadata) from err
    classifier.eval()
    keys = ("protocol", "num_train", "num_held_out", "held_out_accuracy", "train_seconds", "train_cpu_seconds", "torch_threads")
    keys += ("torch_version", "created")
    info = {k: record[k] for k in keys if k in record}
    info["cache"] = {"weights": str(weights), "metadata": str(metadata), "weights_sha256": actual}
    return _domain_space(protocol, classifier, info, str(record["description"]))


def domain_features(
    name: str = "mnist28", data_dir=None, cache_dir=None, device="cpu", rebuild: bool = False, download: bool = False
) -> FeatureSpace:
    """The frozen domain feature extractor ``name``, loaded from the cache or trained once and cached.

    The first call trains the extractor by its :data:`DOMAIN_PROTOCOLS` entry (``mnist28``: about
    10-20 s on one CPU core; ``digits8``: a few seconds), checks its held-out accuracy, and writes
    the weights and a JSON record (sha256, protocol, accuracies, description) to the cache; later
    calls load them with ``torch.load(weights_only=True)`` after checking the checksum. The
    held-out accuracy is in the space's :attr:`~FeatureSpace.description` and ``info``.

    :param name: ``"mnist28"`` (28x28 digits: MNIST, binarized MNIST) or ``"digits8"``
        (scikit-learn's 8x8 digits); the dataset names ``"mnist"``, ``"binarized_mnist"`` and
        ``"digits"`` are accepted too.
    :param data_dir: data directory of the training images (``mnist28`` needs MNIST's test files).
    :param cache_dir: cache directory (default ``$PYRO_GEN_CACHE``, else ``~/.cache/pyro_gen``).
    :param device: device the returned space computes on (training is always on the CPU).
    :param rebuild: retrain and overwrite the cache even if it exists (the way to repair it).
    :param download: let a first build download missing MNIST files.
    :raises ChecksumError: the cache exists but does not match its record; the message names the
        file and how to rebuild it.
    :raises DataError: a freshly trained extractor misses the protocol's accuracy floor (nothing is cached).
    """
    protocol = DOMAIN_PROTOCOLS[_domain_name(name)]
    weights, metadata = domain_cache_paths(protocol.name, cache_dir)
    if metadata.is_file() and not rebuild:
        return _load_cache(protocol, weights, metadata).to(device)
    space = train_domain_extractor(protocol.name, data_dir=data_dir, download=download)
    accuracy = space.info["held_out_accuracy"]["grayscale"]
    if accuracy < protocol.min_accuracy:
        raise DataError(
            f"the {protocol.name} feature extractor reached only {accuracy:.4f} held-out accuracy (the protocol asks for "
            f"{protocol.min_accuracy}); it was not cached. This should not happen; please report it with your torch version."
        )
    _write_cache(space, protocol, weights, metadata)
    space.info["cache"] = {"weights": str(weights), "metadata": str(metadata), "weights_sha256": file_digest(weights, "sha256")}
    return space.to(device)


def domain_classifier(name: str = "mnist28", data_dir=None, cache_dir=None, device="cpu") -> nn.Module:
    """The frozen digit classifier behind the domain feature space ``name``: images to class logits.

    The same cached network as :func:`domain_features` (trained on first use), with its last layer:
    use it to label generated samples, e.g. for
    :func:`~pyro_gen.analysis.latent_arithmetic.latent_arithmetic`. Inputs are images in ``[0, 1]`` of
    the space's shape, as for the feature space.
    """
    space = domain_features(name, data_dir=data_dir, cache_dir=cache_dir, device=device)
    return _Logits(space)


class _Logits(nn.Module):
    """Class logits through a domain :class:`FeatureSpace`'s checks (shape, value range) and its classifier's head."""

    def __init__(self, space: FeatureSpace):
        super().__init__()
        self.space = space
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> _Logits:
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.space.extractor.classifier.head(self.space(x))


# -- Inception-v3 -----------------------------------------------------------------------------------
class _InceptionPool3(nn.Module):
    """Inception-v3 up to its 2048-d global average pool, on images in ``[0, 1]`` of any size."""

    def __init__(self, inception: nn.Module):
        super().__init__()
        self.inception = inception

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise DataError(f"Inception features take images (N, 1 or 3, H, W) or (N, H, W); got shape {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        # the ImageNet weights were trained on inputs scaled to [-1, 1] (torchvision's
        # transform_input=True does the same starting from ImageNet-normalized inputs)
        return self.inception(x * 2 - 1)


def _no_inception(reason: str) -> FeatureWeightsNotFoundError:
    return FeatureWeightsNotFoundError(
        f"Inception-v3 features are not available offline: {reason}. pyro_gen never downloads them. On a machine with "
        f"internet, `python -c \"import torchvision; torchvision.models.inception_v3(weights='IMAGENET1K_V1')\"` puts "
        f"{INCEPTION_WEIGHTS_FILE} in torch.hub's checkpoints folder, or pass weights_path=... . Offline, score digits in "
        f"a domain feature space instead: feature_space('mnist28') for 28x28 digits, feature_space('digits8') for 8x8 digits."
    )


def inception_features(weights_path=None, device="cpu") -> FeatureSpace:
    """torchvision's Inception-v3 ``pool3`` features (2048-d), from weights already on disk.

    Grayscale images are replicated to three channels and every image is resized bilinearly to
    299x299. These are torchvision's ImageNet weights (``IMAGENET1K_V1``), not the TensorFlow
    Inception graph of published FID/KID numbers (Heusel et al. 2017), so scores computed here are
    comparable with each other only. torchvision is imported here, never by ``import pyro_gen``.

    :param weights_path: the weights file; default torch.hub's cache,
        ``<torch.hub.get_dir()>/checkpoints/inception_v3_google-0cc3c7bd.pth``.
    :param device: device to compute on.
    :raises FeatureWeightsNotFoundError: torchvision or the weights file is missing (the message
        says how to get them and points to the domain extractors).
    :raises ChecksumError: the weights file does not match the sha256 prefix in its name, or cannot be loaded.
    """
    try:
        from torchvision.models import inception_v3
    except ImportError as err:
        raise _no_inception("torchvision is not installed (pip install torchvision)") from err
    path = (
        Path(weights_path).expanduser() if weights_path is not None else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    )
    if not path.is_file():
        raise _no_inception(f"the weights file {path} does not exist")
    prefix = re.search(torch.hub.HASH_REGEX, path.name)
    if prefix:
        actual = file_digest(path, "sha256")
        if not actual.startswith(prefix.group(1)):
            raise ChecksumError(
                f"{path} has sha256 {actual}, which does not start with the {prefix.group(1)} in its name: the file is "
                f"damaged or incomplete. Delete it and fetch it again."
            )
    model = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as err:  # unpickling or a mismatched architecture: either way the file is not the weights
        raise ChecksumError(f"{path} cannot be loaded as Inception-v3 weights ({type(err).__name__}: {err}).") from err
    model.fc = nn.Identity()  # keep the 2048-d pooled activations, drop the ImageNet classifier
    model.eval()
    description = (
        f"inception:pool3 (torchvision Inception-v3 IMAGENET1K_V1, 2048-d pool3; inputs resized bilinearly to "
        f"{INCEPTION_SIZE}x{INCEPTION_SIZE}, gray replicated to RGB; not the TF-Inception weights of published FID)"
    )
    space = FeatureSpace("inception:pool3", description, _InceptionPool3(model), 2048, value_range=(0.0, 1.0), info={"weights": str(path)})
    return space.to(device)


# -- the entry point ----------------------------------------------------------------------------------
FEATURE_SPACES = ("identity", "inception", *DOMAIN_PROTOCOLS)


def feature_space(name: str = "identity", data_dir=None, cache_dir=None, device="cpu", **options) -> FeatureSpace:
    """The feature space ``name``, the one entry point the sample-quality scores use.

    :param name: ``"identity"`` (raw coordinates), ``"inception"`` (see :func:`inception_features`),
        ``"mnist28"`` / ``"digits8"`` (see :func:`domain_features`; the dataset names ``"mnist"``,
        ``"binarized_mnist"``, ``"digits"`` select these too). A :attr:`FeatureSpace.name` such as
        ``"domain:mnist28"`` or ``"inception:pool3"`` is accepted as well.
    :param data_dir: data directory (domain extractors' training images).
    :param cache_dir: cache directory of the domain extractors.
    :param device: device to compute on.
    :param options: passed on: ``rebuild``/``download`` to :func:`domain_features`,
        ``weights_path`` to :func:`inception_features`.
    """
    if not isinstance(name, str):
        raise DataError(f"a feature space is named by a string, got {type(name).__name__}")
    if name == "identity":
        return identity_space()
    if name in ("inception", "inception:pool3"):
        return inception_features(device=device, **options)
    try:
        domain = _domain_name(name)
    except DataError:
        raise DataError(
            f"unknown feature space {name!r}; choose one of {', '.join(FEATURE_SPACES)} (or the dataset names {', '.join(DOMAIN_ALIASES)})"
        ) from None
    return domain_features(domain, data_dir=data_dir, cache_dir=cache_dir, device=device, **options)


def resolve_feature_space(space: FeatureSpace | str | None, **space_options) -> FeatureSpace:
    """``space`` itself if it is a :class:`FeatureSpace`, :func:`feature_space` of it if a name, the identity if ``None``."""
    if space is None:
        return identity_space()
    if isinstance(space, FeatureSpace):
        return space
    return feature_space(space, **space_options)
