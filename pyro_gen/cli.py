"""The ``pyro-gen`` command line: ``train``, ``evaluate``, ``sample``, ``compare``, ``analyze``, ``download``, ``list``.

Errors that users can fix (bad config keys, unknown names, missing data) are printed as
one clear line with exit status 2, without a traceback.
"""

import argparse
import sys
import time
from pathlib import Path

from pyro_gen.errors import ConfigError, PyroGenError, TrainingInterrupted

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

    c = sub.add_parser(
        "compare",
        help="train several guides on one model (--guides), or tabulate test NLLs across model families (--configs, --runs); "
        "writes compare.csv and compare.md",
    )
    c.add_argument("--config", help="base YAML config")
    c.add_argument("--data", help="dataset name (data.name)")
    c.add_argument("--guides", help="comma-separated guide names, e.g. normal,planar:10,iaf:4")
    c.add_argument(
        "--configs", nargs="+", metavar="CONFIG", help="train one run per config (any model.kind, one dataset) and tabulate their test NLLs"
    )
    c.add_argument("--runs", nargs="+", metavar="RUN_DIR", help="tabulate the test NLLs of evaluated runs (any model.kind, one dataset)")
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
        scores = train(None, args.run_dir, resume=True, device=args.device)
    else:
        if args.config is None:
            raise ConfigError("train needs a config file, e.g. 'pyro-gen train configs/quickstart.yaml' (see configs/)")
        config = load_config(args.config, args.overrides)
        run_dir = args.run_dir or f"runs/{config.data.name}-{config.family.label(config)}-{time.strftime('%Y%m%d-%H%M%S')}"
        scores = train(config, run_dir, device=args.device)
        _say(f"run directory: {run_dir}")
    _say(scores.summary())


def _compare(args) -> None:
    from pyro_gen.config import load_config
    from pyro_gen.run import compare, compare_configs, compare_runs

    chosen = [flag for flag, value in (("--guides", args.guides), ("--configs", args.configs), ("--runs", args.runs)) if value]
    if len(chosen) != 1:
        raise ConfigError(
            "compare needs exactly one of --guides (guides of one config), --configs (one run per config) or --runs "
            f"(evaluated run directories); got {' and '.join(chosen) or 'none'}"
        )
    if args.runs or args.configs:
        if args.config or args.data or args.epochs or args.train_size or args.test_size or args.nll_samples or args.seed is not None:
            raise ConfigError("--config, --data, --epochs, ... set one config for --guides; with --configs put them in each file")
        if args.runs:
            rows = compare_runs(args.runs, args.out)
        else:
            names = [Path(c).stem for c in args.configs]
            if len(set(names)) != len(names):
                raise ConfigError(f"compare --configs needs configs with distinct file names (their run directories): {names}")
            configs = {name: load_config(c, args.overrides) for name, c in zip(names, args.configs)}
            rows = compare_configs(configs, args.out)
        print((Path(args.out) / "compare.md").read_text())
        print(f"wrote {Path(args.out) / 'compare.csv'} ({len(rows)} runs)")
        return

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
    from pyro_gen.families import family_names, get_family
    from pyro_gen.guides import guide_names
    from pyro_gen.infer import objective_names
    from pyro_gen.infer.adversarial import LOSSES
    from pyro_gen.models import likelihood_names

    print("models:      " + ", ".join(f"{n} ({get_family(n).description})" for n in family_names()))
    print("datasets:    " + ", ".join(dataset_names()))
    print("guides:      " + ", ".join(guide_names()))
    print("likelihoods: " + ", ".join(likelihood_names()))
    print("objectives:  " + ", ".join(objective_names()))
    print("gan losses:  " + ", ".join(LOSSES))


def _resume_hint(args) -> str:
    if args.command != "train" or not getattr(args, "run_dir", None):
        return ""
    from pyro_gen.run import RunDir

    if RunDir(args.run_dir).is_complete():  # stopped while scoring the finished run
        return f"; the training finished: score it with: pyro-gen evaluate {args.run_dir}"
    return f"; continue with: pyro-gen train --resume --run-dir {args.run_dir}"


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise), without importing torch for ``--help``."""
    import os

    return int(os.environ.get("RANK", "0") or 0) if "WORLD_SIZE" in os.environ else 0


def _say(text: str) -> None:
    """Print a result line once: on rank 0 of a data-parallel run (torchrun), always in one process."""
    if _rank() == 0:
        print(text)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    code = None
    try:
        code = _main(args)
        return code
    finally:
        if "torch" in sys.modules:  # leave torchrun's process group (if one was joined)
            from pyro_gen import distributed

            # after a failure the other ranks may be inside any collective: agreeing on the end with them could only
            # mismatch (and abort this process before its error is shown); they learn of it from the closed connection
            distributed.shutdown(handshake=code == 0)


def _main(args) -> int:
    who = f"pyro-gen {args.command}" + (f" (rank {_rank()})" if _rank() else "")
    try:
        if args.command == "train":
            _train(args)
        elif args.command == "evaluate":
            from pyro_gen.run import evaluate_run

            scores = evaluate_run(
                args.run_dir, nll_samples=args.nll_samples, device=args.device, figures=False if args.no_figures else None
            )
            _say(scores.summary())
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
    except KeyboardInterrupt:
        print(f"{who}: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130
    except PyroGenError as e:
        # Pyro re-raises errors from inside a traced model with the trace's shapes appended;
        # the user needs our message, not the shapes table
        message = str(e).split("\nTrace Shapes:")[0].rstrip()
        if isinstance(e, TrainingInterrupted):
            print(f"{who}: {message}{_resume_hint(args)}", file=sys.stderr)
            import signal

            return 128 + signal.Signals[e.signal_name].value if e.signal_name in signal.Signals.__members__ else 130
        print(f"{who}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
