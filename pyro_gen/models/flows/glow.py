"""Glow's invertible 1x1 convolution (Kingma & Dhariwal 2018, section 3.2), plain or LU-decomposed.

A 1x1 convolution with a ``C x C`` weight ``W`` mixes the channels of every pixel alike:
``x[:, i, j] = W z[:, i, j]``, so ``log |det dx/dz| = H * W * log |det W|``. It generalizes the fixed
channel permutations between Real NVP's coupling layers to a learned one. The weight starts as a
random rotation (``log |det W| = 0``). With ``lu=True`` it is kept as ``W = P L (U + diag(sign(s) exp(log|s|)))``
(``P`` a fixed permutation, ``L`` unit lower-, ``U`` strictly upper-triangular), so the log-det is
``sum log|s|``, O(C) instead of O(C^3). On a vector (event ``(D,)``) it is an invertible linear map.

Reference: D. P. Kingma, P. Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pyro_gen.models.flows.base import FlowLayer


class InvertibleConv1x1(FlowLayer):
    """``x = W z`` over the channels of images ``(C, H, W)`` (or the entries of vectors ``(D,)``)."""

    def __init__(self, shape, lu: bool = True):
        super().__init__(shape)
        channels = shape[0]
        self.lu = lu
        self._pixels = math.prod(shape[1:])
        rotation = torch.linalg.qr(torch.randn(channels, channels))[0]
        if lu:
            p, lower, upper = torch.linalg.lu(rotation)
            s = torch.diagonal(upper)
            self.register_buffer("p", p)
            self.register_buffer("sign_s", torch.sign(s))
            self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
            self.lower = nn.Parameter(lower * self.lower_mask)
            self.upper = nn.Parameter(torch.triu(upper, 1))
            self.log_s = nn.Parameter(s.abs().log())
        else:
            self.weight = nn.Parameter(rotation)

    def matrix(self) -> torch.Tensor:
        """The ``C x C`` weight ``W``."""
        if not self.lu:
            return self.weight
        eye = torch.eye(len(self.log_s), dtype=self.log_s.dtype, device=self.log_s.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return self.p @ lower @ upper

    def _logdet(self, x):
        log_det = self.log_s.sum() if self.lu else torch.linalg.slogdet(self.weight)[1]
        return (log_det * self._pixels).expand(self.batch_shape_of(x))

    def _apply_matrix(self, w, v):
        if len(self.data_shape) == 1:
            return v @ w.T
        return torch.einsum("ij,...jhw->...ihw", w, v)

    def generate(self, z):
        return self._apply_matrix(self.matrix(), z), self._logdet(z)

    def normalize(self, x):
        return self._apply_matrix(torch.linalg.inv(self.matrix()), x), self._logdet(x)
