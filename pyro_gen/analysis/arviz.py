"""ArviZ ``InferenceData`` from Pyro's MCMC, SVI guides over global latents and amortized guides.

Built on :func:`arviz.from_dict` (not ``from_pyro``), so it works with ArviZ 0.x and 1.x
(whose ``from_dict`` takes one dict of groups): every array is computed here, in torch, and
handed over as numpy.

* :func:`from_mcmc`: ``posterior`` (the sampled sites), ``sample_stats`` (``diverging``),
  ``log_likelihood`` (per datapoint and draw), ``observed_data``, and on request
  ``posterior_predictive``, ``prior`` and ``prior_predictive``.
* :func:`from_guide`: the same groups from draws of a guide's global latents (one chain).
* :func:`from_local_posterior`: draws of an amortized guide's local latents for chosen
  datapoints, dims ``(chain, draw, data, <site>_dim_1, ...)``.

**Dimension names.** After ``chain`` and ``draw``, the dims of a site's value are named by,
in order of precedence: the ``dims=`` argument (``{site: [names]}``); the model's
``site_dims`` attribute when it has one (a :class:`~pyro_gen.models.gmm.GaussianMixture`
names ``component``, ``coordinate``, ...); the plate that indexes the dim (``data`` for the
datapoints of a pyro_gen model); else ``<site>_dim_<i>`` with ``i`` the dim's position in
the site's value shape (ArviZ's own default). A log-likelihood keeps only the plate dims
of its observed site (one value per datapoint), so it is converted on its own with those dims.

**Pointwise log-likelihood.** The model is replayed once per chunk of draws, vectorized in a
``"particles"`` plate left of the model's plates, with every latent site conditioned on the
draws (:func:`pyro.poutine.condition`), and the observed site's log-density is summed over
everything but the ``"data"`` plate (:func:`pyro_gen.infer.traces.reduce_site`). A latent
site without draws (e.g. a discrete site that MCMC enumerated) would be sampled instead of
marginalized, so such a model must provide ``log_density(x, params) -> (draws, N)``, which
is used instead (the Gaussian mixture's sums its assignments out).

**Predictive groups.** Observed sites are sampled with :func:`pyro.poutine.uncondition`:
``posterior_predictive`` with the latents conditioned on the draws (discrete sites without
draws sampled from their conditional prior), ``prior``/``prior_predictive`` from the prior.

Reference: Kumar, Carroll, Hartikainen & Martin, ArviZ a unified library for exploratory
analysis of Bayesian models in Python, JOSS 4(33), 2019.
"""

import contextlib
import inspect

import arviz
import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from pyro_gen.errors import ConfigError, SiteMismatchError
from pyro_gen.infer.traces import DATA_PLATE, PARTICLE_PLATE, reduce_site

# ArviZ 0.x: from_dict(posterior=..., sample_stats=..., ...); 1.x: from_dict({"posterior": ..., ...})
_GROUP_KEYWORDS = "posterior" in inspect.signature(arviz.from_dict).parameters


# -- traces ------------------------------------------------------------------------------
def _is_latent(site) -> bool:
    return site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)


def _is_observed(site) -> bool:
    return site["type"] == "sample" and site["is_observed"] and not site_is_subsample(site)


def _nesting(trace, fn) -> int:
    """Batch dims the program uses: its ``max_plate_nesting`` or the longest batch shape of its sites."""
    longest = max((len(s["fn"].batch_shape) for s in trace.nodes.values() if _is_latent(s) or _is_observed(s)), default=0)
    return max(getattr(fn, "max_plate_nesting", 0), longest)


def _params_as_built(*fns):
    """Pyro's ``module_local_params`` setting the fns' PyroModules (autoguides) were built under.

    pyro_gen builds and trains autoguides with module-local parameters; plain Pyro SVI keeps them
    in the global param store. A PyroModule only runs under the setting it was built with.
    """
    for fn in fns:
        for module in fn.modules() if isinstance(fn, torch.nn.Module) else ():
            context = getattr(module, "_pyro_context", None)
            if context is not None:
                return pyro.settings.context(module_local_params=hasattr(context, "param_state"))
    return contextlib.nullcontext()


def _run(fn, args, kwargs):
    return poutine.trace(fn).get_trace(*args, **kwargs)


def _vectorized(fn, num: int, ref, nesting: int, args, kwargs, values: dict | None = None, chunk_size: int = 500):
    """Yield ``(slice, trace)``: ``fn`` run with ``num`` draws vectorized in a ``"particles"`` plate, in chunks.

    ``values`` maps site names to draws ``(num, *site_shape)``; each is reshaped to broadcast
    against the site's batch shape in the reference trace ``ref`` and conditioned on. The plate
    sits at dim ``-nesting - 1``, left of the program's own ``nesting`` batch dims.
    """
    values = values or {}
    for start in range(0, num, chunk_size):
        n = min(chunk_size, num - start)
        data = {}
        for name, v in values.items():
            batch = len(ref.nodes[name]["fn"].batch_shape)
            data[name] = v[start : start + n].reshape((n,) + (1,) * (nesting - batch) + tuple(v.shape[1:]))
        with pyro.plate(PARTICLE_PLATE, n, dim=-nesting - 1):
            yield slice(start, start + n), poutine.trace(poutine.condition(fn, data=data)).get_trace(*args, **kwargs)


def _per_draw(value: torch.Tensor, n: int, shape) -> torch.Tensor:
    """A vectorized site value ``(n, 1.., *shape)`` (or not drawn per particle) as ``(n, *shape)``."""
    shape = tuple(shape)
    value = value.reshape((-1,) + shape)
    return value.expand((n,) + shape) if value.shape[0] == 1 else value


def _plate_dims(site) -> list:
    """The plate name of each dim of a site's value (``None`` where no plate indexes it)."""
    value_dims = site["value"].dim()
    event = len(site["fn"].event_shape)
    names = [None] * value_dims
    for frame in site["cond_indep_stack"]:
        if frame.dim is not None and frame.name != PARTICLE_PLATE:
            names[value_dims - event + frame.dim] = frame.name
    return names


def _dims(ref, model, names, overrides) -> dict:
    """Dim names (after chain, draw) of each named site, by the convention in the module docstring."""
    declared = dict(getattr(model, "site_dims", None) or {})
    declared.update(overrides or {})
    out = {}
    for name in names:
        if name in declared:
            out[name] = list(declared[name])
            continue
        plates = _plate_dims(ref.nodes[name])
        out[name] = [p if p is not None else f"{name}_dim_{i}" for i, p in enumerate(plates)]
    return out


# -- groups ------------------------------------------------------------------------------
def _pointwise_log_likelihood(model, ref, draws: dict, args, kwargs) -> dict:
    """``{observed site: (num, N)}`` (``(num,)`` outside a data plate), by ``model.log_density`` or conditioned replay."""
    observed = [n for n, s in ref.nodes.items() if _is_observed(s)]
    num = len(next(iter(draws.values())))
    log_density = getattr(model, "log_density", None)
    if log_density is not None:
        if len(observed) != 1:
            raise ConfigError(f"model.log_density scores one observed site, but the model observes {observed}")
        name = observed[0]
        x = ref.nodes[name]["value"]
        return {name: torch.cat([log_density(x, {k: v[i : i + 500] for k, v in draws.items()}) for i in range(0, num, 500)])}
    missing = [n for n, s in ref.nodes.items() if _is_latent(s) and n not in draws]
    if missing:
        raise ConfigError(
            f"the latent sites {missing} have no draws, so a replay would sample them instead of marginalizing them "
            "(e.g. discrete sites that MCMC enumerated); give the model a log_density(x, params) method returning "
            "(draws, N), or pass log_likelihood=False"
        )
    parts = {name: [] for name in observed}
    for _, trace in _vectorized(model, num, ref, _nesting(ref, model), args, kwargs, draws):
        for name in observed:
            site = trace.nodes[name]
            parts[name].append(reduce_site(site, site["fn"].log_prob(site["value"]))[0])
    return {name: torch.cat(v) for name, v in parts.items()}


def _predictive(model, ref, num: int, args, kwargs, draws: dict | None = None) -> tuple[dict, dict]:
    """Draws of the latent and observed sites with the observed ones resampled: ``({latent}, {observed})``."""
    latent, observed = {}, {}
    for part, trace in _vectorized(poutine.uncondition(model), num, ref, _nesting(ref, model), args, kwargs, draws):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site) or (draws and name in draws):
                continue
            was_observed = site["infer"].get("was_observed", False)
            if not was_observed and site["infer"].get("enumerate"):
                continue  # a site the inference marginalizes has no posterior draws to compare with
            group = observed if was_observed else latent
            group.setdefault(name, []).append(_per_draw(site["value"], part.stop - part.start, ref.nodes[name]["value"].shape))
    cat = {name: torch.cat(v) for name, v in {**latent, **observed}.items()}
    return {k: cat[k] for k in latent}, {k: cat[k] for k in observed}


def _numpy(values: dict, chains: int) -> dict:
    """Torch draws ``(chains * draws, ...)`` as numpy ``(chains, draws, ...)``."""
    return {name: v.detach().cpu().reshape((chains, -1) + tuple(v.shape[1:])).numpy() for name, v in values.items()}


def _from_dict(groups: dict, dims: dict, coords: dict | None):
    groups = {g: v for g, v in groups.items() if v}
    if _GROUP_KEYWORDS:
        return arviz.from_dict(**groups, dims=dims, coords=coords)
    return arviz.from_dict(groups, dims=dims, coords=coords)


def _merge(first, second):
    """Add the groups of ``second`` to ``first`` (InferenceData in ArviZ 0.x, DataTree in 1.x)."""
    if hasattr(first, "extend"):
        first.extend(second)
        return first
    for name in second.children:
        first[name] = second[name]
    return first


def _inference_data(
    model, ref, args, kwargs, posterior: dict, chains: int, sample_stats=None, *, log_likelihood, posterior_predictive, prior, dims, coords
):
    """Assemble the groups; ``posterior`` maps site names to ``(chains * draws, *shape)`` tensors."""
    num = len(next(iter(posterior.values())))
    observed = {n: s["value"] for n, s in ref.nodes.items() if _is_observed(s)}
    groups = {
        "posterior": _numpy(posterior, chains),
        "sample_stats": sample_stats or {},
        "observed_data": {k: v.cpu().numpy() for k, v in observed.items()},
    }
    if posterior_predictive:
        _, predictive = _predictive(model, ref, num, args, kwargs, posterior)
        groups["posterior_predictive"] = _numpy(predictive, chains)
    if prior:
        prior_latent, prior_observed = _predictive(model, ref, int(prior), args, kwargs)
        groups["prior"] = _numpy({k: v for k, v in prior_latent.items() if k in posterior}, 1)
        groups["prior_predictive"] = _numpy(prior_observed, 1)
    names = sorted({n for g, values in groups.items() if g != "sample_stats" for n in values})
    site_dims = _dims(ref, model, names, dims)
    idata = _from_dict(groups, site_dims, coords)
    if log_likelihood:
        values = _pointwise_log_likelihood(model, ref, posterior, args, kwargs)
        # one value per datapoint: keep the observed site's dims that the data plate indexes
        ll_dims = {n: [d for d, p in zip(site_dims[n], _plate_dims(ref.nodes[n])) if p == DATA_PLATE] for n in values}
        idata = _merge(idata, _from_dict({"log_likelihood": _numpy(values, chains)}, ll_dims, coords))
    return idata


# -- entry points --------------------------------------------------------------------------
def _sample_stats(mcmc, chains: int, draws: int) -> dict:
    """``diverging`` as a ``(chains, draws)`` boolean array.

    Pyro's MCMC has no per-draw ``extra_fields`` (NumPyro's ``get_extra_fields``); its NUTS and
    HMC kernels record the post-warm-up indices of divergent transitions per chain, which
    ``mcmc.diagnostics()`` reports.
    """
    divergences = mcmc.diagnostics().get("divergences")
    if divergences is None:
        raise ConfigError("the MCMC kernel records no divergences; sample with pyro.infer.NUTS or HMC")
    diverging = np.zeros((chains, draws), dtype=bool)
    for chain in range(chains):
        diverging[chain, list(divergences[f"chain {chain}"])] = True
    return {"diverging": diverging}


def from_mcmc(
    mcmc,
    *model_args,
    model=None,
    log_likelihood: bool = True,
    posterior_predictive: bool = False,
    prior: int = 0,
    dims: dict | None = None,
    coords: dict | None = None,
    **model_kwargs,
):
    """InferenceData of a finished :class:`pyro.infer.MCMC` run.

    :param model_args: the model's arguments; by default those the MCMC run was given.
    :param model: by default the kernel's model.
    :param log_likelihood: add the pointwise ``log_likelihood`` group (see the module docstring).
    :param posterior_predictive: add ``posterior_predictive``: one replicated dataset per draw.
    :param int prior: add ``prior`` and ``prior_predictive`` with this many draws (one chain).
    :param dims: ``{site: [dim names]}`` overriding the default names.
    :param coords: ``{dim name: labels}``.
    """
    model = model if model is not None else mcmc.kernel.model
    if model is None:
        raise ConfigError("the MCMC kernel has no model (a potential_fn kernel); pass model=")
    # MCMC.run keeps the arguments it was given (as _args, _kwargs); they reproduce the data
    args = model_args or tuple(mcmc._args or ())
    kwargs = model_kwargs or dict(mcmc._kwargs or {})
    samples = mcmc.get_samples(group_by_chain=True)
    if not samples:
        raise ConfigError("the MCMC object has no samples; call mcmc.run(...) first")
    chains, draws = next(iter(samples.values())).shape[:2]
    posterior = {k: v.reshape((chains * draws,) + tuple(v.shape[2:])) for k, v in samples.items()}
    stats = _sample_stats(mcmc, chains, draws)
    with torch.no_grad(), _params_as_built(model):
        ref = _run(model, args, kwargs)
        return _inference_data(
            model, ref, args, kwargs, posterior, chains, stats,
            log_likelihood=log_likelihood, posterior_predictive=posterior_predictive, prior=prior, dims=dims, coords=coords,
        )  # fmt: skip


def _guide_draws(guide, x, num_draws: int, local: bool) -> tuple[dict, object]:
    """``num_draws`` vectorized draws of the guide's global (or local) latent sites, and a reference trace."""
    if num_draws < 1:
        raise ConfigError(f"num_draws must be >= 1, got {num_draws}")
    ref = _run(guide, (x,), {})
    sites = [
        n
        for n, s in ref.nodes.items()
        if _is_latent(s) and not s["infer"].get("is_auxiliary") and any(f.name == DATA_PLATE for f in s["cond_indep_stack"]) == local
    ]
    draws = {n: [] for n in sites}
    for part, trace in _vectorized(guide, num_draws, ref, _nesting(ref, guide), (x,), {}):
        for n in sites:
            draws[n].append(_per_draw(trace.nodes[n]["value"], part.stop - part.start, ref.nodes[n]["value"].shape))
    return {n: torch.cat(v) for n, v in draws.items()}, ref


def from_guide(
    model,
    guide,
    x: torch.Tensor,
    num_draws: int = 1000,
    *,
    log_likelihood: bool = True,
    posterior_predictive: bool = False,
    prior: int = 0,
    dims: dict | None = None,
    coords: dict | None = None,
):
    """InferenceData from draws of a guide's global latents (e.g. an AutoNormal fitted by SVI), as one chain.

    Local latents the guide samples (inside the ``"data"`` plate) are left out: see
    :func:`from_local_posterior`. ``model(x)`` and ``guide(x)`` are the calling convention.
    """
    with torch.no_grad(), _params_as_built(guide, model):
        draws, _ = _guide_draws(guide, x, num_draws, local=False)
        if not draws:
            raise ConfigError(
                "the guide samples no global latent sites (outside the 'data' plate); for the local latents of an "
                "amortized guide use from_local_posterior(guide, x)"
            )
        ref = _run(model, (x,), {})
        unknown = sorted(n for n in draws if n not in ref.nodes or not _is_latent(ref.nodes[n]))
        if unknown:
            raise SiteMismatchError(f"the guide samples {unknown}, which are not latent sites of the model")
        return _inference_data(
            model, ref, (x,), {}, draws, 1,
            log_likelihood=log_likelihood, posterior_predictive=posterior_predictive, prior=prior, dims=dims, coords=coords,
        )  # fmt: skip


def from_local_posterior(guide, x: torch.Tensor, num_draws: int = 100, names=None, datapoints=None, dims: dict | None = None):
    """InferenceData of an amortized guide's local latents ``q(z | x_n)`` for the datapoints ``x`` (one chain).

    :param x: the chosen datapoints ``(B, *data_shape)``.
    :param names: local sites to keep (default: all the guide samples inside the ``"data"`` plate).
    :param datapoints: coordinate labels of the ``data`` dim, e.g. the points' indices in the
        dataset (default ``0 .. B-1``).
    :returns: a posterior group with dims ``(chain, draw, data, <site>_dim_1, ...)``.
    """
    with torch.no_grad(), _params_as_built(guide):
        draws, ref = _guide_draws(guide, x, num_draws, local=True)
    if not draws:
        raise ConfigError(
            "the guide samples no local latent sites (inside the 'data' plate); it is a guide over global latents, "
            "use from_guide(model, guide, x) for it"
        )
    if names is not None:
        names = [names] if isinstance(names, str) else list(names)
        unknown = sorted(set(names) - set(draws))
        if unknown:
            raise ConfigError(f"the guide has no local sites {unknown}; its local sites are {sorted(draws)}")
        draws = {n: draws[n] for n in names}
    labels = np.arange(len(x)) if datapoints is None else np.asarray(datapoints)
    if labels.shape != (len(x),):
        raise ConfigError(f"datapoints must give one label per row of x ({len(x)}), got shape {labels.shape}")
    return _from_dict({"posterior": _numpy(draws, 1)}, _dims(ref, None, sorted(draws), dims), {DATA_PLATE: labels})
