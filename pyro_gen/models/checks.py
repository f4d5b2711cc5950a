"""Checks every model runs on a batch before scoring it: the errors name the problem and the fix."""

from contextlib import contextmanager
from contextvars import ContextVar

import torch

from pyro_gen.errors import DataError

_CHECKED_DATASET: ContextVar[bool] = ContextVar("pyro_gen_checked_dataset", default=False)


@contextmanager
def checked_dataset():
    """Batches drawn inside this context come from a dataset whose values were validated as a whole.

    Models then keep their cheap per-batch shape check but skip the per-value check (support,
    NaN / inf), which is a pass over every value of every batch: about 2% of a VAE training step
    on CPU. The :class:`~pyro_gen.infer.trainer.Trainer` enters it only after validating the whole
    training (and validation) tensor once, and only for batches that are untransformed slices of it.
    """
    token = _CHECKED_DATASET.set(True)
    try:
        yield
    finally:
        _CHECKED_DATASET.reset(token)


def values_already_checked() -> bool:
    """True inside :func:`checked_dataset`."""
    return _CHECKED_DATASET.get()


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
    """Raise :class:`DataError` when the data hold NaN or infinite values."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise DataError(f"the data contain {bad} NaN or infinite values; clean or impute the data before fitting")
