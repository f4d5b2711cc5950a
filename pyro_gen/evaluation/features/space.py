"""The :class:`FeatureSpace` (a frozen embedding with the words that say which one it is) and the identity space."""

from __future__ import annotations

import math

import torch
from torch import nn

from pyro_gen.errors import DataError, DataNotFoundError


class FeatureWeightsNotFoundError(DataNotFoundError):
    """The weights (or the package) a feature extractor needs are not available offline."""


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
