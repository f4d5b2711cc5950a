"""Amortized guides built for the declared graph: encode x, then q(z_i | x, parents of z_i) per local latent.

The guide samples exactly the model's latent site names inside the model's own data
plate, so any family plugs into any :class:`~pyro_gen.models.LatentModel` unchanged.
Global latents (one draw for the whole dataset) get a Pyro autoguide
(``AutoNormal`` or ``AutoDelta``) over those sites only.

**Order and dependencies (top-down).** Local latents are sampled in the model's declaration
order, parents first, and each latent's family reads the encoder features ``h(x)`` concatenated
with the values of its model parents: ``q(z_2 | x) q(z_1 | x, z_2)`` for ``p(z_2) p(z_1 | z_2)
p(x | z_1)``. This is the factorization of the exact posterior in the generative direction, the
top-down inference of ladder VAEs (Sonderby et al. 2016) and of the IAF-VAE's bidirectional
inference (Kingma et al. 2016), which share the prior's structure with the guide; a bottom-up
guide (``q(z_1 | x) q(z_2 | z_1)``) cannot express the posterior's dependence of ``z_1`` on
``z_2`` given ``x`` without more than the parents. Global parents enter as their sampled values.

**Constrained supports.** A latent whose prior lives on a constrained support (positive,
unit interval, simplex) gets its family on the unconstrained space, pushed through
``biject_to(prior.support)`` with the log-determinant counted (as Pyro's autoguides do), so every
draw is in the support: Gamma, Beta, HalfNormal, LogNormal, Dirichlet priors work.

**Input transforms.** The encoder sees data through :class:`InputTransform` chosen by the
likelihood (``log1p`` for counts, standardization for real values), so raw counts do not
saturate its first layer.
"""

import math
import numbers

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoDelta, AutoNormal
from torch import nn
from torch.distributions import biject_to, constraints

from pyro_gen.errors import ConfigError
from pyro_gen.infer.precision import as_float32, autocast_active, float32_region
from pyro_gen.models.checks import ReferenceTensor, check_batch, check_data_tensor
from pyro_gen.models.latent import LatentModel


class InputTransform(nn.Module):
    """What the encoder sees of the data: ``None`` (as is), ``"log1p"`` (counts) or ``"standardize"`` (real values).

    ``standardize`` subtracts a per-value mean and divides by a standard deviation, both fitted on
    the first batch seen in training mode and then fixed (buffers, saved with the guide). A guide
    saved before this transform existed loads as the identity, which is what it was trained with.
    """

    KINDS = (None, "log1p", "standardize")

    def __init__(self, kind: str | None, data_shape):
        super().__init__()
        if kind not in self.KINDS:
            raise ConfigError(f"unknown input transform {kind!r}; choose None, 'log1p' or 'standardize'")
        self.kind = kind
        if kind == "standardize":
            self.register_buffer("mean", torch.zeros(tuple(data_shape)))
            self.register_buffer("std", torch.ones(tuple(data_shape)))
            self.register_buffer("fitted", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "log1p":
            return torch.log1p(x)
        if self.kind == "standardize":
            if self.training and not bool(self.fitted):
                flat = x.detach().reshape(-1, *self.mean.shape)
                self.mean.copy_(flat.mean(0))
                self.std.copy_(flat.std(0, unbiased=False).clamp(min=1e-3) if len(flat) > 1 else torch.ones_like(self.std))
                self.fitted.fill_(True)
            return (x - self.mean) / self.std
        return x

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        if self.kind == "standardize" and prefix + "mean" not in state_dict:
            # a guide saved before input transforms existed saw raw data: load it as the identity
            state_dict = dict(state_dict)
            state_dict[prefix + "mean"] = torch.zeros_like(self.mean)
            state_dict[prefix + "std"] = torch.ones_like(self.std)
            state_dict[prefix + "fitted"] = torch.tensor(True)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


def context_dim_of(encoder, lat) -> int:
    """The encoder's feature size, read off its last linear layer (the discrete head's input size)."""
    linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1].out_features
    raise ConfigError(f"cannot tell the feature size of the encoder for discrete latent {lat.name!r}: give an encoder ending in nn.Linear")


def unconstrained_shape(support, shape) -> tuple[int, ...]:
    """The shape of the unconstrained variable that ``biject_to(support)`` maps onto values of ``shape``."""
    return tuple(biject_to(support).inverse_shape(torch.Size(shape)))


class AmortizedGuide(nn.Module):
    """q(globals) prod_n prod_i q(z_i,n | x_n, parents of z_i) for a :class:`LatentModel`.

    :param model: the model whose latent sites this guide samples.
    :param encoder: a module mapping a batch ``(B, *data_shape)`` to features ``(B, context_dim)``.
    :param families: one module per local latent (in declaration order) mapping the features, with
        the flattened values of the latent's parents appended, to a distribution over the flattened
        (unconstrained) latent (see :mod:`pyro_gen.guides.families`).
    :param str global_guide: ``"normal"`` (AutoNormal) or ``"delta"`` (AutoDelta, MAP) for global latents.
    :param str name: the guide's name as given to :func:`make_guide`, for tables and run directories.
    :param supports: the support of each local latent's prior (default: all real).
    """

    def __init__(
        self,
        model: LatentModel,
        encoder: nn.Module,
        families: list[nn.Module],
        global_guide: str = "normal",
        name: str = "custom",
        supports=None,
        context_dim: int | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self._reference = ReferenceTensor()  # the encoder's first parameter: the dtype / device of its input
        self.name = name
        # a discrete latent gets a categorical q(y | x) (a linear head on the features); the objective
        # sums it out, calling the guide once per value of y; every continuous family also reads y (one-hot)
        self.discrete = [lat for lat in model.local_latents if getattr(lat, "is_discrete", False)]
        if self.discrete and context_dim is None:
            context_dim = context_dim_of(encoder, self.discrete[0])
        self.discrete_heads = nn.ModuleList([nn.Linear(context_dim, lat.num_values) for lat in self.discrete])
        self.families = nn.ModuleList(families)
        self.local_latents = [lat for lat in model.local_latents if getattr(lat, "guided", True)]
        # a conditional model's labels are read like an observed discrete latent (one-hot)
        self.num_classes = getattr(model, "num_classes", None)
        self.data_shape = tuple(model.data_shape)
        if len(families) != len(self.local_latents):
            raise ConfigError(f"need one family per continuous local latent ({len(self.local_latents)}), got {len(families)}")
        self.supports = list(supports) if supports is not None else [constraints.real] * len(self.local_latents)
        # the model's parents of each local latent, as (index into local latents | name of a global latent)
        local_index = {lat.name: i for i, lat in enumerate(self.local_latents)}
        event_ndim = {lat.name: len(lat.shape) for lat in model.latents}
        self._discrete_names = {lat.name for lat in self.discrete}
        # a parent that the model enumerates has no value in the guide: q reads x (and the other parents) only,
        # which is still a valid (if looser) bound, since q(z | x) need not depend on everything p(z | ...) does
        enumerated = {lat.name for lat in model.latents if getattr(lat, "enumerated", False)}
        self._parents = [
            # the labels (a parent "y" of a conditional model's prior) are read one-hot like every family reads them
            [(local_index.get(p), p, event_ndim[p]) for p in lat.parents if p not in enumerated and p in event_ndim]
            for lat in self.local_latents
        ]
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

    def posterior(self, x: torch.Tensor, y=None) -> list[dist.TorchDistribution]:
        """q for each local latent, as distributions over the latents' shapes (no Pyro sites): first the
        categorical q(y | x) of a discrete latent, then the continuous latents in declaration order.

        A latent with parents (or after a discrete latent) gets its q at one draw of them, from their own q's.
        """
        self._check_input(x)
        h = self.encoder(x)
        qs, values = [], {}
        if self.num_classes:
            if y is None:
                raise ConfigError(f"this guide's model conditions on class labels (num_classes={self.num_classes}): pass y")
            values["__labels__"] = y
        for lat, head in zip(self.discrete, self.discrete_heads):
            q = dist.Categorical(logits=head(h))
            values[lat.name] = q.sample()
            qs.append(q)
        for i in range(len(self.local_latents)):
            q = self._q(i, h, values)
            values[i] = q.sample()
            qs.append(q)
        return qs

    def discrete_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """``log q(y = k | x)`` of the discrete latent, ``(B, K)``."""
        return self.discrete_heads[0](self.encoder(x)).log_softmax(-1)

    def _q(self, i: int, h: torch.Tensor, values: dict) -> dist.TorchDistribution:
        """q of the ``i``-th local latent given features ``h`` and the values sampled so far (by local index or name).

        Under a bf16 training step (``train.precision``) the encoder's features arrive in bfloat16; q, its head and
        flow layers included, is built in float32 so that log q and the KL are float32.
        """
        if autocast_active():
            with float32_region():
                return self._q_float32(i, as_float32(h), values)
        return self._q_float32(i, h, values)

    def _q_float32(self, i: int, h: torch.Tensor, values: dict) -> dist.TorchDistribution:
        lat, family = self.local_latents[i], self.families[i]
        if self._parents[i] or self.discrete or self.num_classes:
            parts = [h]
            for d in self.discrete:  # q(z | x, y): a continuous latent reads the discrete one's value, one-hot
                parts.append(torch.nn.functional.one_hot(values[d.name], d.num_values).to(h.dtype))
            if self.num_classes:  # q(z | x, y) of a conditional model
                parts.append(torch.nn.functional.one_hot(values["__labels__"], self.num_classes).to(h.dtype))
            for local, name, event in self._parents[i]:
                if name in self._discrete_names:
                    continue  # already read, one-hot
                v = values[local] if local is not None else values[name]
                parts.append(v.reshape(v.shape[: v.dim() - event] + (-1,)) if event else v.unsqueeze(-1))
            # parents drawn in a particle plate carry its dimension: broadcast the features to it
            lead = torch.broadcast_shapes(*(t.shape[:-1] for t in parts))
            context = torch.cat([t.expand(lead + t.shape[-1:]) for t in parts], dim=-1)
        else:
            context = h
        q = family(context)
        support = self.supports[i]
        shape = unconstrained_shape(support, lat.shape) if support is not constraints.real else lat.shape
        transforms = []
        # cached (cache_size=1): scoring a draw then inverts each transform to the very tensor it was given, which a
        # planar or radial layer (no inverse: it finds its input in its own cache, by identity) needs
        if len(shape) != 1:
            transforms.append(torch.distributions.transforms.ReshapeTransform((math.prod(shape),), shape, cache_size=1))
        if support is not constraints.real:
            transforms.append(biject_to(support).with_cache(1))
        if not transforms:
            return q
        if isinstance(q, dist.TransformedDistribution):  # a flow: one chain of transforms
            return dist.TransformedDistribution(q.base_dist, list(q.transforms) + transforms)
        return dist.TransformedDistribution(q, transforms)

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
        ref = self._reference.get(self.encoder)
        check_batch(x, self.data_shape, "guide", dtype=None if ref is None else ref.dtype)
        if ref is not None and x.device != ref.device:
            check_data_tensor(x, "x", device=ref.device, values=False, owner="guide")

    def forward(self, x: torch.Tensor, *, batch_size: int | None = None, data_size: int | None = None, y=None):
        self._check_input(x)
        values: dict = {}
        if self.discrete:
            if y is None:
                raise ConfigError(
                    f"discrete latent {self.discrete[0].name!r} is summed out by enumeration: the objective calls the guide "
                    "with each of its values (y); score data through pyro_gen's objectives or evaluator"
                )
            values[self.discrete[0].name] = y
        if self.num_classes:
            if y is None:
                raise ConfigError(f"this guide's model conditions on class labels (num_classes={self.num_classes}): pass y")
            values["__labels__"] = y
        if self.global_guide is not None:
            values.update(self.global_guide(x, data_size=data_size) or {})
        out = []
        with self._data_plate(x.shape[0], data_size):
            h = self.encoder(x)
            for i, lat in enumerate(self.local_latents):
                values[i] = pyro.sample(lat.name, self._q(i, h, values))
                out.append(values[i])
        return out


def default_encoder(data_shape, hidden=(300, 300), net: str = "mlp", input_transform: str | None = None) -> tuple[nn.Module, int]:
    """The encoder body shared by all families: returns ``(module, context_dim)``.

    ``mlp``: ``data -> hidden[0] -> ... -> hidden[-1]`` with ReLUs (the last hidden layer's
    activations are the features ``h``); ``conv``: strided convolutions then ``hidden[-1]`` features.
    ``input_transform``: see :class:`InputTransform` (none by default).
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
    if input_transform is None:
        return nn.Sequential(body, nn.ReLU()), hidden[-1]
    return nn.Sequential(InputTransform(input_transform, data_shape), body, nn.ReLU()), hidden[-1]
