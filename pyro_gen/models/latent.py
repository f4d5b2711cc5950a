"""Declarative latent-variable models.

A model is declared by its latent sites (name, shape, prior, local or global), a
decoder network and an observation likelihood; :class:`LatentModel` turns the
declaration into a Pyro program::

    p(theta) prod_n p(z_n) p(x_n | decoder(z_n, theta))

Local latents are sampled inside the ``"data"`` plate (one per datapoint), global
latents outside it. The decoder receives every latent's value, in declaration order,
as positional arguments and returns the likelihood's parameters.

Example: factor analysis, a model that is not a VAE, in a few lines::

    import torch
    from torch import nn
    from pyro_gen import Latent, LatentModel, make_likelihood

    class Loadings(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = nn.Linear(3, 10)  # x = W z + mu + noise

        def forward(self, z):
            return self.W(z)

    fa = LatentModel(
        latents=[Latent("z", shape=(3,))],
        decoder=Loadings(),
        likelihood=make_likelihood("gaussian", data_shape=(10,), scale="learned"),
        data_shape=(10,),
    )
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import register_kl

from pyro_gen.errors import ConfigError, DataError
from pyro_gen.infer.precision import as_float32, float32_region
from pyro_gen.models.checks import (
    ReferenceTensor,
    check_batch,
    check_class_labels,
    check_data_tensor,
    check_finite,
    values_already_checked,
)
from pyro_gen.models.likelihoods import Likelihood

DATA_PLATE = "data"
#: The parent name by which a latent's prior reads the class labels of a conditional model (``num_classes``).
LABELS = "y"


class StandardNormal(dist.Normal):
    """``Normal(0, 1)`` elementwise: the prior of a latent declared without one (``loc`` and ``scale`` are the
    model's zero and one buffers, of the latent's shape).

    Its own type only so that the KL of a Normal against it is the closed form without the general
    formula's divisions by the unit scale (:func:`_kl_normal_standard`): 4 fewer tensor operations in each of
    the forward and backward passes of every VAE step. The type survives ``expand`` (Pyro's plate broadcast),
    so the traced and the direct paths both take it.
    """


@register_kl(torch.distributions.Normal, StandardNormal)
def _kl_normal_standard(p, q) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) = (mu^2 + sigma^2 - 1) / 2 - log sigma, elementwise."""
    return 0.5 * (p.loc.pow(2) + p.scale.pow(2) - 1.0) - p.scale.log()


@dataclass(frozen=True, eq=False)
class Latent:
    """A latent sample site.

    :param str name: the site name: the contract between model and guide.
    :param tuple shape: the event shape of one draw (per datapoint when local).
    :param prior: a distribution whose samples have ``shape`` or broadcast to it
        (e.g. ``dist.Laplace(0., 1.)``; its support may be constrained: Gamma, Beta, HalfNormal,
        LogNormal, Dirichlet); or a module / callable of the ``parents``' values returning such a
        distribution (a learned or conditional prior, :mod:`pyro_gen.models.priors`); default a
        standard Normal. A module prior is part of the model: registered, trained, checkpointed.
    :param tuple parents: names of latents declared before this one that its prior reads, in the
        order it takes them (a hierarchy: ``Latent("z1", prior=GaussianPrior(16, 32), parents=("z2",))``);
        in a model conditioned on labels (``num_classes``), ``"y"`` names the labels (integers, one per
        datapoint): a prior ``p(z | y)`` of a conditional VAE.
    :param bool local: one draw per datapoint (inside the data plate) or one global draw.
    :param enumerate: ``"parallel"`` marks a local discrete latent that the *model* sums out with
        Pyro's enumeration (``infer={"enumerate": "parallel"}``): it has no guide site; the ``elbo`` and
        ``iwae`` objectives and ``evaluate`` sum it out exactly in each importance weight, as do Pyro's
        ``TraceEnum_ELBO`` (:func:`pyro_gen.infer.gmm_fit.enum_objective`) and NUTS. Its prior may
        read parents, global or discrete (a mixture's assignment reads the mixture weights), and a
        model may hold several. Without it, a fixed ``Categorical`` prior declares a discrete latent
        summed out with an amortized ``q(y | x)`` (:mod:`pyro_gen.infer.enumerate`, M2).
    """

    name: str
    shape: tuple = ()
    prior: object = None
    local: bool = True
    parents: tuple = ()
    enumerate: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(self.shape))
        parents = (self.parents,) if isinstance(self.parents, str) else tuple(self.parents)
        object.__setattr__(self, "parents", parents)
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"a latent needs a non-empty string name, got {self.name!r}")
        if self.enumerate is not None:
            self._check_enumerated()
            return
        if self.prior is None or isinstance(self.prior, torch.distributions.Distribution):
            if parents:
                raise ConfigError(
                    f"latent {self.name!r} names parents {parents} but its prior is a fixed distribution: give a module or "
                    "callable prior that takes the parents' values, e.g. pyro_gen.models.priors.GaussianPrior"
                )
            if self.prior is not None:
                self._check_fixed_prior()
        elif not callable(self.prior):
            raise ConfigError(
                f"prior of latent {self.name!r} must be a distribution or a module / callable returning one, got {type(self.prior).__name__}"
            )

    def _check_enumerated(self) -> None:
        where = f"enumerated latent {self.name!r}"
        if self.enumerate != "parallel":
            raise ConfigError(f"{where}: enumerate must be 'parallel' (Pyro's vectorized enumeration), got {self.enumerate!r}")
        if not self.local or self.shape != ():
            raise ConfigError(
                f"{where} must be local with shape () (one discrete value per datapoint), got local={self.local}, shape={self.shape}"
            )
        if self.prior is None:
            raise ConfigError(f"{where} needs a discrete prior, e.g. dist.Categorical(...) or a callable of its parents returning one")
        if isinstance(self.prior, torch.distributions.Distribution):
            if self.parents:
                raise ConfigError(f"{where} names parents {self.parents} but its prior is a fixed distribution: give a callable of them")
            if not self.prior.support.is_discrete or not getattr(self.prior, "has_enumerate_support", False):
                raise ConfigError(
                    f"{where} needs a prior with finite discrete support (Categorical, Bernoulli), got {type(self.prior).__name__}"
                )
        elif not callable(self.prior):
            raise ConfigError(
                f"prior of latent {self.name!r} must be a distribution or a callable returning one, got {type(self.prior).__name__}"
            )

    def _check_fixed_prior(self) -> None:
        from pyro_gen.models.priors import parameter_tensors

        if parameter_tensors(self.prior):
            raise ConfigError(
                f"the prior of latent {self.name!r} holds tensors that require a gradient: a fixed distribution is never "
                "trained (its tensors belong to no module). Give a module prior instead, e.g. "
                "pyro_gen.models.priors.LearnedNormal / MixturePrior, or a Prior subclass that holds nn.Parameters"
            )
        if self.prior.support.is_discrete:
            if not isinstance(self.prior, torch.distributions.Categorical) or self.shape != () or not self.local or self.parents:
                raise ConfigError(
                    f"latent {self.name!r} has a discrete prior ({type(self.prior).__name__}): declare it with "
                    "enumerate='parallel' to sum it out in the model (Pyro's enumeration), or as a local Categorical latent of "
                    "shape () without parents, summed out with an amortized q(y | x) (e.g. Latent('y', prior=dist.Categorical("
                    "logits=torch.zeros(10)))); a continuous guide on a discrete site would give a wrong bound"
                )

    @property
    def is_discrete(self) -> bool:
        """A discrete latent summed out with an amortized ``q(y | x)``: a fixed Categorical prior, not model-enumerated."""
        return self.enumerate is None and isinstance(self.prior, torch.distributions.Categorical)

    @property
    def enumerated(self) -> bool:
        """A discrete latent the model sums out with Pyro's enumeration (no guide site)."""
        return self.enumerate is not None

    @property
    def guided(self) -> bool:
        """A continuous latent: the guide samples it (neither summed out by the model nor by an amortized ``q(y | x)``)."""
        return self.enumerate is None and not self.is_discrete

    @property
    def num_values(self) -> int:
        """How many values a discrete latent takes (its Categorical's categories)."""
        return int(self.prior.param_shape[-1]) if self.is_discrete else 0

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _move_distribution(d: dist.Distribution, device: torch.device) -> dist.Distribution:
    """Rebuild a distribution with its parameters on ``device`` (priors declared on the CPU)."""
    if isinstance(d, dist.Independent):
        return _move_distribution(d.base_dist, device).to_event(d.reinterpreted_batch_ndims)
    kwargs = {k: getattr(d, k).to(device) for k in d.arg_constraints if k in d.__dict__ and torch.is_tensor(getattr(d, k))}
    return type(d)(**kwargs)


def declared_prior(lat: Latent, device: torch.device) -> dist.Distribution:
    """A latent's declared fixed prior on ``device``, with event shape equal to ``lat.shape``.

    The prior's batch dimensions become event dimensions, so one site holds the whole latent.
    """
    d = lat.prior if device == torch.device("cpu") else _move_distribution(lat.prior, device)
    return as_latent_distribution(lat, d)


def as_latent_distribution(lat: Latent, d) -> dist.Distribution:
    """``d`` with event shape ``lat.shape``: its rightmost batch dims become event dims (checked)."""
    if not isinstance(d, torch.distributions.Distribution):
        raise ConfigError(f"the prior of latent {lat.name!r} returned {type(d).__name__}, not a distribution")
    if d.support.is_discrete and not (lat.is_discrete or lat.enumerated):
        raise ConfigError(
            f"the prior of latent {lat.name!r} is discrete ({type(d).__name__}): declare Latent(..., enumerate='parallel') to sum it "
            "out in the model, or give a fixed Categorical prior (summed out with an amortized q(y | x)); a continuous guide on a "
            "discrete site would give a wrong bound"
        )
    extra = len(lat.shape) - len(d.event_shape)
    if extra < 0 or tuple(d.event_shape) != lat.shape[len(lat.shape) - len(d.event_shape) :]:
        raise ConfigError(
            f"the prior of latent {lat.name!r} has event shape {tuple(d.event_shape)}, which does not end the latent's shape {lat.shape}"
        )
    if extra:
        tail = lat.shape[:extra]
        if tuple(d.batch_shape)[-extra:] != tail:
            lead = tuple(d.batch_shape)[: max(len(d.batch_shape) - extra, 0)]
            d = d.expand(torch.Size(lead + tail))
        d = d.to_event(extra)
    return d


def _check_standard_priors(state_dict, prefix, *args) -> None:
    """A checkpoint's default-prior locations must be the zeros they are by construction (the closed-form KL
    against :class:`StandardNormal` assumes them)."""
    for key, value in state_dict.items():
        # NaN / inf entries are left to the finite-weights check, which names them as a diverged run's
        if key.startswith(prefix + "_prior_loc_") and torch.is_tensor(value) and bool((torch.isfinite(value) & (value != 0)).any()):
            raise DataError(
                f"checkpoint entry {key!r} is not zero: the default N(0, I) prior has no location to load; the checkpoint is not this model's"
            )


class LatentModel(nn.Module):
    """A Pyro program built from a declaration of latents, a decoder and a likelihood.

    Calling the model runs the program: ``model(x)`` scores data ``x`` of shape
    ``(batch, *data_shape)``; ``model(batch_size=n)`` generates ``n`` datapoints.
    ``data_size`` (the full dataset size) scales local terms when ``x`` is a minibatch
    of a model with global latents. The return value is the decoder output, shaped
    ``batch + data_shape`` when the likelihood needs one parameter per value, and
    ``(params_per_value,) + batch + data_shape`` otherwise (e.g. a location and a scale).

    :param latents: the latent sites, :class:`Latent` objects.
    :param decoder: an ``nn.Module`` (or callable) taking the latents' values in order. It returns the
        likelihood's parameters, or (with ``likelihood=None``) the observation distribution itself, whose
        event shape is ``data_shape`` (e.g. a mixture's component picked by its enumerated assignment).
    :param likelihood: a :class:`~pyro_gen.models.likelihoods.Likelihood`, or ``None`` when the decoder
        returns the distribution.
    :param data_shape: the shape of one datapoint, e.g. ``(1, 28, 28)``.
    :param str obs_name: the observed site's name.
    :param num_classes: a model conditioned on class labels (a conditional VAE): calls take ``y``,
        one label per datapoint, and the decoder is called with the latents and then the labels;
        the guide's families read them too (one-hot). Spelled as the conditional GAN spells it.
    """

    max_plate_nesting = 1

    def __init__(
        self,
        latents: Sequence[Latent],
        decoder,
        likelihood: Likelihood | None,
        data_shape: Sequence[int],
        obs_name: str = "x",
        num_classes: int | None = None,
    ):
        super().__init__()
        latents = list(latents)
        if not latents:
            raise ConfigError("a LatentModel needs at least one Latent")
        names = [lat.name for lat in latents]
        if len(set(names)) != len(names) or obs_name in names:
            raise ConfigError(f"latent and observed site names must be unique; got latents {names} and obs {obs_name!r}")
        if not any(lat.local for lat in latents):
            raise ConfigError("a LatentModel needs at least one local latent (one per datapoint)")
        if sum(lat.is_discrete for lat in latents) > 1:
            raise ConfigError(
                f"at most one discrete latent is summed out with an amortized q(y | x); got {[lat.name for lat in latents if lat.is_discrete]}: "
                "declare the others (or all) with enumerate='parallel' to sum them out in the model"
            )
        if any(lat.is_discrete for lat in latents) and any(lat.enumerated for lat in latents):
            raise ConfigError(
                "a model sums its discrete latents out either with an amortized q(y | x) (a fixed Categorical prior) or in the model "
                "(enumerate='parallel'), not both: declare every discrete latent with enumerate='parallel'"
            )
        declared: dict[str, Latent] = {}
        for lat in latents:
            for parent in lat.parents:
                if parent == LABELS and parent not in names:
                    if num_classes is None:
                        raise ConfigError(
                            f"latent {lat.name!r} names the labels {LABELS!r} as a parent, but the model takes none: declare "
                            "LatentModel(..., num_classes=K)"
                        )
                    if not lat.local:
                        raise ConfigError(f"global latent {lat.name!r} cannot read the labels (one per datapoint): make it local")
                    continue
                if parent not in declared:
                    where = "is declared after it" if parent in names else "is not a latent of this model"
                    raise ConfigError(f"latent {lat.name!r} names parent {parent!r}, which {where}: declare parents first")
                if declared[parent].local and not lat.local:
                    raise ConfigError(
                        f"global latent {lat.name!r} cannot depend on local latent {parent!r} (one draw per datapoint): "
                        f"make {lat.name!r} local or drop the parent"
                    )
            declared[lat.name] = lat
        self.latents = latents
        self._index = {lat.name: i for i, lat in enumerate(latents)}
        # module priors are part of the model: trained, moved and saved with it
        self.priors = nn.ModuleDict({lat.name: lat.prior for lat in latents if isinstance(lat.prior, nn.Module)})
        self.decoder = decoder
        self.likelihood = likelihood
        self.data_shape = tuple(data_shape)
        self.obs_name = obs_name
        if num_classes is not None:
            if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
                raise ConfigError(f"num_classes must be an integer of at least 2 (the number of labels), got {num_classes!r}")
            if any(lat.is_discrete for lat in latents):
                raise ConfigError(
                    "a model either conditions on observed labels (num_classes) or infers a discrete latent from them, not both"
                )
        self.num_classes = num_classes
        # default standard-normal priors live in buffers so that .to(device) moves them
        for i, lat in enumerate(latents):
            if lat.prior is None:
                self.register_buffer(f"_prior_loc_{i}", torch.zeros(lat.shape))
                # a tensor scale (not the number 1.0) spares Normal a tensor conversion on every call;
                # not persistent, so checkpoints keep their keys
                self.register_buffer(f"_prior_scale_{i}", torch.ones(lat.shape), persistent=False)
        self._moved_priors: dict = {}
        self._standard_priors: dict = {}  # index -> (the loc buffer it was built on, N(0, I))
        self._reference = ReferenceTensor()
        self._register_load_state_dict_pre_hook(_check_standard_priors)

    # -- declaration queries -------------------------------------------------
    @property
    def local_latents(self) -> list[Latent]:
        return [lat for lat in self.latents if lat.local]

    @property
    def global_latents(self) -> list[Latent]:
        return [lat for lat in self.latents if not lat.local]

    @property
    def enumerated_latents(self) -> list[Latent]:
        """Discrete latents the model sums out with Pyro's enumeration (``enumerate='parallel'``): no guide site."""
        return [lat for lat in self.latents if lat.enumerated]

    @property
    def discrete_latents(self) -> list[Latent]:
        """Local latents with a Categorical prior: summed out by enumeration (:mod:`pyro_gen.infer.enumerate`)."""
        return [lat for lat in self.latents if lat.is_discrete]

    def parents_of(self, index: int) -> list[int]:
        """Indices of the latents the ``index``-th latent's prior reads, in the order it takes them (the labels: ``-1``)."""
        return [self._index.get(p, -1) for p in self.latents[index].parents]

    def reads_labels(self, index: int) -> bool:
        """The ``index``-th latent's prior reads the class labels (``"y"`` among its parents)."""
        return LABELS in self.latents[index].parents and LABELS not in self._index

    def prior(self, index: int, values=None, labels=None) -> dist.Distribution:
        """The prior of the ``index``-th latent, with event shape equal to its shape.

        ``values``: the latents' values so far (declaration order), read by a prior with parents;
        ``labels``: the class labels, for a prior that reads them. A module or callable prior is
        called afresh each time (its parameters train).
        """
        lat = self.latents[index]
        if lat.prior is None:
            loc = getattr(self, f"_prior_loc_{index}")
            cached = self._standard_priors.get(index)
            # rebuilt only when .to() / .double() replaced the buffers: a constant, built once per step otherwise
            if cached is None or cached[0] is not loc:
                prior = StandardNormal(loc, getattr(self, f"_prior_scale_{index}"), validate_args=False).to_event(len(lat.shape))
                cached = self._standard_priors[index] = (loc, prior)
            return cached[1]
        if not isinstance(lat.prior, torch.distributions.Distribution):
            parents = [labels if i < 0 else values[i] for i in self.parents_of(index)] if lat.parents else []
            if any(v is None for v in parents):
                raise ConfigError(f"the prior of latent {lat.name!r} needs its parents' values {lat.parents}")
            with float32_region():  # a learned prior's density in float32, also under a bf16 training step
                return as_latent_distribution(lat, lat.prior(*parents))
        device = self._device()
        key = (index, device)
        if key not in self._moved_priors:
            self._moved_priors[key] = declared_prior(lat, device)
        return self._moved_priors[key]

    def _device(self) -> torch.device:
        ref = self._reference_tensor()
        return torch.device("cpu") if ref is None else ref.device

    def _reference_tensor(self) -> torch.Tensor | None:
        """The first parameter (else buffer): its device and dtype are the ones data must have."""
        return self._reference.get(self)

    # -- the program -----------------------------------------------------------
    def data_plate(self, batch_size: int, data_size: int | None = None) -> pyro.plate:
        """The plate over datapoints, shared by the model and any guide of it."""
        if data_size is None or data_size == batch_size:
            return pyro.plate(DATA_PLATE, batch_size, dim=-1)
        return pyro.plate(DATA_PLATE, data_size, subsample=torch.arange(batch_size, device=self._device()), dim=-1)

    def check_data(self, x: torch.Tensor) -> None:
        """Raise :class:`DataError` for a batch that is not a tensor ``(batch, *data_shape)`` of the parameters' dtype
        and device, that is empty, has NaN/inf, or lies outside the likelihood's support.

        Runs on every batch: the type, shape, dtype and device checks cost no pass over the values, and
        the likelihood's value check is skipped inside :func:`~pyro_gen.models.checks.checked_dataset`.
        """
        ref = self._reference_tensor()
        check_batch(x, self.data_shape, "model", dtype=None if ref is None else ref.dtype)
        if ref is not None and x.device != ref.device:
            check_data_tensor(x, "x", device=ref.device, values=False)
        if not values_already_checked():
            if self.likelihood is None:
                check_finite(x)
            else:
                self.likelihood.validate(x)  # NaN / inf included

    def check_labels(self, y, batch_size: int) -> torch.Tensor:
        """The class labels a conditional model (``num_classes``) is given: integers in ``0..num_classes-1``, one per datapoint."""
        return check_class_labels(y, batch_size, self.num_classes)

    def decode(self, *latent_values: torch.Tensor, y=None) -> torch.Tensor:
        """Run the decoder and shape its output to ``batch + data_shape``, or ``(params,) + batch + data_shape``.

        The decoder's flat output per datapoint holds the first parameter of every value,
        then the second (e.g. all locations, then all scales).
        """
        if self.likelihood is None:
            # the decoder builds its own distribution: all of it in float32, also under a bf16 training step
            with float32_region():
                out = self.decoder(*latent_values) if y is None else self.decoder(*latent_values, y)
            return self._check_distribution(out)
        out = as_float32(self.decoder(*latent_values) if y is None else self.decoder(*latent_values, y))
        # the batch shape (particles and datapoints) of the local latents: the largest one's, since an
        # enumerated discrete latent is observed once per datapoint while the others carry particles
        batch = max(
            (v.shape[: v.dim() - len(lat.shape)] for v, lat in zip(latent_values, self.latents) if lat.local),
            key=len,
        )
        per_value = self.likelihood.params_per_value
        expected = per_value * math.prod(self.data_shape)
        if out.shape[: len(batch)] != batch or math.prod(out.shape[len(batch) :]) != expected:
            raise DataError(
                f"the decoder returned shape {tuple(out.shape)} for latent batch shape {tuple(batch)}, but the "
                f"{type(self.likelihood).__name__} likelihood over data_shape {self.data_shape} needs "
                f"{expected} values per datapoint ({per_value} per data value): make the decoder's last layer "
                f"produce {expected} outputs or fix data_shape"
            )
        shape = batch + ((per_value,) if per_value > 1 else ()) + self.data_shape
        params = out.reshape(shape)
        if per_value > 1:
            params = params.movedim(len(batch), 0)
        return params

    def _check_distribution(self, d):
        if not isinstance(d, torch.distributions.Distribution):
            raise ConfigError(
                f"this model has likelihood=None, so its decoder must return the observation distribution; it returned {type(d).__name__}"
            )
        if tuple(d.event_shape) != self.data_shape:
            raise DataError(
                f"the decoder's distribution has event shape {tuple(d.event_shape)}, but one datapoint has shape {self.data_shape}: "
                "make its rightmost dims events with .to_event(n)"
            )
        return d

    def observation(self, params) -> dist.Distribution:
        """The distribution of one batch of data given the decoder's output."""
        if self.likelihood is None:
            return params
        with float32_region():  # the likelihood's parameters and density in float32, also under a bf16 training step
            return self.likelihood(params, len(self.data_shape))

    def forward(self, x: torch.Tensor | None = None, *, batch_size: int | None = None, data_size: int | None = None, y=None):
        if x is not None:
            self.check_data(x)
            batch_size = x.shape[0]
        elif batch_size is None:
            raise ConfigError("call the model with data x, or with batch_size=n to generate n datapoints")
        elif isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer (the number of datapoints to generate), got {batch_size!r}")
        if y is not None and self.num_classes is None and not self.discrete_latents:
            raise ConfigError(
                "this model takes no labels (y): declare LatentModel(..., num_classes=K) to condition on them, or a discrete "
                "latent (Latent('y', prior=dist.Categorical(...))) that they observe"
            )
        labels = self.check_labels(y, batch_size) if self.num_classes is not None else None
        values = [None] * len(self.latents)
        for i, lat in enumerate(self.latents):
            if not lat.local:
                values[i] = pyro.sample(lat.name, self.prior(i, values, labels))
        with self.data_plate(batch_size, data_size):
            for i, lat in enumerate(self.latents):
                if lat.is_discrete:
                    values[i] = self._discrete_site(i, lat, x, y, batch_size)
                elif lat.enumerated:
                    values[i] = pyro.sample(lat.name, self.prior(i, values, labels), infer={"enumerate": lat.enumerate})
                elif lat.local:
                    values[i] = pyro.sample(lat.name, self.prior(i, values, labels))
            params = self.decode(*values, y=labels)
            pyro.sample(self.obs_name, self.observation(params), obs=x)
        return params

    def _discrete_site(self, i: int, lat: Latent, x, y, batch_size: int):
        """A discrete latent: observed at ``y`` (one value per datapoint, as the enumeration or the labels give it);
        drawn from its prior when the model generates."""
        if y is not None:
            if not torch.is_tensor(y) or y.shape != (batch_size,) or y.dtype.is_floating_point:
                raise DataError(f"the values of discrete latent {lat.name!r} must be an integer tensor of shape ({batch_size},)")
            if bool(((y < 0) | (y >= lat.num_values)).any()):
                raise DataError(
                    f"the values of discrete latent {lat.name!r} must lie in 0..{lat.num_values - 1} (-1 marks an unlabelled "
                    "datapoint only in the labels given to an objective, which sums those out)"
                )
            return pyro.sample(lat.name, self.prior(i), obs=y)
        if x is not None:
            raise ConfigError(
                f"discrete latent {lat.name!r} is summed out by enumeration: score data through an objective or the evaluator "
                "(pyro_gen.infer.ELBO / IWAE, pyro_gen.evaluate), which call the model once per value, or pass its values as y"
            )
        return pyro.sample(lat.name, self.prior(i))

    def picture(self, params) -> torch.Tensor:
        """What a sample grid, reconstruction or interpolation shows for decoder output ``params``: the likelihood's
        mean (e.g. pixel probabilities), or one draw of x where the mean is not closed-form (autoregressive pixels)."""
        if self.likelihood is not None and not self.likelihood.has_mean:
            return self.observation(params).sample()
        return self.mean(params)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean for decoder output ``params`` (e.g. pixel probabilities)."""
        if self.likelihood is None:
            return params.mean
        return self.likelihood.mean(params, len(self.data_shape))
