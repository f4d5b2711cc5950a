"""Gated PixelCNN networks: causal (masked) convolutions and gated residual blocks, plain torch.

A PixelCNN (van den Oord et al. 2016a) models an image pixel by pixel in raster order,
``p(x) = prod_i p(x_i | x_<i)``; a network computes every conditional in one pass because its
convolutions are *masked*: the output at pixel ``i`` never reads an input pixel at or after ``i``.
The first layer uses mask A (the centre tap excluded: the pixel itself is unseen), later layers
mask B (the centre tap included: the features there already depend on earlier pixels only).

A single stack of masked 3x3 convolutions has a *blind spot* (the pixels above and to the right
never reach the output). The gated PixelCNN (van den Oord et al. 2016b, "Conditional Image
Generation with PixelCNN Decoders") removes it with two stacks:

* a **vertical stack** whose feature at ``(r, c)`` reads only the rows strictly above ``r``
  (every column within its width), growing by ``kernel // 2`` rows and columns per layer;
* a **horizontal stack** whose feature at ``(r, c)`` reads row ``r`` left of ``c`` (mask A in the
  first layer, the centre too with mask B after) and, through a 1x1 link, the vertical stack at
  ``(r, c)``; it carries residual connections.

Each layer's activation is the gate ``tanh(a) * sigmoid(b)`` (a and b: the two halves of the
convolution's output), into which class labels (an embedding) and a feature map (a 1x1
convolution of it, e.g. a VAE decoder's output in PixelVAE, Gulrajani et al. 2017) are added.

The masks are applied by *cropping* the kernels instead of multiplying them by zeros:
:class:`CausalConv2d` is the masked convolution with the masked-out taps removed and the image
padded on the top / left so that the remaining taps line up (the form van den Oord et al. 2016b
describe, "vertical n x n convolution... shifted"); it computes exactly what the masked kernel
computes, at half or less of its cost, and the zero taps cannot be trained back to non-zero.

References:
  van den Oord, Kalchbrenner & Kavukcuoglu, Pixel Recurrent Neural Networks, ICML 2016 (masks A / B).
  van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves & Kavukcuoglu, Conditional Image Generation
  with PixelCNN Decoders, NeurIPS 2016 (gated blocks, two stacks, conditioning).
  Gulrajani et al., PixelVAE: A Latent Variable Model for Natural Images, ICLR 2017.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pyro_gen.errors import ConfigError, DataError


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def _odd_kernel(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ConfigError(f"{name} must be an odd positive integer (the kernel is centred on the pixel), got {value!r}")
    return value


class CausalConv2d(nn.Module):
    """A masked convolution of one PixelCNN stack, with the masked taps cropped away.

    ``stack="vertical"``: a ``kernel x kernel`` mask over the rows above the centre (mask A: the
    centre row excluded, so the output at row ``r`` reads rows ``r - kernel//2 .. r - 1``; mask B:
    the centre row included, rows ``r - kernel//2 .. r``), every column ``c - kernel//2 .. c + kernel//2``.
    ``stack="horizontal"``: a ``1 x kernel`` mask over row ``r`` (mask A: columns ``c - kernel//2 .. c - 1``;
    mask B: ``c - kernel//2 .. c``). The output has the input's height and width.

    :param mask: ``"A"`` (first layer: the pixel's own input excluded) or ``"B"`` (later layers).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stack: str, mask: str):
        super().__init__()
        _odd_kernel(kernel, "kernel")
        if stack not in ("vertical", "horizontal"):
            raise ConfigError(f"stack must be 'vertical' or 'horizontal', got {stack!r}")
        if mask not in ("A", "B"):
            raise ConfigError(f"mask must be 'A' (first layer) or 'B' (later layers), got {mask!r}")
        if mask == "A" and kernel == 1:
            raise ConfigError("a mask-A convolution needs a kernel of at least 3 (a 1-wide mask A has no taps)")
        self.stack, self.mask, self.kernel = stack, mask, kernel
        half = kernel // 2
        reach = half + (mask == "B")  # how many rows (vertical) / columns (horizontal) the kept taps span
        shape = (reach, kernel) if stack == "vertical" else (1, reach)
        self.conv = nn.Conv2d(in_channels, out_channels, shape)
        # F.pad's order: (left, right, top, bottom)
        if stack == "vertical":
            self.padding = (half, half, half, 0)
        else:
            self.padding = (half, 0, 0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        out = self.conv(F.pad(x, self.padding))
        # mask A's taps stop one row / column short of the centre: the output is one longer, and
        # its first h rows (w columns) are the ones whose taps lie strictly before the pixel
        return out[..., :h, :w]


def gate(pre: torch.Tensor) -> torch.Tensor:
    """The gated activation ``tanh(a) * sigmoid(b)`` of the two channel halves ``(a, b)`` of ``pre``."""
    a, b = pre.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer of both stacks (van den Oord et al. 2016b, figure 2).

    ``v_pre = V(v) + c_v``, ``v' = gate(v_pre)``; ``h_pre = H(h) + L(v_pre) + c_h``,
    ``h' = h + W(gate(h_pre))`` (no residual in the first layer, whose input is the image). ``c_v``,
    ``c_h``: the conditioning terms (label embedding, projected feature map), added to both halves.

    :param first: the first layer (mask A, input channels = the image's).
    """

    def __init__(self, in_channels: int, channels: int, kernel: int, first: bool):
        super().__init__()
        mask = "A" if first else "B"
        self.first = first
        self.vertical = CausalConv2d(in_channels, 2 * channels, kernel, "vertical", mask)
        self.horizontal = CausalConv2d(in_channels, 2 * channels, kernel, "horizontal", mask)
        self.link = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward_vertical(self, v: torch.Tensor, cond_v) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v_pre, v')``: the vertical stack's pre-activation (linked into the horizontal stack) and output."""
        pre = self.vertical(v)
        if cond_v is not None:
            pre = pre + cond_v
        return pre, gate(pre)

    def forward_horizontal(self, h: torch.Tensor, v_pre: torch.Tensor, cond_h) -> torch.Tensor:
        pre = self.horizontal(h) + self.link(v_pre)
        if cond_h is not None:
            pre = pre + cond_h
        out = self.out(gate(pre))
        return out if self.first else h + out


class GatedPixelCNN(nn.Module):
    """A gated PixelCNN over single-channel images: ``logits[n, :, r, c]`` is a function of the pixels before ``(r, c)``.

    :param out_per_pixel: logits per pixel: 1 for Bernoulli pixels, ``levels`` for a softmax over levels.
    :param channels: feature channels of each stack.
    :param layers: gated layers (the first uses mask A).
    :param first_kernel: kernel of the first layer (7 in van den Oord et al. 2016b).
    :param kernel: kernel of the later layers (3).
    :param head: hidden channels of the two 1x1 output convolutions (ReLU between), ``None``: ``channels``.
    :param num_classes: class conditioning (an embedding of the label added into every gate), or ``None``.
    :param cond_channels: conditioning on a feature map ``(N, cond_channels, H, W)`` (1x1 projections into
        every gate: PixelVAE), or ``None``.

    Inputs are images ``(N, 1, H, W)`` with values in [0, 1] (the network sees ``2 x - 1``).
    """

    def __init__(
        self,
        out_per_pixel: int,
        channels: int = 32,
        layers: int = 5,
        first_kernel: int = 7,
        kernel: int = 3,
        head: int | None = None,
        num_classes: int | None = None,
        cond_channels: int | None = None,
    ):
        super().__init__()
        _positive_int(out_per_pixel, "out_per_pixel")
        _positive_int(channels, "channels")
        _positive_int(layers, "layers")
        _odd_kernel(first_kernel, "first_kernel")
        _odd_kernel(kernel, "kernel")
        if first_kernel < 3:
            raise ConfigError(f"first_kernel must be at least 3 (mask A excludes the centre), got {first_kernel}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2):
            raise ConfigError(f"num_classes must be an integer >= 2 (or None), got {num_classes!r}")
        if cond_channels is not None:
            _positive_int(cond_channels, "cond_channels")
        head = channels if head is None else _positive_int(head, "head")
        self.out_per_pixel, self.channels, self.num_layers = out_per_pixel, channels, layers
        self.first_kernel, self.kernel = first_kernel, kernel
        self.num_classes, self.cond_channels = num_classes, cond_channels
        self.layers = nn.ModuleList(
            [GatedLayer(1, channels, first_kernel, True)] + [GatedLayer(channels, channels, kernel, False) for _ in range(layers - 1)]
        )
        # one conditioning term per layer and stack (2C each): the paper's V_f^T h and V_g^T h
        if num_classes is not None:
            self.label_embedding = nn.Embedding(num_classes, layers * 4 * channels)
            nn.init.zeros_(self.label_embedding.weight)  # starts unconditional; the labels' effect is learned
        if cond_channels is not None:
            self.cond_projection = nn.Conv2d(cond_channels, layers * 4 * channels, 1)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, head, 1), nn.ReLU(), nn.Conv2d(head, out_per_pixel, 1))
        # channels-last convolutions are about 25% faster on CPU (oneDNN) for these small kernels
        self.to(memory_format=torch.channels_last)

    @property
    def reach(self) -> int:
        """How many rows above (and columns to the left) a pixel's logits read at most: the sampler's window."""
        return self.first_kernel // 2 + (self.num_layers - 1) * (self.kernel // 2)

    def conditioning(self, n: int, y=None, cond=None) -> list[tuple] | None:
        """Per layer ``(c_v, c_h)``: the label and feature-map terms added into the gates, or ``None`` without conditioning."""
        if self.num_classes is not None and y is None:
            raise DataError(f"this PixelCNN is conditioned on class labels (num_classes={self.num_classes}): pass y, one label per image")
        if self.num_classes is None and y is not None:
            raise DataError("this PixelCNN is unconditional (num_classes=None) but was given class labels y")
        if self.cond_channels is not None and cond is None:
            raise DataError(f"this PixelCNN is conditioned on a feature map ({self.cond_channels} channels): pass cond")
        if self.cond_channels is None and cond is not None:
            raise DataError("this PixelCNN takes no feature map (cond_channels=None) but was given cond")
        total = None
        if y is not None:
            total = self.label_embedding(y)[:, :, None, None]
        if cond is not None:
            if cond.dim() != 4 or cond.shape[0] != n or cond.shape[1] != self.cond_channels:
                raise DataError(f"cond must be a feature map ({n}, {self.cond_channels}, H, W), got shape {tuple(cond.shape)}")
            projected = self.cond_projection(cond)
            total = projected if total is None else total + projected
        if total is None:
            return None
        return [tuple(t.chunk(2, dim=1)) for t in total.chunk(self.num_layers, dim=1)]

    def forward(self, x: torch.Tensor, y=None, cond=None, features: list | None = None) -> torch.Tensor:
        """Logits ``(N, out_per_pixel, H, W)`` of every pixel's conditional given the pixels before it.

        :param features: a list that receives each layer's ``(v', h')`` (for the causality tests).
        """
        if x.dim() != 4 or x.shape[1] != 1:
            raise DataError(f"a PixelCNN reads single-channel images (N, 1, H, W), got shape {tuple(x.shape)}")
        c = self.conditioning(x.shape[0], y, cond)
        v = h = (2 * x - 1).contiguous(memory_format=torch.channels_last)
        for i, layer in enumerate(self.layers):
            cv, ch = (None, None) if c is None else c[i]
            v_pre, v = layer.forward_vertical(v, cv)
            h = layer.forward_horizontal(h, v_pre, ch)
            if features is not None:
                features.append((v, h))
        return self.head(h)

    # -- the windowed forward passes the fast sampler makes --------------------------------------
    def vertical_row(self, window: torch.Tensor, cond_terms) -> list[torch.Tensor]:
        """Each layer's vertical pre-activation at the *last* row of ``window`` ``(N, 1, R, W)``, ``(N, 2C, 1, W)``.

        Exact when ``window`` holds at least the :attr:`reach` rows above that row: the vertical stack
        there reads nothing older (the window's top padding stands for rows it never reads).
        ``cond_terms``: per layer ``(c_v, c_h)`` cropped to the window's rows, or ``None``.
        """
        v = 2 * window - 1
        rows = []
        for i, layer in enumerate(self.layers):
            v_pre, v = layer.forward_vertical(v, None if cond_terms is None else cond_terms[i][0])
            rows.append(v_pre[..., -1:, :])
        return rows

    def horizontal_pixel(self, row: torch.Tensor, v_rows: list, cond_terms) -> torch.Tensor:
        """Logits ``(N, out_per_pixel)`` at the last column of ``row`` ``(N, 1, 1, w)``.

        ``v_rows``: :meth:`vertical_row`'s pre-activations cropped to the same columns; ``cond_terms``: per
        layer ``(c_v, c_h)`` cropped to the same row and columns, or ``None``. Exact when the row holds at
        least :attr:`reach` columns before the pixel (or starts at column 0).
        """
        h = 2 * row - 1
        for i, layer in enumerate(self.layers):
            h = layer.forward_horizontal(h, v_rows[i], None if cond_terms is None else cond_terms[i][1])
        return self.head(h[..., -1:])[:, :, 0, 0]
