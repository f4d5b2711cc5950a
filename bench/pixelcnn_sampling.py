"""PixelCNN sampling speed: the windowed sampler against the naive loop (issue #11 e).

Both draw ``H W`` pixels one after the other; they differ in what they recompute per pixel:

* ``naive``: a full forward pass of the network over the whole image per pixel (``H W`` passes);
* ``fast``: per row, the vertical stack over the ``reach`` rows it reads; per pixel, the horizontal stack over
  the ``reach`` columns before it (:func:`pyro_gen.models.pixelcnn.autoregressive_sample`).

The two give the same images from the same random numbers (checked here on every run). Images per second,
one torch thread, for the MNIST benchmark's network (``--channels``, ``--layers``; random weights, whose values
do not change the cost, or ``--checkpoint`` from a run).

Run::

    OMP_NUM_THREADS=1 python bench/pixelcnn_sampling.py --channels 32 --layers 6 --batch 16 --fast-batches 16,64,256
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pyro_gen.models.pixelcnn import autoregressive_sample, pixelcnn


def timed(model, n: int, method: str, seed: int) -> tuple[torch.Tensor, float]:
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    images = autoregressive_sample(model.network, n, model.data_shape, model.levels, method=method, generator=g)
    return images, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--batch", type=int, default=16, help="images per call for the comparison of the two samplers")
    p.add_argument("--fast-batches", default="16,64,256", help="batch sizes for the fast sampler alone")
    p.add_argument("--checkpoint", default=None, help="a run's checkpoint (model weights) instead of random weights")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = pixelcnn((1, args.size, args.size), 2, channels=args.channels, layers=args.layers).eval()
    if args.checkpoint:
        from pyro_gen.infer.trainer import load_checkpoint

        model.load_state_dict(load_checkpoint(args.checkpoint)["model"])

    fast, t_fast = timed(model, args.batch, "fast", args.seed)
    naive, t_naive = timed(model, args.batch, "naive", args.seed)
    result = {
        "network": f"{args.channels} channels, {args.layers} layers, {args.size}x{args.size}, reach {model.network.reach}",
        "batch": args.batch,
        "naive_images_per_second": args.batch / t_naive,
        "fast_images_per_second": args.batch / t_fast,
        "speedup": t_naive / t_fast,
        "same_images": bool(torch.equal(fast, naive)),
        "differing_pixels": int((fast != naive).sum()),
        "fast_by_batch": {},
    }
    for b in (int(s) for s in args.fast_batches.split(",") if s):
        _, t = timed(model, b, "fast", args.seed)
        result["fast_by_batch"][b] = b / t
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
