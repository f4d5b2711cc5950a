"""Flow layers for densities, one file per layer family (zuko's layout).

Every layer is a Pyro transform in the generating direction (latent -> data; see
:mod:`~pyro_gen.models.flows.base`). Pyro's ``AffineCoupling``, ``SplineCoupling``, ``BatchNorm`` and ``Permute`` are
used where they fit; the rest (checkerboard coupling, actnorm, invertible 1x1 convolution, squeeze,
factor-out) are written here as ``TransformModule``\\ s. :mod:`pyro_gen.models.flow_density` builds
Real NVP, Glow and the neural spline flow from them.
"""

from pyro_gen.models.flows.base import FlowLayer, run_chain
from pyro_gen.models.flows.coupling import (
    ConvNet,
    MaskedAffineCoupling,
    MLPNet,
    channel_coupling,
    checkerboard,
    checkerboard_coupling,
    vector_coupling,
)
from pyro_gen.models.flows.glow import InvertibleConv1x1
from pyro_gen.models.flows.multiscale import FactorOut, Flatten, Squeeze, check_squeezable
from pyro_gen.models.flows.normalization import ActNorm, batch_norm
from pyro_gen.models.flows.permutation import Permutation, reverse
from pyro_gen.models.flows.preprocess import bits_per_dim, dequantize, output_transforms, quantize, unit_to_level_nll
from pyro_gen.models.flows.spline import SplineNet, vector_spline_coupling

__all__ = [
    "ActNorm",
    "ConvNet",
    "FactorOut",
    "Flatten",
    "FlowLayer",
    "InvertibleConv1x1",
    "MLPNet",
    "MaskedAffineCoupling",
    "Permutation",
    "SplineNet",
    "Squeeze",
    "batch_norm",
    "bits_per_dim",
    "channel_coupling",
    "check_squeezable",
    "checkerboard",
    "checkerboard_coupling",
    "dequantize",
    "output_transforms",
    "quantize",
    "reverse",
    "run_chain",
    "unit_to_level_nll",
    "vector_coupling",
    "vector_spline_coupling",
]
