"""One figure of samples from each family trained on the same image data (issue #11 e).

Each ``--run LABEL=RUN_DIR`` is a run directory of any family (``pyro-gen train ...``) on the same dataset;
the figure shows ``--num`` samples of each, drawn with one seed, side by side, each panel titled with its
label, how its samples are drawn, and its test NLL as its ``metrics.json`` states it (with the method:
importance-sampled with K, exact, or dequantized). Samples are what the family's ``sample`` command draws
(``Family.sample_images``): a VAE's likelihood mean at z ~ p(z), a flow's exact samples quantized to the levels,
a PixelCNN's exact autoregressive draws, a GAN's generator outputs.

Run (the runs of BENCHMARKS.md section 13g)::

    OMP_NUM_THREADS=1 python bench/family_grids.py --out docs/images/binarized_mnist_families.png \\
        --title "static binarized MNIST: samples of each family" \\
        --run "VAE (MLP 300-300, z 40, normal guide)=/root/pyro_gen_runs/vae_mnist" \\
        --run "PixelCNN (gated, 32 ch, 6 layers)=/root/pyro_gen_runs/pixelcnn" \\
        --run "Real NVP (2 scales, 32-ch ResNets)=/root/pyro_gen_runs/realnvp_mnist" \\
        --run "DCGAN (non-saturating, EMA)=/root/pyro_gen_runs/dcgan_mnist"
"""

from __future__ import annotations

import argparse
import json
import math
import textwrap
from pathlib import Path

import torch

from pyro_gen.analysis.plots import image_grid, pyplot, save_figure
from pyro_gen.run import RunDir


def draw(run_dir: Path, num: int, seed: int) -> tuple[torch.Tensor, str, dict]:
    """``(images (num, C, H, W) in [0, 1], how they were drawn, metrics.json)`` of one run, through its family."""
    run = RunDir(run_dir)
    config = run.config()
    images, how = config.family.sample_images(config, run, num, seed)
    metrics_path = Path(run_dir) / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return images.float().cpu(), how, metrics


def nll_text(metrics: dict) -> str:
    """The run's test NLL with its method, as its metrics.json states it."""
    nll = metrics.get("test_nll")
    if nll is None:
        if "frechet_distance" in metrics:
            return (
                f"implicit density, no NLL; Frechet distance {metrics['frechet_distance']:.1f} ({metrics.get('feature_space', 'features')})"
            )
        return "no test NLL in metrics.json"
    method = metrics.get("nll_method")
    if method is None and "nll_samples" in metrics:
        method = f"IS, K={metrics['nll_samples']}"
    return f"test NLL {nll:.2f} nats ({method or 'method not recorded'})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, metavar="LABEL=RUN_DIR", help="a trained run directory and its label")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--title", default="samples of each family, one seed")
    args = p.parse_args()
    torch.set_num_threads(1)
    panels = []
    for item in args.run:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_dir():
            p.error(f"--run {item!r}: give LABEL=RUN_DIR with an existing run directory")
        images, how, metrics = draw(Path(path), args.num, args.seed)
        epochs = metrics.get("epochs")
        caption = f"{label}\n{how}; {nll_text(metrics)}" + (f"; {epochs} epochs" if epochs else "")
        panels.append((image_grid(images, max(1, int(math.sqrt(args.num)))).numpy(), caption))
        print(f"{label}: {how}; {nll_text(metrics)}", flush=True)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 5.9), squeeze=False, layout="constrained")
    for ax, (array, caption) in zip(axes[0], panels):
        ax.imshow(array, cmap=None if array.ndim == 3 else "gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title("\n".join(textwrap.fill(line, 48) for line in caption.splitlines()), fontsize=9)
    fig.suptitle(f"{args.title} (seed {args.seed})", fontsize=11)
    save_figure(fig, args.out)
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
