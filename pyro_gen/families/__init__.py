"""Model families behind one protocol (:class:`~pyro_gen.families.base.Family`), by name.

``model.kind`` in a config names the family; :func:`get_family` reads the registry and
:func:`family_names` lists it (as torchvision's ``get_model`` / ``list_models`` do). A new kind
of model is one module that subclasses :class:`Family` and calls :func:`register_family`.
"""

import difflib

from pyro_gen.errors import ConfigError
from pyro_gen.families.base import AnalyzeOptions, EvalOptions, Family, Scores, Unsupported

_REGISTRY: dict[str, Family] = {}


def register_family(family):
    """Register a :class:`Family` (a subclass or an instance) under its ``name``; usable as a class decorator."""
    instance = family() if isinstance(family, type) else family
    if not instance.name:
        raise ConfigError(f"a model family needs a name, got {instance!r}")
    if instance.name in _REGISTRY and type(_REGISTRY[instance.name]) is not type(instance):
        raise ConfigError(f"a model family named {instance.name!r} is already registered ({type(_REGISTRY[instance.name]).__name__})")
    _REGISTRY[instance.name] = instance
    return family


def unregister_family(name: str) -> None:
    """Remove a family (for tests that register a temporary one)."""
    _REGISTRY.pop(name, None)


def family_names() -> list[str]:
    """The registered ``model.kind`` names, in registration order."""
    return list(_REGISTRY)


def get_family(name: str) -> Family:
    """The family registered as ``name``; a :class:`ConfigError` naming the known kinds otherwise."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        known = "; ".join(f"'{n}' ({f.description})" for n, f in _REGISTRY.items())
        raise ConfigError(f"unknown model.kind {name!r}{hint}; choose {known}; declare other models in Python")
    return _REGISTRY[name]


# the built-in families register themselves on import (after the registry above exists)
from pyro_gen.families import gan, gmm, vae  # noqa: E402

register_family(vae.VAEFamily)
register_family(gmm.GMMFamily)
register_family(gan.GANFamily)

from pyro_gen.families import pixelcnn  # noqa: E402

register_family(pixelcnn.PixelCNNFamily)

from pyro_gen.families import flow  # noqa: E402

register_family(flow.FlowFamily)

__all__ = [
    "AnalyzeOptions",
    "EvalOptions",
    "Family",
    "Scores",
    "Unsupported",
    "family_names",
    "get_family",
    "register_family",
    "unregister_family",
]
