"""The importance-sampled log-likelihood evaluator: peak memory, speed and agreement.

(a) Memory. ``pyro_gen.evaluation.log_likelihood`` draws its K samples in chunks of at most
    ``chunk_size`` (sample, datapoint) pairs, so its peak memory should grow with the chunk
    size and not with K. Each configuration runs in a fresh subprocess on the same test images
    and the untrained library VAE (reference networks); the subprocess resets its resident-set
    high-water mark (``/proc/self/clear_refs``) after setup and a small warm-up evaluation,
    then reports ``VmHWM - VmRSS`` around the one call. (``getrusage().ru_maxrss`` is not
    usable here: torch's CPU allocations are not seen by ``tracemalloc``, and a child's
    ``ru_maxrss`` starts at its *parent's* peak, inherited across fork/exec.)
(b) Speed. The vectorized evaluator (all datapoints in one call) against a loop calling it on
    one datapoint at a time with ``chunk_size=K`` (K samples in one pass per datapoint), and
    against a naive loop of K single-sample traced passes per datapoint on a few datapoints.
(c) Agreement. A briefly trained reference VAE (``reference_vae.py``) is copied into the
    library's model and guide; the library's evaluator and the reference's independent
    importance sampler then score the same test images with K samples each.

Run (from the repository root)::

    python bench/evaluator.py --n 200
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pyro
import torch

try:  # imported as bench.evaluator
    from . import common, reference_vae
except ImportError:  # run as a script: python bench/evaluator.py
    import common
    import reference_vae

MB = 2**20


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def test_images(n: int, seed: int, data_dir) -> torch.Tensor:
    x, _ = common.load_binarized_mnist("test", n, seed=seed, data_dir=data_dir)
    return x.view(len(x), *common.DATA_SHAPE)


def memory_worker(cfg: dict) -> dict:
    """Runs in a fresh process: peak RSS increase of one ``log_likelihood`` call."""
    from pyro_gen.evaluation import log_likelihood

    torch.set_num_threads(cfg["threads"])
    x = test_images(cfg["n"], cfg["seed"], cfg["data_dir"])
    model, guide = common.library_vae(cfg["seed"])
    model.eval(), guide.eval()
    log_likelihood(model, guide, x[:4], num_samples=2, chunk_size=8)  # imports, lazy setup
    # record the (sample, datapoint) pairs the decoder sees per pass: the evaluator's own batching
    passes = []
    model.decoder.register_forward_pre_hook(lambda _, args: passes.append(args[0].numel() // args[0].shape[-1]))
    gc.collect()
    reset = _reset_peak()
    before_kb = _status_kb("VmRSS")
    t0 = time.perf_counter()
    res = log_likelihood(model, guide, x, num_samples=cfg["k"], chunk_size=cfg["chunk"])
    seconds = time.perf_counter() - t0
    peak_kb = _status_kb("VmHWM")
    return {
        **cfg,
        "increase_mb": (peak_kb - before_kb) / 1024,
        "baseline_mb": before_kb / 1024,
        "peak_mb": peak_kb / 1024,
        "peak_was_reset": reset,
        "seconds": seconds,
        "nll": -res.log_px.mean().item(),
        "passes": len(passes),
        "max_pairs": max(passes),
    }


def run_memory_config(cfg: dict) -> dict:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--memory-worker", json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory worker failed for {cfg}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_tables(args) -> str:
    base = {"n": args.n, "seed": args.seed, "threads": args.threads, "data_dir": args.data_dir}
    configs = [("K", {"k": k, "chunk": args.fixed_chunk}) for k in args.ks]
    configs += [("chunk", {"k": args.fixed_k, "chunk": c}) for c in args.chunks]
    seen, rows = {}, []
    for sweep, c in configs:
        key = (c["k"], c["chunk"])
        if key not in seen:
            seen[key] = run_memory_config({**base, **c})
            print(f"  memory: K={c['k']} chunk={c['chunk']}: +{seen[key]['increase_mb']:.0f} MiB", file=sys.stderr, flush=True)
        r = seen[key]
        pairs = r["max_pairs"]
        rows.append(
            [
                sweep,
                r["k"],
                r["chunk"],
                r["passes"],
                pairs,
                f"{pairs * common.X_DIM * 4 / MB:.0f}",
                f"{r['increase_mb']:.0f}",
                f"{r['seconds']:.1f}",
                f"{r['nll']:.2f}",
            ]
        )
    reset = all(r["peak_was_reset"] for r in seen.values())
    note = "" if reset else " (warning: /proc/self/clear_refs was not writable; the peak includes setup)"
    return (
        f"### (a) Peak memory of `log_likelihood` ({args.n} test images, untrained library VAE)\n\n"
        + common.markdown_table(
            [
                "sweep",
                "K",
                "chunk_size",
                "decoder passes",
                "largest pass (pairs)",
                "one (pairs, 784) float32 tensor (MiB)",
                "peak RSS increase (MiB)",
                "time (s)",
                "NLL (nats)",
            ],
            rows,
        )
        + f"\n\nPeak RSS increase = VmHWM after the call - VmRSS before it, in a fresh process per row{note}."
    )


@torch.no_grad()
def naive_log_px(model, guide, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """K single-sample traced passes per datapoint, one datapoint at a time (the slow baseline)."""
    from pyro_gen.infer import get_traces, trace_terms

    out = []
    for i in range(len(x)):
        xi = x[i : i + 1]
        lw = torch.stack([trace_terms(*get_traces(model, guide, xi)).log_weight.reshape(()) for _ in range(num_samples)])
        out.append(torch.logsumexp(lw, 0) - math.log(num_samples))
    return torch.stack(out)


def speed_table(args) -> str:
    from pyro_gen.evaluation import log_likelihood

    torch.set_num_threads(args.threads)
    x = test_images(args.speed_n, args.seed + 2, args.data_dir)
    model, guide = common.library_vae(args.seed)
    model.eval(), guide.eval()
    log_likelihood(model, guide, x[:4], num_samples=2, chunk_size=8)  # warm-up
    rows = []
    for k in args.speed_ks:
        t0 = time.perf_counter()
        vec = log_likelihood(model, guide, x, num_samples=k, chunk_size=args.fixed_chunk).log_px
        t_vec = time.perf_counter() - t0
        t0 = time.perf_counter()
        loop = torch.cat([log_likelihood(model, guide, x[i : i + 1], num_samples=k, chunk_size=k, seed=i).log_px for i in range(len(x))])
        t_loop = time.perf_counter() - t0
        n = len(x)
        rows.append([k, "vectorized (one call)", n, args.fixed_chunk, f"{n / t_vec:.1f}", "1.0", f"{-vec.mean():.2f}"])
        rows.append([k, "per-datapoint loop", n, k, f"{n / t_loop:.1f}", f"{t_loop / t_vec:.1f}", f"{-loop.mean():.2f}"])
        if args.naive_n > 0:
            xs = x[: args.naive_n]
            with pyro.settings.context(module_local_params=True), pyro.validation_enabled(False):
                t0 = time.perf_counter()
                naive = naive_log_px(model, guide, xs, k)
                t_naive = time.perf_counter() - t0
            rate = args.naive_n / t_naive
            rows.append(
                [
                    k,
                    "naive loop (K single-sample passes)",
                    args.naive_n,
                    1,
                    f"{rate:.2f}",
                    f"{(n / t_vec) / rate:.0f}",
                    f"{-naive.mean():.2f}",
                ]
            )
        print(f"  speed: K={k} done", file=sys.stderr, flush=True)
    return (
        f"### (b) Speed of `log_likelihood` (untrained library VAE, {args.threads} torch thread(s))\n\n"
        + common.markdown_table(
            ["K", "evaluator", "datapoints", "chunk_size", "datapoints / s", "speed-up of vectorized", "NLL (nats)"],
            rows,
        )
        + f"\n\nThe naive loop scores only the first {args.naive_n} of the {args.speed_n} images (NLLs of different "
        "subsets are not comparable); its speed-up compares datapoints per second."
    )


def agreement_table(args) -> str:
    from pyro_gen.evaluation import log_likelihood

    torch.set_num_threads(args.threads)
    x_train, _ = common.load_binarized_mnist("train", args.agree_train_size, seed=args.seed, data_dir=args.data_dir)
    x = test_images(args.agree_n, args.seed + 3, args.data_dir)
    torch.manual_seed(args.seed)
    ref = reference_vae.ReferenceVAE(latent_dim=common.LATENT_DIM, hidden=common.HIDDEN)
    opt = reference_vae.make_optimizer(ref, common.LR)
    t0 = time.perf_counter()
    for epoch in range(args.agree_epochs):
        reference_vae.train_epoch(ref, opt, x_train, common.BATCH_SIZE, torch.Generator().manual_seed(args.seed * 1_000_003 + epoch))
    t_train = time.perf_counter() - t0
    model, guide = common.library_vae(args.seed)
    common.copy_reference_weights(model, guide, ref)
    model.eval(), guide.eval()
    k = args.agree_k
    chunk = k * len(x)  # one pass of (K, n) draws in both estimators, whatever their batching rules
    t0 = time.perf_counter()
    lib = log_likelihood(model, guide, x, num_samples=k, chunk_size=chunk, seed=args.seed)
    t_lib = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_log_px, ref_elbo = reference_vae.importance_log_px(ref, x.view(len(x), -1), k, chunk, seed=args.seed)
    t_ref = time.perf_counter() - t0
    other_log_px, other_elbo = reference_vae.importance_log_px(ref, x.view(len(x), -1), k, chunk, seed=args.seed + 1)

    def diff_cell(log_px):
        d = lib.log_px - log_px
        return f"{d.mean():+.2e} ± {d.std() / math.sqrt(len(d)):.1e}", f"{d.abs().max():.2e}"

    rows = [
        ["pyro_gen `log_likelihood`", args.seed, f"{-lib.log_px.mean():.3f}", f"{lib.elbo.mean():.3f}", "", "", f"{t_lib:.1f}"],
        [
            "reference `importance_log_px`",
            args.seed,
            f"{-ref_log_px.mean():.3f}",
            f"{ref_elbo.mean():.3f}",
            *diff_cell(ref_log_px),
            f"{t_ref:.1f}",
        ],
        [
            "reference `importance_log_px`",
            args.seed + 1,
            f"{-other_log_px.mean():.3f}",
            f"{other_elbo.mean():.3f}",
            *diff_cell(other_log_px),
            "",
        ],
    ]
    return (
        f"### (c) Agreement with the independent reference estimator ({args.agree_n} test images, K={k})\n\n"
        + common.markdown_table(
            ["estimator", "seed", "NLL (nats)", "ELBO (nats)", "library - this log p(x): mean ± s.e.", "max abs difference", "time (s)"],
            rows,
        )
        + f"\n\nSame weights: a reference VAE trained {args.agree_epochs} epoch(s) on {len(x_train)} images ({t_train:.1f} s), "
        "copied into the library's model and guide. With the same seed both estimators draw the same standard-normal "
        "noise in one (K, datapoints, latent) block (chunk_size = K x datapoints), so two independently written estimators must agree to "
        "float rounding; with another seed they differ by Monte Carlo error only."
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="test images for the memory sweep")
    p.add_argument("--ks", type=int, nargs="+", default=[100, 1000, 5000], help="K values of the memory sweep")
    p.add_argument("--fixed-chunk", type=int, default=2**15, help="chunk_size of the K sweep and of the speed runs")
    p.add_argument("--chunks", type=int, nargs="+", default=[2**12, 2**15, 2**17], help="chunk sizes of the memory sweep")
    p.add_argument("--fixed-k", type=int, default=1000, help="K of the chunk sweep")
    p.add_argument("--speed-n", type=int, default=50, help="test images for the speed comparison")
    p.add_argument("--speed-ks", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--naive-n", type=int, default=3, help="images for the naive loop (0: skip it)")
    p.add_argument("--agree-n", type=int, default=100, help="test images for the agreement check (0: skip it)")
    p.add_argument("--agree-k", type=int, default=500, help="K of the agreement check (evaluated in one pass of K x n pairs)")
    p.add_argument("--agree-epochs", type=int, default=2)
    p.add_argument("--agree-train-size", type=int, default=10000)
    p.add_argument("--parts", default="abc", help="which parts to run: any of a, b, c")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.memory_worker is not None:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return None

    torch.set_num_threads(args.threads)
    sections = []
    if "a" in args.parts:
        sections.append(memory_tables(args))
    if "b" in args.parts:
        sections.append(speed_table(args))
    if "c" in args.parts and args.agree_n > 0:
        sections.append(agreement_table(args))
    print(common.header("Evaluator benchmarks: `pyro_gen.evaluation.log_likelihood`"))
    print("\n\n".join(sections))
    return sections


if __name__ == "__main__":
    main()
