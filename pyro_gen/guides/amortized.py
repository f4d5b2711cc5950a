"""Amortized guides: encode x, build q(z | x) per local latent, sample the model's sites.

The guide samples exactly the model's latent site names inside the model's own data
plate, so any family plugs into any :class:`~pyro_gen.models.LatentModel` unchanged.
Global latents (one draw for the whole dataset) get a Pyro autoguide
(``AutoNormal`` or ``AutoDelta``) over those sites only.
"""

import math
import numbers

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoDelta, AutoNormal
from torch import nn

from pyro_gen.errors import ConfigError
from pyro_gen.models.checks import check_batch, check_data_tensor
from pyro_gen.models.latent import LatentModel


class AmortizedGuide(nn.Module):
    """q(globals) prod_n q(z_n | x_n) for a :class:`LatentModel`.

    :param model: the model whose latent sites this guide samples.
    :param encoder: a module mapping a batch ``(B, *data_shape)`` to features ``(B, context_dim)``.
    :param families: one module per local latent (in declaration order) mapping features to a
        distribution over the flattened latent (see :mod:`pyro_gen.guides.families`).
    :param str global_guide: ``"normal"`` (AutoNormal) or ``"delta"`` (AutoDelta, MAP) for global latents.
    :param str name: the guide's name as given to :func:`make_guide`, for tables and run directories.
    """

    def __init__(
        self, model: LatentModel, encoder: nn.Module, families: list[nn.Module], global_guide: str = "normal", name: str = "custom"
    ):
        super().__init__()
        self.encoder = encoder
        self.families = nn.ModuleList(families)
        self.name = name
        self.local_latents = model.local_latents
        self.data_shape = tuple(model.data_shape)
        if len(families) != len(self.local_latents):
            raise ConfigError(f"need one family per local latent ({len(self.local_latents)}), got {len(families)}")
        # the plate is the model's; keep a reference to the bound method, not the model
        self._data_plate = model.data_plate
        self.global_guide = None
        if model.global_latents:
            exposed = poutine.block(model, expose=[lat.name for lat in model.global_latents])
            auto = {"normal": AutoNormal, "delta": AutoDelta}.get(global_guide)
            if auto is None:
                raise ConfigError(f"unknown global guide {global_guide!r}; choose 'normal' or 'delta'")
            # the trainer and the evaluator run under module-local params; a PyroModule built outside
            # that setting lacks the parameter state it needs to enter it
            with pyro.settings.context(module_local_params=True):
                self.global_guide = auto(exposed)

    def posterior(self, x: torch.Tensor) -> list[dist.TorchDistribution]:
        """q(z | x) for each local latent, as distributions over the latents' shapes (no Pyro sites)."""
        self._check_input(x)
        return self._posterior(x)

    def _posterior(self, x: torch.Tensor) -> list[dist.TorchDistribution]:
        h = self.encoder(x)
        out = []
        for lat, family in zip(self.local_latents, self.families):
            q = family(h)
            if len(lat.shape) != 1:
                reshape = torch.distributions.transforms.ReshapeTransform((lat.size,), lat.shape)
                q = dist.TransformedDistribution(q, [reshape])
            out.append(q)
        return out

    @torch.no_grad()
    def global_point_estimate(self, x: torch.Tensor) -> dict:
        """The global latents' posterior medians (empty without global latents)."""
        if self.global_guide is None:
            return {}
        if self.global_guide.prototype_trace is None:
            # an autoguide creates its parameters on its first call; an untrained guide has not run yet
            self.global_guide(x)
        return {k: v.detach() for k, v in self.global_guide.median(x).items()}

    def _check_input(self, x) -> None:
        """The model's cheap per-batch checks (type, shape, dtype, device; no pass over the values) before the encoder runs."""
        ref = next(self.encoder.parameters(), None)
        check_batch(x, self.data_shape, "guide", dtype=None if ref is None else ref.dtype)
        if ref is not None and x.device != ref.device:
            check_data_tensor(x, "x", device=ref.device, values=False, owner="guide")

    def forward(self, x: torch.Tensor, *, batch_size: int | None = None, data_size: int | None = None):
        self._check_input(x)
        if self.global_guide is not None:
            self.global_guide(x, data_size=data_size)
        with self._data_plate(x.shape[0], data_size):
            return [pyro.sample(lat.name, q) for lat, q in zip(self.local_latents, self._posterior(x))]


def default_encoder(data_shape, hidden=(300, 300), net: str = "mlp") -> tuple[nn.Module, int]:
    """The encoder body shared by all families: returns ``(module, context_dim)``.

    ``mlp``: ``data -> hidden[0] -> ... -> hidden[-1]`` with ReLUs (the last hidden layer's
    activations are the features ``h``); ``conv``: strided convolutions then ``hidden[-1]`` features.
    """
    from pyro_gen.nn import MLP, ConvEncoder

    hidden = list(hidden) if isinstance(hidden, (list, tuple)) else hidden
    if not isinstance(hidden, list) or not hidden:
        raise ConfigError(f"the encoder needs a list of hidden layer sizes, at least one (its features feed the families); got {hidden!r}")
    if any(isinstance(h, bool) or not isinstance(h, numbers.Integral) or h < 1 for h in hidden):
        raise ConfigError(f"hidden layer sizes must be positive integers, got {hidden}")
    if net == "mlp":
        body = MLP(math.prod(data_shape), hidden[:-1], hidden[-1], in_shape=data_shape)
    elif net == "conv":
        if len(data_shape) != 3:
            raise ConfigError(f"net='conv' needs image data (C, H, W); data_shape is {tuple(data_shape)}")
        body = ConvEncoder(data_shape, hidden[-1], hidden=hidden[0])
    else:
        raise ConfigError(f"unknown network {net!r}; choose 'mlp' or 'conv'")
    return nn.Sequential(body, nn.ReLU()), hidden[-1]
