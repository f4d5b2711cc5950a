"""Guides by name: ``normal``, ``planar:K``, ``radial:K``, ``coupling:K``, ``iaf:K``.

The same model takes any of them without edits; :func:`make_guide` builds the shared
encoder and one family per local latent.
"""

import math
import re

import pyro.poutine as poutine
import torch
from torch.distributions import constraints

from pyro_gen.errors import ConfigError
from pyro_gen.guides.amortized import AmortizedGuide, default_encoder, unconstrained_shape
from pyro_gen.guides.families import FAMILIES, make_family

_DEFAULT_LAYERS = {"planar": 10, "radial": 10, "coupling": 4, "iaf": 4}

#: The most flow layers a guide name may ask for. The flow papers use at most 80 (Rezende & Mohamed 2015,
#: planar); beyond a few hundred a flow trains no better and each step grows linearly with K, so a larger
#: count is a typo, and an absurd one (``planar:99999999999999999999``) would hang building layers.
MAX_FLOW_LAYERS = 1000


def guide_names() -> list[str]:
    """The guide kinds; flow kinds take a layer count, e.g. ``planar:10``."""
    return ["normal"] + [f"{k}:K" for k in FAMILIES if k != "normal"]


def parse_guide_name(name: str) -> tuple[str, int]:
    """Split ``"planar:10"`` into ``("planar", 10)``; ``"normal"`` into ``("normal", 0)``.

    :raises ConfigError: not a string, empty, an unknown kind, a layer count that is not an integer in
        ``[1, MAX_FLOW_LAYERS]``, or a layer count after ``normal``.
    """
    if not isinstance(name, str):
        raise ConfigError(f"a guide name must be a string such as 'normal' or 'planar:10', got {type(name).__name__} {name!r}")
    kind, colon, count = name.strip().partition(":")
    if not kind:
        raise ConfigError(f"empty guide name {name!r}; known guides: {', '.join(guide_names())} (K = number of flow layers)")
    if kind not in FAMILIES:
        raise ConfigError(f"unknown guide {name!r}; known guides: {', '.join(guide_names())} (K = number of flow layers)")
    if kind == "normal":
        if colon:
            raise ConfigError(f"guide 'normal' takes no layer count (got {name!r}): write 'normal'")
        return kind, 0
    if not colon:
        return kind, _DEFAULT_LAYERS[kind]
    # ASCII digits only: str.isdigit() also accepts characters int() refuses, such as '²'
    if not re.fullmatch(r"[0-9]+", count) or int(count) < 1:
        raise ConfigError(f"guide {name!r}: the layer count after ':' must be a positive integer, e.g. '{kind}:10'")
    if len(count) > 6 or int(count) > MAX_FLOW_LAYERS:
        raise ConfigError(f"guide {name!r}: at most {MAX_FLOW_LAYERS} flow layers, e.g. '{kind}:10' (the papers use up to 80)")
    return kind, int(count)


def make_guide(
    name,
    model,
    encoder=None,
    context_dim: int | None = None,
    hidden=(300, 300),
    net: str = "mlp",
    global_guide: str = "normal",
    flow_lr_scale: float | None = None,
    input_transform: str | None = "auto",
) -> AmortizedGuide:
    """Build the guide called ``name`` for ``model``, following the model's declared graph.

    Each local latent gets a family conditioned on the encoder features and on its parents'
    values, sampled top-down (see :mod:`pyro_gen.guides.amortized`); a latent with a constrained
    prior gets its family on the unconstrained space pushed through ``biject_to(prior.support)``;
    a :class:`~pyro_gen.models.priors.VampPrior` in the model is bound to this guide's encoder.

    :param name: one family for every local latent (``normal``, ``planar:K``, ``radial:K``,
        ``coupling:K`` or ``iaf:K``), or a dict naming one per local latent,
        e.g. ``{"z2": "iaf:2", "z1": "normal"}``.
    :param model: a :class:`~pyro_gen.models.LatentModel`.
    :param encoder: optional encoder body mapping data to features; with it give ``context_dim``.
        By default an MLP (or conv net) with ``hidden`` layers is built from the model's data shape.
    :param global_guide: autoguide for global latents, ``"normal"`` or ``"delta"``.
    :param flow_lr_scale: learning-rate multiplier of the flow layers (default ``1 / K``, see
        :meth:`pyro_gen.guides.families.Flow.lr_scaled_parameters`).
    :param input_transform: what the default encoder applies to the data first: ``"auto"`` (the
        likelihood's ``encoder_input``: ``log1p`` for counts, ``standardize`` for real values), or
        ``None`` / ``"log1p"`` / ``"standardize"``.
    """
    missing = [a for a in ("data_shape", "local_latents", "global_latents", "data_plate") if not hasattr(model, a)]
    if missing:
        raise ConfigError(
            f"make_guide needs a pyro_gen LatentModel (e.g. pyro_gen.models.vae(...)), got {type(model).__name__} without {', '.join(missing)}"
        )
    kinds = _kinds_per_latent(name, model)
    if encoder is None:
        transform = getattr(model.likelihood, "encoder_input", None) if input_transform == "auto" else input_transform
        encoder, context_dim = default_encoder(model.data_shape, hidden, net, transform)
    elif context_dim is None:
        raise ConfigError("give context_dim (the encoder's output size) together with a custom encoder")
    sizes = {lat.name: lat.size for lat in model.latents}
    discrete = [lat for lat in model.latents if getattr(lat, "is_discrete", False)]
    continuous = [lat for lat in model.local_latents if getattr(lat, "guided", True)]
    supports = latent_supports(model)
    families = []
    for lat, support in zip(continuous, supports):
        kind, layers = kinds[lat.name]
        dim = math.prod(unconstrained_shape(support, lat.shape)) if support is not constraints.real else lat.size
        # every continuous family reads the discrete latent (one-hot: q(z | x, y), as in M2) and its other parents
        skipped = {d.name for d in discrete} | {m.name for m in model.latents if getattr(m, "enumerated", False)}
        parents = sum(d.num_values for d in discrete) + sum(sizes[p] for p in lat.parents if p not in skipped and p in sizes)
        parents += getattr(model, "num_classes", None) or 0
        families.append(make_family(kind, context_dim + parents, dim, layers, flow_lr_scale))
    label = name if isinstance(name, str) else ",".join(f"{k}={v}" for k, v in name.items())
    guide = AmortizedGuide(model, encoder, families, global_guide=global_guide, name=label, supports=supports, context_dim=context_dim)
    _bind_vamp_priors(model, guide)
    return guide


def _kinds_per_latent(name, model) -> dict:
    """``{latent name: (kind, layers)}`` for every local latent, from one name or a dict of names."""
    local = [lat.name for lat in model.local_latents if getattr(lat, "guided", True)]
    if isinstance(name, dict):
        unknown = sorted(set(name) - set(local))
        missing = [n for n in local if n not in name]
        if unknown or missing:
            raise ConfigError(
                f"a guide per latent needs one family name for each local latent {local}: "
                + (f"unknown {unknown}" if unknown else "")
                + ("; " if unknown and missing else "")
                + (f"missing {missing}" if missing else "")
            )
        return {n: parse_guide_name(name[n]) for n in local}
    parsed = parse_guide_name(name)
    return dict.fromkeys(local, parsed)


def latent_supports(model) -> list:
    """The support of each local latent's prior: from a fixed prior, a prior module's ``support``, or
    (for any other callable prior) one generative pass of the model, seeded and without gradients."""
    from pyro_gen.models.priors import Prior

    supports, traced = [], None
    for lat in model.local_latents:
        if not getattr(lat, "guided", True):
            continue  # summed out by enumeration (in the objective or the model): no continuous guide
        prior = lat.prior
        if prior is None:
            supports.append(constraints.real)
        elif isinstance(prior, torch.distributions.Distribution):
            supports.append(prior.support)
        elif isinstance(prior, Prior):
            supports.append(getattr(prior, "support", constraints.real))
        else:
            if traced is None:
                from pyro_gen.rng import seeded

                with seeded(0), torch.no_grad():
                    labels = torch.zeros(1, dtype=torch.long) if getattr(model, "num_classes", None) else None
                    traced = poutine.trace(model).get_trace(batch_size=1, y=labels)
            supports.append(traced.nodes[lat.name]["fn"].support)
    for lat, support in zip([lat for lat in model.local_latents if getattr(lat, "guided", True)], supports):
        if support.is_discrete:
            raise ConfigError(f"latent {lat.name!r} has a discrete support: a continuous guide cannot be put on it")
    return supports


def _bind_vamp_priors(model, guide) -> None:
    from pyro_gen.models.priors import VampPrior

    local = {lat.name: i for i, lat in enumerate(guide.local_latents)}
    for lat in model.latents:
        if isinstance(lat.prior, VampPrior):
            if lat.name not in local or lat.parents or guide.discrete:
                raise ConfigError(
                    f"a VampPrior is a prior of a local latent without parents, in a model without discrete latents; {lat.name!r} is not one"
                )
            lat.prior.bind(guide.encoder, guide.families[local[lat.name]], lat.shape)
