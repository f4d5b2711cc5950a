"""Pictures of a GAN generator program: latent interpolations, class grids, and the figures of a GAN run.

The generator is a Pyro program whose latent site is set by :func:`pyro.poutine.condition`, so the
program itself runs unchanged. Samples are drawn by :func:`~pyro_gen.evaluation.gan_scores.draw_samples`
(re-exported here), seeded without touching the global random state.
"""

from pathlib import Path

import pyro
import torch

from pyro_gen.analysis.plots import latent_line, save_image_grid, scatter_samples
from pyro_gen.evaluation.gan_scores import draw_samples
from pyro_gen.rng import seeded

__all__ = ["class_grid", "draw_samples", "gan_interpolation", "write_gan_figures"]


@torch.no_grad()
def gan_interpolation(generator, rows: int = 8, steps: int = 10, seed: int = 0) -> torch.Tensor:
    """``rows * steps`` samples; row ``r`` decodes ``steps`` codes on the line between two prior draws.

    The codes are set by conditioning the generator program's latent site (``poutine.condition``),
    so the program itself runs unchanged. A conditional generator keeps one class per row.
    """
    device = next(generator.parameters()).device
    with seeded(seed, device):
        start, end = generator.prior().sample((2, rows))  # (rows, latent) each
    codes = latent_line(start.flatten(1), end.flatten(1), steps).reshape((rows * steps,) + tuple(start.shape[1:]))
    conditioned = pyro.poutine.condition(generator, data={generator.latent_name: codes})
    if generator.num_classes is None:
        return conditioned(batch_size=rows * steps).cpu()
    labels = (torch.arange(rows, device=device) % generator.num_classes).repeat_interleave(steps)
    return conditioned(batch_size=rows * steps, y=labels).cpu()


@torch.no_grad()
def class_grid(generator, rows: int = 8, seed: int = 0) -> torch.Tensor:
    """``rows * num_classes`` samples of a conditional generator: row ``r`` holds one code ``z`` (set
    with ``poutine.condition``) drawn with every class label in turn."""
    device = next(generator.parameters()).device
    k = generator.num_classes
    with seeded(seed, device):
        codes = generator.prior().sample((rows,))
    codes = codes.repeat_interleave(k, dim=0)
    labels = torch.arange(k, device=device).repeat(rows)
    return pyro.poutine.condition(generator, data={generator.latent_name: codes})(batch_size=rows * k, y=labels).cpu()


def write_gan_figures(
    sampler, samples: torch.Tensor, real: torch.Tensor, data_name: str, out_dir, seed: int, arithmetic=None
) -> list[Path]:
    """The figures of a GAN run, written into ``out_dir``; returns their paths.

    ``samples.png``: a scatter of ``samples`` over ``real`` (vector data, :func:`scatter_samples`) or a
    grid of the first 64 samples; for images also ``interpolation.png`` (8 rows of 10 codes on a line
    in ``z``, :func:`gan_interpolation`), ``arithmetic.png`` (a
    :class:`~pyro_gen.analysis.latent_arithmetic` result: each source sample, then it moved to each
    class) and, for a conditional generator, ``classes.png`` (:func:`class_grid`).

    :param sampler: the generator the samples come from (its ``data_shape`` and ``num_classes`` decide the figures).
    :param samples: its samples (as scored); ``real``: the real data they were scored against.
    :param data_name: the dataset's name (the scatter marks a toy mixture's modes).
    :param seed: seed of the interpolation and class grid codes.
    :param arithmetic: the latent-arithmetic result, or ``None``.
    """
    out_dir = Path(out_dir)
    if len(sampler.data_shape) == 1:
        return [scatter_samples(samples, real, data_name, out_dir / "samples.png")]
    paths = [save_image_grid(samples[:64], out_dir / "samples.png", nrow=8, title=f"64 generator samples ({data_name}), as scored")]
    title = "generator interpolation: the images along a straight line between two latent codes, one pair per row"
    paths.append(save_image_grid(gan_interpolation(sampler, seed=seed), out_dir / "interpolation.png", nrow=8, title=title))
    if arithmetic is not None:
        rows = torch.cat([arithmetic.sources[:, None], arithmetic.images], dim=1)  # (rows, 1 + classes, ...)
        title = (
            "latent arithmetic: a source sample (first column), then its code moved to each class 0, 1, ... "
            f"(class vectors: mean codes by the classifier's label; {arithmetic.target_accuracy:.0%} classified as their target)"
        )
        paths.append(save_image_grid(rows.flatten(0, 1), out_dir / "arithmetic.png", nrow=rows.shape[0], title=title))
    if sampler.num_classes is not None:
        title = f"conditional generator: one latent code per row, the labels 0..{sampler.num_classes - 1} across"
        paths.append(save_image_grid(class_grid(sampler, rows=8, seed=seed), out_dir / "classes.png", nrow=8, title=title))
    return paths
