"""Quantized images as integer levels, and back: what discrete densities and dequantized flows read.

Image sets are stored as floats ``k / (L - 1)`` in [0, 1] with ``L`` intensity levels
(:attr:`~pyro_gen.data.DatasetInfo.levels`: 256 for 8-bit grayscale, 17 for scikit-learn's digits,
2 for binary images). A PixelCNN's softmax over levels and a flow's uniform dequantization
(``(k + u) / L``, Dinh et al. 2017; Theis et al. 2016) both need the integers ``k``. Values off the
grid are refused, never rounded: a model scored on the wrong grid reports a wrong likelihood.
"""

import torch

from pyro_gen.errors import DataError


def to_levels(x: torch.Tensor, levels: int) -> torch.Tensor:
    """The integer levels ``k`` (int64) of images ``x = k / (levels - 1)`` in [0, 1].

    :raises DataError: ``x`` is not a float tensor in [0, 1] on the grid of ``levels`` values.
    """
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 2:
        raise DataError(f"levels must be an integer >= 2, got {levels!r}")
    if not torch.is_tensor(x) or not x.is_floating_point():
        kind = x.dtype if torch.is_tensor(x) else type(x).__name__
        raise DataError(f"images must be a float tensor in [0, 1] (k / {levels - 1}), got {kind}; divide integer pixels by {levels - 1}")
    scaled = x * (levels - 1)
    k = scaled.round()
    if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise DataError(f"images must lie in [0, 1], got values in [{x.min().item():.4g}, {x.max().item():.4g}]")
    off = (scaled - k).abs().max().item() if x.numel() else 0.0
    if off > 1e-3:
        raise DataError(
            f"images are not on the grid of {levels} levels (k / {levels - 1}): a value is {off:.3g} of a level away; "
            "give quantized images (e.g. 8-bit values / 255), or a density for continuous values"
        )
    return k.long()


def from_levels(k: torch.Tensor, levels: int) -> torch.Tensor:
    """Images ``k / (levels - 1)`` in [0, 1] from integer levels (float32)."""
    return k.float() / (levels - 1)
