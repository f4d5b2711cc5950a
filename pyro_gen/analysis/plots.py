"""Pictures of a fitted model: sample grids, reconstructions, latent interpolations.

Figures are computed from the model's Pyro program (interpolation conditions the latent
site with :func:`pyro.poutine.condition`) and written atomically as PNG files.
Image grids show the likelihood's mean (e.g. pixel probabilities), not a noisy draw.
"""

from pathlib import Path

import pyro.poutine as poutine
import torch

from pyro_gen.io import atomic_path
from pyro_gen.rng import seeded


def _save_png(array, path: Path, cmap="gray") -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        plt.imsave(tmp, array, cmap=cmap, vmin=0.0, vmax=1.0)
    return path


def _save_figure(fig, path: Path, tight: bool = False) -> Path:
    """Write a matplotlib figure atomically as a PNG and close it."""
    import matplotlib.pyplot as plt

    try:
        if tight:
            fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return Path(path)


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


def save_image_grid(images: torch.Tensor, path, nrow: int | None = None) -> Path:
    """Write images as one PNG grid (atomically)."""
    if images.dim() != 4:
        raise ValueError(f"image grids need (N, C, H, W) images, got shape {tuple(images.shape)}")
    nrow = nrow or max(1, int(len(images) ** 0.5))
    # enlarge small images (8x8 digits) so that a grid is legible without zooming
    scale = max(1, 32 // images.shape[-2])
    if scale > 1:
        images = images.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    return _save_png(image_grid(images, nrow).numpy(), path)


def _is_image(model) -> bool:
    return len(model.data_shape) == 3 and model.data_shape[0] in (1, 3)


@torch.no_grad()
def sample_images(model, n: int) -> torch.Tensor:
    """Likelihood means of ``n`` fresh draws from the model."""
    params = model(batch_size=n)
    return model.mean(params)


@torch.no_grad()
def posterior_means(guide, x: torch.Tensor, num_samples: int = 64) -> list[torch.Tensor]:
    """Monte Carlo posterior means of each local latent (flows have no closed-form mean)."""
    return [q.sample((num_samples,)).mean(0) for q in guide.posterior(x)]


@torch.no_grad()
def reconstructions(model, guide, x: torch.Tensor) -> torch.Tensor:
    """Decode one posterior draw per datapoint: ``model`` conditioned on the guide's sample."""
    zs = [q.sample() for q in guide.posterior(x)]
    data = {lat.name: z for lat, z in zip(model.local_latents, zs)}
    return model.mean(poutine.condition(model, data=data)(batch_size=len(x)))


@torch.no_grad()
def interpolate(model, guide, x_start: torch.Tensor, x_end: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Decode ``steps`` points on the line between the posterior means of two datapoints.

    Returns ``(steps, *data_shape)``. Works for models with one local latent (e.g. a VAE's ``z``).
    """
    if len(model.local_latents) != 1:
        raise ValueError("interpolation needs a model with exactly one local latent")
    z0, z1 = (posterior_means(guide, x[None])[0][0] for x in (x_start, x_end))
    t = torch.linspace(0, 1, steps, device=z0.device)[:, None]
    path = (1 - t) * z0 + t * z1
    name = model.local_latents[0].name
    return model.mean(poutine.condition(model, data={name: path})(batch_size=steps))


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
        paths = [save_image_grid(sample_images(model, 64), run_dir / "samples.png", nrow=8)]
        x = x_test[:8]
        recon = reconstructions(model, guide, x)
        paths.append(save_image_grid(torch.cat([x, recon]), run_dir / "reconstructions.png", nrow=2))
        if len(model.local_latents) == 1 and len(x_test) >= 2:
            rows = [interpolate(model, guide, x_test[2 * i], x_test[2 * i + 1], steps=10) for i in range(min(4, len(x_test) // 2))]
            paths.append(save_image_grid(torch.cat(rows), run_dir / "interpolation.png", nrow=len(rows)))
    return paths


def _scatter(model, x_test, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    samples = model.mean(model(batch_size=min(2000, 4 * len(x_test)))).reshape(-1, model.data_shape[-1]).cpu()
    data = x_test.reshape(len(x_test), -1).cpu()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(data[:, 0], data[:, 1], s=2, alpha=0.4, label="data")
    ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, label="model (means)")
    ax.legend(loc="upper right", fontsize=7)
    return _save_figure(fig, path)


@torch.no_grad()
def mixture_figure(model, params: dict, x: torch.Tensor, path, title: str = "") -> Path:
    """A fitted Gaussian mixture over data: points coloured by their most probable component, means marked.

    Shows the first two coordinates (``D > 2``: a projection; ``D = 1``: against the point index).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

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
    return _save_figure(fig, path, tight=True)
