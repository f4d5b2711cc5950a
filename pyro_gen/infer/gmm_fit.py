"""Fitting a :class:`~pyro_gen.models.gmm.GaussianMixture`: MAP / variational by SVI, and NUTS.

Both marginalize the discrete ``assignment`` site by enumeration (``max_plate_nesting=1``):
:func:`fit_map` optimizes ``TraceEnum_ELBO`` (:func:`enum_objective`) with an autoguide over the
global sites only (:func:`global_guide`; ``poutine.block`` hides ``assignment`` and ``x`` from it)
by the one :class:`~pyro_gen.infer.trainer.Trainer`, as ``pyro-gen train`` does for a
``model.kind: gmm`` config; :func:`fit_nuts` runs Pyro's NUTS, whose potential energy sums the
assignments out. Both start from k-means.

The helpers use only the model's interface (``global_sites``, ``check_data``,
``params_from_labels``), so this module does not import the models package.

References:
  Arthur & Vassilvitskii, k-means++: the advantages of careful seeding, SODA 2007.
  Hoffman & Gelman, The No-U-Turn Sampler, JMLR 15, 2014.
  Obermeyer et al., Tensor variable elimination for plated factor graphs, ICML 2019 (enumeration in Pyro).
"""

from dataclasses import dataclass, field

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import MCMC, NUTS, TraceEnum_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_value

from pyro_gen.errors import ConfigError, DataError


def check_fit_data(model, x: torch.Tensor) -> None:
    """The model's data checks plus one for fitting: at least as many points as components."""
    model.check_data(x)
    if model.num_components > len(x):
        raise DataError(
            f"more components than points: {model.num_components} components for {len(x)} points; use fewer components or more data"
        )


@torch.no_grad()
def kmeans(x: torch.Tensor, num_clusters: int, num_iters: int = 100, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means from k-means++ seeds; returns the labels ``(N,)``.

    An empty cluster is re-seeded at the point farthest from its center, so every label is used.
    """
    if num_clusters > len(x):
        raise DataError(f"more components than points: {num_clusters} clusters for {len(x)} points")
    gen = torch.Generator(device=x.device).manual_seed(seed)
    x = x.double()
    centers = x[torch.randint(len(x), (1,), generator=gen, device=x.device)]
    for _ in range(1, num_clusters):
        d2 = torch.cdist(x, centers).min(1).values.square()
        # a point is picked with probability proportional to its squared distance (all equal: uniform)
        probs = d2 if d2.sum() > 0 else torch.ones_like(d2)
        centers = torch.cat([centers, x[torch.multinomial(probs, 1, generator=gen)]])
    labels = None
    for _ in range(num_iters):
        dist = torch.cdist(x, centers)
        new = dist.argmin(1)
        for k in range(num_clusters):
            if not (new == k).any():
                far = dist.gather(1, new[:, None]).squeeze(1).argmax()
                new[far] = k
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        centers = torch.stack([x[labels == k].mean(0) for k in range(num_clusters)])
    return labels


def initial_params(model, x: torch.Tensor, init="kmeans", seed: int = 0) -> dict:
    """Initial values of the global sites: ``"kmeans"``, ``"random"`` (random points as centers), labels or a dict."""
    if isinstance(init, dict):
        model.check_params(init)
        return {k: torch.as_tensor(v, dtype=x.dtype, device=x.device) for k, v in init.items()}
    if isinstance(init, str):
        if init == "kmeans":
            labels = kmeans(x, model.num_components, seed=seed)
        elif init == "random":
            gen = torch.Generator(device=x.device).manual_seed(seed)
            centers = x[torch.randperm(len(x), generator=gen, device=x.device)[: model.num_components]]
            labels = torch.cdist(x, centers).argmin(1)
        else:
            raise ConfigError(f"unknown init {init!r}; use 'kmeans', 'random', a label tensor or a dict of site values")
    else:
        labels = init
    return model.params_from_labels(x, labels)


GLOBAL_GUIDES = ("delta", "normal")


def enum_objective(model, num_particles: int = 1):
    """The training objective of a mixture: Pyro's ``TraceEnum_ELBO`` (assignments summed out) as a pyro_gen objective."""
    from pyro_gen.infer.objectives import PyroELBO

    return PyroELBO(TraceEnum_ELBO(num_particles=num_particles, max_plate_nesting=model.max_plate_nesting))


def global_guide(model, x: torch.Tensor, guide: str = "delta", init="kmeans", seed: int = 0, init_scale: float = 0.01):
    """An autoguide over the mixture's global sites only, located at ``init``, its parameters created.

    ``poutine.block`` hides ``assignment`` and ``x`` from it: the assignments are enumerated
    by the objective (:func:`enum_objective`), not guided.

    :param guide: ``"delta"`` (:class:`~pyro.infer.autoguide.AutoDelta`: MAP) or ``"normal"``
        (:class:`~pyro.infer.autoguide.AutoNormal`: mean-field Gaussian in unconstrained space).
    :param init: see :func:`initial_params`; the guide's locations start there.
    :param init_scale: the AutoNormal's initial scale.
    """
    check_fit_data(model, x)
    autos = {"delta": AutoDelta, "normal": AutoNormal}
    if guide not in autos:
        raise ConfigError(f"unknown guide {guide!r} for a Gaussian mixture; choose 'delta' (MAP) or 'normal' (AutoNormal)")
    values = initial_params(model, x, init, seed)
    exposed = poutine.block(model, expose=model.global_sites)
    kwargs = {"init_scale": init_scale} if guide == "normal" else {}
    # the trainer and the evaluator run under module-local params; a PyroModule built outside
    # that setting lacks the parameter state it needs to enter it
    with pyro.settings.context(module_local_params=True), pyro.validation_enabled(False):
        auto = autos[guide](exposed, init_loc_fn=init_to_value(values=values), **kwargs)
        auto(x[:1])  # creates the parameters (their shapes do not depend on the number of points)
    return auto


@torch.no_grad()
def point_estimate(guide, x: torch.Tensor) -> dict:
    """The guide's median of each global site (AutoDelta: the MAP estimate), detached."""
    with pyro.settings.context(module_local_params=True):
        return {k: v.detach() for k, v in guide.median(x[:1]).items()}


@dataclass
class MapFit:
    """The result of :func:`fit_map`: point estimates of the globals (the guide's medians), the guide and the losses.

    ``losses`` are ``-ELBO / N`` per step (for ``guide="delta"``: minus the log joint density
    at the point estimate, assignments summed out, per point).
    """

    params: dict
    guide: torch.nn.Module
    losses: list = field(default_factory=list)


def fit_map(
    model,
    x: torch.Tensor,
    guide: str = "delta",
    steps: int = 1000,
    lr: float = 0.05,
    init="kmeans",
    seed: int = 0,
    init_scale: float = 0.01,
) -> MapFit:
    """Fit the globals by SVI with ``TraceEnum_ELBO`` (the assignments summed out) over the whole data, with Adam.

    The one :class:`~pyro_gen.infer.trainer.Trainer` does the steps: one full-data batch per
    epoch, so ``steps`` is its number of epochs.

    :param guide: ``"delta"`` (MAP) or ``"normal"``, see :func:`global_guide`.
    :param init: see :func:`initial_params`; the guide's locations start there.
    :param init_scale: the AutoNormal's initial scale.
    """
    from pyro_gen.infer.trainer import Trainer

    if steps < 1 or not lr > 0:
        raise ConfigError(f"steps must be >= 1 and lr > 0, got steps={steps}, lr={lr}")
    auto = global_guide(model, x, guide, init, seed, init_scale)
    trainer = Trainer(
        model, auto, enum_objective(model), lr=lr, batch_size=len(x), epochs=steps, device=x.device, seed=seed, progress=False
    )
    history = trainer.fit(x)
    return MapFit(point_estimate(auto, x), auto, [r["train_loss"] for r in history])


def fit_nuts(
    model,
    x: torch.Tensor,
    num_samples: int = 500,
    warmup: int = 500,
    num_chains: int = 1,
    init="kmeans",
    seed: int = 0,
    target_accept_prob: float = 0.8,
    progress: bool = False,
    **nuts_kwargs,
) -> MCMC:
    """Sample the globals' posterior with NUTS; the assignments are enumerated out of the potential.

    The model must be built with ``ordered=True`` when ``K > 1``: the ordering constraint on the
    first coordinate of the means removes label switching (module docstring of
    :mod:`pyro_gen.models.gmm`). Chains start at ``init`` (k-means by default); with several
    chains Pyro runs them in worker processes. Divergences are in ``mcmc.diagnostics()``
    and in the ``sample_stats`` of :func:`pyro_gen.analysis.arviz.from_mcmc`.

    :param nuts_kwargs: passed to :class:`~pyro.infer.NUTS`, e.g. ``jit_compile=True, ignore_jit_warnings=True``
        (about 2.5 times faster on a 150-point, 2-component model).
    :returns: the :class:`~pyro.infer.MCMC` object after ``run(x)``.
    """
    check_fit_data(model, x)
    if model.num_components > 1 and not model.ordered:
        raise ConfigError(
            "NUTS on a mixture without an ordering constraint mixes over relabelled modes (label switching); "
            "build the model with ordered=True, e.g. gmm(K, D, ordered=True)"
        )
    if num_samples < 1 or warmup < 0 or num_chains < 1:
        raise ConfigError(f"need num_samples >= 1, warmup >= 0, num_chains >= 1; got {num_samples}, {warmup}, {num_chains}")
    values = initial_params(model, x, init, seed)
    kernel = NUTS(
        model,
        max_plate_nesting=model.max_plate_nesting,
        target_accept_prob=target_accept_prob,
        init_strategy=init_to_value(values=values),
        **nuts_kwargs,
    )
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup, num_chains=num_chains, disable_progbar=not progress)
    pyro.set_rng_seed(seed)
    mcmc.run(x)
    return mcmc
