"""The ``pyro-gen`` command line: ``train``, ``evaluate``, ``sample``, ``compare``, ``analyze``, ``download``, ``list``.

Errors that users can fix (bad config keys, unknown names, missing data) are printed as
one clear line with exit status 2, without a traceback.
"""

import argparse
import sys
import time
from pathlib import Path

from pyro_gen.errors import ConfigError, PyroGenError

ANALYZE_POINTS = 100  # pyro_gen.run.ANALYZE_POINTS, repeated so that --help does not import torch


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyro-gen", description="Deep generative models as Pyro programs.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config; writes a run directory")
    t.add_argument("config", nargs="?", help="YAML config file (defaults are used for missing keys)")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.epochs=5 guide.name=planar:10")
    t.add_argument("--run-dir", help="output directory (default runs/<data>-<guide>-<time>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    t.add_argument("--device", help="cpu or cuda (overrides train.device)")

    e = sub.add_parser("evaluate", help="score a run's best checkpoint on its test split; writes metrics.json")
    e.add_argument("run_dir")
    e.add_argument("--nll-samples", type=int, help="importance samples K (default: the run's eval.nll_samples)")
    e.add_argument("--device")
    e.add_argument("--no-figures", action="store_true")

    s = sub.add_parser(
        "sample", help="write samples from a run's model: a PNG grid of images, or (a GAN on vectors) a scatter PNG and the points as .npy"
    )
    s.add_argument("run_dir")
    s.add_argument("--num", type=int, help="number of samples (default 64 images, or 2500 points of vector data)")
    s.add_argument("--out", help="PNG path (default RUN_DIR/samples.png); a GAN's points go beside it with the suffix .npy")
    s.add_argument("--seed", type=int, default=0)

    c = sub.add_parser("compare", help="train several guides on one model; writes compare.csv and compare.md")
    c.add_argument("--config", help="base YAML config")
    c.add_argument("--data", help="dataset name (data.name)")
    c.add_argument("--guides", required=True, help="comma-separated guide names, e.g. normal,planar:10,iaf:4")
    c.add_argument("--epochs", type=int)
    c.add_argument("--train-size", type=int, help="seeded random subset of the training split")
    c.add_argument("--test-size", type=int, help="seeded random subset of the test split")
    c.add_argument("--nll-samples", type=int)
    c.add_argument("--seed", type=int, help="seed for training and for the subsets")
    c.add_argument("--device")
    c.add_argument("--out", required=True, help="output directory (one run directory per guide inside)")
    c.add_argument("--jobs", type=int, default=1, help="guides trained at once in worker processes (CPU threads are shared)")
    c.add_argument("overrides", nargs="*", help="section.key=value overrides")

    a = sub.add_parser(
        "analyze",
        help="Bayesian diagnostics with ArviZ into the run directory: summary.csv and plots "
        "(Gaussian mixture: trace, rank, pair, ppc, loo.json; VAE: local posteriors, per-point k-hat)",
    )
    a.add_argument("run_dir")
    a.add_argument(
        "--points",
        type=int,
        help=f"VAE runs: test points (a seeded random draw) whose local posteriors q(z | x) are drawn (default {ANALYZE_POINTS})",
    )
    a.add_argument("--draws", type=int, default=1000, help="draws per local posterior, or from a variational posterior (default 1000)")
    a.add_argument("--khat-samples", type=int, help="VAE runs: importance draws per point for k-hat (default: the run's eval settings)")
    a.add_argument("--seed", type=int, default=0, help="seed of the chosen points and of the draws")

    d = sub.add_parser("download", help="download a dataset into the data directory (with checksums)")
    d.add_argument("name")
    d.add_argument("--data-dir", help="default: $PYRO_GEN_DATA or ~/.pyro_gen/data")

    sub.add_parser("list", help="list datasets, guides, likelihoods and objectives")
    return p


def _train(args) -> None:
    from pyro_gen.config import load_config
    from pyro_gen.run import train

    if args.resume:
        if not args.run_dir:
            raise ConfigError("--resume needs --run-dir, the run directory to continue")
        if args.config or args.overrides:
            # the run continues with its own config.yaml; never ignore arguments silently
            given = " ".join(filter(None, [args.config, *args.overrides]))
            raise ConfigError(
                f"--resume continues the run with its own {args.run_dir}/config.yaml; it takes no config or overrides "
                f"(only --device, to move the run), got: {given}"
            )
        metrics = train(None, args.run_dir, resume=True, device=args.device)
    else:
        overrides = list(args.overrides) + ([f"train.device={args.device}"] if args.device else [])
        config = load_config(args.config, overrides)
        run_dir = args.run_dir or f"runs/{config.data.name}-{_run_label(config)}-{time.strftime('%Y%m%d-%H%M%S')}"
        metrics = train(config, run_dir)
        print(f"run directory: {run_dir}")
    print(_scores_line(metrics))


def _run_label(config) -> str:
    if config.model.kind == "gan":
        return f"gan-{config.model.net}-{config.objective.name}"
    if config.model.kind == "gmm":
        return f"gmm-{config.train.method if config.train.method == 'nuts' else config.guide.name}"
    return config.guide.name.replace(":", "-")


def _scores_line(m: dict) -> str:
    """One line of a run's test scores (a VAE's importance-sampled NLL, a Gaussian mixture's exact log-likelihood,
    or the quality of a GAN's samples)."""
    if "modes_covered" in m:
        kl = "n/a" if m["reverse_kl"] is None else f"{m['reverse_kl']:.3f}"
        q = m["protocol"]["sample_quality"]
        return (
            f"{m['modes_covered']}/{m['num_modes']} modes covered, {100 * m['high_quality']:.1f}% high quality, reverse KL {kl} "
            f"({q['samples']} samples, {q['num_std']:g} std)"
        )
    if "frechet_distance" in m:
        spread = "" if m["kid_std"] is None else f" (std {m['kid_std']:.2g})"
        return (
            f"Frechet distance {m['frechet_distance']:.4g}, KID {m['kid']:.4g}{spread}, precision {m['precision']:.3f}, "
            f"recall {m['recall']:.3f} in the {m['feature_space']} feature space ({m['num_samples']} samples)"
        )
    if "test_log_likelihood" in m:
        at = "the posterior mean" if m["protocol"]["method"] == "nuts" else f"the {m['guide']} guide's estimate"
        line = f"test log-likelihood {m['test_log_likelihood']:.4f} nats per point at {at} (train {m['train_log_likelihood']:.4f})"
        if m.get("test_lpd") is not None:
            r_hat = "n/a" if m["r_hat_max"] is None else f"{m['r_hat_max']:.3f}"
            line += f", posterior predictive {m['test_lpd']:.4f}; {m['divergences']} divergences, max R-hat {r_hat}"
        return line
    line = f"test NLL {m['test_nll']:.3f} nats (K={m['nll_samples']}), test ELBO {m['test_elbo']:.3f}, active units {m['active_units']}"
    if m.get("khat_mean") is not None:
        line += f", k-hat mean {m['khat_mean']:.2f} ({100 * m['khat_share_above_0.7']:.0f}% of points above 0.7)"
    return line


def _compare(args) -> None:
    from pyro_gen.config import load_config
    from pyro_gen.run import compare

    flags = {
        "data.name": args.data,
        "train.epochs": args.epochs,
        "data.train_size": args.train_size,
        "data.test_size": args.test_size,
        "eval.nll_samples": args.nll_samples,
        "train.seed": args.seed,
        "data.seed": args.seed,
        "train.device": args.device,
    }
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    config = load_config(args.config, overrides)
    rows = compare(config, args.guides.split(","), args.out, jobs=args.jobs)
    print((Path(args.out) / "compare.md").read_text())
    print(f"wrote {Path(args.out) / 'compare.csv'} ({len(rows)} guides)")


def _list() -> None:
    from pyro_gen.data import dataset_names
    from pyro_gen.guides import guide_names
    from pyro_gen.infer import objective_names
    from pyro_gen.infer.adversarial import LOSSES
    from pyro_gen.models import likelihood_names

    print("datasets:    " + ", ".join(dataset_names()))
    print("guides:      " + ", ".join(guide_names()))
    print("likelihoods: " + ", ".join(likelihood_names()))
    print("objectives:  " + ", ".join(objective_names()))
    print("gan losses:  " + ", ".join(LOSSES))


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            _train(args)
        elif args.command == "evaluate":
            from pyro_gen.run import evaluate_run

            m = evaluate_run(args.run_dir, nll_samples=args.nll_samples, device=args.device, figures=False if args.no_figures else None)
            print(_scores_line(m))
        elif args.command == "sample":
            from pyro_gen.run import sample_run

            print(f"wrote {', '.join(map(str, sample_run(args.run_dir, args.num, args.out, args.seed)))}")
        elif args.command == "compare":
            _compare(args)
        elif args.command == "analyze":
            from pyro_gen.run import analyze_run

            paths = analyze_run(args.run_dir, points=args.points, draws=args.draws, seed=args.seed, khat_samples=args.khat_samples)
            print(f"wrote {', '.join(p.name for p in paths)} into {args.run_dir}")
        elif args.command == "download":
            from pyro_gen.data import download_dataset

            print(f"downloaded {args.name} into {download_dataset(args.name, args.data_dir)}")
        elif args.command == "list":
            _list()
    except PyroGenError as e:
        # Pyro re-raises errors from inside a traced model with the trace's shapes appended;
        # the user needs our message, not the shapes table
        message = str(e).split("\nTrace Shapes:")[0].rstrip()
        print(f"pyro-gen {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
