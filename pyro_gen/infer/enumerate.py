"""Summing a discrete latent out exactly: the model and guide run once per value, the bound combines them.

For a model with one local discrete latent ``y`` (a Categorical with ``K`` values, declared as
``Latent("y", prior=dist.Categorical(...))``) and continuous latents ``z``, the guide is
``q(y | x) q(z | x, y)`` and the evidence lower bound of a datapoint whose ``y`` is not observed is

.. math:: \\mathcal L(x) = \\sum_k q(y{=}k \\mid x)\\, \\mathcal L(x, k) + \\mathrm H[q(y \\mid x)],\\qquad
          \\mathcal L(x, k) = \\mathbb E_{q(z \\mid x, k)}\\big[\\log p(x, z, y{=}k) - \\log q(z \\mid x, k)\\big],

and ``L(x, y_n)`` for a datapoint whose label ``y_n`` is given (semi-supervised learning, Kingma et
al. 2014, "M2"); labels of ``-1`` mark the unlabelled points. The sum over ``k`` is exact; only ``z``
is sampled. The importance-weighted bound and the importance-sampled log-likelihood are exact in
``y`` the same way: ``log p(x) ~ log sum_k (1/S) sum_s p(x, z_s, k) / q(z_s | x, k)``.

The expansion is vectorized: the batch is repeated once per value (labelled points once), the
model observes ``y`` at the repeated values, and both programs run in one trace.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_gen.errors import ConfigError, DataError
from pyro_gen.infer.traces import (
    DATA_PLATE,
    PARTICLE_PLATE,
    TraceTerms,
    assemble_terms,
    auxiliary_sites,
    get_traces,
    plate_full_size,
    plate_nesting,
    reduce_site,
    trace_terms,
)


def has_discrete(model) -> bool:
    return bool(getattr(model, "discrete_latents", None))


def expand(x: torch.Tensor, labels: torch.Tensor | None, num_values: int):
    """The batch repeated once per value of ``y`` for unlabelled points, once for labelled ones.

    Returns ``(x_expanded, y_expanded, owner, value_of_copy)``: ``owner[c]`` is the datapoint copy
    ``c`` came from; ``value_of_copy[c]`` its value of ``y``.
    """
    n = len(x)
    if labels is None:
        labels = torch.full((n,), -1, dtype=torch.long, device=x.device)
    if not torch.is_tensor(labels) or labels.shape != (n,) or labels.dtype.is_floating_point:
        raise DataError(f"labels must be an integer tensor of shape ({n},), one per datapoint, -1 where unknown")
    labels = labels.to(x.device)
    if bool(((labels < -1) | (labels >= num_values)).any()):
        raise DataError(f"labels must lie in 0..{num_values - 1}, or be -1 for an unlabelled datapoint")
    unlabelled = labels < 0
    values = torch.arange(num_values, device=x.device)
    owner = torch.cat([torch.nonzero(~unlabelled).reshape(-1), torch.nonzero(unlabelled).reshape(-1).repeat_interleave(num_values)])
    value = torch.cat([labels[~unlabelled], values.repeat(int(unlabelled.sum()))])
    return x[owner], value, owner, value


def copy_terms(model, guide, x, labels=None, num_particles: int = 1):
    """Per-copy log-weights ``(P, C)``, the copies' owners and values, ``log q(y | x)`` ``(B, K)`` and the global terms."""
    lat = model.discrete_latents[0]
    k = lat.num_values
    x_exp, y_exp, owner, value = expand(x, labels, k)
    model_trace, guide_trace = get_traces(model, guide, x_exp, num_particles=num_particles, y=y_exp)
    terms = trace_terms(model_trace, guide_trace)
    log_q_y = guide.discrete_log_probs(x)
    return terms, owner, value, log_q_y


def enumerated_elbo(model, guide, x, labels=None, num_particles: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(per-datapoint ELBO (B,), global log p - log q (scalar))``, with ``y`` summed out where not labelled."""
    terms, owner, value, log_q_y = copy_terms(model, guide, x, labels, num_particles)
    per_copy = terms.log_weight.mean(0)  # (C,)
    labelled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    if labels is not None:
        labelled = labels.to(x.device) >= 0
    q = log_q_y.exp()
    weight = torch.where(labelled[owner], torch.ones_like(per_copy), q[owner, value])
    elbo = torch.zeros(len(x), dtype=per_copy.dtype, device=per_copy.device).index_add(0, owner, weight * per_copy)
    entropy = -(q * log_q_y).sum(-1)
    elbo = elbo + torch.where(labelled, torch.zeros_like(entropy), entropy)
    global_term = (terms.log_prior_global - terms.log_q_global).mean(0)
    return elbo, global_term


def enumerated_log_weights(model, guide, x, num_particles: int) -> torch.Tensor:
    """``log p(x, y=k, z) - log q(z | x, k)`` for every value ``k``: ``(P, B, K)`` (all points unlabelled)."""
    terms, owner, value, _ = copy_terms(model, guide, x, None, num_particles)
    k = model.discrete_latents[0].num_values
    out = terms.log_weight.new_empty(terms.log_weight.shape[0], len(x), k)
    out[:, owner, value] = terms.log_weight
    return out


def enumerated_log_likelihood(model, guide, x, num_samples: int = 1000, chunk: int = 100) -> torch.Tensor:
    """``log p(x_n)`` per datapoint, exact in ``y`` and importance-sampled in ``z`` (``num_samples`` draws per value)."""
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    parts = []
    with torch.no_grad():
        for start in range(0, num_samples, chunk):
            parts.append(enumerated_log_weights(model, guide, x, min(chunk, num_samples - start)))
    lw = torch.cat(parts, 0)  # (S, B, K)
    return (lw.logsumexp(0) - math.log(num_samples)).logsumexp(-1)


# -- discrete latents the model itself enumerates (Latent(..., enumerate="parallel")) ---------------------------


def _data_frame(site):
    return next(f for f in site["cond_indep_stack"] if f.name == DATA_PLATE)


def has_model_enumerated(model) -> bool:
    return bool(getattr(model, "enumerated_latents", None))


def model_enumerated_terms(model, guide, x, num_particles: int = 1, **kwargs) -> TraceTerms:
    """:class:`~pyro_gen.infer.traces.TraceTerms` of a model whose discrete latents it enumerates, summed out exactly.

    The guide samples the continuous latents (in a ``"particles"`` plate); the model runs replayed on
    them under Pyro's :class:`~pyro.poutine.enum_messenger.EnumMessenger`, so each enumerated site
    takes all its values along its own dimension left of the particles. Every local factor that
    carries such a dimension (the discrete sites, the observation, a continuous latent whose prior
    reads a discrete one) is added up and log-sum-exp'ed over those dimensions per particle and
    datapoint: ``log sum_y p(y, x, z | ...)``, the joint with ``y`` summed out, exact. The result
    stands in ``log_likelihood`` (prior terms of continuous latents that do not read ``y`` stay in
    ``log_prior_local``), so ``log_weight`` is ``log p(x, z) - log q(z | x)`` with ``p(x, z) = sum_y p(x, y, z)``.
    Several enumerated latents, one reading another, are summed jointly (their values' product).
    """
    nesting = plate_nesting(model)
    particles = pyro.plate(PARTICLE_PLATE, num_particles, dim=-(nesting + 1))
    guide_trace = poutine.trace(particles(guide)).get_trace(x, **kwargs)
    enumerated = poutine.enum(poutine.replay(particles(model), trace=guide_trace), first_available_dim=-(nesting + 2))
    model_trace = poutine.trace(enumerated).get_trace(x, **kwargs)
    kept = nesting + 1  # the particle and data dims; dims left of them are enumeration dims
    joint, lik, prior_l, q_l, prior_g, q_g = None, [], [], [], [], []
    batch_size = data_size = None
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        log_prob = site["fn"].log_prob(site["value"])
        if site["mask"] is not None:
            log_prob = log_prob * site["mask"]
        enumerated_site = site["infer"].get("_enumerate_dim") is not None
        if enumerated_site or (log_prob.dim() > kept and math.prod(log_prob.shape[:-kept]) > 1):
            # a factor of the enumerated values: (E..., P, B), kept apart until they are summed out
            joint = log_prob if joint is None else joint + log_prob
            if enumerated_site or site["is_observed"]:
                continue
            local = True  # only local sites can read an enumerated (local) latent
        else:
            if log_prob.dim() > kept:
                log_prob = log_prob.reshape(log_prob.shape[-kept:])
            value, local = reduce_site(site, log_prob)
            if local and batch_size is None:
                batch_size, data_size = value.shape[-1], plate_full_size(_data_frame(site))
            if site["is_observed"]:
                (lik if local else prior_g).append(value)
                continue
            (prior_l if local else prior_g).append(value)
        gsite = guide_trace.nodes.get(name)
        if gsite is None:
            raise ConfigError(f"the model's latent site {name!r} is not sampled by the guide")
        q_value, _ = reduce_site(gsite, gsite["fn"].log_prob(gsite["value"]))
        (q_l if local else q_g).append(q_value)
    for name in auxiliary_sites(guide_trace):
        gsite = guide_trace.nodes[name]
        q_value, local = reduce_site(gsite, gsite["fn"].log_prob(gsite["value"]))
        (q_l if local else q_g).append(q_value)
    if joint is None:
        raise ConfigError("the model enumerates no site with more than one value: nothing to sum out")
    summed = joint.reshape((-1,) + joint.shape[-kept:]).logsumexp(0)
    summed = summed.expand(num_particles, summed.shape[-1])
    if batch_size is None:
        batch_size, data_size = summed.shape[-1], summed.shape[-1]
    return assemble_terms([summed, *lik], prior_l, q_l, prior_g, q_g, batch_size, data_size)
