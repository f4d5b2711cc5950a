"""The on-disk cache of the domain extractors: where it is, writing and checking it, and :func:`domain_features`.

The weights are stored as ``<cache>/features/domain-<name>-v<version>.pt`` with a JSON file beside
them holding their sha256, the full training protocol, the held-out accuracies and the description.
Both files are written atomically, the JSON last, so an interrupted build leaves no cache that looks
complete; a cache whose files do not match gives an error naming the file and how to rebuild it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from pyro_gen.data.checksums import file_digest
from pyro_gen.errors import ChecksumError, DataError
from pyro_gen.evaluation.features.domain import (
    DOMAIN_PROTOCOLS,
    TRAINING_TIME,
    DigitClassifier,
    DomainProtocol,
    domain_name,
    domain_space,
    train_domain_extractor,
)
from pyro_gen.evaluation.features.space import FeatureSpace
from pyro_gen.io import atomic_path

logger = logging.getLogger(__name__)

#: Environment variable that sets the cache directory when no ``cache_dir`` is passed.
CACHE_DIR_ENV = "PYRO_GEN_CACHE"
#: Cache directory used when neither the argument nor the environment variable is set.
DEFAULT_CACHE_DIR = Path("~/.cache/pyro_gen")
#: Version of the JSON metadata layout written beside cached weights.
CACHE_FORMAT = 1


def resolve_cache_dir(cache_dir=None) -> Path:
    """The cache directory: ``cache_dir`` if given, else ``$PYRO_GEN_CACHE`` if set, else ``~/.cache/pyro_gen``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else DEFAULT_CACHE_DIR.expanduser()


def domain_cache_paths(name: str, cache_dir=None) -> tuple[Path, Path]:
    """``(weights, metadata)`` paths of a domain extractor's cache."""
    protocol = DOMAIN_PROTOCOLS[domain_name(name)]
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
    return domain_space(protocol, classifier, info, str(record["description"]))


def domain_features(
    name: str = "mnist28",
    data_dir=None,
    cache_dir=None,
    device="cpu",
    rebuild: bool = False,
    download: bool = False,
    progress: bool = True,
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
    :param progress: when the extractor is trained, say so in one line on stderr (naming the cache
        folder) and show a progress bar over its epochs; ``False``: no output (the line is logged only).
    :raises ChecksumError: the cache exists but does not match its record; the message names the
        file and how to rebuild it.
    :raises DataError: a freshly trained extractor misses the protocol's accuracy floor (nothing is cached).
    """
    protocol = DOMAIN_PROTOCOLS[domain_name(name)]
    weights, metadata = domain_cache_paths(protocol.name, cache_dir)
    if metadata.is_file() and not rebuild:
        return _load_cache(protocol, weights, metadata).to(device)
    message = f"training the {protocol.name} feature extractor once ({TRAINING_TIME[protocol.name]}); it is cached in {weights.parent}"
    if progress:
        print(message, file=sys.stderr, flush=True)
    logger.info(message)
    space = train_domain_extractor(protocol.name, data_dir=data_dir, download=download, progress=progress)
    accuracy = space.info["held_out_accuracy"]["grayscale"]
    if accuracy < protocol.min_accuracy:
        raise DataError(
            f"the {protocol.name} feature extractor reached only {accuracy:.4f} held-out accuracy (the protocol asks for "
            f"{protocol.min_accuracy}); it was not cached. This should not happen; please report it with your torch version."
        )
    _write_cache(space, protocol, weights, metadata)
    space.info["cache"] = {"weights": str(weights), "metadata": str(metadata), "weights_sha256": file_digest(weights, "sha256")}
    return space.to(device)


def domain_classifier(name: str = "mnist28", data_dir=None, cache_dir=None, device="cpu", progress: bool = True) -> nn.Module:
    """The frozen digit classifier behind the domain feature space ``name``: images to class logits.

    The same cached network as :func:`domain_features` (trained on first use), with its last layer:
    use it to label generated samples, e.g. for
    :func:`~pyro_gen.analysis.latent_arithmetic.latent_arithmetic`. Inputs are images in ``[0, 1]`` of
    the space's shape, as for the feature space. ``progress``: as for :func:`domain_features`.
    """
    space = domain_features(name, data_dir=data_dir, cache_dir=cache_dir, device=device, progress=progress)
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
