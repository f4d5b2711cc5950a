"""Guides by name: ``normal``, ``planar:K``, ``radial:K``, ``coupling:K``, ``iaf:K``.

The same model takes any of them without edits; :func:`make_guide` builds the shared
encoder and one family per local latent.
"""

import re

from pyro_gen.errors import ConfigError
from pyro_gen.guides.amortized import AmortizedGuide, default_encoder
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
    name: str,
    model,
    encoder=None,
    context_dim: int | None = None,
    hidden=(300, 300),
    net: str = "mlp",
    global_guide: str = "normal",
    flow_lr_scale: float | None = None,
) -> AmortizedGuide:
    """Build the guide called ``name`` for ``model``.

    :param name: ``normal``, ``planar:K``, ``radial:K``, ``coupling:K`` or ``iaf:K``.
    :param model: a :class:`~pyro_gen.models.LatentModel`.
    :param encoder: optional encoder body mapping data to features; with it give ``context_dim``.
        By default an MLP (or conv net) with ``hidden`` layers is built from the model's data shape.
    :param global_guide: autoguide for global latents, ``"normal"`` or ``"delta"``.
    :param flow_lr_scale: learning-rate multiplier of the flow layers (default ``1 / K``, see
        :meth:`pyro_gen.guides.families.Flow.lr_scaled_parameters`).
    """
    kind, layers = parse_guide_name(name)
    missing = [a for a in ("data_shape", "local_latents", "global_latents", "data_plate") if not hasattr(model, a)]
    if missing:
        raise ConfigError(
            f"make_guide needs a pyro_gen LatentModel (e.g. pyro_gen.models.vae(...)), got {type(model).__name__} without {', '.join(missing)}"
        )
    if encoder is None:
        encoder, context_dim = default_encoder(model.data_shape, hidden, net)
    elif context_dim is None:
        raise ConfigError("give context_dim (the encoder's output size) together with a custom encoder")
    families = [make_family(kind, context_dim, lat.size, layers, flow_lr_scale) for lat in model.local_latents]
    return AmortizedGuide(model, encoder, families, global_guide=global_guide, name=name)
