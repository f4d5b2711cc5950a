"""Checks every model runs on a batch before scoring it: the errors name the problem and the fix."""

import torch

from pyro_gen.errors import DataError


def check_batch(x, data_shape: tuple, owner: str = "model") -> None:
    """Raise :class:`DataError` unless ``x`` is a tensor shaped ``(batch, *data_shape)``."""
    if not torch.is_tensor(x):
        raise DataError(f"data must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape[1:]) != tuple(data_shape):
        raise DataError(
            f"data of shape {tuple(x.shape)} does not match the {owner}'s data_shape {tuple(data_shape)}: "
            f"a batch must have shape (batch, {', '.join(map(str, data_shape))}). Reshape the data or "
            f"build the {owner} with the data's shape."
        )


def check_finite(x: torch.Tensor) -> None:
    """Raise :class:`DataError` when the batch holds NaN or infinite values."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise DataError(f"the batch contains {bad} NaN or infinite values; clean or impute the data before fitting")
