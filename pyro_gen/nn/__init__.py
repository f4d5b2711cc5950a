"""Network blocks: plain ``torch.nn`` modules with no Pyro inside.

Pyro lives in models, guides and objectives; these blocks only map tensors to
tensors, so they can be reused, tested and benchmarked on their own.
"""

from pyro_gen.nn.blocks import MLP, ConvDecoder, ConvEncoder, Flatten, Select, Unflatten
from pyro_gen.nn.gan import DCGANCritic, DCGANGenerator, MLPCritic, MLPGenerator, spectral_normalize

__all__ = [
    "MLP",
    "Select",
    "ConvEncoder",
    "ConvDecoder",
    "DCGANCritic",
    "DCGANGenerator",
    "Flatten",
    "MLPCritic",
    "MLPGenerator",
    "Unflatten",
    "spectral_normalize",
]
