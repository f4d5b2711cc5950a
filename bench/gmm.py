"""Gaussian mixtures: MAP against scikit-learn's EM, and NUTS against the known truth.

(a) MAP vs EM. ``pyro_gen``'s MAP fit (:func:`pyro_gen.infer.gmm_fit.fit_map`: an AutoDelta guide
    over the mixture's globals, Pyro's ``TraceEnum_ELBO`` summing the assignments out, full-batch
    Adam in the one trainer) and scikit-learn's ``GaussianMixture`` (EM), both started from the
    same k-means partition (``pyro_gen``'s k-means++; EM gets its weights, means and precisions),
    on the training splits of ``gmm2d``, ``iris`` and ``wine`` (standardized), 3 components,
    diagonal and full covariances. Reported: mean per-sample log-likelihood of each fit on the
    training and test splits and the relative gap on the training split (target: within 1%; the
    MAP optimum differs from the maximum-likelihood one by the weak priors' pull).
(b) NUTS vs truth. The Bayesian mixture (``ordered=True``: means ordered along their first
    coordinate, no label switching; assignments enumerated out of the potential) on ``gmm2d``,
    whose parameters are known (:func:`pyro_gen.data.gmm2d_truth`), with 4 chains (run one after
    another when the machine has fewer free CPUs). For every scalar of the identifiable quantities
    (weights, ordered means, scales, and the correlations) the table gives the posterior mean, the
    94% HDI, the truth, bulk ESS and R-hat, and checks bulk ESS > 400, R-hat < 1.01 and truth
    inside the 94% HDI (reported; judged in (c)). Then the InferenceData is written to netCDF and read back, and every group
    is checked equal with ``xarray.testing.assert_identical`` (values, dims, coords, attributes).
(c) Calibration. One dataset cannot show that 94% intervals are right: with 18 calibrated ones, at
    least one misses the truth in about 2 datasets of 3. So NUTS runs on ``--datasets`` fresh
    datasets (data seeds 1, 2, ...) and the coverage of all their intervals is compared with 94%
    (Clopper-Pearson 95% interval; the check passes when it contains 0.94).

Run (from the repository root; minutes of CPU)::

    python bench/gmm.py
    python bench/gmm.py --smoke     # tiny draws and steps: checks that the script runs; numbers mean nothing

The exit status is 1 when a check fails (not with ``--smoke``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

try:  # imported as bench.gmm
    from . import common
except ImportError:  # run as a script: python bench/gmm.py
    import common

DATASETS = ("gmm2d", "iris", "wine")
COVARIANCES = ("diag", "full")
COMPONENTS = 3
HDI_PROB = 0.94


# -- (a) MAP vs EM ------------------------------------------------------------------------------
def _em_fit(x: torch.Tensor, init: dict, covariance: str):
    """scikit-learn's EM started from the given parameters (the model's parametrization)."""
    from sklearn.mixture import GaussianMixture

    scales = init["scales"].double()
    if covariance == "diag":
        precisions = (1 / scales**2).numpy()
    else:
        tril = scales.unsqueeze(-1) * init["corr_chol"].double()
        precisions = torch.linalg.inv(tril @ tril.transpose(-1, -2)).numpy()
    em = GaussianMixture(
        len(init["weights"]),
        covariance_type=covariance,
        weights_init=(init["weights"].double() / init["weights"].double().sum()).numpy(),  # renormalized in float64 for sklearn's check
        means_init=init["locs"].double().numpy(),
        precisions_init=precisions,
        max_iter=5000,
        tol=1e-10,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning in --smoke runs
        return em.fit(x.double().numpy())


def map_vs_em(args) -> tuple[str, bool]:
    from pyro_gen.data import load_dataset
    from pyro_gen.infer.gmm_fit import fit_map, kmeans
    from pyro_gen.models import gmm

    rows, ok = [], True
    for name in DATASETS:
        n = args.n if name == "gmm2d" else None
        train = load_dataset(name, "train", n=n, seed=args.seed).x
        test = load_dataset(name, "test", n=n, seed=args.seed).x
        labels = kmeans(train, COMPONENTS, seed=args.seed)
        for covariance in COVARIANCES:
            model = gmm(COMPONENTS, train.shape[1], covariance)
            init = model.params_from_labels(train, labels)
            t0 = time.perf_counter()
            em = _em_fit(train, init, covariance)
            em_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            fit = fit_map(model, train, steps=args.steps, lr=args.lr, init=labels, seed=args.seed)
            map_seconds = time.perf_counter() - t0
            ours, theirs = (model.log_density(train, fit.params).mean().item(), em.score(train.double().numpy()))
            ours_test, theirs_test = (model.log_density(test, fit.params).mean().item(), em.score(test.double().numpy()))
            gap = abs(ours - theirs) / abs(theirs)
            ok &= gap < 0.01
            rows.append(
                [
                    name, covariance, f"{len(train)} x {train.shape[1]}", f"{ours:.4f}", f"{theirs:.4f}", f"{100 * gap:.3f}%",
                    "yes" if gap < 0.01 else "**no**", f"{ours_test:.4f}", f"{theirs_test:.4f}", f"{map_seconds:.1f}",
                    f"{em_seconds:.2f}", em.n_iter_,
                ]
            )  # fmt: skip
    header = [
        "data", "covariance", "train N x D", "MAP train LL", "EM train LL", "gap", "within 1%", "MAP test LL",
        "EM test LL", "MAP s", "EM s", "EM iterations",
    ]  # fmt: skip
    text = (
        f"### (a) MAP (AutoDelta, TraceEnum_ELBO, {args.steps} full-batch Adam steps, lr {args.lr}) vs EM (scikit-learn), "
        f"same k-means start, {COMPONENTS} components\n\nMean log-likelihood per sample (nats); gap = |MAP - EM| / |EM| on "
        "the training split. iris and wine are standardized by their training split; gmm2d has "
        f"{args.n} points per split (seed {args.seed}).\n\n" + common.markdown_table(header, rows)
    )
    return text, ok


# -- (b) NUTS vs truth ------------------------------------------------------------------------------
def _scalars(values: np.ndarray, name: str) -> dict:
    """``{"name[i, j]": array over draws}`` for every entry of a ``(chain, draw, *shape)`` array."""
    shape = values.shape[2:]
    return {f"{name}[{', '.join(map(str, i))}]": values[(slice(None), slice(None)) + i] for i in np.ndindex(*shape)}


def _run_nuts(x, draws: int, warmup: int, chains: int, seed: int, jit: bool, progress: bool = False):
    from pyro_gen.infer.gmm_fit import fit_nuts
    from pyro_gen.models import gmm

    model = gmm(COMPONENTS, 2, "full", ordered=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the JIT's tracer warnings; "chains will be drawn sequentially"
        return fit_nuts(
            model, x, num_samples=draws, warmup=warmup, num_chains=chains, seed=seed,
            progress=progress, jit_compile=jit, ignore_jit_warnings=True,
        )  # fmt: skip


def _posterior_and_truth(idata) -> tuple[dict, dict]:
    """``(chain, draw, ...)`` posterior arrays and the true values of weights, locs, scales and rho."""
    from pyro_gen.data import gmm2d_truth

    truth = {k: v.numpy() for k, v in gmm2d_truth().items()}
    post = {name: idata.posterior[name].values for name in ("weights", "locs", "scales")}
    # the correlation of component k in 2-D is the (1, 0) entry of its correlation Cholesky factor
    post["rho"] = idata.posterior["corr_chol"].values[..., 1, 0]
    truth["rho"] = truth["corr_chol"][:, 1, 0]
    return post, truth


def nuts_calibration(args) -> tuple[str, bool]:
    """(c) Coverage of the 94% HDIs over ``args.datasets`` fresh gmm2d datasets (data seeds 1, 2, ...)."""
    import arviz
    from scipy.stats import beta as beta_dist

    from pyro_gen.analysis import from_mcmc
    from pyro_gen.data import load_dataset

    hits: dict[str, int] = {}
    worst_rhat, least_ess, divergences, t0 = 0.0, float("inf"), 0, time.perf_counter()
    for data_seed in range(1, args.datasets + 1):
        x = load_dataset("gmm2d", "train", n=args.cal_n, seed=data_seed).x
        mcmc = _run_nuts(x, args.cal_draws, args.cal_warmup, args.cal_chains, data_seed, args.jit)
        idata = from_mcmc(mcmc)
        divergences += int(idata.sample_stats["diverging"].values.sum())
        post, truth = _posterior_and_truth(idata)
        for name in ("weights", "locs", "scales", "rho"):
            true = dict(zip(_scalars(truth[name][None, None], name), np.ravel(truth[name])))
            for label, values in _scalars(post[name], name).items():
                lo, hi = arviz.hdi(values.ravel(), hdi_prob=HDI_PROB)
                hits[label] = hits.get(label, 0) + int(lo <= true[label] <= hi)
                worst_rhat = max(worst_rhat, float(arviz.rhat(values)))
                least_ess = min(least_ess, float(arviz.ess(values, method="bulk")))
        print(f"(c) dataset {data_seed}/{args.datasets}: {sum(hits.values())} covered so far", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    k, n = sum(hits.values()), len(hits) * args.datasets
    # Clopper-Pearson 95% interval for the coverage rate
    lo = beta_dist.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
    hi = beta_dist.ppf(0.975, k + 1, n - k) if k < n else 1.0
    ok = bool(lo <= HDI_PROB <= hi)
    families: dict[str, tuple[int, int]] = {}
    for label, h in hits.items():
        fam = label.split("[")[0]
        a, b = families.get(fam, (0, 0))
        families[fam] = (a + h, b + args.datasets)
    rows = [[fam, f"{a}/{b}", f"{a / b:.3f}"] for fam, (a, b) in families.items()] + [["all", f"{k}/{n}", f"{k / n:.3f}"]]
    text = (
        f"### (c) Calibration: coverage of the 94% HDIs over {args.datasets} fresh gmm2d datasets\n\n"
        f"Data seeds 1-{args.datasets} ({args.cal_n} points each; part (b): {args.n} points, seed {args.seed}), the same model, "
        f"{args.cal_chains} chains x {args.cal_draws} draws after {args.cal_warmup} warm-up steps each: {seconds:.0f} s, "
        f"{divergences} divergences, worst R-hat {worst_rhat:.4f}, least bulk ESS {least_ess:.0f}. The truth is fixed and the "
        "data vary, so this is the frequentist coverage of the Bayesian intervals, close to nominal for a well-specified "
        "model at this sample size (Bernstein-von Mises); a wrong posterior (a bug in the likelihood, the priors' "
        "transforms, the enumeration or the label ordering) shows as coverage far from 94%.\n\n"
        + common.markdown_table(["quantities", "truth inside the 94% HDI", "coverage"], rows)
        + f"\n\nCoverage {k}/{n} = {k / n:.3f}, Clopper-Pearson 95% interval [{lo:.3f}, {hi:.3f}]: "
        + ("contains 0.94 (calibrated)." if ok else "**excludes 0.94 (miscalibrated)**.")
    )
    return text, ok and divergences == 0


def nuts_vs_truth(args) -> tuple[str, bool]:
    import arviz
    import xarray as xr

    from pyro_gen.analysis import from_mcmc
    from pyro_gen.data import load_dataset

    x = load_dataset("gmm2d", "train", n=args.n, seed=args.seed).x
    t0 = time.perf_counter()
    mcmc = _run_nuts(x, args.draws, args.warmup, args.chains, args.seed, args.jit, args.progress)
    seconds = time.perf_counter() - t0
    idata = from_mcmc(mcmc, posterior_predictive=True)
    post, truth = _posterior_and_truth(idata)
    rows, ok, covered, total = [], True, 0, 0
    for name in ("weights", "locs", "scales", "rho"):
        draws, true = _scalars(post[name], name), dict(zip(_scalars(truth[name][None, None], name), np.ravel(truth[name])))
        for label, values in draws.items():
            lo, hi = arviz.hdi(values.ravel(), hdi_prob=HDI_PROB)  # the chains pooled
            ess = float(arviz.ess(values, method="bulk"))  # (chain, draw) arrays
            r_hat = float(arviz.rhat(values))
            checks = {"ess": ess > 400, "r_hat": r_hat < 1.01, "covered": lo <= true[label] <= hi}
            # coverage of one dataset is judged in (c), across datasets: with 18 calibrated 94% intervals
            # one or more misses happen in about 2 datasets of 3
            ok &= checks["ess"] and checks["r_hat"]
            covered, total = covered + checks["covered"], total + 1
            rows.append(
                [
                    label, f"{values.mean():.3f}", f"[{lo:.3f}, {hi:.3f}]", f"{true[label]:.3f}", f"{ess:.0f}", f"{r_hat:.4f}",
                    " ".join(k for k, v in checks.items() if v) or "-", " ".join(f"**{k}**" for k, v in checks.items() if not v) or "-",
                ]
            )  # fmt: skip
    divergences = int(idata.sample_stats["diverging"].values.sum())

    # the netCDF round trip: every group identical after writing and reading back
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "posterior.nc")
        idata.to_netcdf(path)
        back = arviz.from_netcdf(path)
        assert set(back.groups()) == set(idata.groups()), (back.groups(), idata.groups())
        for group in idata.groups():
            xr.testing.assert_identical(idata[group].load(), back[group].load())
    header = ["quantity", "posterior mean", f"{int(100 * HDI_PROB)}% HDI", "truth", "bulk ESS", "R-hat", "passed", "failed"]
    text = (
        f"### (b) NUTS on gmm2d ({len(x)} points, 3 components, full covariances, ordered means), {args.chains} chains x "
        f"{args.draws} draws after {args.warmup} warm-up steps, jit {args.jit}: {seconds:.0f} s, {divergences} divergences\n\n"
        "Checks per quantity: bulk ESS > 400, R-hat < 1.01, truth inside the 94% HDI. rho[k]: the correlation of component k.\n"
        f"The truth is inside the 94% HDI for {covered} of {total} quantities (expected with calibrated intervals: "
        f"{HDI_PROB * total:.1f}; P(no miss) = {HDI_PROB**total:.2f}); whether the intervals are calibrated is part (c).\n\n"
        + common.markdown_table(header, rows)
        + f"\n\nnetCDF round trip: groups {', '.join(idata.groups())} identical after `to_netcdf` / `from_netcdf` "
        "(`xarray.testing.assert_identical`)."
    )
    return text, ok and divergences == 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--parts", default="abc", help="which parts to run: any of a, b, c")
    p.add_argument("--n", type=int, default=500, help="gmm2d points per split")
    p.add_argument("--steps", type=int, default=3000, help="(a) full-batch Adam steps of the MAP fits")
    p.add_argument("--lr", type=float, default=0.05, help="(a) Adam learning rate")
    p.add_argument("--draws", type=int, default=1000, help="(b) NUTS draws per chain")
    p.add_argument("--warmup", type=int, default=1000, help="(b) NUTS warm-up steps per chain")
    p.add_argument("--chains", type=int, default=4, help="(b) NUTS chains")
    p.add_argument("--datasets", type=int, default=10, help="(c) fresh datasets for the calibration check")
    p.add_argument("--cal-n", type=int, default=200, help="(c) gmm2d points per dataset")
    p.add_argument("--cal-draws", type=int, default=500, help="(c) NUTS draws per chain")
    p.add_argument("--cal-warmup", type=int, default=500, help="(c) NUTS warm-up steps per chain")
    p.add_argument("--cal-chains", type=int, default=2, help="(c) NUTS chains")
    p.add_argument("--no-jit", dest="jit", action="store_false", help="(b) run NUTS without compiling the potential")
    p.add_argument("--progress", action="store_true", help="(b) NUTS progress bars")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny settings that only check that the script runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.n, args.steps, args.draws, args.warmup, args.chains = 100, 20, 10, 10, 2
        args.datasets, args.cal_draws, args.cal_warmup, args.cal_n = 2, 10, 10, 100
    torch.set_num_threads(args.threads)
    sections, ok = [], True
    if "a" in args.parts:
        text, passed = map_vs_em(args)
        sections.append(text)
        ok &= passed
    if "b" in args.parts:
        text, passed = nuts_vs_truth(args)
        sections.append(text)
        ok &= passed
    if "c" in args.parts:
        text, passed = nuts_calibration(args)
        sections.append(text)
        ok &= passed
    print(common.header("Gaussian mixtures: MAP vs EM, NUTS vs the truth" + (" (SMOKE RUN: tiny settings)" if args.smoke else "")))
    print("\n\n".join(sections))
    print(f"\nAll checks passed: {'yes' if ok else 'no'}" + (" (smoke run: not meaningful)" if args.smoke else ""))
    return 0 if ok or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
