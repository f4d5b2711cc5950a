"""Looking at fitted models: figures (of VAEs, mixtures and GANs), PSIS diagnostics of guides, ArviZ InferenceData and reports.

The ArviZ adapter (``from_mcmc``, ``from_guide``, ``from_local_posterior``) is imported on first
use, so the figures and diagnostics do not pay for importing ArviZ; so is
:mod:`pyro_gen.analysis.report` (summaries, diagnostic plots, LOO / WAIC files of ``pyro-gen analyze``).
"""

from pyro_gen.analysis.gan_figures import class_grid, draw_samples, gan_interpolation, write_gan_figures
from pyro_gen.analysis.plots import (
    image_grid,
    image_rows_figure,
    interpolate,
    latent_line,
    mixture_figure,
    posterior_means,
    reconstructions,
    sample_images,
    save_figure,
    save_image_grid,
    scatter_samples,
    write_figures,
)
from pyro_gen.analysis.psis import KhatResult, guide_khat, psis_khat

_ARVIZ_ADAPTER = ("from_guide", "from_local_posterior", "from_mcmc")


def __getattr__(name):
    if name in _ARVIZ_ADAPTER:
        from pyro_gen.analysis import arviz as adapter

        return getattr(adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "KhatResult",
    "class_grid",
    "draw_samples",
    "from_guide",
    "from_local_posterior",
    "from_mcmc",
    "gan_interpolation",
    "guide_khat",
    "image_grid",
    "image_rows_figure",
    "interpolate",
    "latent_line",
    "mixture_figure",
    "posterior_means",
    "psis_khat",
    "reconstructions",
    "sample_images",
    "save_figure",
    "save_image_grid",
    "scatter_samples",
    "write_figures",
    "write_gan_figures",
]
