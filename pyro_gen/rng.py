"""Seeded blocks that leave the global random state as they found it."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int, device=None):
    """Run the block with torch's generators seeded with ``seed``, then restore them.

    ``torch.manual_seed`` seeds the CPU and every CUDA generator, so the CUDA state of ``device``
    (when it is a CUDA device) is saved and restored with the CPU's: a figure or an evaluation
    drawn with a fixed seed must not change the random stream of the training that follows it.
    """
    device = torch.device("cpu" if device is None else device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
