"""Domain feature extractors: the digit classifier, its training protocols, the held-out images, and training.

See :mod:`pyro_gen.evaluation.features` for which images train each extractor and which are held out.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pyro_gen.data.container import ArrayData
from pyro_gen.data.registry import load_dataset
from pyro_gen.data.splits import seeded_split
from pyro_gen.errors import DataError, DataNotFoundError
from pyro_gen.evaluation.features.space import FeatureSpace
from pyro_gen.rng import seeded

logger = logging.getLogger(__name__)


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

#: How long a first build of each extractor takes, in the words printed before it trains.
TRAINING_TIME = {"mnist28": "up to a few minutes on a CPU", "digits8": "a few seconds"}

#: Dataset names accepted for the domain they belong to.
DOMAIN_ALIASES = {"mnist": "mnist28", "binarized_mnist": "mnist28", "digits": "digits8"}


def domain_name(name: str) -> str:
    """The domain (a :data:`DOMAIN_PROTOCOLS` key) of ``name``: a domain, a dataset alias or a space name such as ``"domain:mnist28"``."""
    key = name[len("domain:") :] if isinstance(name, str) and name.startswith("domain:") else name
    key = DOMAIN_ALIASES.get(key, key)
    if key not in DOMAIN_PROTOCOLS:
        known = sorted(DOMAIN_PROTOCOLS) + sorted(DOMAIN_ALIASES)
        raise DataError(
            f"no domain feature extractor for {name!r}; known: {', '.join(known)}. Frey faces have no labels to train one; "
            f"use feature_space('inception') where its weights are available."
        )
    return key


def mnist28_indices() -> dict[str, np.ndarray]:
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
    name = domain_name(space)
    if name == "digits8":
        if dataset not in (None, "digits"):
            raise DataError(f"the digits8 held-out images come from 'digits', not {dataset!r}")
        valid, test = load_dataset("digits", "valid"), load_dataset("digits", "test")
        return ArrayData(torch.cat([valid.x, test.x]), torch.cat([valid.y, test.y]), name="digits", split="valid+test", source=valid.source)
    dataset = "binarized_mnist" if dataset is None else dataset
    if dataset not in ("mnist", "binarized_mnist"):
        raise DataError(f"the mnist28 held-out images come from 'mnist' or 'binarized_mnist', not {dataset!r}")
    held_out = mnist28_indices()["held_out"]
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
    index = {k: torch.from_numpy(v) for k, v in mnist28_indices().items()}
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
    progress: bool = True,
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
    :param progress: show a progress bar over the epochs on stderr (tqdm).
    :returns: the frozen :class:`FeatureSpace`; its ``info`` holds the protocol, the held-out
        accuracies (on the grayscale images and on a seeded Bernoulli draw of them) and the time taken.
    """
    from tqdm.auto import tqdm

    protocol = DOMAIN_PROTOCOLS[domain_name(name)]
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
    epochs = tqdm(range(protocol.epochs), desc=f"{protocol.name} feature extractor", unit="epoch", file=sys.stderr, disable=not progress)
    for _ in epochs:
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
    return domain_space(protocol, classifier, report, _description(protocol, report))


def domain_space(protocol: DomainProtocol, classifier: DigitClassifier, report: dict, description: str) -> FeatureSpace:
    """The frozen :class:`FeatureSpace` of a trained (or loaded) classifier's penultimate layer; ``report`` becomes its ``info``."""
    return FeatureSpace(
        f"domain:{protocol.name}",
        description,
        _Penultimate(classifier),
        protocol.feature_dim,
        image_shape=(1, protocol.image_size, protocol.image_size),
        value_range=(0.0, 1.0),
        info=report,
    )
