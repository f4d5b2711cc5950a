"""The gated PixelCNN's networks: causal masks (by autograd), no blind spot, masks equal to explicitly masked kernels.

The independent truths: the gradient of an output with respect to the inputs (which pixels it can read
at all), and a plain ``k x k`` convolution whose kernel is multiplied by the textbook mask A / B.
"""

import pytest
import torch
from torch.nn import functional as F

from pyro_gen.errors import ConfigError, DataError
from pyro_gen.nn.pixelcnn import CausalConv2d, GatedPixelCNN

H, W = 5, 4


def _randomize(net: torch.nn.Module) -> torch.nn.Module:
    """Non-zero everywhere (the label embedding starts at zero), so that a zero gradient means "not connected"."""
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return net


def _input_gradient(out_fn, x: torch.Tensor) -> torch.Tensor:
    """``|d out / d x_j|`` summed over the batch of images (several, so that a ReLU that happens to be off
    for one image cannot hide a connection), one value per pixel in raster order."""
    x = x.clone().requires_grad_()
    out_fn(x).backward()
    return x.grad.abs().sum(0)[0].flatten()


def _conditioned(kind: str):
    net = GatedPixelCNN(3, channels=4, layers=3, first_kernel=3, kernel=3, num_classes=3 if kind != "none" else None,
                        cond_channels=2 if kind == "both" else None)  # fmt: skip
    kwargs = {}
    if kind != "none":
        kwargs["y"] = torch.tensor([1, 0, 2, 1])
    if kind == "both":
        kwargs["cond"] = torch.randn(4, 2, H, W)
    return _randomize(net), kwargs


@pytest.mark.parametrize("kind", ["none", "labels", "both"])
def test_every_layer_of_both_stacks_reads_only_earlier_pixels(kind):
    torch.manual_seed(0)
    net, kwargs = _conditioned(kind)
    x = torch.rand(4, 1, H, W).round()
    for r in range(H):
        for c in range(W):
            i = r * W + c
            for layer in range(net.num_layers):
                for stack in (0, 1):  # 0: vertical, 1: horizontal

                    def feature(inp, layer=layer, stack=stack, r=r, c=c):
                        features = []
                        net(inp, features=features, **kwargs)
                        return features[layer][stack][:, :, r, c].sum()

                    g = _input_gradient(feature, x)
                    if stack == 0:  # the vertical stack reads the rows above only
                        assert torch.all(g[r * W :] == 0), (layer, r, c)
                    else:  # the horizontal stack: strictly before (r, c) in raster order
                        assert torch.all(g[i:] == 0), (layer, r, c)
            g = _input_gradient(lambda inp, r=r, c=c: net(inp, **kwargs)[:, :, r, c].sum(), x)
            assert torch.all(g[i:] == 0), (r, c)
            if i > 0:
                assert g[:i].count_nonzero() > 0, (r, c)


def test_no_blind_spot_every_earlier_pixel_reaches_the_output():
    torch.manual_seed(1)
    # reach = 3 // 2 + 2 * (3 // 2) = 3 rows above and columns either side: the whole 5 x 4 past
    net = _randomize(GatedPixelCNN(1, channels=6, layers=3, first_kernel=3, kernel=3))
    assert net.reach == 3
    x = torch.rand(4, 1, H, W).round()
    for r in range(H):
        for c in range(W):
            g = _input_gradient(lambda inp, r=r, c=c: net(inp)[:, 0, r, c].sum(), x)
            earlier = [j for j in range(r * W + c) if (r - j // W) <= net.reach]
            assert all(g[j] != 0 for j in earlier), (r, c, [j for j in earlier if g[j] == 0])


def test_a_single_masked_stack_would_have_a_blind_spot_which_the_vertical_link_removes():
    # the horizontal stack alone (links zeroed) reads nothing above the pixel: the vertical stack is what reaches it
    torch.manual_seed(2)
    net = _randomize(GatedPixelCNN(1, channels=4, layers=3, first_kernel=3, kernel=3))
    with torch.no_grad():
        for layer in net.layers:
            layer.link.weight.zero_()
    g = _input_gradient(lambda inp: net(inp)[:, 0, 2, 1].sum(), torch.rand(4, 1, H, W).round())
    assert torch.all(g[: 2 * W] == 0) and g[2 * W] != 0


@pytest.mark.parametrize("stack", ["vertical", "horizontal"])
@pytest.mark.parametrize("mask", ["A", "B"])
@pytest.mark.parametrize("kernel", [3, 5])
def test_the_cropped_convolution_equals_the_textbook_masked_convolution(stack, mask, kernel):
    torch.manual_seed(3)
    conv = CausalConv2d(2, 3, kernel, stack, mask)
    half = kernel // 2
    # the k x k mask of van den Oord et al. 2016: ones strictly before the centre (A), or up to it (B)
    full = torch.zeros(3, 2, kernel, kernel)
    cut = half + (mask == "B")
    if stack == "vertical":
        full[:, :, :cut, :] = conv.conv.weight
    else:
        full[:, :, half, :cut] = conv.conv.weight[:, :, 0, :]
    x = torch.randn(2, 2, 6, 7)
    expected = F.conv2d(x, full, conv.conv.bias, padding=half)
    assert torch.allclose(conv(x), expected, atol=1e-6)


def test_the_windowed_passes_give_the_full_pass_logits():
    torch.manual_seed(4)
    net = _randomize(GatedPixelCNN(5, channels=4, layers=2, first_kernel=3, kernel=3, num_classes=2, cond_channels=3))
    x, y, cond = torch.rand(2, 1, 6, 7), torch.tensor([0, 1]), torch.randn(2, 3, 6, 7)
    full = net(x, y=y, cond=cond)
    terms = net.conditioning(2, y, cond)
    reach = net.reach
    for r in range(6):
        rows = slice(max(0, r - reach), r + 1)
        v_rows = net.vertical_row(x[:, :, rows], [(cv[..., rows, :], None) for cv, _ in terms])
        for c in range(7):
            cols = slice(max(0, c - reach), c + 1)
            h_terms = [(None, ch[..., r : r + 1, cols]) for _, ch in terms]
            logits = net.horizontal_pixel(x[:, :, r : r + 1, cols], [v[..., cols] for v in v_rows], h_terms)
            assert torch.allclose(logits, full[:, :, r, c], atol=1e-5), (r, c)


def test_bad_settings_and_inputs_are_refused_by_name():
    with pytest.raises(ConfigError, match="odd positive integer"):
        GatedPixelCNN(1, kernel=4)
    with pytest.raises(ConfigError, match="first_kernel must be at least 3"):
        GatedPixelCNN(1, first_kernel=1)
    with pytest.raises(ConfigError, match="mask-A convolution needs a kernel of at least 3"):
        CausalConv2d(1, 1, 1, "vertical", "A")
    with pytest.raises(ConfigError, match="stack must be"):
        CausalConv2d(1, 1, 3, "diagonal", "A")
    with pytest.raises(ConfigError, match="channels must be a positive integer"):
        GatedPixelCNN(1, channels=0)
    with pytest.raises(ConfigError, match="num_classes must be an integer >= 2"):
        GatedPixelCNN(1, num_classes=1)
    net = GatedPixelCNN(1, channels=4, layers=1, num_classes=3)
    with pytest.raises(DataError, match="pass y"):
        net(torch.zeros(1, 1, 4, 4))
    with pytest.raises(DataError, match="single-channel images"):
        net(torch.zeros(1, 3, 4, 4), y=torch.tensor([0]))
    with pytest.raises(DataError, match="takes no feature map"):
        net(torch.zeros(1, 1, 4, 4), y=torch.tensor([0]), cond=torch.zeros(1, 2, 4, 4))
