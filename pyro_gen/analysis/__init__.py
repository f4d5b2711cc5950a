"""Looking at fitted models: figures (sample grids, reconstructions, interpolations)."""

from pyro_gen.analysis.plots import image_grid, interpolate, posterior_means, reconstructions, sample_images, save_image_grid, write_figures

__all__ = ["image_grid", "interpolate", "posterior_means", "reconstructions", "sample_images", "save_image_grid", "write_figures"]
