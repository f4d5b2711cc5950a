"""Pyro's :class:`~pyro.distributions.transforms.Permute` as a module: its permutation a buffer.

Pyro's ``Permute`` is a plain transform holding its permutation as an attribute, so it is neither
moved by ``.to(device)`` nor registered in a flow's module tree. This subclass keeps Pyro's
``_call`` / ``_inverse`` / ``log_abs_det_jacobian`` (zero) and only stores the permutation as a buffer.
Between coupling layers it changes which half stays fixed (Real NVP alternates the halves).
"""

from __future__ import annotations

import torch
from pyro.distributions.torch_transform import TransformModule
from pyro.distributions.transforms import Permute


class Permutation(Permute, TransformModule):
    """Permute the entries of dimension ``dim`` (``-1``: a vector's entries, ``-3``: an image's channels)."""

    def __init__(self, permutation: torch.Tensor, dim: int = -1):
        TransformModule.__init__(self, cache_size=1)
        self.register_buffer("permutation", torch.as_tensor(permutation, dtype=torch.long))
        self.dim = dim

    @property
    def inv_permutation(self):
        # computed from the buffer (Pyro caches it once, on the device of the first call)
        return torch.argsort(self.permutation)

    def with_cache(self, cache_size=1):
        return self


def reverse(size: int, dim: int = -1) -> Permutation:
    """The reversal of ``size`` entries of dimension ``dim``."""
    return Permutation(torch.arange(size - 1, -1, -1), dim=dim)
