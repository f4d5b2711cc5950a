"""Mixed precision for training steps: the networks in bfloat16, every density in float32.

``Trainer(precision="bf16")`` (config ``train.precision: bf16``) runs each training step's forward pass
under :func:`torch.autocast` with ``dtype=torch.bfloat16`` (CUDA, or CPUs with bf16 support): matrix
products and convolutions, the bulk of a convolutional VAE's, DCGAN's or PixelCNN's step, run in
bfloat16. What the objective is made of stays float32: the places that turn network outputs into
distributions (a guide's ``q(z | x)``, a model's prior and likelihood, a PixelCNN's logits) leave
autocast through :func:`float32_region` and :func:`as_float32`, so log-densities, KL terms, log-determinants
of flow layers in a guide, and the loss are computed in float32 from float32 parameters. Validation
and every score of :func:`~pyro_gen.evaluate` run without autocast: test log-likelihoods are float32
whatever the training precision. bf16 needs no loss scaling (its exponent range is float32's).

Off by default: it changes the training trajectory (bf16 keeps 8 bits of mantissa), and on CPUs
without bf16 matrix units it is slower. Explicit densities whose networks *are* the density
(flows: every layer's log-determinant) refuse it; see the families' checks.
"""

from __future__ import annotations

import contextlib

import torch

from pyro_gen.config import PRECISIONS
from pyro_gen.errors import ConfigError

_LOW = (torch.bfloat16, torch.float16)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(map(repr, PRECISIONS))}")
    return precision


def training_autocast(precision: str, device: torch.device):
    """The context of one training step's forward pass: autocast to bfloat16 for ``"bf16"``, nothing for ``"float32"``."""
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def autocast_active() -> bool:
    """Whether a training step's autocast is on (CPU or CUDA): one C call each, cheap enough for every step."""
    return torch.is_autocast_enabled("cpu") or (torch.is_autocast_enabled("cuda"))


def float32_region():
    """A region where autocast is off (nothing to enter when it is already off, the default path's case)."""
    if not autocast_active():
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    for device_type in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device_type):
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
    return stack


def as_float32(t):
    """``t`` in float32 when it is a bfloat16 / float16 tensor (a network's output under autocast), else ``t`` itself."""
    return t.float() if torch.is_tensor(t) and t.dtype in _LOW else t
