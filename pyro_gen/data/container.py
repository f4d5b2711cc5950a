"""The in-memory dataset container returned by :func:`pyro_gen.data.load_dataset`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pyro_gen.errors import DataError

#: Values of :attr:`ArrayData.binarization`.
#: ``"static"``: the values are binary and fixed once for all (binarized MNIST);
#: ``"threshold"``: grayscale values were replaced by ``x > 0.5``;
#: ``"dynamic"``: ``x`` holds probabilities and every draw is a fresh Bernoulli sample;
#: ``None``: the values are used as they are.
BINARIZATIONS = ("static", "dynamic", "threshold", None)


@dataclass(eq=False, repr=False)
class ArrayData(Dataset):
    """A whole dataset held in memory as tensors, plus how it was made.

    Images are ``(N, C, H, W)`` float32 in ``[0, 1]``; 2-D toy data is ``(N, 2)``.

    As a :class:`torch.utils.data.Dataset`, ``data[i]`` returns the image ``x[i]``
    only (generative models are trained on ``x``); labels, when known, are in
    :attr:`y`, aligned with :attr:`x`.

    **Dynamic binarization.** When :attr:`binarization` is ``"dynamic"``,
    :attr:`x` keeps the grayscale values as Bernoulli probabilities and each
    access draws a fresh binary sample:

    * ``data[i]`` draws with torch's global random generator. A
      :class:`~torch.utils.data.DataLoader` therefore yields new draws every
      epoch, and ``torch.manual_seed(s)`` makes them reproducible: the loader
      seeds each worker process from the main process's generator, so workers
      draw different noise (a generator stored on the dataset would be copied
      into every worker and repeat the same noise).
    * :meth:`iter_batches` and :meth:`transform_batch` draw whole batches with an
      optional explicit :class:`torch.Generator`, the fast path for in-memory
      data.

    For every other binarization both return :attr:`x` unchanged.

    :param x: the data, float32.
    :param y: int64 labels aligned with ``x``, or ``None`` if unknown.
    :param name: dataset name, e.g. ``"binarized_mnist"``.
    :param split: ``"train"``, ``"valid"`` or ``"test"``.
    :param binarization: one of :data:`BINARIZATIONS`.
    :param source: the file (or generator) the data came from.
    :param subset_seed: seed of :meth:`subset` if this is a random subset.
    :param subset_of: size of the dataset the subset was drawn from.
    :param seed: seed that generated synthetic data (toy datasets), else ``None``.
    """

    x: torch.Tensor
    y: torch.Tensor | None = None
    name: str = "unnamed"
    split: str = "train"
    binarization: str | None = None
    source: str | None = None
    subset_seed: int | None = None
    subset_of: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or not self.x.is_floating_point():
            raise DataError(f"ArrayData.x must be a floating-point tensor, got {type(self.x)}.")
        if self.x.dim() < 2:
            raise DataError(f"ArrayData.x must have a batch dimension, got shape {tuple(self.x.shape)}.")
        if self.y is not None and (self.y.dim() != 1 or len(self.y) != len(self.x)):
            raise DataError(
                f"ArrayData.y must be 1-D with one label per row of x: x has {len(self.x)} rows, y has shape {tuple(self.y.shape)}."
            )
        if self.binarization not in BINARIZATIONS:
            raise DataError(f"Unknown binarization {self.binarization!r}; expected one of {BINARIZATIONS}.")

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: Any) -> torch.Tensor:
        """Return ``x[index]``; a fresh Bernoulli draw if binarization is dynamic."""
        return self.transform_batch(self.x[index])

    def __repr__(self) -> str:
        return (
            f"ArrayData(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"event_shape={self.event_shape}, labels={self.y is not None}, "
            f"binarization={self.binarization!r})"
        )

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one item, e.g. ``(1, 28, 28)`` or ``(2,)``."""
        return tuple(self.x.shape[1:])

    def transform_batch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply the per-draw transform to a batch taken from :attr:`x`.

        :param x: values indexed from :attr:`x`.
        :param generator: random generator for the Bernoulli draw (global one if
            ``None``); must live on ``x``'s device.
        :returns: ``torch.bernoulli(x)`` if binarization is dynamic, else ``x``.
        """
        if self.binarization == "dynamic":
            return torch.bernoulli(x, generator=generator)
        return x

    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[torch.Tensor]:
        """Yield batches of ``x`` (one epoch), with fresh dynamic draws.

        Faster than a DataLoader for data already in memory. Call it once per
        epoch: each call reshuffles and redraws.

        :param batch_size: rows per batch.
        :param shuffle: visit the rows in a random order.
        :param generator: generator for the order and the Bernoulli draws
            (on ``x``'s device); the global one if ``None``.
        :param drop_last: skip the last batch if it is smaller than ``batch_size``.
        """
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size}.")
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=generator, device=self.x.device)
        else:
            order = torch.arange(n, device=self.x.device)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield self.transform_batch(self.x[order[start : start + batch_size]], generator)

    def subset(self, n: int, seed: int = 0) -> ArrayData:
        """A seeded uniformly random subset of ``n`` rows, drawn without replacement.

        The chosen rows keep their original order (the indices are sorted), so
        the subset of a sorted set stays sorted but is still a uniform draw,
        never simply the first ``n`` rows. The draw uses
        ``numpy.random.default_rng(seed).permutation``, the same on every
        platform and device.

        :param n: number of rows, ``0 <= n <= len(self)``.
        :param seed: non-negative integer seed.
        :raises DataError: ``n`` is negative or larger than the dataset.
        """
        total = len(self)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise DataError(f"Subset size must be a non-negative integer, got {n!r}.")
        if n > total:
            raise DataError(f"Cannot take a subset of {n} items from {self.name!r} split {self.split!r}, which has only {total}.")
        rng = np.random.default_rng(check_seed(seed))
        index = torch.from_numpy(np.sort(rng.permutation(total)[:n])).to(self.x.device)
        return replace(
            self,
            x=self.x[index],
            y=None if self.y is None else self.y[index.to(self.y.device)],
            subset_seed=int(seed),
            subset_of=total,
        )

    def to(self, device: torch.device | str) -> ArrayData:
        """A copy with :attr:`x` and :attr:`y` moved to ``device``."""
        return replace(self, x=self.x.to(device), y=None if self.y is None else self.y.to(device))

    def protocol(self) -> dict[str, Any]:
        """The facts needed to reproduce or report this data, as a plain dict.

        Keys: ``name``, ``split``, ``n``, ``binarization``, plus ``subset_seed`` and
        ``subset_of`` for a random subset and ``seed`` for generated data.
        """
        out: dict[str, Any] = {
            "name": self.name,
            "split": self.split,
            "n": len(self),
            "binarization": self.binarization,
        }
        if self.subset_seed is not None:
            out["subset_seed"] = self.subset_seed
            out["subset_of"] = self.subset_of
        if self.seed is not None:
            out["seed"] = self.seed
        return out


def check_seed(seed: Any) -> int:
    """Return ``seed`` as an int, or raise :class:`DataError` if it is not a valid seed."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"A seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def check_size(n: Any) -> int:
    """Return ``n`` as an int, or raise :class:`DataError` if it is not a positive number of points."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"The number of points n must be a positive integer, got {n!r}.")
    return int(n)


def apply_binarization(data: ArrayData, binarize: str | None) -> ArrayData:
    """Binarize grayscale data in ``[0, 1]`` as asked by ``load_dataset(binarize=...)``.

    :param binarize: ``None`` (keep grayscale), ``"threshold"`` (``x > 0.5``, fixed)
        or ``"dynamic"`` (keep ``x`` as probabilities and draw on access, see
        :class:`ArrayData`).
    """
    if binarize is None:
        return data
    if binarize == "threshold":
        return replace(data, x=(data.x > 0.5).to(data.x.dtype), binarization="threshold")
    if binarize == "dynamic":
        return replace(data, binarization="dynamic")
    raise DataError(f"Unknown binarize={binarize!r}; expected None, 'threshold' or 'dynamic'.")
