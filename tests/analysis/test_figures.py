"""The figures of :mod:`pyro_gen.analysis`: what they say (labels, titles, that nothing overlaps) and the PNGs written.

Truths: the text drawn on a figure, read back from its artists; the pixel boxes matplotlib's renderer
gives those artists; the PNG's size read with PIL; the GAN helpers' outputs recomputed by hand
from the same seeds (the codes on the line between two prior draws, one code per class row).
"""

import itertools

import numpy as np
import pyro
import pytest
import torch
from PIL import Image

from pyro_gen import gan, make_guide, vae
from pyro_gen.analysis import (
    class_grid,
    draw_samples,
    gan_interpolation,
    image_rows_figure,
    latent_line,
    report,
    save_figure,
    scatter_samples,
    write_figures,
    write_gan_figures,
)
from pyro_gen.analysis.plots import pyplot
from pyro_gen.data.toy import toy_modes
from pyro_gen.rng import seeded

arviz = pytest.importorskip("arviz")


def _boxes(fig, artists):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [a.get_window_extent(renderer) for a in artists]


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


# -- the one figure saver -------------------------------------------------------------------------------
def test_save_figure_writes_atomically_lays_out_and_closes(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, 1])
    path = save_figure(fig, tmp_path / "line.png")
    assert _png_size(path) == (300, 200) and not plt.fignum_exists(fig.number)
    fig, axes = plt.subplots(1, 2, figsize=(4, 2))  # an array of axes, as ArviZ returns
    save_figure(axes, tmp_path / "two.png", dpi=50)
    assert _png_size(tmp_path / "two.png") == (200, 100) and not plt.fignum_exists(fig.number)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["line.png", "two.png"]  # no temporary files


# -- reconstructions: which row is which ------------------------------------------------------------------
def test_image_rows_are_labelled_on_their_left():
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    fig = image_rows_figure([x, 1 - x], ["input", "reconstruction"], title="a title")
    try:
        axes = fig.axes
        assert [ax.get_ylabel() for ax in axes] == ["input", "reconstruction"]
        labels = _boxes(fig, [ax.yaxis.label for ax in axes])
        images = _boxes(fig, axes)
        for label, image in zip(labels, images):
            assert label.x1 <= image.x0 + 1 and image.y0 <= (label.y0 + label.y1) / 2 <= image.y1  # left of its row
        assert not _overlap(*labels) and fig.bbox.contains(labels[1].x0, labels[1].y0)
    finally:
        pyplot().close(fig)
    with pytest.raises(ValueError, match="2 image rows but 1 labels"):
        image_rows_figure([x, x], ["input"])


def test_write_figures_labels_the_reconstructions(tmp_path):
    torch.manual_seed(0)
    model = vae((1, 8, 8), latent_dim=2, hidden=(16,))
    guide = make_guide("normal", model, hidden=(16,))
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)).round()
    paths = write_figures(model, guide, x, tmp_path, seed=0)
    assert [p.name for p in paths] == ["samples.png", "reconstructions.png", "interpolation.png"]
    width, height = _png_size(tmp_path / "reconstructions.png")
    assert width > 8 * 32 and height >= 2 * 32  # 8 enlarged 8x8 images per row, two rows, labels beside them
    image = np.asarray(Image.open(tmp_path / "reconstructions.png").convert("L"), dtype=float)
    left = image[:, : width // 8]  # the label column holds dark text on white
    assert left.min() < 100 and left.mean() > 200


# -- pair plot: fills its page, legible title, up to 8 dimensions -------------------------------------------
@pytest.fixture(scope="module")
def local_posterior():
    """A VAE-like local posterior: 1 chain x 500 draws of an 8-d z at one datapoint (17)."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(1, 500, 1, 8)) * np.linspace(0.5, 2, 8)
    return arviz.from_dict(posterior={"z": z}, dims={"z": ["data", "z_dim"]}, coords={"data": [17]})


@pytest.mark.parametrize("dims", [2, 8])
def test_the_pair_plot_fills_its_figure_with_a_legible_title(local_posterior, tmp_path, dims):
    title = "q(z | x) of test point 17, the largest k-hat (0.83) of the 100 points"
    coords = {"data": [17], "z_dim": list(range(dims))}
    fig = report.pair_figure(local_posterior, ["z"], coords=coords, title=title)
    try:
        panels = [ax for ax in fig.axes if ax.has_data()]
        assert len(panels) == dims * (dims + 1) // 2  # every pair below the diagonal and every marginal
        assert fig._suptitle.get_text().replace("\n", " ") == title and fig._suptitle.get_fontsize() >= 12
        (suptitle,) = _boxes(fig, [fig._suptitle])
        assert fig.bbox.x0 <= suptitle.x0 and suptitle.x1 <= fig.bbox.x1 and suptitle.y1 <= fig.bbox.y1  # not clipped
        # the panels fill the page: their union spans most of the figure in both directions
        boxes = _boxes(fig, panels)
        span_x = (max(b.x1 for b in boxes) - min(b.x0 for b in boxes)) / fig.bbox.width
        span_y = (max(b.y1 for b in boxes) - min(b.y0 for b in boxes)) / fig.bbox.height
        assert span_x > 0.8 and span_y > 0.7
        assert all(not _overlap(a, b) for a, b in itertools.combinations(boxes, 2))
    finally:
        pyplot().close(fig)
    path = report.pair_plot(local_posterior, tmp_path / "pair_local.png", ["z"], coords=coords, title=title)
    width, height = _png_size(path)
    assert 400 <= width <= 2000 and 0.9 < height / width < 1.3


# -- trace plot: no title over another ----------------------------------------------------------------------
def test_no_two_trace_plot_titles_or_tick_labels_overlap(tmp_path):
    rng = np.random.default_rng(0)
    posterior = {
        "weights": rng.dirichlet(np.ones(3), size=(2, 200)),
        "locs": rng.normal(size=(2, 200, 3, 2)),
        "scales": np.exp(rng.normal(size=(2, 200, 3, 2))),
    }
    dims = {"weights": ["component"], "locs": ["component", "coordinate"], "scales": ["component", "coordinate"]}
    idata = arviz.from_dict(posterior=posterior, dims=dims)
    fig = report.trace_figure(idata, ["weights", "locs", "scales"])
    try:
        titles = [ax.title for ax in fig.axes]
        assert [t.get_text() for t in titles] == ["weights", "weights", "locs", "locs", "scales", "scales"]
        title_boxes = _boxes(fig, titles)
        assert all(not _overlap(a, b) for a, b in itertools.combinations(title_boxes, 2))
        # a title stays clear of the tick labels of the panel above it (the overlap the old layout had)
        renderer = fig.canvas.get_renderer()
        for ax, box in zip(fig.axes, title_boxes):
            for other in fig.axes:
                if other is not ax:
                    for label in other.get_xticklabels():
                        if label.get_text():
                            assert not _overlap(box, label.get_window_extent(renderer)), (ax.get_title(), label.get_text())
    finally:
        pyplot().close(fig)
    paths = report.posterior_plots(
        idata, tmp_path, var_names=["weights", "locs", "scales"], pair_names=["weights", "locs"], pair_coords={"coordinate": [0]}
    )
    assert _png_size(tmp_path / "trace.png") == (1200, 3 * 220)
    assert {p.name for p in paths} == {"pair.png", "trace.png", "rank.png"}


# -- GAN figures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digit_generator():
    torch.manual_seed(0)
    return gan((1, 8, 8), latent_dim=4, hidden=(16,), output="sigmoid").eval()


def test_gan_interpolation_decodes_codes_on_the_line_between_two_prior_draws(digit_generator):
    rows = gan_interpolation(digit_generator, rows=3, steps=5, seed=7)
    assert rows.shape == (15, 1, 8, 8)
    with seeded(7):
        start, end = digit_generator.prior().sample((2, 3))
    codes = torch.stack([torch.stack([(1 - t) * s + t * e for t in torch.linspace(0, 1, 5)]) for s, e in zip(start, end)])
    assert torch.allclose(latent_line(start, end, 5), codes, atol=1e-6)
    with torch.no_grad():
        by_hand = pyro.poutine.condition(digit_generator, data={digit_generator.latent_name: codes.reshape(15, 4)})(batch_size=15)
    assert torch.allclose(rows, by_hand, atol=1e-6)
    assert not torch.allclose(rows[0], rows[4])  # the two ends of a row differ


def test_class_grid_keeps_one_code_per_row_and_cycles_the_classes():
    torch.manual_seed(0)
    generator = gan((1, 8, 8), latent_dim=4, hidden=(16,), output="sigmoid", num_classes=10).eval()
    grid = class_grid(generator, rows=3, seed=5).reshape(3, 10, 1, 8, 8)
    # one code per row: the same label with the same code gives the same image; different labels differ
    assert not torch.equal(grid[0, 0], grid[0, 1])
    again = class_grid(generator, rows=3, seed=5).reshape(3, 10, 1, 8, 8)
    assert torch.equal(grid, again)


def test_scatter_samples_marks_the_toy_modes(tmp_path):
    centers, _ = toy_modes("ring8")
    points = centers.repeat(20, 1) + 0.05 * torch.randn(160, 2, generator=torch.Generator().manual_seed(0))
    path = scatter_samples(points, points.flip(0), "ring8", tmp_path / "samples.png")
    assert _png_size(path) == (450, 450)
    paths = write_gan_figures(gan((2,), latent_dim=2, hidden=(8,)).eval(), points, points, "ring8", tmp_path, seed=0)
    assert [p.name for p in paths] == ["samples.png"]


def test_write_gan_figures_for_images(digit_generator, tmp_path):
    samples = draw_samples(digit_generator, 64, seed=0)
    paths = write_gan_figures(digit_generator, samples, samples, "digits", tmp_path, seed=0)
    assert [p.name for p in paths] == ["samples.png", "interpolation.png"]
    assert min(_png_size(tmp_path / "interpolation.png")) >= 8 * 32  # 8 rows of 10 enlarged 8x8 images


def test_image_grid_is_the_bare_grid_without_a_title_and_a_labelled_figure_with_one(tmp_path):
    import matplotlib.image

    from pyro_gen.analysis import save_image_grid
    from pyro_gen.analysis.plots import image_grid

    images = torch.rand(4, 1, 28, 28)
    bare = matplotlib.image.imread(save_image_grid(images, tmp_path / "bare.png", nrow=2))
    expected = image_grid(images, 2).numpy()
    assert bare.shape[:2] == expected.shape  # pixel for pixel, no margins
    assert abs(bare[..., 0] - expected).max() < 2 / 255  # 8-bit quantization
    titled = matplotlib.image.imread(save_image_grid(images, tmp_path / "titled.png", nrow=2, title="four draws, seed 0"))
    assert titled.shape[0] > 2 * expected.shape[0]  # enlarged twice, with a title line above
    top = titled[: titled.shape[0] // 10, ..., :3]
    assert (top < 0.5).any()  # the title's dark glyphs on the white margin
