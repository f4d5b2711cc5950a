"""Running a model and guide into traces, and reading per-datapoint log-densities off them.

This is the one place that turns (model, guide, data) into numbers: the objectives and
the evaluator both call :func:`get_traces` and :func:`trace_terms`.
"""

from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from pyro_gen.errors import SiteMismatchError

PARTICLE_PLATE = "particles"
DATA_PLATE = "data"


def plate_nesting(model) -> int:
    """How many plates the model nests (declared models say so; others default to 1)."""
    return getattr(model, "max_plate_nesting", 1)


def get_traces(model, guide, *args, num_particles: int = 1, **kwargs):
    """Run ``guide`` then ``model`` replayed on its samples; return ``(model_trace, guide_trace)``.

    With ``num_particles > 1`` both run inside a ``"particles"`` plate to the left of the
    model's plates, so ``num_particles`` draws per datapoint are vectorized.

    With ``guide=None`` (implicit models such as GAN generators, which are not inferred) the
    model runs forward, drawing its latents from their priors, and the guide trace is empty.
    """
    if num_particles > 1:
        plate = pyro.plate(PARTICLE_PLATE, num_particles, dim=-(plate_nesting(model) + 1))
        model = plate(model)
        guide = plate(guide) if guide is not None else None
    if guide is None:
        return poutine.trace(model).get_trace(*args, **kwargs), poutine.Trace()
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def _frames(site):
    dims = {f.name: f for f in site["cond_indep_stack"]}
    return dims.get(PARTICLE_PLATE), dims.get(DATA_PLATE)


def plate_full_size(frame) -> int:
    """The size of the whole dataset a (possibly subsampled) plate frame stands for.

    Pyro's frame ``size`` is the subsample's size; ``full_size`` is the plate's full size.
    """
    return frame.full_size if getattr(frame, "full_size", None) is not None else frame.size


def reduce_site(site, log_prob: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Sum a site's log-density over everything but the particle and data dimensions.

    Returns ``(values, is_local)`` with values shaped ``(P, B)`` for sites inside the data
    plate and ``(P,)`` otherwise (``P = 1`` without a particle plate).
    """
    particle, data = _frames(site)
    if site["mask"] is not None:
        log_prob = log_prob * site["mask"]
    keep = [f.dim for f in (particle, data) if f is not None]
    # broadcast to the kept dims first so reductions see them
    ndim = max([log_prob.dim()] + [-d for d in keep])
    log_prob = log_prob.reshape((1,) * (ndim - log_prob.dim()) + log_prob.shape)
    sum_dims = [d for d in range(-ndim, 0) if d not in keep]
    if sum_dims:
        log_prob = log_prob.sum(sum_dims, keepdim=True)
    p = log_prob.shape[particle.dim] if particle is not None else 1
    if data is None:
        return log_prob.reshape(p), False
    return log_prob.reshape(p, -1), True


@dataclass
class TraceTerms:
    """Per-datapoint log-densities read from a model trace and a guide trace.

    Local terms are ``(P, B)`` tensors, global terms ``(P,)``; nothing is scaled by
    subsampling, so ``data_size`` and ``batch_size`` are given to do it explicitly.
    """

    log_likelihood: torch.Tensor
    log_prior_local: torch.Tensor
    log_q_local: torch.Tensor
    log_prior_global: torch.Tensor
    log_q_global: torch.Tensor
    batch_size: int
    data_size: int

    @property
    def log_weight(self) -> torch.Tensor:
        """log p(x, z) - log q(z | x) per particle and datapoint, local terms only: ``(P, B)``."""
        return self.log_likelihood + self.log_prior_local - self.log_q_local


def latent_sites(model_trace) -> list[str]:
    """Unobserved sample sites, without plates' subsample sites and auxiliary sites."""
    return [n for n, s in model_trace.nodes.items() if _is_latent(s) and not s["infer"].get("is_auxiliary")]


def _is_latent(site) -> bool:
    return site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)


def auxiliary_sites(guide_trace) -> list[str]:
    """Guide-only auxiliary sites (e.g. an ``AutoNormal``'s ``<name>_unconstrained``): part of log q."""
    return [n for n, s in guide_trace.nodes.items() if _is_latent(s) and s["infer"].get("is_auxiliary")]


def check_sites(model_trace, guide_trace) -> None:
    """Raise :class:`SiteMismatchError` unless the guide samples exactly the model's latent sites.

    A model site marked for enumeration (``infer={"enumerate": ...}``, e.g. a mixture's
    assignment) may be left out of the guide: an enumerating objective such as Pyro's
    ``TraceEnum_ELBO`` sums it out of the model instead.
    """
    model_latents = set(latent_sites(model_trace))
    guide_sites = set(latent_sites(guide_trace))
    enumerated = {n for n in model_latents - guide_sites if model_trace.nodes[n]["infer"].get("enumerate")}
    model_latents -= enumerated
    missing, extra = sorted(model_latents - guide_sites), sorted(guide_sites - model_latents)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"the model's latent sites {missing} are not sampled by the guide")
        if extra:
            parts.append(f"the guide samples {extra}, which are not latent sites of the model")
        raise SiteMismatchError(
            "guide and model sites do not match: " + "; ".join(parts) + ". A guide must sample exactly the "
            f"model's latent sites {sorted(model_latents)} under the same names."
        )
    for name in model_latents:
        m, g = model_trace.nodes[name]["value"].shape, guide_trace.nodes[name]["value"].shape
        if m != g:
            raise SiteMismatchError(f"site {name!r}: the guide's sample has shape {tuple(g)} but the model's prior expects {tuple(m)}")


def trace_terms(model_trace, guide_trace) -> TraceTerms:
    """Compute :class:`TraceTerms` (unscaled, per datapoint) from a replayed model trace and its guide trace."""
    lik, prior_l, q_l, prior_g, q_g = [], [], [], [], []
    batch_size = data_size = None
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        value, local = reduce_site(site, site["fn"].log_prob(site["value"]))
        if local and batch_size is None:
            frame = _frames(site)[1]
            batch_size, data_size = value.shape[-1], plate_full_size(frame)
        if site["is_observed"]:
            # observed sites outside the data plate are conditioned global latents: prior terms
            (lik if local else prior_g).append(value)
            continue
        gsite = guide_trace.nodes.get(name)
        if gsite is None:
            raise SiteMismatchError(f"the model's latent site {name!r} is not sampled by the guide")
        q_value, _ = reduce_site(gsite, gsite["fn"].log_prob(gsite["value"]))
        (prior_l if local else prior_g).append(value)
        (q_l if local else q_g).append(q_value)

    for name in auxiliary_sites(guide_trace):
        gsite = guide_trace.nodes[name]
        q_value, local = reduce_site(gsite, gsite["fn"].log_prob(gsite["value"]))
        (q_l if local else q_g).append(q_value)

    def total(terms, like):
        return sum(terms[1:], terms[0]) if terms else torch.zeros_like(like)

    if not lik or batch_size is None:
        raise SiteMismatchError("the model has no observed site inside a 'data' plate; pyro_gen needs one to score data")
    log_lik = total(lik, None)
    zero_global = log_lik.new_zeros(log_lik.shape[0])
    return TraceTerms(
        log_likelihood=log_lik,
        log_prior_local=total(prior_l, log_lik),
        log_q_local=total(q_l, log_lik),
        log_prior_global=total(prior_g, zero_global),
        log_q_global=total(q_g, zero_global),
        batch_size=batch_size,
        data_size=data_size,
    )
