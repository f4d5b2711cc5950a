"""Execute every tutorial notebook in ``notebooks/`` in a small setting.

The code cells of each notebook run in order in one namespace (as a kernel would run them),
with matplotlib on the non-interactive Agg backend and the working directory set to a
temporary folder. Environment variables shrink the notebooks' parameters (epochs, importance
samples, NUTS draws, GAN steps) so the whole file runs in seconds. A failing cell fails the test with its index.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))

SMALL_SETTINGS = {
    "PYRO_GEN_NB_EPOCHS": "2",
    "PYRO_GEN_NB_NLL_SAMPLES": "20",
    "PYRO_GEN_NB_GMM_POINTS": "60",  # 02: training points of the Bayesian mixture
    "PYRO_GEN_NB_NUTS_SAMPLES": "10",  # 02: NUTS draws (and warm-up steps) per chain
    "PYRO_GEN_NB_KHAT_SAMPLES": "30",  # 02: importance draws per test image for k-hat (a tail fit needs at least 21)
    "PYRO_GEN_NB_GAN_STEPS": "78",  # 03: generator steps on ring8 (one epoch of 78 batches)
    "PYRO_GEN_NB_GAN_GRID_STEPS": "20",  # 03: generator steps on grid25 (the training set shrinks to 20 batches)
    "PYRO_GEN_NB_GAN_DIGIT_STEPS": "21",  # 03: generator steps of each GAN on 8x8 digits (one epoch of 21 batches)
    "PYRO_GEN_NB_LANG_EPOCHS": "2",  # 04: epochs of each VAE on 8x8 digits (hierarchical, conditional, VampPrior)
    "PYRO_GEN_NB_LANG_M2_EPOCHS": "2",  # 04: epochs of the semi-supervised M2
    "PYRO_GEN_NB_LANG_NLL_SAMPLES": "20",  # 04: importance samples per test image
    "PYRO_GEN_NB_LANG_POISSON_POINTS": "200",  # 04: synthetic count vectors
    "PYRO_GEN_NB_LANG_POISSON_EPOCHS": "3",  # 04: epochs of the Poisson model
}


def _code_cells(path: Path) -> list[tuple[int, str]]:
    nb = nbformat.read(path, as_version=4)
    return [(i, cell.source) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]


def test_notebooks_exist():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb files"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import torch

    for key, value in SMALL_SETTINGS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cells = _code_cells(path)
    assert cells, f"{path.name} has no code cells"
    ns: dict = {"__name__": "__main__"}
    try:
        for i, src in cells:
            # IPython magics and shell escapes are not Python; the tutorials should not need them
            assert not any(line.lstrip().startswith(("%", "!")) for line in src.splitlines()), f"{path.name} cell {i} uses IPython syntax"
            try:
                exec(compile(src, f"{path.name}[cell {i}]", "exec"), ns)
            except Exception as e:
                tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
                pytest.fail(f"{path.name}: code cell {i} failed with {type(e).__name__}: {e}\n\n{src}\n\n{tb}", pytrace=False)
    finally:
        plt.close("all")
        torch.set_num_threads(threads)
