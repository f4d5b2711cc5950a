"""torchvision's Inception-v3 ``pool3`` features, built only from weights already on disk (never downloaded)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pyro_gen.data.checksums import file_digest
from pyro_gen.errors import ChecksumError, DataError
from pyro_gen.evaluation.features.space import FeatureSpace, FeatureWeightsNotFoundError

#: File name of torchvision's Inception-v3 ImageNet weights
#: (``torchvision.models.Inception_V3_Weights.IMAGENET1K_V1.url``); the hex part is the start of
#: its sha256, which torch.hub checks on download and :func:`inception_features` checks on load.
INCEPTION_WEIGHTS_FILE = "inception_v3_google-0cc3c7bd.pth"
#: Inception-v3's input resolution.
INCEPTION_SIZE = 299


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
