"""Helpers shared by the benchmark scripts: data, weight copying, statistics, tables.

Nothing here touches a model's computation; the reference VAE (``reference_vae.py``)
stays independent of ``pyro_gen``. Only :func:`load_binarized_mnist` *prefers* the
library's data layer (``pyro_gen.data.load_dataset``) and falls back to reading the
``.npz`` with numpy when that layer is not importable; either way the arrays are the
same file's, and the subset is drawn here, so both paths give identical batches.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

#: The reference settings of every experiment ("the same MLP networks for all").
LATENT_DIM = 40
HIDDEN = (300, 300)
BATCH_SIZE = 128
LR = 1e-3
X_DIM = 784
DATA_SHAPE = (1, 28, 28)


def default_data_dir() -> Path:
    """``$PYRO_GEN_DATA`` if set, else the project's offline copy ``/work/shared/data``."""
    return Path(os.environ.get("PYRO_GEN_DATA", "/work/shared/data"))


def _load_split_numpy(split: str, data_dir: Path) -> np.ndarray:
    with np.load(data_dir / "binarized_mnist.npz") as f:
        return np.asarray(f[split])


def load_binarized_mnist(
    split: str,
    n: int | None = None,
    seed: int = 0,
    data_dir=None,
    source: str = "auto",
) -> tuple[torch.Tensor, str]:
    """A split of static binarized MNIST as float32 ``(N, 784)`` in {0, 1}.

    :param n: a seeded random subset of ``n`` images (sorted indices); ``None``: all.
        The binarized test set is sorted by digit, so a subset must never be its first rows.
    :param source: ``"auto"`` (``pyro_gen.data`` if importable, else numpy), ``"pyro_gen"`` or ``"numpy"``.
    :returns: ``(x, source_used)``.
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    x = None
    used = source
    if source in ("auto", "pyro_gen"):
        try:
            from pyro_gen.data import load_dataset
        except ImportError:
            if source == "pyro_gen":
                raise
        else:
            data = load_dataset("binarized_mnist", split, data_dir=data_dir)
            x = data.x.reshape(len(data.x), -1).to(torch.float32)
            used = "pyro_gen.data"
    if x is None:
        x = torch.from_numpy(_load_split_numpy(split, data_dir)).to(torch.float32)
        used = "numpy"
    if x.shape[1:] != (X_DIM,):
        raise ValueError(f"expected (N, {X_DIM}) images, got {tuple(x.shape)}")
    if n is not None:
        if not 0 < n <= len(x):
            raise ValueError(f"subset size {n} must be in [1, {len(x)}]")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(x), generator=g)[:n].sort().values
        x = x[idx]
    return x.contiguous(), used


def library_vae(seed: int = 0):
    """The library's reference VAE: ``vae`` + ``make_guide("normal")`` with the reference networks."""
    import pyro

    from pyro_gen.guides import make_guide
    from pyro_gen.models import vae

    pyro.set_rng_seed(seed)
    model = vae(DATA_SHAPE, latent_dim=LATENT_DIM, hidden=HIDDEN, net="mlp", likelihood="bernoulli")
    guide = make_guide("normal", model, hidden=HIDDEN)
    return model, guide


def _linears(module: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


def _copy_linears(src: list, dst: list) -> None:
    if len(src) != len(dst):
        raise ValueError(f"the two networks have {len(src)} and {len(dst)} Linear layers")
    for a, b in zip(src, dst):
        if a.weight.shape != b.weight.shape:
            raise ValueError(f"layer shapes differ: {tuple(a.weight.shape)} vs {tuple(b.weight.shape)}")
        b.weight.copy_(a.weight)
        b.bias.copy_(a.bias)


@torch.no_grad()
def copy_library_weights(ref, model, guide) -> None:
    """Copy the library VAE's weights into a :class:`reference_vae.ReferenceVAE` (layer by layer).

    Encoder: the guide's Linear layers in order (784-300, 300-300, then the family's 300-80 head);
    decoder: the model's decoder Linear layers (40-300, 300-300, 300-784). Shapes are checked.
    """
    _copy_linears(_linears(guide), _linears(ref.encoder))
    _copy_linears(_linears(model.decoder), _linears(ref.decoder))


@torch.no_grad()
def copy_reference_weights(model, guide, ref) -> None:
    """The inverse of :func:`copy_library_weights`: reference VAE -> library model and guide."""
    _copy_linears(_linears(ref.encoder), _linears(guide))
    _copy_linears(_linears(ref.decoder), _linears(model.decoder))


def summarize(values) -> dict:
    """Median, quartiles and IQR of a sample (seconds in, milliseconds out)."""
    a = np.asarray(values, dtype=float) * 1e3
    q25, q50, q75 = np.percentile(a, [25, 50, 75])
    return {"median_ms": q50, "q25_ms": q25, "q75_ms": q75, "iqr_ms": q75 - q25, "n": len(a)}


def bootstrap_ratio_ci(num, den, reps: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``median(num) / median(den)`` (independent resampling)."""
    rng = np.random.default_rng(seed)
    num, den = np.asarray(num, float), np.asarray(den, float)
    r = np.empty(reps)
    for i in range(reps):
        r[i] = np.median(rng.choice(num, len(num))) / np.median(rng.choice(den, len(den)))
    lo, hi = np.percentile(r, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    """The exact command that was run, re-runnable from the repository root."""
    return " ".join(["python", *map(shlex.quote, sys.argv)])


def environment() -> str:
    try:
        import pyro

        pyro_version = pyro.__version__
    except ImportError:
        pyro_version = "not installed"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"torch {torch.__version__}, pyro-ppl {pyro_version}, python {platform.python_version()}, "
        f"{cpu} ({os.cpu_count()} logical CPUs), torch threads {torch.get_num_threads()}"
    )


def header(title: str) -> str:
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return f"## {title}\n\nCommand: `{command_line()}`\n\nDate: {date}; {environment()}\n"
