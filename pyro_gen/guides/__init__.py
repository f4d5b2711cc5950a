"""Guides (variational families) by name, all sampling the model's own site names."""

from pyro_gen.guides.amortized import AmortizedGuide, default_encoder
from pyro_gen.guides.families import DiagonalNormal, Flow, coupling_flow, iaf_flow, make_family, planar_flow, radial_flow
from pyro_gen.guides.registry import guide_names, make_guide, parse_guide_name

__all__ = [
    "AmortizedGuide",
    "DiagonalNormal",
    "Flow",
    "coupling_flow",
    "default_encoder",
    "guide_names",
    "iaf_flow",
    "make_family",
    "make_guide",
    "parse_guide_name",
    "planar_flow",
    "radial_flow",
]
