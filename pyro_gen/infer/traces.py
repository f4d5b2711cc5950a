"""Running a model and guide into traces, and reading per-datapoint log-densities off them.

This is the one place that turns (model, guide, data) into numbers: the objectives and
the evaluator both call :func:`get_traces` and :func:`trace_terms`.

**The direct path.** Running a program under ``poutine.trace`` / ``poutine.replay`` and its
plates sends every site through Pyro's effect stack (a message dict per handler, plate
broadcasting, a subsample site per plate): about 1.5 ms of a 12 ms VAE training step on one CPU
core (BENCHMARKS.md section 2), none of it arithmetic. For the programs whose effects are known
exactly, a :class:`~pyro_gen.models.LatentModel` with only continuous local latents and its
:class:`~pyro_gen.guides.AmortizedGuide`, :func:`get_traces` builds the two traces itself
(:func:`direct_traces`): it calls the same methods the programs' ``forward`` calls (checks,
encoder, families, priors, decoder, likelihood) in the same order, so the same random numbers
are drawn, and writes the sites the handlers would have written (values, distributions broadcast
by Pyro's own :class:`~pyro.poutine.broadcast_messenger.BroadcastMessenger` rule, plate frames,
subsampling scale, the plate's subsample site). The Pyro programs stay the definition; the
direct path is chosen only where it gives the same traces, and ``tests/infer/test_direct_path.py``
checks that both paths give the same sites, losses and gradients for every guide family and
objective option. Everything else (handlers already active, global, discrete or enumerated
latents, subclasses that override ``forward``, other guides, a program that calls a Pyro primitive
from inside one of its modules) runs traced, and :func:`traced_only` forces the traced path.
"""

import functools
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.broadcast_messenger import BroadcastMessenger
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK
from pyro.poutine.subsample_messenger import _Subsample
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
    direct = direct_traces(model, guide, args, kwargs, num_particles)
    if direct is not None:
        return direct
    if num_particles > 1:
        plate = pyro.plate(PARTICLE_PLATE, num_particles, dim=-(plate_nesting(model) + 1))
        model = plate(model)
        guide = plate(guide) if guide is not None else None
    if guide is None:
        return poutine.trace(model).get_trace(*args, **kwargs), poutine.Trace()
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


class _PrimitiveCalled(Exception):
    """Raised by :class:`_NoPrimitives` when a Pyro primitive runs inside a directly-run program."""


class _NoPrimitives(Messenger):
    """On the effect stack while a program runs directly: any Pyro primitive it calls (a ``pyro.sample``
    or ``pyro.param`` in a user module, a ``PyroModule``'s parameters) would be missing from the
    direct traces, so it stops the direct run and the call is traced instead."""

    def _process_message(self, msg):
        raise _PrimitiveCalled(msg["name"])


_DIRECT_ALLOWED: ContextVar[bool] = ContextVar("pyro_gen_direct_traces", default=True)


@contextmanager
def traced_only():
    """Inside this context :func:`get_traces` always runs the programs under Pyro's handlers (no direct path):
    for comparing the two paths, and for debugging a model or guide with Pyro's tools."""
    token = _DIRECT_ALLOWED.set(False)
    try:
        yield
    finally:
        _DIRECT_ALLOWED.reset(token)


# programs found to call Pyro primitives from their modules: always traced
_TRACED_ONLY: "weakref.WeakSet" = weakref.WeakSet()
_DIRECT_KWARGS = frozenset(("data_size", "y"))


def direct_path_applies(model, guide, args: tuple, kwargs: dict) -> bool:
    """Whether :func:`get_traces` may build the traces of ``(model, guide)`` on these arguments directly.

    True for a :class:`~pyro_gen.models.LatentModel` whose latents are all continuous and local, run
    with its :class:`~pyro_gen.guides.AmortizedGuide` (neither overriding ``forward``) on a data tensor,
    with no Pyro handler active (a handler must see the sites) and not inside :func:`traced_only`.
    Pyro's validation setting does not matter: trace, replay and plate check nothing more with it on.
    """
    from pyro_gen.guides.amortized import AmortizedGuide
    from pyro_gen.models.latent import LatentModel

    if _PYRO_STACK or guide is None or not _DIRECT_ALLOWED.get():
        return False
    if not (isinstance(model, LatentModel) and isinstance(guide, AmortizedGuide)):
        return False
    if type(model).forward is not LatentModel.forward or type(model).data_plate is not LatentModel.data_plate:
        return False
    if type(guide).forward is not AmortizedGuide.forward or model in _TRACED_ONLY or guide in _TRACED_ONLY:
        return False
    if len(args) != 1 or not torch.is_tensor(args[0]) or not _DIRECT_KWARGS.issuperset(kwargs):
        return False
    if guide.global_guide is not None or guide.discrete or guide.num_classes != model.num_classes:
        return False
    if (kwargs.get("y") is None) != (model.num_classes is None):
        return False  # labels given to a model that reads none, or missing: the traced programs say so
    latents = model.latents
    if any(not lat.local or not lat.guided for lat in latents):
        return False
    return [lat.name for lat in guide.local_latents] == [lat.name for lat in latents]


def _site(name, fn, value, stack, scale, observed=False, infer=None) -> dict:
    """A sample site as Pyro's ``TraceMessenger`` records it."""
    return {
        "type": "sample",
        "name": name,
        "fn": fn,
        "is_observed": observed,
        "args": (),
        "kwargs": {},
        "value": value,
        "infer": {} if infer is None else infer,
        "scale": scale,
        "mask": None,
        "cond_indep_stack": stack,
        "done": True,
        "stop": False,
        "continuation": None,
    }


def _broadcast(fn, batch_shape: torch.Size, stack: tuple):
    """``fn`` broadcast to the plates' batch shape, by Pyro's own plate rule (a no-op when it already has it)."""
    actual = fn.batch_shape
    if actual == batch_shape:
        return fn
    if not actual and len(batch_shape) <= 2:
        # a distribution without batch dims (a fixed prior) under the data (and particle) plate: what the rule below gives
        return fn.expand(batch_shape)
    msg = {"type": "sample", "name": None, "fn": fn, "done": False, "cond_indep_stack": stack}
    BroadcastMessenger._pyro_sample(msg)
    return msg["fn"]


def direct_traces(model, guide, args: tuple, kwargs: dict, num_particles: int = 1):
    """The ``(model_trace, guide_trace)`` of :func:`get_traces`, built without Pyro's handlers, or ``None``.

    ``None`` unless :func:`direct_path_applies`. The guide's program (``AmortizedGuide.forward``) and
    the model's (``LatentModel.forward``), replayed on the guide's draws, are followed call for call.
    A Pyro primitive called from inside one of their modules stops the run (:class:`_NoPrimitives`): the
    random state is rewound and ``None`` returned, and the pair is traced from then on.
    """
    if not direct_path_applies(model, guide, args, kwargs):
        return None
    x = args[0]
    data_size, y = kwargs.get("data_size"), kwargs.get("y")
    device_rng = torch.cuda.get_rng_state(x.device) if x.is_cuda else None
    cpu_rng = torch.get_rng_state()
    try:
        with _NoPrimitives():
            return _run_direct(model, guide, x, data_size, y, args, kwargs, num_particles)
    except _PrimitiveCalled:
        # a module of the program is itself effectful: rewind the draws made so far and trace this pair from now on
        torch.set_rng_state(cpu_rng)
        if device_rng is not None:
            torch.cuda.set_rng_state(device_rng, x.device)
        _TRACED_ONLY.add(model)
        _TRACED_ONLY.add(guide)
        return None


@functools.lru_cache(maxsize=64)
def _plates(batch: int, full: int, subsampled: bool, num_particles: int, particle_dim: int, device: torch.device):
    """What the data plate (and the particle plate) write into every site, for one batch layout.

    Returns ``(stack, batch_shape, scale, subsample_site)``: the sites' ``cond_indep_stack`` (outermost
    plate first), the batch shape plates broadcast distributions to, the subsampling scale, and the data
    plate's own subsample site (each trace gets a copy). Cached: none of it depends on the data, and
    building it per step was a measurable share of the step.
    """
    data_frame = CondIndepStackFrame(DATA_PLATE, -1, batch, 0, full)
    scale = 1.0 * full / batch  # SubsampleMessenger: scale * size / subsample_size, innermost plate first
    # the data plate's indices: LatentModel.data_plate passes them for a minibatch, else _Subsample draws them
    indices = torch.arange(batch, device=device) if subsampled else _Subsample(full, None).sample()
    if num_particles > 1:
        particle_frame = CondIndepStackFrame(PARTICLE_PLATE, particle_dim, num_particles, 0, num_particles)
        stack, outer = (particle_frame, data_frame), (particle_frame,)
        scale = scale * num_particles / num_particles
        batch_shape = torch.Size((num_particles, batch))
        sub_scale = 1.0 * num_particles / num_particles
    else:
        stack, outer, batch_shape, sub_scale = (data_frame,), (), torch.Size((batch,)), 1.0
    # one _Subsample per layout, shared by the traces of every step (it holds the sizes and the device, nothing else)
    return stack, batch_shape, scale, _site(DATA_PLATE, _Subsample(full, None), indices, outer, sub_scale)


def _run_direct(model, guide, x, data_size, y, args, kwargs, num_particles):
    batch = x.shape[0]
    # the data plate as LatentModel.data_plate builds it: subsampled (explicit indices) only for a minibatch;
    # x is on the model's device or the checks below raise before the indices are used
    subsampled = data_size is not None and data_size != batch
    full = data_size if subsampled else batch
    particle_dim = -(plate_nesting(model) + 1)
    stack, batch_shape, scale, sub = _plates(batch, full, subsampled, num_particles, particle_dim, x.device)

    # the guide: AmortizedGuide.forward
    guide_trace = poutine.Trace()
    guide_trace.add_node("_INPUT", name="_INPUT", type="args", args=args, kwargs=kwargs)
    guide._check_input(x)
    values: dict = {}
    if guide.num_classes:
        values["__labels__"] = y
    guide_trace.add_node(DATA_PLATE, **sub)
    h = guide.encoder(x)
    out = []
    for i, lat in enumerate(guide.local_latents):
        q = _broadcast(guide._q(i, h, values), batch_shape, stack)
        values[i] = q()
        out.append(values[i])
        guide_trace.add_node(lat.name, **_site(lat.name, q, values[i], stack, scale))
    guide_trace.add_node("_RETURN", name="_RETURN", type="return", value=out)

    # the model, replayed on the guide's draws: LatentModel.forward
    model_trace = poutine.Trace()
    model_trace.add_node("_INPUT", name="_INPUT", type="args", args=args, kwargs=kwargs)
    model.check_data(x)
    labels = model.check_labels(y, batch) if model.num_classes is not None else None
    # replayed: the model's plate takes the guide's indices
    model_trace.add_node(DATA_PLATE, **sub)
    latent_values = [None] * len(model.latents)
    for i, lat in enumerate(model.latents):
        gsite = guide_trace.nodes[lat.name]
        prior = _broadcast(model.prior(i, latent_values, labels), batch_shape, stack)
        latent_values[i] = gsite["value"]
        model_trace.add_node(lat.name, **_site(lat.name, prior, gsite["value"], stack, scale, infer=gsite["infer"]))
    params = model.decode(*latent_values, y=labels)
    likelihood = _broadcast(model.observation(params), batch_shape, stack)
    model_trace.add_node(model.obs_name, **_site(model.obs_name, likelihood, x, stack, scale, observed=True))
    model_trace.add_node("_RETURN", name="_RETURN", type="return", value=params)
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
    stack = site["cond_indep_stack"]
    if site["mask"] is None and log_prob.dim() == len(stack) and stack and stack[-1].name == DATA_PLATE and stack[-1].dim == -1:
        # the common case, every step: one value per (particle,) datapoint, nothing to sum or mask
        if len(stack) == 1:
            return log_prob.reshape(1, -1), True
        if len(stack) == 2 and stack[0].name == PARTICLE_PLATE and stack[0].dim == -2:
            return log_prob, True
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

    if not lik or batch_size is None:
        raise SiteMismatchError("the model has no observed site inside a 'data' plate; pyro_gen needs one to score data")
    return assemble_terms(lik, prior_l, q_l, prior_g, q_g, batch_size, data_size)


def assemble_terms(lik: list, prior_l: list, q_l: list, prior_g: list, q_g: list, batch_size: int, data_size: int) -> TraceTerms:
    """:class:`TraceTerms` from lists of per-site terms (``lik`` not empty): local ``(P, B)``, global ``(P,)``; an empty
    list is zeros of the right shape."""

    def total(terms, like):
        return sum(terms[1:], terms[0]) if terms else torch.zeros_like(like)

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
