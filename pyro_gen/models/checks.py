"""Checks of data at the library's entry points: the errors name the problem and the fix, in one line.

:func:`check_data_tensor` is the one checker every public function that takes data calls once per call
(type, rank / shape, dtype, device, emptiness, NaN / inf); :func:`check_labels` checks labels beside it.
Models run the cheap :func:`check_batch` (shape, dtype: no pass over the values) on every batch and
leave the per-value scan to the likelihood, skipped inside :func:`checked_dataset`.
"""

from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import torch

from pyro_gen.errors import ConfigError, DataError

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


def _shape_text(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _type_error(x, name: str, dtype: str = "float") -> DataError:
    cast = {"float": ".float()", "long": ".long()"}[dtype]
    if isinstance(x, np.ndarray):
        return DataError(f"{name} must be a torch.Tensor, got a numpy array: convert it with torch.from_numpy({name}){cast}")
    if isinstance(x, (list, tuple)):
        return DataError(f"{name} must be a torch.Tensor, got a {type(x).__name__}: convert it with torch.tensor({name}){cast}")
    return DataError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def _from_array(x, name: str) -> torch.Tensor:
    """A numpy array, or a rectangular nested list of floats, as a tensor (floating values only)."""
    kind = type(x).__name__ if not isinstance(x, np.ndarray) else "numpy array"
    try:
        a = np.asarray(x)
    except ValueError:
        raise DataError(f"{name} is a ragged {kind} (rows of different lengths): give a rectangular array") from None
    if a.dtype.kind == "f":
        return torch.from_numpy(np.ascontiguousarray(a))
    if a.dtype.kind in "biuc":
        raise DataError(
            f"{name} is a {kind} of dtype {a.dtype}, but the data must be floating point: convert it with np.asarray({name}, dtype=np.float32)"
        )
    raise DataError(f"{name} is a {kind} of {a.dtype} values, not numbers: give a floating-point tensor or array")


def _same_device(a: torch.device, b: torch.device) -> bool:
    # torch.device("cuda") and torch.device("cuda:0") name the same device for a default index
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def check_data_tensor(
    x,
    name: str = "x",
    data_shape=None,
    *,
    ndim=None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    allow_empty: bool = False,
    values: bool = True,
    arrays: bool = False,
    owner: str = "model",
) -> torch.Tensor:
    """Raise :class:`~pyro_gen.errors.DataError` (one line: the problem and the fix) unless ``x`` is usable data.

    Called once at the entry of every public function that takes data; a pass over the values
    (``values=True``) costs one ``isfinite`` scan, so the per-batch hot path uses :func:`check_batch`.

    :param x: the data: a tensor ``(N, *data_shape)`` (or a numpy array when ``arrays``).
    :param name: how the messages call it (the argument's name).
    :param data_shape: the shape of one datapoint; ``x`` must then be ``(N, *data_shape)``.
    :param ndim: without ``data_shape``, the rank ``x`` must have (an int, or a tuple of allowed ranks).
    :param dtype: the exact floating dtype required (e.g. the model parameters'); ``None``: any floating dtype.
        Integer, boolean and complex data are always refused (call ``.float()``): nothing is converted silently.
    :param device: the device ``x`` must be on (e.g. the model parameters'); ``None``: any device
        that holds values (the ``meta`` device does not).
    :param allow_empty: accept ``N = 0`` datapoints.
    :param values: scan the values for NaN / inf.
    :param arrays: accept a floating numpy array or a rectangular nested list of floats (documented for
        feature sets and log-weights), returned as a tensor (an array's shares its memory).
    :param owner: what ``data_shape`` belongs to, for the messages (``"model"``, ``"generator"``).
    :returns: ``x`` (as a tensor).
    """
    if arrays and isinstance(x, (np.ndarray, list, tuple)):
        x = _from_array(x, name)
    if not torch.is_tensor(x):
        raise _type_error(x, name)
    if x.dtype == torch.bool or not (x.is_floating_point()):
        raise DataError(f"{name} has dtype {x.dtype}, but the data must be floating point: convert it with {name}.float()")
    if dtype is not None and x.dtype != dtype:
        cast = {torch.float32: ".float()", torch.float64: ".double()"}.get(dtype, f".to({dtype})")
        raise DataError(f"{name} has dtype {x.dtype} but the {owner}'s parameters are {dtype}: convert the data with {name}{cast}")
    if x.device.type == "meta":
        raise DataError(f"{name} is on the 'meta' device, which holds no values: create or load the data on a real device")
    if device is not None and not _same_device(x.device, torch.device(device)):
        raise DataError(
            f"{name} is on device {x.device} but the {owner}'s parameters are on {device}: move the data with {name}.to({str(device)!r})"
        )
    if data_shape is not None:
        data_shape = tuple(data_shape)
        if x.dim() != len(data_shape) + 1 or tuple(x.shape[1:]) != data_shape:
            raise _shape_error(x, name, data_shape, owner)
    elif ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            ranks = " or ".join(map(str, allowed))
            raise DataError(f"{name} must have {ranks} dimensions, got shape {tuple(x.shape)}: reshape it")
    if not allow_empty and (x.dim() == 0 or x.shape[0] == 0):
        raise DataError(f"{name} has no datapoints (shape {tuple(x.shape)}): give at least one")
    if values:
        check_finite(x, name)
    return x


def _shape_error(x: torch.Tensor, name: str, data_shape: tuple, owner: str) -> DataError:
    shape = tuple(x.shape)
    expected = _shape_text(("batch", *data_shape))
    if shape == data_shape:
        fix = f"this is one datapoint without the batch dimension: use {name}.unsqueeze(0)"
    elif x.dim() >= 1 and x[0].numel() == int(np.prod(data_shape)):
        fix = f"reshape it with {name}.reshape(-1, {', '.join(map(str, data_shape))})"
    else:
        fix = f"give data of that shape or build the {owner} with data_shape={shape[1:]}"
    return DataError(f"{name} of shape {shape} does not match the {owner}'s data_shape {tuple(data_shape)}: it must be {expected}; {fix}")


def check_batch(x, data_shape: tuple, owner: str = "model", dtype: torch.dtype | None = None) -> None:
    """Raise :class:`DataError` unless ``x`` is a floating tensor shaped ``(batch, *data_shape)``, with at least one row.

    Cheap (no pass over the values): models call it on every batch. With ``dtype``, ``x`` must
    have it (the model parameters' dtype).
    """
    if not torch.is_tensor(x):
        raise _type_error(x, "x")
    if x.dim() != len(data_shape) + 1 or tuple(x.shape[1:]) != tuple(data_shape):
        raise _shape_error(x, "x", tuple(data_shape), owner)
    if not x.is_floating_point() or (dtype is not None and x.dtype != dtype):
        check_data_tensor(x, "x", dtype=dtype, values=False, owner=owner)
    if x.shape[0] == 0:
        raise DataError(f"x has no datapoints (shape {tuple(x.shape)}): give at least one")
    if x.device.type == "meta":
        raise DataError("x is on the 'meta' device, which holds no values: create or load the data on a real device")


def check_labels(y, n: int, name: str = "y") -> torch.Tensor:
    """Raise :class:`DataError` unless ``y`` is a 1-D integer tensor of ``n`` labels (one per datapoint)."""
    if not torch.is_tensor(y):
        raise _type_error(y, name, "long")
    if y.dim() != 1:
        raise DataError(f"{name} must be 1-D, one label per datapoint, got shape {tuple(y.shape)}: flatten it with {name}.reshape(-1)")
    if len(y) != n:
        raise DataError(f"got {len(y)} labels in {name} for {n} datapoints: give one label per datapoint")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise DataError(f"{name} has dtype {y.dtype}, but labels must be integers: convert them with {name}.long()")
    return y


def check_finite(x: torch.Tensor, name: str = "the data") -> None:
    """Raise :class:`DataError` when the data hold NaN or infinite values."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        verb = "contain" if name.startswith("the ") else "contains"
        raise DataError(f"{name} {verb} {bad} NaN or infinite values; clean or impute the data before fitting")


def check_class_labels(y, batch_size: int, num_classes: int) -> torch.Tensor:
    """The class labels given to a model conditioned on them (``num_classes``): an integer tensor of shape
    ``(batch_size,)`` with values in ``0..num_classes-1``; :class:`ConfigError` when missing, :class:`DataError`
    when malformed. The one check of every conditional model (declared latent-variable models, PixelCNN)."""
    if y is None:
        raise ConfigError(
            f"this model conditions on class labels (num_classes={num_classes}): pass y, one label per datapoint "
            "(model(x, y=labels), model(batch_size=n, y=labels); a labelled dataset gives them to the trainer)"
        )
    if not torch.is_tensor(y) or y.shape != (batch_size,) or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise DataError(f"labels y must be an integer tensor of shape ({batch_size},), got {getattr(y, 'shape', type(y).__name__)}")
    if bool(((y < 0) | (y >= num_classes)).any()):
        raise DataError(f"labels y must lie in 0..{num_classes - 1} (num_classes={num_classes})")
    return y


class ReferenceTensor:
    """The first parameter (else buffer) of a module: the dtype and device its data must have, for per-batch checks.

    Walking ``parameters()`` every batch costs a generator over every submodule (~25 Python calls for a VAE); this
    finds the tensor once and afterwards only follows its dotted name (a few dict lookups), which still answers
    correctly after ``.to()`` / ``.double()`` (they keep the parameter objects) and finds the new first tensor
    when a submodule or the tensor itself was replaced.
    """

    __slots__ = ("_parts", "_kind", "_tensor")

    def __init__(self):
        self._parts, self._kind, self._tensor = None, None, None

    def get(self, module: torch.nn.Module) -> torch.Tensor | None:
        if self._parts is not None:
            m = module
            for part in self._parts[:-1]:
                m = m._modules.get(part)
                if m is None:
                    break
            else:
                if getattr(m, self._kind).get(self._parts[-1]) is self._tensor:
                    return self._tensor
        for kind, named in (("_parameters", module.named_parameters), ("_buffers", module.named_buffers)):
            for name, tensor in named():
                self._parts, self._kind, self._tensor = tuple(name.split(".")), kind, tensor
                return tensor
        self._parts = self._kind = self._tensor = None
        return None
