"""Files that ``pyro-gen analyze`` writes from an InferenceData: ArviZ summaries, diagnostic plots, LOO / WAIC, k-hat.

Every function takes arrays or an InferenceData and a path and writes one file atomically
(a temporary file beside it, then a rename), so a crash never leaves half a figure. The
figures are ArviZ's own (``plot_trace``, ``plot_rank``, ``plot_pair``, ``plot_ppc``,
``plot_khat``) on matplotlib's non-interactive Agg backend.

References:
  Vehtari, Gelman & Gabry, Practical Bayesian model evaluation using leave-one-out
  cross-validation and WAIC, Statistics and Computing 27, 2017.
  Vehtari, Gelman, Simpson, Carpenter & Buerkner, Rank-normalization, folding, and
  localization: an improved R-hat, Bayesian Analysis 16(2), 2021 (rank plots, ESS, R-hat).
"""

import contextlib
import json
import logging
import math
import textwrap
import warnings
from pathlib import Path

import numpy as np

from pyro_gen.analysis.plots import pyplot, save_figure
from pyro_gen.io import atomic_path

#: the HDI probability of the summaries (ArviZ's default)
HDI_PROB = 0.94
#: side of one pair-plot panel, and height of one trace-plot row, in inches
PANEL_INCHES = 2.2
#: the largest side of a pair plot, in inches (8 entries fill it; more get smaller panels)
PAIR_MAX_INCHES = 8 * PANEL_INCHES


@contextlib.contextmanager
def quiet():
    """Silence ArviZ's and numpy's warnings about diagnostics that are undefined, not wrong.

    Constant entries (a Cholesky factor's fixed zeros and ones) give NaN R-hat with numpy's
    "invalid value" warnings, and one chain (independent draws from a guide) has no R-hat, which
    ArviZ logs as a failed shape validation; NaN is the right answer in both cases.
    """
    import arviz

    # ArviZ 0.x logs through its own Logger instance (not registered with logging.getLogger)
    logger = getattr(arviz, "_log", None) or logging.getLogger("arviz")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            yield
    finally:
        logger.setLevel(level)


def write_netcdf(idata, path) -> Path:
    """``idata.to_netcdf`` atomically."""
    with atomic_path(path) as tmp:
        idata.to_netcdf(str(tmp))
    return Path(path)


def write_summary(idata, path, var_names=None, group: str = "posterior"):
    """``arviz.summary`` (mean, sd, HDI, MCSE, bulk and tail ESS, R-hat) as CSV; returns the table.

    Entries that are constant across draws (e.g. the fixed zeros of a Cholesky factor) have
    NaN R-hat.
    """
    import arviz

    with quiet():
        table = arviz.summary(idata, var_names=var_names, group=group, hdi_prob=HDI_PROB)
    with atomic_path(path) as tmp:
        table.to_csv(tmp)
    return table


def _entries(idata, var_names, coords) -> int:
    """Number of scalar entries the selection ``var_names`` / ``coords`` of the posterior holds."""
    posterior = idata.posterior[var_names]
    if coords:
        posterior = posterior.sel({k: v for k, v in coords.items() if k in posterior.dims})
    return sum(int(np.prod([n for d, n in v.sizes.items() if d not in ("chain", "draw")])) for v in posterior.data_vars.values())


def pair_figure(idata, var_names, coords=None, title: str = ""):
    """``arviz.plot_pair`` of the selected entries, sized to its number of entries; the figure, unsaved.

    Each panel is :data:`PANEL_INCHES` wide (up to 8 entries; more share :data:`PAIR_MAX_INCHES`),
    the title is 14 pt above them, and divergent draws are marked when the sampler recorded them.
    Select the entries with ``coords`` (e.g. up to 8 latent dimensions).
    """
    import arviz

    n = _entries(idata, var_names, coords)
    divergences = "sample_stats" in idata.groups() and "diverging" in idata.sample_stats
    side = min(PANEL_INCHES * max(n, 2), PAIR_MAX_INCHES)
    # a 14 pt title wraps at about 9 characters per inch of the figure's width
    title = textwrap.fill(title, width=max(20, int(side * 9))) if title else ""
    with quiet():
        axes = arviz.plot_pair(
            idata, var_names=var_names, coords=coords, divergences=divergences, kind="scatter", marginals=True,
            figsize=(side, side + 0.3 * len(title.splitlines())), textsize=11, backend_kwargs={"layout": "constrained"},
        )  # fmt: skip
    fig = np.ravel(axes)[0].figure
    if title:
        fig.suptitle(title, fontsize=14)
    return fig


def pair_plot(idata, path, var_names, coords=None, title: str = "") -> Path:
    """Write :func:`pair_figure` as a PNG."""
    return save_figure(pair_figure(idata, var_names, coords, title), path)


def trace_figure(idata, var_names):
    """``arviz.plot_trace`` (compact: one row per variable, its density and its draws), laid out so that no title overlaps; unsaved."""
    import arviz

    rows = len(var_names) if var_names is not None else len(idata.posterior.data_vars)
    figsize = (12, PANEL_INCHES * max(rows, 1))
    with quiet():
        axes = arviz.plot_trace(idata, var_names=var_names, compact=True, figsize=figsize, backend_kwargs={"layout": "constrained"})
    return np.ravel(axes)[0].figure


def posterior_plots(idata, out_dir, var_names, pair_names=None, pair_coords=None, rank_coords=None) -> list[Path]:
    """``trace.png``, ``rank.png``, ``pair.png`` and ``ppc.png`` (when the InferenceData has a posterior predictive).

    :param var_names: the posterior variables to plot.
    :param pair_names: the variables of the pair plot (default ``var_names``).
    :param pair_coords: ``{dim: labels}`` selecting the entries of the pair plot (it has one panel per pair).
    :param rank_coords: the same for the rank plot (one panel per entry).
    """
    import arviz

    out_dir = Path(out_dir)
    plots = {
        "trace.png": lambda: trace_figure(idata, var_names),
        "rank.png": lambda: arviz.plot_rank(idata, var_names=var_names, coords=rank_coords),
    }
    if "posterior_predictive" in idata.groups():
        # one panel per coordinate of a datapoint; the datapoints are pooled in each
        observed = next(iter(idata.observed_data.data_vars.values()))
        flatten = [d for d in observed.dims if d == "data"] or None
        plots["ppc.png"] = lambda: arviz.plot_ppc(idata, num_pp_samples=min(100, idata.posterior.sizes["draw"]), flatten=flatten)
    paths = [pair_plot(idata, out_dir / "pair.png", pair_names or var_names, pair_coords)]
    with quiet():
        for name, plot in plots.items():
            # ArviZ's own figures (rank, ppc) keep its size and layout, meant for 72 dpi; the trace plot is laid out here
            ours = name == "trace.png"
            paths.append(save_figure(plot(), out_dir / name, dpi=100 if ours else 72, tight=ours))
    return paths


def _json_float(value):
    """A float, or None for NaN and infinities (which strict JSON cannot hold)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _elpd_dict(elpd, criterion: str) -> dict:
    """The scalar fields of an ArviZ ``ELPDData`` as JSON-ready values."""
    keys = [f"elpd_{criterion}", "se", f"p_{criterion}", "n_samples", "n_data_points", "warning", "scale"]
    out = {k: (elpd[k].item() if hasattr(elpd[k], "item") else elpd[k]) for k in keys}
    return {k: _json_float(v) if isinstance(v, float) else v for k, v in out.items()}


def write_loo(idata, path, khat_plot=None) -> dict:
    """PSIS-LOO and WAIC (``arviz.loo``, ``arviz.waic``) with the per-datapoint Pareto k, as JSON.

    ``pareto_k`` lists k per datapoint (``null`` where it is infinite: fewer than 5 distinct
    tail values, e.g. too few draws); ``pareto_k_counts`` sorts them into ArviZ's classes (good
    up to the sample-size threshold ``good_k``, bad up to 1, very bad above 1 or infinite).
    """
    import arviz

    with quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the warnings are recorded in the result's "warning" field
        loo = arviz.loo(idata, pointwise=True)
        waic = arviz.waic(idata, pointwise=True)
    k = np.asarray(loo["pareto_k"]).ravel()
    good = float(loo["good_k"]) if "good_k" in loo else 0.7
    report = {
        "loo": {
            **_elpd_dict(loo, "loo"),
            "good_k": good,
            "pareto_k_max": _json_float(np.max(k)),
            "pareto_k_counts": {
                f"good (k <= {good:.2f})": int((k <= good).sum()),
                f"bad ({good:.2f} < k <= 1)": int(((k > good) & (k <= 1)).sum()),
                "very bad (k > 1)": int((k > 1).sum()),
            },
            "pareto_k": [_json_float(v) for v in k],
        },
        "waic": _elpd_dict(waic, "waic"),
    }
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    if khat_plot is not None:
        with quiet():
            save_figure(arviz.plot_khat(loo, show_bins=True), khat_plot, dpi=72, tight=False)
    return report


def write_khat_table(indices, khat, log_px, path) -> Path:
    """``datapoint,khat,log_px`` per chosen datapoint as CSV."""
    with atomic_path(Path(path)) as tmp, open(tmp, "w") as f:
        f.write("datapoint,khat,log_px\n")
        for i, k, lp in zip(np.asarray(indices).tolist(), np.asarray(khat).tolist(), np.asarray(log_px).tolist()):
            f.write(f"{i},{k!r},{lp!r}\n")
    return Path(path)


def khat_histogram(khat, path, num_samples: int, title: str = "") -> Path:
    """A histogram of per-datapoint k-hat with the 0.7 threshold; infinite values are counted in the title."""
    plt = pyplot()
    k = np.asarray(khat, dtype=float)
    finite = k[np.isfinite(k)]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(finite, bins=max(5, min(40, int(math.sqrt(max(len(finite), 1))) * 2)), color="tab:blue", alpha=0.8)
    ax.axvline(0.7, color="tab:red", linestyle="--", label="0.7")
    ax.set_xlabel(f"PSIS k-hat ({num_samples} importance draws per datapoint)")
    ax.set_ylabel("datapoints")
    share = float((k > 0.7).mean()) if len(k) else float("nan")
    extra = f"; {int((~np.isfinite(k)).sum())} not finite" if len(finite) < len(k) else ""
    ax.set_title(f"{title}{' ' if title else ''}share above 0.7: {share:.2f}{extra}", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
