"""Guides by name: ``normal``, ``planar:K``, ``radial:K``, ``coupling:K``, ``iaf:K``.

The same model takes any of them without edits; :func:`make_guide` builds the shared
encoder and one family per local latent.
"""

from pyro_gen.errors import ConfigError
from pyro_gen.guides.amortized import AmortizedGuide, default_encoder
from pyro_gen.guides.families import FAMILIES, make_family

_DEFAULT_LAYERS = {"planar": 10, "radial": 10, "coupling": 4, "iaf": 4}


def guide_names() -> list[str]:
    """The guide kinds; flow kinds take a layer count, e.g. ``planar:10``."""
    return ["normal"] + [f"{k}:K" for k in FAMILIES if k != "normal"]


def parse_guide_name(name: str) -> tuple[str, int]:
    """Split ``"planar:10"`` into ``("planar", 10)``; ``"normal"`` into ``("normal", 0)``."""
    kind, _, count = str(name).strip().partition(":")
    if kind not in FAMILIES:
        raise ConfigError(f"unknown guide {name!r}; known guides: {', '.join(guide_names())} (K = number of flow layers)")
    if kind == "normal":
        if count:
            raise ConfigError(f"guide 'normal' takes no layer count (got {name!r})")
        return kind, 0
    if not count:
        return kind, _DEFAULT_LAYERS[kind]
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"guide {name!r}: the layer count after ':' must be a positive integer, e.g. '{kind}:10'")
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
    if encoder is None:
        encoder, context_dim = default_encoder(model.data_shape, hidden, net)
    elif context_dim is None:
        raise ConfigError("give context_dim (the encoder's output size) together with a custom encoder")
    families = [make_family(kind, context_dim, lat.size, layers, flow_lr_scale) for lat in model.local_latents]
    return AmortizedGuide(model, encoder, families, global_guide=global_guide, name=name)
