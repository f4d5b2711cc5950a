"""Figures of flow densities: the 2-D density picture (log-density heat map with the data, samples) and latent interpolations.

A flow's density is exact, so on 2-D data the picture users expect from a flow library is the
density itself on a grid, beside the data and the samples (as in the Real NVP, FFJORD and zuko
examples). For images a flow's latent code of any image is exact too (every layer's inverse), so
two test images can be joined by a line through the latent space and decoded along it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pyro_gen.analysis.plots import image_rows_figure, latent_line, pyplot, save_figure

#: the heat map's colour range: log-densities more than this many nats below the grid's maximum are drawn alike
LOG_DENSITY_RANGE = 12.0


@torch.no_grad()
def log_density_grid(model, lows, highs, points: int = 200, block: int = 8192):
    """``(xs, ys, log p)`` of a 2-D flow on a ``points x points`` grid over ``[lows, highs]`` (``log p`` is ``(points, points)``, rows = y)."""
    xs = torch.linspace(float(lows[0]), float(highs[0]), points)
    ys = torch.linspace(float(lows[1]), float(highs[1]), points)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    device = model._reference.device
    values = torch.cat([model.log_prob(grid[i : i + block].to(device)).cpu() for i in range(0, len(grid), block)])
    return xs, ys, values.reshape(points, points)


def density_figure(
    model, data: torch.Tensor, samples: torch.Tensor, path, title: str = "", points: int = 200, true_log_density=None
) -> Path:
    """The 2-D density picture: log-density heat map with the data over it, the density, and samples beside the data.

    :param model: a fitted :class:`~pyro_gen.models.flow_density.FlowDensity` on 2-D vectors.
    :param data: points to draw over the density (e.g. the test split).
    :param samples: the flow's samples.
    :param true_log_density: optionally a function of ``(N, 2)`` points giving the true log-density: a fourth panel.
    """
    plt = pyplot()
    data, samples = data.detach().cpu(), samples.detach().cpu()
    both = torch.cat([data, samples[: len(data)]])
    lows, highs = both.quantile(0.002, 0), both.quantile(0.998, 0)
    pad = 0.15 * (highs - lows)
    lows, highs = lows - pad, highs + pad
    xs, ys, log_p = log_density_grid(model, lows, highs, points)
    extent = (float(xs[0]), float(xs[-1]), float(ys[0]), float(ys[-1]))
    panels = 4 if true_log_density is not None else 3
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.4))
    top = float(log_p.max())
    image = axes[0].imshow(
        log_p.numpy(), origin="lower", extent=extent, cmap="viridis", vmin=top - LOG_DENSITY_RANGE, vmax=top, aspect="auto"
    )
    axes[0].scatter(data[:, 0], data[:, 1], s=1, color="white", alpha=0.4, label=f"data ({len(data)})")
    axes[0].set_title(f"log-density (colours span {LOG_DENSITY_RANGE:g} nats), with the data", fontsize=9)
    fig.colorbar(image, ax=axes[0], fraction=0.046, pad=0.04)
    density = log_p.exp()
    # a narrow mode's peak would make the rest of the density black: the colours saturate at the 99.5th percentile
    ceiling = float(density.flatten().quantile(0.995))
    axes[1].imshow(density.numpy(), origin="lower", extent=extent, cmap="magma", vmin=0, vmax=ceiling or None, aspect="auto")
    axes[1].set_title("density (colours saturate at its 99.5th percentile)", fontsize=9)
    axes[2].scatter(data[:, 0], data[:, 1], s=1, alpha=0.3, color="tab:blue", label=f"data ({len(data)})")
    axes[2].scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.3, color="tab:orange", label=f"samples ({len(samples)})")
    axes[2].set_xlim(extent[0], extent[1]), axes[2].set_ylim(extent[2], extent[3])
    legend = axes[2].legend(loc="upper right", fontsize=7)
    for handle in legend.legend_handles:
        handle.set_sizes([20])
        handle.set_alpha(1)
    axes[2].set_title("samples over the data", fontsize=9)
    if true_log_density is not None:
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
        truth = true_log_density(grid).reshape(points, points)
        axes[3].imshow(truth.numpy(), origin="lower", extent=extent, cmap="viridis", vmin=top - LOG_DENSITY_RANGE, vmax=top, aspect="auto")
        axes[3].set_title("true log-density (same colours)", fontsize=9)
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


@torch.no_grad()
def interpolation_figure(model, starts: torch.Tensor, ends: torch.Tensor, path, steps: int = 10, title: str = "") -> Path:
    """Rows of images decoded along straight lines between the latent codes of ``starts[i]`` and ``ends[i]``.

    The end points are the images themselves: a flow's code (at the centre of each pixel's bin) decodes exactly back.
    """
    codes = latent_line(model.encode(starts), model.encode(ends), steps)  # (rows, steps, D)
    rows = [model.decode(line) for line in codes]
    labels = [f"pair {i + 1}" for i in range(len(rows))]
    return save_figure(image_rows_figure(rows, labels, title), path, tight=False)
