"""Pictures of a fitted model: sample grids, reconstructions, latent interpolations, scatters of samples over data.

Figures are computed from the model's Pyro program (interpolation conditions the latent
site with :func:`pyro.poutine.condition`) and written atomically as PNG files.
Image grids show the likelihood's mean (e.g. pixel probabilities), not a noisy draw.

Every matplotlib figure of :mod:`pyro_gen.analysis` is written by :func:`save_figure` (atomic, laid
out, closed); the functions that build a figure with text on it (``*_figure``) return it unsaved,
so that what it says can be checked before it is written.
"""

import textwrap
from pathlib import Path

import numpy as np
import pyro.poutine as poutine
import torch

from pyro_gen.io import atomic_path
from pyro_gen.rng import seeded


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (unless a backend was chosen already)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save_png(array, path: Path, cmap="gray") -> Path:
    plt = pyplot()
    path = Path(path)
    with atomic_path(path) as tmp:
        plt.imsave(tmp, array, cmap=cmap, vmin=0.0, vmax=1.0)
    return path


def save_figure(figure, path, dpi: int = 100, tight: bool = True) -> Path:
    """Write a matplotlib figure as a PNG, atomically, and close it: the one way figures of :mod:`pyro_gen.analysis` are saved.

    :param figure: a ``Figure``, or an ``Axes`` or array of axes (as ArviZ's plots return) of the figure.
    :param path: the PNG file.
    :param dpi: resolution.
    :param tight: apply ``tight_layout`` first, unless the figure already has a layout engine
        (e.g. ``layout="constrained"``, which would otherwise be replaced).
    """
    plt = pyplot()
    first = np.ravel(figure)[0] if not isinstance(figure, plt.Figure) else figure
    fig = first if isinstance(first, plt.Figure) else first.figure
    path = Path(path)
    try:
        if tight and fig.get_layout_engine() is None:
            fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def image_grid(images: torch.Tensor, nrow: int, pad: int = 1) -> torch.Tensor:
    """Tile ``(N, C, H, W)`` images (C = 1 or 3, values in [0, 1]) into one ``(H', W'[, 3])`` array."""
    images = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = images.shape
    ncol = (n + nrow - 1) // nrow
    grid = torch.ones(c, nrow * (h + pad) + pad, ncol * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = images[i]
    return grid[0] if c == 1 else grid.permute(1, 2, 0)


def save_image_grid(images: torch.Tensor, path, nrow: int | None = None, title: str | None = None) -> Path:
    """Write images as one PNG grid (atomically).

    :param title: what the grid shows (the model, how the images were drawn), written above it; without
        one the PNG is the bare grid, pixel for pixel.
    """
    if images.dim() != 4:
        raise ValueError(f"image grids need (N, C, H, W) images, got shape {tuple(images.shape)}")
    nrow = nrow or max(1, int(len(images) ** 0.5))
    array = image_grid(_enlarged(images), nrow).numpy()
    if not title:
        return _save_png(array, path)
    plt = pyplot()
    # two screen pixels per image pixel, and room for a title of up to two lines
    height, width = array.shape[:2]
    fig = plt.figure(figsize=(max(2 * width / 100, 4.0), 2 * height / 100 + 0.6), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(array, cmap=None if array.ndim == 3 else "gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(textwrap.fill(title, 60), fontsize=9)
    return save_figure(fig, path)


def _enlarged(images: torch.Tensor) -> torch.Tensor:
    # enlarge small images (8x8 digits) so that a grid is legible without zooming
    scale = max(1, 32 // images.shape[-2])
    return images.repeat_interleave(scale, -2).repeat_interleave(scale, -1) if scale > 1 else images


def image_rows_figure(rows, labels, title: str = ""):
    """A figure of image rows, each named on its left (e.g. ``input`` above ``reconstruction``).

    :param rows: a list of ``(N, C, H, W)`` image batches in ``[0, 1]``, one row each.
    :param labels: one label per row.
    :param title: a title above the rows.
    :returns: the unsaved matplotlib figure (write it with :func:`save_figure`).
    """
    if len(rows) != len(labels):
        raise ValueError(f"{len(rows)} image rows but {len(labels)} labels")
    plt = pyplot()
    arrays = [image_grid(_enlarged(r.detach().cpu()), nrow=1).numpy() for r in rows]
    height, width = max(a.shape[0] for a in arrays), max(a.shape[1] for a in arrays)
    # about 0.9 inch per image row, plus room for the labels on the left
    row_inches = 0.9
    fig, axes = plt.subplots(
        len(rows),
        1,
        figsize=(1.6 + row_inches * width / height, 0.5 * bool(title) + row_inches * len(rows) + 0.2),
        squeeze=False,
        layout="constrained",
    )
    for ax, array, label in zip(axes[:, 0], arrays, labels):
        ax.imshow(array, cmap=None if array.ndim == 3 else "gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=11)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def scatter_samples(samples: torch.Tensor, real: torch.Tensor, name: str, path, label: str = "samples", title: str | None = None) -> Path:
    """Samples over the data (the first two coordinates), with the modes of a toy mixture marked.

    :param samples: ``(N, ...)`` samples; flattened, their first two coordinates are drawn (1-D data: against the point's index).
    :param real: the data they are drawn over (e.g. the test split).
    :param name: the dataset's name; the modes of ``ring8`` / ``grid25`` are marked.
    :param path: the PNG file.
    :param label: the samples' name in the legend (``"samples"``; e.g. ``"model (means)"``).
    :param title: default ``"GAN samples over <name>"``.
    """
    from pyro_gen.data.toy import NAMES as TOY_NAMES
    from pyro_gen.data.toy import toy_modes

    plt = pyplot()
    samples, real = samples.detach().reshape(len(samples), -1).cpu(), real.detach().reshape(len(real), -1).cpu()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    # the second coordinate of 1-D data is the point's index, so that the points do not overlap
    column = (lambda x: x[:, 1]) if samples.shape[1] > 1 else (lambda x: torch.arange(len(x)))
    ax.scatter(real[:, 0], column(real), s=2, alpha=0.3, color="tab:blue", label=f"data ({len(real)} test points)")
    ax.scatter(samples[:, 0], column(samples), s=2, alpha=0.3, color="tab:orange", label=f"{label} ({len(samples)})")
    if name in TOY_NAMES:
        centers, _ = toy_modes(name)
        ax.scatter(centers[:, 0], centers[:, 1], marker="x", color="k", s=30, label="modes")
    legend = ax.legend(loc="upper right", fontsize=7)
    for handle in legend.legend_handles:  # the 2-pixel dots would be invisible in the legend
        handle.set_sizes([20])
        handle.set_alpha(1)
    ax.set_title(f"GAN samples over {name}" if title is None else title, fontsize=9)
    if samples.shape[1] > 1:
        ax.set_aspect("equal", adjustable="datalim")
    return save_figure(fig, path)


def latent_line(start: torch.Tensor, end: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` codes evenly spaced on the segment from ``start`` to ``end`` (both ends included).

    ``start`` and ``end`` are ``(..., d)``; the result is ``(..., steps, d)``: one line per leading index.
    The codes of every latent interpolation of :mod:`pyro_gen.analysis` (VAE and GAN).
    """
    t = torch.linspace(0, 1, steps, device=start.device)[:, None]
    return (1 - t) * start[..., None, :] + t * end[..., None, :]


def picture_kind(model) -> str:
    """How :meth:`~pyro_gen.models.LatentModel.picture` shows x, for figure titles."""
    lik = model.likelihood
    return "one autoregressive draw of x" if lik is not None and not lik.has_mean else "the likelihood's mean"


def _is_image(model) -> bool:
    return len(model.data_shape) == 3 and model.data_shape[0] in (1, 3)


@torch.no_grad()
def sample_images(model, n: int) -> torch.Tensor:
    """``n`` fresh draws from the model, as pictures: the likelihood's mean at each z ~ p(z) (one draw of x for an
    autoregressive likelihood, :meth:`~pyro_gen.models.LatentModel.picture`)."""
    params = model(batch_size=n)
    return model.picture(params)


@torch.no_grad()
def posterior_means(guide, x: torch.Tensor, num_samples: int = 64) -> list[torch.Tensor]:
    """Monte Carlo posterior means of each local latent (flows have no closed-form mean)."""
    return [q.sample((num_samples,)).mean(0) for q in guide.posterior(x)]


@torch.no_grad()
def reconstructions(model, guide, x: torch.Tensor) -> torch.Tensor:
    """Decode one posterior draw per datapoint: ``model`` conditioned on the guide's sample."""
    zs = [q.sample() for q in guide.posterior(x)]
    data = {lat.name: z for lat, z in zip(model.local_latents, zs)}
    return model.picture(poutine.condition(model, data=data)(batch_size=len(x)))


@torch.no_grad()
def interpolate(model, guide, x_start: torch.Tensor, x_end: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Decode ``steps`` points on the line between the posterior means of two datapoints.

    Returns ``(steps, *data_shape)``. Works for models with one local latent (e.g. a VAE's ``z``).
    """
    if len(model.local_latents) != 1:
        raise ValueError("interpolation needs a model with exactly one local latent")
    z0, z1 = (posterior_means(guide, x[None])[0][0] for x in (x_start, x_end))
    path = latent_line(z0, z1, steps)
    name = model.local_latents[0].name
    return model.picture(poutine.condition(model, data={name: path})(batch_size=steps))


@torch.no_grad()
def write_figures(model, guide, x_test: torch.Tensor, run_dir, seed: int = 0) -> list[Path]:
    """Write ``samples.png``, ``reconstructions.png`` and ``interpolation.png`` (image data) or
    ``samples.png`` as a scatter plot (2-D data) into ``run_dir``; returns the paths."""
    run_dir = Path(run_dir)
    device = next(model.parameters()).device
    with seeded(seed, device):
        x_test = x_test.to(device)
        if not _is_image(model):
            return [_scatter(model, x_test, run_dir / "samples.png")]
        title = f"64 draws from the model: {picture_kind(model)} at z ~ p(z)"
        paths = [save_image_grid(sample_images(model, 64), run_dir / "samples.png", nrow=8, title=title)]
        x = x_test[:8]
        recon = reconstructions(model, guide, x)
        figure = image_rows_figure([x, recon], ["input", "reconstruction"], title=f"one posterior draw per input: {picture_kind(model)}")
        paths.append(save_figure(figure, run_dir / "reconstructions.png"))
        if len(model.local_latents) == 1 and len(x_test) >= 2:
            rows = [interpolate(model, guide, x_test[2 * i], x_test[2 * i + 1], steps=10) for i in range(min(4, len(x_test) // 2))]
            title = f"latent interpolation between two test images per row: {picture_kind(model)} along the line between their posteriors"
            paths.append(save_image_grid(torch.cat(rows), run_dir / "interpolation.png", nrow=len(rows), title=title))
    return paths


def _scatter(model, x_test, path: Path) -> Path:
    samples = model.mean(model(batch_size=min(2000, 4 * len(x_test)))).reshape(-1, model.data_shape[-1])
    return scatter_samples(samples, x_test, None, path, label="model (means)", title="model means over the test data")


@torch.no_grad()
def mixture_figure(model, params: dict, x: torch.Tensor, path, title: str = "") -> Path:
    """A fitted Gaussian mixture over data: points coloured by their most probable component, means marked.

    Shows the first two coordinates (``D > 2``: a projection; ``D = 1``: against the point index).
    """
    plt = pyplot()
    path = Path(path)
    x = x.detach().cpu()
    labels = model.responsibilities(x, {k: v.cpu() for k, v in params.items()}).argmax(-1)
    locs = params["locs"].detach().cpu()
    xs, ys = (x[:, 0], x[:, 1]) if x.shape[1] > 1 else (torch.arange(len(x)), x[:, 0])
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(xs, ys, c=labels, cmap="tab10", vmin=0, vmax=9, s=6, alpha=0.6)
    if x.shape[1] > 1:
        ax.scatter(locs[:, 0], locs[:, 1], c=range(len(locs)), cmap="tab10", vmin=0, vmax=9, marker="X", s=120, edgecolors="k")
    ax.set_xlabel("coordinate 0" if x.shape[1] > 1 else "datapoint")
    ax.set_ylabel("coordinate 1" if x.shape[1] > 1 else "coordinate 0")
    ax.set_title(title or f"{model.num_components} components, {model.covariance} covariances", fontsize=9)
    return save_figure(fig, path)
