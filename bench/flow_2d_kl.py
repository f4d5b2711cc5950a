"""Flow densities on 2-D data with a known density: KL(p_true || p_model) on ring8 and grid25, and the density pictures.

For each dataset (ring8: 8 Gaussians on a circle of radius 2, std 0.02; grid25: 25 Gaussians on
{-4, ..., 4}^2, std 0.05; :mod:`pyro_gen.data.toy`), each seed s in 0, 1, 2 and each of two flows:

* ``spline``: the shipped ``configs/flow_<data>.yaml``, a neural spline flow (actnorm, then
  rational-quadratic spline couplings, Durkan et al. 2019);
* ``realnvp``: for comparison, the affine-coupling Real NVP those configs held before (8 Pyro
  ``AffineCoupling`` layers, MLP 64-64, actnorm after each, 30 epochs, Adam 1e-3 linear to 0),

the flow family is trained (data.seed = train.seed = s) into a resumable run directory
``OUT/<flow>-<data>-seed<s>`` (a killed run continues when the script is started again; a complete run is
only scored), and ``KL(p_true || p_model) = E_p_true[log p_true(x) - log p_model(x)]`` is estimated with
100,000 fresh true samples (the test split's stream with seed 1000 + s: no point was trained on), with
its Monte Carlo standard error.

The references are fitted once per (data, seed) on the same training points (kept in ``results.json``,
so a restarted script does not refit them): a Gaussian mixture with as many components as the data have
modes and full covariances, (a) the library's mixture family (``pyro_gen.models.gmm`` MAP through
``pyro_gen.infer.gmm_fit.fit_map``: k-means start, AutoDelta, TraceEnum_ELBO, full-batch Adam) and
(b) scikit-learn's ``GaussianMixture`` (EM, k-means++ start, 3 restarts), scored the same way. The
mixtures have the true model's form, so their KL is the floor a flow is compared with.

It also writes ``docs/images/flow_<data>_density.png`` (the spline flow, seed 0),
``docs/images/flow_<data>_realnvp_density.png`` (the affine Real NVP, seed 0) and
``docs/images/flow_two_moons_density.png`` (scikit-learn's two moons, noise 0.05, 20,000 points, the
ring8 config's flow trained through the Trainer).

Run (from the repository root; about an hour on one busy core)::

    OMP_NUM_THREADS=1 PYRO_GEN_DATA=../shared/data python bench/flow_2d_kl.py --out /root/pyro_gen_runs/flow/kl
    python bench/flow_2d_kl.py --smoke --out /tmp/flow_kl_smoke   # tiny: checks that the script runs

Results go to ``OUT/results.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("ring8", "grid25")
KL_SAMPLES = 100_000
#: the flows compared: the shipped config, and the affine Real NVP it replaced (as overrides of the same file)
FLOWS = {
    "spline": {},
    "realnvp": {
        "model.architecture": "realnvp", "model.couplings": 8, "model.hidden": [64, 64], "model.norm": "actnorm",
        "model.bins": 8, "model.bound": 3.0, "train.epochs": 30, "train.batch_size": 256, "train.lr": 1e-3,
        "train.lr_schedule": "linear",
    },
}  # fmt: skip


def true_samples(name: str, seed: int, n: int) -> torch.Tensor:
    from pyro_gen.data.toy import load

    return load(name, "test", n=n, seed=1000 + seed).x


def kl_estimate(name: str, x: torch.Tensor, log_model: torch.Tensor) -> tuple[float, float]:
    """``(mean, standard error)`` of ``log p_true(x) - log p_model(x)`` over true samples ``x``."""
    from pyro_gen.data.toy import toy_log_density

    diff = toy_log_density(name, x) - log_model.double()
    return diff.mean().item(), (diff.std() / math.sqrt(len(diff))).item()


def train_flow(flow: str, name: str, seed: int, out: Path, overrides: dict):
    from pyro_gen.config import load_config
    from pyro_gen.run import RunDir, train
    from pyro_gen.run.commands import evaluate_run

    config = load_config(REPO / "configs" / f"flow_{name}.yaml")
    config.data.seed = config.train.seed = seed
    config.train.progress = False
    for key, value in {**FLOWS[flow], **overrides}.items():
        section, field = key.split(".")
        setattr(getattr(config, section), field, value)
    run_dir = out / f"{flow}-{name}-seed{seed}"
    start = time.perf_counter()
    if (run_dir / "training.json").exists() and RunDir(run_dir).is_complete(config):
        scores = evaluate_run(run_dir, figures=True)
    else:
        resume = (run_dir / "config.yaml").exists()
        scores = train(config, run_dir, resume=resume)
    return run_dir, scores, time.perf_counter() - start


def flow_kl(name: str, seed: int, run_dir: Path, n: int) -> tuple[float, float]:
    from pyro_gen.config import load_config
    from pyro_gen.run.rundir import RunDir

    run = RunDir(run_dir)
    config = load_config(run_dir / "config.yaml")
    model, _, _, _ = config.family.load(config, run)
    x = true_samples(name, seed, n)
    with torch.no_grad():
        log_p = torch.cat([model.log_prob(block) for block in x.split(10_000)])
    return kl_estimate(name, x, log_p)


def mixture_references(name: str, seed: int, config_path: Path, n: int, smoke: bool) -> dict:
    """KL of the two Gaussian-mixture fits of the same training points."""
    from sklearn.mixture import GaussianMixture

    from pyro_gen.config import load_config
    from pyro_gen.data.toy import load, toy_modes
    from pyro_gen.infer.gmm_fit import fit_map
    from pyro_gen.models.gmm import gmm

    config = load_config(config_path)
    train_x = load(name, "train", n=config.data.train_size, seed=seed).x
    components = len(toy_modes(name)[0])
    x = true_samples(name, seed, n)
    out = {}
    start = time.perf_counter()
    model = gmm(components, 2, "full")
    fit = fit_map(model, train_x, "delta", steps=20 if smoke else 500, lr=0.05, seed=seed)
    with torch.no_grad():
        log_p = torch.cat([model.log_density(block, fit.params) for block in x.split(10_000)])
    out["pyro_gen_gmm_map"] = (*kl_estimate(name, x, log_p), time.perf_counter() - start)
    start = time.perf_counter()
    em = GaussianMixture(components, covariance_type="full", n_init=1 if smoke else 3, random_state=seed).fit(train_x.numpy())
    log_p = torch.from_numpy(em.score_samples(x.numpy()))
    out["sklearn_em"] = (*kl_estimate(name, x, log_p), time.perf_counter() - start)
    return out


def two_moons_picture(path: Path, epochs: int | None, seed: int = 0) -> dict:
    """The same flow as configs/flow_ring8.yaml on scikit-learn's two moons, trained through the Trainer
    (for the config's epochs unless ``epochs`` is given)."""
    import pyro
    from sklearn.datasets import make_moons

    from pyro_gen.analysis.flow_figures import density_figure
    from pyro_gen.config import load_config
    from pyro_gen.infer.objectives import MaximumLikelihood
    from pyro_gen.infer.trainer import TensorBatches, Trainer

    config = load_config(REPO / "configs" / "flow_ring8.yaml")
    x = torch.from_numpy(make_moons(20_000, noise=0.05, random_state=seed)[0]).float()
    test = torch.from_numpy(make_moons(5_000, noise=0.05, random_state=seed + 1)[0]).float()
    pyro.set_rng_seed(seed)
    model = config.family.build(config, (2,))
    t = config.train
    epochs = epochs or t.epochs
    start = time.perf_counter()
    Trainer(
        model,
        None,
        MaximumLikelihood(),
        lr=t.lr,
        batch_size=t.batch_size,
        epochs=epochs,
        seed=seed,
        progress=False,
        lr_schedule=t.lr_schedule,
    ).fit(TensorBatches(x, t.batch_size, shuffle=True, seed=seed))
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        test_nll = -model.log_prob(test).mean().item()
        samples = model.sample(5000)
    density_figure(model, test, samples, path, f"{model.description} on two moons (noise 0.05), test NLL {test_nll:.3f}")
    return {"test_nll": test_nll, "seconds": seconds, "epochs": epochs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/root/pyro_gen_runs/flow/kl"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--flows", default=",".join(FLOWS), help="which flows to run, of: " + ", ".join(FLOWS))
    parser.add_argument("--smoke", action="store_true", help="tiny runs: checks that the script works; the numbers mean nothing")
    parser.add_argument("--images", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    flows = [f.strip() for f in args.flows.split(",") if f.strip()]
    unknown = sorted(set(flows) - set(FLOWS))
    if unknown:
        parser.error(f"unknown flows {unknown}; choose from {', '.join(FLOWS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    overrides = {"train.epochs": 1, "data.train_size": 2000, "data.valid_size": 200, "data.test_size": 500} if args.smoke else {}
    n = 2000 if args.smoke else KL_SAMPLES
    results_path = args.out / "results.json"
    previous = json.loads(results_path.read_text()) if results_path.exists() else {}
    # the mixture fits take longer than scoring a finished flow: a restarted script reuses those of the same sample size
    references = previous.get("references", {}) if previous.get("kl_samples") == n else {}
    results = {"kl_samples": n, "references": references, "rows": []}
    for name in DATASETS:
        for seed in range(args.seeds):
            row = {"data": name, "seed": seed}
            for flow in flows:
                run_dir, scores, seconds = train_flow(flow, name, seed, args.out, overrides)
                kl, se = flow_kl(name, seed, run_dir, n)
                row[flow] = {
                    "kl": kl, "kl_se": se, "test_nll": scores["test_nll"], "epochs": scores["epochs"],
                    "seconds_per_epoch": scores["seconds_per_epoch"], "wall_seconds": seconds, "model": scores["model"],
                }  # fmt: skip
                print(json.dumps({"data": name, "seed": seed, flow: row[flow]}), flush=True)
            key = f"{name}-seed{seed}"
            if key not in references:
                references[key] = mixture_references(name, seed, args.out / f"{flows[0]}-{key}" / "config.yaml", n, args.smoke)
            row.update({f"{k}_kl": v[0] for k, v in references[key].items()})
            row.update({f"{k}_kl_se": v[1] for k, v in references[key].items()})
            results["rows"].append(row)
            results_path.write_text(json.dumps(results, indent=1))
        if not args.smoke:
            args.images.mkdir(parents=True, exist_ok=True)
            for flow in flows:
                target = f"flow_{name}_density.png" if flow == "spline" else f"flow_{name}_{flow}_density.png"
                shutil.copyfile(args.out / f"{flow}-{name}-seed0" / "density.png", args.images / target)
    moons = two_moons_picture(
        (args.images / "flow_two_moons_density.png") if not args.smoke else args.out / "two_moons.png", epochs=1 if args.smoke else None
    )
    results["two_moons"] = moons
    results_path.write_text(json.dumps(results, indent=1))
    head = " | ".join(f"{f} KL (se)" for f in flows)
    print(f"\n| data | seed | {head} | pyro_gen GMM MAP KL | sklearn EM KL |")
    print("| --- | --- | " + "--- | " * len(flows) + "--- | --- |")
    for r in results["rows"]:
        cells = " | ".join(f"{r[f]['kl']:.4f} ({r[f]['kl_se']:.4f})" for f in flows)
        print(f"| {r['data']} | {r['seed']} | {cells} | {r['pyro_gen_gmm_map_kl']:.4f} | {r['sklearn_em_kl']:.4f} |")
    for name in DATASETS:
        rows = [r for r in results["rows"] if r["data"] == name]
        if rows:
            means = ", ".join(f"{f} {sum(r[f]['kl'] for r in rows) / len(rows):.4f}" for f in flows)
            best = sum(min(r["pyro_gen_gmm_map_kl"], r["sklearn_em_kl"]) for r in rows) / len(rows)
            print(f"{name}: mean KL over {len(rows)} seeds: {means}; best mixture {best:.4f}")
    print(f"two moons: test NLL {moons['test_nll']:.4f} after {moons['epochs']} epochs ({moons['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
