"""A Gaussian mixture as a Pyro program, with its discrete assignments enumerated out.

The model, for ``K`` components in ``D`` dimensions::

    weights ~ Dirichlet(alpha 1_K)
    locs[k, d] ~ Normal(m, s)                       (or: first column ordered, see below)
    scales[k, d] ~ LogNormal(mu, sigma)
    corr_chol[k] ~ LKJCholesky(D, eta)              (covariance="full" only)
    for n in data:
        assignment[n] ~ Categorical(weights)         (enumerated: infer={"enumerate": "parallel"})
        x[n] ~ Normal(locs[a], diag(scales[a])^2)    (diag)
             | MultivariateNormal(locs[a], scale_tril=diag(scales[a]) corr_chol[a])   (full)

``assignment`` is sampled inside the ``"data"`` plate (dim -1) and marked for parallel
enumeration, so :class:`~pyro.infer.TraceEnum_ELBO` and Pyro's NUTS (given
``max_plate_nesting=1``) sum it out exactly; the global sites ``weights``, ``locs``,
``scales`` (and ``corr_chol``) are declared as whole events (no components plate), so one
site holds one array and an ordering constraint across components is expressible.

**Label switching.** The mixture likelihood is invariant to permuting components, so a
posterior has ``K!`` symmetric modes and MCMC draws that hop between them make per-component
summaries meaningless. With ``ordered=True`` the prior on ``locs`` is the iid Normal prior
restricted to ``locs[0, 0] < locs[1, 0] < ... < locs[K-1, 0]`` (the first coordinate of the
means increases with the component index), i.e. the order statistics of the rows of an iid
Normal matrix, with density ``K! prod N(locs[k, d] | m, s)`` on that cone. Its support has a
bijection to unconstrained space (:class:`~pyro.distributions.transforms.OrderedTransform` on
the first column, identity elsewhere), which NUTS and the autoguides find through
``biject_to``. This is the ordering-constraint identification of Stan's ``ordered`` type; it
identifies the components well when they are separated along the first coordinate.

References:
  McLachlan & Peel, Finite Mixture Models, Wiley 2000.
  Jasra, Holmes & Stephens, Markov chain Monte Carlo methods and the label switching problem
  in Bayesian mixture modeling, Statistical Science 20(1), 2005.
  Lewandowski, Kurowicka & Joe, Generating random correlation matrices based on vines and
  extended onion method, J. Multivariate Analysis 100, 2009 (the LKJ prior).
"""

import functools
import math

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import OrderedTransform
from pyro.infer import infer_discrete
from pyro.ops.indexing import Vindex

from pyro_gen.errors import ConfigError, DataError
from pyro_gen.models.checks import check_data_tensor
from pyro_gen.models.latent import Latent, LatentModel

DATA_PLATE = "data"
COVARIANCES = ("diag", "full")


class _FirstColumnOrdered(constraints.Constraint):
    """Real ``(..., K, D)`` matrices whose first column is strictly increasing."""

    event_dim = 2

    def check(self, value):
        finite = torch.isfinite(value).flatten(-2).all(-1)
        return finite & (value[..., 1:, 0] > value[..., :-1, 0]).all(-1)


first_column_ordered = _FirstColumnOrdered()


class FirstColumnOrderedTransform(dist.transforms.Transform):
    """Unconstrained ``(K, D)`` -> first column ordered: :class:`OrderedTransform` on column 0, identity elsewhere."""

    domain = constraints.independent(constraints.real, 2)
    codomain = first_column_ordered
    bijective = True

    def __eq__(self, other):
        return isinstance(other, FirstColumnOrderedTransform)

    def _call(self, x):
        return torch.cat([OrderedTransform()(x[..., 0]).unsqueeze(-1), x[..., 1:]], -1)

    def _inverse(self, y):
        return torch.cat([OrderedTransform().inv(y[..., 0]).unsqueeze(-1), y[..., 1:]], -1)

    def log_abs_det_jacobian(self, x, y):
        # the identity columns contribute nothing; OrderedTransform sums over its event (the K rows)
        return OrderedTransform().log_abs_det_jacobian(x[..., 0], y[..., 0])


@dist.transforms.biject_to.register(_FirstColumnOrdered)
@dist.transforms.transform_to.register(_FirstColumnOrdered)
def _to_first_column_ordered(constraint):
    return FirstColumnOrderedTransform()


class OrderedRowsNormal(dist.TorchDistribution):
    """iid ``Normal(loc, scale)`` entries of a ``(K, D)`` matrix, restricted to a first column in increasing order.

    Sorting the rows of an iid draw by their first entry samples it exactly; the density on
    the ordered cone is ``K!`` times the iid density (each unordered matrix maps to one ordered
    matrix by exactly one row permutation, almost surely).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = first_column_ordered

    def __init__(self, loc, scale, shape, validate_args=None):
        # scalar loc and scale: the whole (K, D) matrix is one event, and Pyro's generic expand() adds batch dims
        self.loc, self.scale = torch.as_tensor(loc), torch.as_tensor(scale)
        self._iid = dist.Normal(self.loc, self.scale).expand(torch.Size(shape))
        super().__init__(torch.Size(), torch.Size(shape), validate_args=validate_args)

    def sample(self, sample_shape=()):
        x = self._iid.sample(sample_shape)
        order = x[..., 0].argsort(-1)
        return x.gather(-2, order.unsqueeze(-1).expand(x.shape))

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        num_rows = self.event_shape[0]
        return self._iid.log_prob(value).sum((-1, -2)) + math.lgamma(num_rows + 1)


class GaussianMixture(LatentModel):
    """A ``K``-component Gaussian mixture in ``D`` dimensions, declared in the model language (see the module docstring).

    It is a :class:`~pyro_gen.models.latent.LatentModel`: global latents ``weights``, ``locs``, ``scales``
    (and ``corr_chol``), the local ``assignment`` declared with ``enumerate="parallel"`` and a prior that
    reads its parent ``weights``, and a decoder that returns the component its assignment picks (no
    separate likelihood). The declaration is the whole program; the methods below use fitted parameters.

    ``model(x)`` scores data ``(N, D)``; ``model(batch_size=n)`` generates ``n`` points;
    ``data_size`` (the full dataset size) scales the data plate when ``x`` is a minibatch.
    The default priors are weak (a uniform Dirichlet, ``Normal(0, 10)`` means, ``LogNormal(0, 2)``
    scales, a uniform LKJ over correlations) so that a MAP fit sits near the maximum-likelihood
    estimate; standardize data whose scale is far from 1 or set the priors.

    :param int num_components: ``K``.
    :param int dim: ``D``, the data's dimensionality.
    :param str covariance: ``"diag"`` (per-component diagonal) or ``"full"`` (scales times an LKJ correlation).
    :param bool ordered: restrict the first coordinate of the means to increase with the
        component index (identifies components for MCMC; see the module docstring).
    :param float weight_concentration: Dirichlet concentration ``alpha`` of each weight.
    :param float loc_loc: prior mean ``m`` of the means.
    :param float loc_scale: prior standard deviation ``s`` of the means.
    :param float scale_loc: ``mu`` of the LogNormal prior of the per-coordinate scales.
    :param float scale_scale: ``sigma`` of the LogNormal prior of the per-coordinate scales.
    :param float correlation_concentration: LKJ ``eta`` (1: uniform over correlation matrices).
    """

    max_plate_nesting = 1

    def __init__(
        self,
        num_components: int,
        dim: int,
        covariance: str = "diag",
        *,
        ordered: bool = False,
        weight_concentration: float = 1.0,
        loc_loc: float = 0.0,
        loc_scale: float = 10.0,
        scale_loc: float = 0.0,
        scale_scale: float = 2.0,
        correlation_concentration: float = 1.0,
    ):
        if int(num_components) != num_components or num_components < 1:
            raise ConfigError(f"num_components must be a positive integer, got {num_components!r}")
        if int(dim) != dim or dim < 1:
            raise ConfigError(f"dim must be a positive integer, got {dim!r}")
        if covariance not in COVARIANCES:
            raise ConfigError(f"unknown covariance {covariance!r}; choose 'diag' or 'full'")
        if covariance == "full" and dim < 2:
            raise ConfigError("covariance='full' needs dim >= 2; for 1-D data use covariance='diag' (the same model)")
        for name, value in [
            ("weight_concentration", weight_concentration),
            ("loc_scale", loc_scale),
            ("scale_scale", scale_scale),
            ("correlation_concentration", correlation_concentration),
        ]:
            if not value > 0:
                raise ConfigError(f"{name} must be positive, got {value!r}")
        num_components, dim = int(num_components), int(dim)
        # the priors and the decoder are bound methods: they read the hyperparameter buffers below, which
        # .to(device) moves, and a deep copy of the model rebinds them to the copy
        latents = [
            Latent("weights", shape=(num_components,), prior=functools.partial(self._global_prior, "weights"), local=False),
            Latent("locs", shape=(num_components, dim), prior=functools.partial(self._global_prior, "locs"), local=False),
            Latent("scales", shape=(num_components, dim), prior=functools.partial(self._global_prior, "scales"), local=False),
        ]
        if covariance == "full":
            latents.append(
                Latent("corr_chol", shape=(num_components, dim, dim), prior=functools.partial(self._global_prior, "corr_chol"), local=False)
            )
        latents.append(Latent("assignment", prior=self._assignment_prior, parents=("weights",), enumerate="parallel"))
        super().__init__(latents, decoder=self._component_of, likelihood=None, data_shape=(dim,))
        self.num_components, self.dim = num_components, dim
        self.covariance, self.ordered = covariance, bool(ordered)
        # hyperparameters live in buffers so that .to(device) moves the priors with the model
        self.register_buffer("weight_concentration", torch.full((self.num_components,), float(weight_concentration)))
        self.register_buffer("loc_loc", torch.tensor(float(loc_loc)))
        self.register_buffer("loc_scale", torch.tensor(float(loc_scale)))
        self.register_buffer("scale_loc", torch.tensor(float(scale_loc)))
        self.register_buffer("scale_scale", torch.tensor(float(scale_scale)))
        self.register_buffer("correlation_concentration", torch.tensor(float(correlation_concentration)))

    def extra_repr(self) -> str:
        return f"num_components={self.num_components}, dim={self.dim}, covariance={self.covariance!r}, ordered={self.ordered}"

    # -- declaration ---------------------------------------------------------------
    @property
    def global_sites(self) -> list[str]:
        """The global latent sites, in sampling order."""
        return ["weights", "locs", "scales"] + (["corr_chol"] if self.covariance == "full" else [])

    @property
    def site_dims(self) -> dict:
        """Dimension names of each site's value (used by :mod:`pyro_gen.analysis.arviz`)."""
        dims = {
            "weights": ["component"],
            "locs": ["component", "coordinate"],
            "scales": ["component", "coordinate"],
            # xarray needs distinct names for the two axes of a matrix
            "corr_chol": ["component", "coordinate_row", "coordinate_col"],
            "assignment": [DATA_PLATE],
            "x": [DATA_PLATE, "coordinate"],
        }
        if self.covariance == "diag":
            del dims["corr_chol"]
        return dims

    def global_priors(self) -> dict:
        """The prior of each global site, as distributions over the whole site."""
        K, D = self.num_components, self.dim
        if self.ordered:
            locs = OrderedRowsNormal(self.loc_loc, self.loc_scale, (K, D))
        else:
            locs = dist.Normal(self.loc_loc, self.loc_scale).expand([K, D]).to_event(2)
        priors = {
            "weights": dist.Dirichlet(self.weight_concentration),
            "locs": locs,
            "scales": dist.LogNormal(self.scale_loc, self.scale_scale).expand([K, D]).to_event(2),
        }
        if self.covariance == "full":
            priors["corr_chol"] = dist.LKJCholesky(D, self.correlation_concentration).expand([K]).to_event(1)
        return priors

    def _global_prior(self, name: str) -> dist.TorchDistribution:
        return self.global_priors()[name]

    def _assignment_prior(self, weights: torch.Tensor) -> dist.TorchDistribution:
        return dist.Categorical(weights)

    def _component_of(self, *values) -> dist.TorchDistribution:
        """The decoder: the component picked by the (enumerated) assignment, from the global values."""
        *globals_, assignment = values
        return self.component(dict(zip(self.global_sites, globals_)), assignment)

    # -- checks ----------------------------------------------------------------------
    def check_data(self, x) -> None:
        """Raise :class:`DataError` unless ``x`` is a finite ``(N, D)`` tensor with this model's ``D``."""
        if not torch.is_tensor(x):
            raise DataError(
                f"data must be a torch.Tensor of shape (N, {self.dim}), got {type(x).__name__}: convert it with torch.as_tensor(x).float()"
            )
        check_data_tensor(x, "x", values=False, allow_empty=True)  # floating dtype, not on the meta device
        if x.dim() != 2:
            raise DataError(
                f"a Gaussian mixture needs 2-D data of shape (N, D) = (points, coordinates); got shape {tuple(x.shape)}. "
                "Reshape it, e.g. x.reshape(len(x), -1), or x.unsqueeze(-1) for 1-D data."
            )
        if x.shape[1] != self.dim:
            raise DataError(f"data has {x.shape[1]} coordinates per point but the model was built with dim={self.dim}")
        if len(x) == 0:
            raise DataError(f"x has no points (shape {tuple(x.shape)}): give at least one")
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise DataError(f"the data contain {bad} NaN or infinite values; clean or impute them before fitting")

    def check_params(self, params: dict) -> None:
        """Raise :class:`ConfigError` when a global site is missing from ``params`` or has the wrong trailing shape."""
        missing = [name for name in self.global_sites if name not in params]
        if missing:
            raise ConfigError(f"params lack the global sites {missing}; a {self.covariance} mixture needs {self.global_sites}")
        K, D = self.num_components, self.dim
        shapes = {"weights": (K,), "locs": (K, D), "scales": (K, D), "corr_chol": (K, D, D)}
        for name in self.global_sites:
            shape = tuple(params[name].shape[len(params[name].shape) - len(shapes[name]) :])
            if shape != shapes[name]:
                raise ConfigError(
                    f"params[{name!r}] has shape {tuple(params[name].shape)}; expected (..., {', '.join(map(str, shapes[name]))})"
                )

    # -- the program -----------------------------------------------------------------
    def component(self, params: dict, index=None) -> dist.TorchDistribution:
        """The component distributions: batch ``(..., K)`` and event ``(D,)``, or the ones picked by ``index``.

        ``index`` (e.g. an enumerated ``assignment``) selects components with :class:`~pyro.ops.indexing.Vindex`,
        broadcasting its shape against the parameters' batch dimensions.
        """
        pick = {}
        for name in self.global_sites[1:]:
            trailing = (slice(None),) * (2 if name == "corr_chol" else 1)  # the dims right of the component axis
            pick[name] = params[name] if index is None else Vindex(params[name])[(..., index) + trailing]
        if self.covariance == "diag":
            return dist.Normal(pick["locs"], pick["scales"]).to_event(1)
        return dist.MultivariateNormal(pick["locs"], scale_tril=pick["scales"].unsqueeze(-1) * pick["corr_chol"])

    # -- using fitted parameters ---------------------------------------------------------
    def joint_log_prob(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """``log weights[k] + log N(x_n | component k)``, shaped ``(..., N, K)`` for params with batch dims ``...``."""
        self.check_data(x)
        self.check_params(params)
        # a new axis for the datapoints, left of the components: component batch (..., 1, K)
        events = {"weights": 1, "locs": 2, "scales": 2, "corr_chol": 3}
        p = {name: params[name].unsqueeze(-events[name] - 1) for name in self.global_sites}
        log_px = self.component(p).log_prob(x.unsqueeze(-2))
        return p["weights"].log() + log_px

    def log_density(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """Per-point ``log p(x_n | weights, locs, covariances) = logsumexp_k [log w_k + log N(x_n | k)]``: ``(..., N)``.

        ``params`` maps the global sites to values, optionally with leading batch dims (e.g. draws).
        """
        locs = params.get("locs") if isinstance(params, dict) else None
        if torch.is_tensor(x) and torch.is_tensor(locs) and (x.dtype != locs.dtype or x.device != locs.device):
            check_data_tensor(x, "x", dtype=locs.dtype, device=locs.device, values=False, owner="mixture")
        return self.joint_log_prob(x, params).logsumexp(-1)

    def responsibilities(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """Posterior assignment probabilities ``p(assignment_n = k | x_n, params)``: ``(..., N, K)``."""
        return self.joint_log_prob(x, params).softmax(-1)

    @torch.no_grad()
    def assignments(self, x: torch.Tensor, params: dict, temperature: int = 0) -> torch.Tensor:
        """Assignments by :func:`~pyro.infer.infer_discrete`: the most probable (``temperature=0``) or a posterior draw (1).

        :param params: unbatched global values (e.g. a MAP fit's).
        """
        self.check_data(x)
        self.check_params(params)
        decode = infer_discrete(poutine.condition(self, data=params), first_available_dim=-2, temperature=temperature)
        return poutine.trace(decode).get_trace(x).nodes["assignment"]["value"]

    @torch.no_grad()
    def sample(self, n: int, params: dict, return_assignments: bool = False):
        """Draw ``n`` new points ``(n, D)`` from the mixture at ``params`` (and their components when asked)."""
        self.check_params(params)
        trace = poutine.trace(poutine.condition(self, data=params)).get_trace(batch_size=n)
        x = trace.nodes["x"]["value"]
        return (x, trace.nodes["assignment"]["value"]) if return_assignments else x

    @torch.no_grad()
    def params_from_labels(self, x: torch.Tensor, labels: torch.Tensor, reg: float = 1e-6) -> dict:
        """Moment estimates of the globals from hard labels (e.g. k-means): weights, means, scales, correlations.

        Covariances are the maximum-likelihood ones per cluster plus ``reg`` on the diagonal
        (as scikit-learn's ``reg_covar``); an empty cluster gets the pooled moments and a tiny
        weight. With ``ordered=True`` the components are sorted by their mean's first coordinate.
        """
        self.check_data(x)
        K, D = self.num_components, self.dim
        labels = torch.as_tensor(labels, device=x.device).long()
        if labels.shape != (len(x),) or (labels < 0).any() or (labels >= K).any():
            raise DataError(f"labels must be {len(x)} integers in [0, {K}), got shape {tuple(labels.shape)}")
        x = x.double()
        onehot = torch.nn.functional.one_hot(labels, K).double()
        counts = onehot.sum(0)
        pooled_mean, pooled_cov = x.mean(0), torch.cov(x.T, correction=0).reshape(D, D)
        means = torch.where(counts[:, None] > 0, onehot.T @ x / counts.clamp(min=1)[:, None], pooled_mean)
        diff = x.unsqueeze(1) - means  # (N, K, D)
        covs = torch.einsum("nk,nki,nkj->kij", onehot, diff, diff) / counts.clamp(min=1)[:, None, None]
        covs = torch.where((counts > 0)[:, None, None], covs, pooled_cov) + reg * torch.eye(D, dtype=x.dtype)
        weights = counts.clamp(min=1e-3)
        params = {"weights": weights / weights.sum(), "locs": means, "scales": covs.diagonal(dim1=-2, dim2=-1).sqrt()}
        if self.covariance == "full":
            corr = covs / (params["scales"].unsqueeze(-1) * params["scales"].unsqueeze(-2))
            params["corr_chol"] = torch.linalg.cholesky(corr)
        if self.ordered:
            order = params["locs"][:, 0].argsort()
            params = {k: v[order] for k, v in params.items()}
        dtype = self.loc_loc.dtype
        return {k: v.to(dtype) for k, v in params.items()}


def gmm(num_components: int, dim: int, covariance: str = "diag", *, ordered: bool = False, **priors) -> GaussianMixture:
    """A Gaussian mixture model: ``gmm(3, 2, "full")``; see :class:`GaussianMixture` for the priors."""
    return GaussianMixture(num_components, dim, covariance, ordered=ordered, **priors)
