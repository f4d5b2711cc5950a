"""Training objectives over traces.

An objective maps ``(model, guide, x, data_size=...)`` to a scalar loss: the negative
bound per datapoint, so numbers are comparable across batch sizes. Built-in objectives
and user objectives share one shape: :class:`TraceObjective` runs the model and guide
into traces (:func:`~pyro_gen.infer.traces.get_traces`) and hands them to a callable
``loss_fn(model_trace, guide_trace) -> loss``. So a custom objective is just that callable::

    def elbo_plus_l2(model_trace, guide_trace):
        terms = trace_terms(model_trace, guide_trace)
        return -terms.log_weight.mean() + 1e-4 * guide_trace.nodes["z"]["value"].pow(2).mean()

    trainer = Trainer(model, guide, objective=elbo_plus_l2)

References:
  Kingma & Welling, Auto-Encoding Variational Bayes, ICLR 2014 (ELBO, analytic KL).
  Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders, ICLR 2016 (IWAE bound).
  Higgins et al., beta-VAE, ICLR 2017; Bowman et al., 2016 and Sonderby et al., 2016 (KL warm-up).
  Kingma et al., Improved Variational Inference with Inverse Autoregressive Flow, 2016 (free bits).
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence
from torch.distributions.utils import _sum_rightmost

from pyro_gen.errors import ConfigError
from pyro_gen.infer.traces import auxiliary_sites, get_traces, latent_sites, plate_full_size, reduce_site, trace_terms


@dataclass
class Player:
    """One player of a multi-player objective (e.g. a GAN's critic or generator).

    An objective with a ``players(model, guide) -> list[Player]`` method and a
    ``player_loss(name, model, guide, batch, data_size=None)`` method is trained by the
    :class:`~pyro_gen.infer.trainer.Trainer` with one Adam optimizer per player: on each batch
    the players step in list order, each on its own loss, a player with ``every=k`` only on
    every ``k``-th batch (counted over the whole run, so the schedule survives a resume).

    :param name: the player's name (its loss is logged as ``train_<name>_loss``).
    :param params: the parameters this player's optimizer steps.
    :param lr: its Adam learning rate (``None``: the trainer's ``lr``).
    :param betas: its Adam betas (``None``: Adam's default).
    :param every: step on every ``every``-th batch.
    :param after_step: called after each of its steps (e.g. a moving average of weights).
    """

    name: str
    params: Sequence[torch.nn.Parameter]
    lr: float | None = None
    betas: tuple[float, float] | None = None
    every: int = 1
    after_step: Callable[[], None] | None = None

    def __post_init__(self):
        self.params = list(self.params)
        if self.every < 1:
            raise ConfigError(f"player {self.name!r}: every must be >= 1, got {self.every}")
        if not self.params:
            raise ConfigError(f"player {self.name!r} has no parameters to train")


class TraceObjective:
    """Turn a callable over ``(model_trace, guide_trace)`` into a training objective.

    :param loss_fn: returns a scalar loss from the two traces.
    :param int num_particles: draws per datapoint, vectorized in a ``"particles"`` plate.
    """

    def __init__(self, loss_fn=None, num_particles: int = 1):
        if num_particles < 1:
            raise ConfigError(f"num_particles must be >= 1, got {num_particles}")
        self.loss_fn = loss_fn
        self.num_particles = num_particles
        self.epoch = 0
        self.last_metrics: dict = {}

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of each epoch (schedules such as KL warm-up)."""
        self.epoch = epoch

    def loss(self, model_trace, guide_trace) -> torch.Tensor:
        return self.loss_fn(model_trace, guide_trace)

    def __call__(self, model, guide, x, **kwargs) -> torch.Tensor:
        from pyro_gen.infer.enumerate import has_discrete, has_model_enumerated

        if has_model_enumerated(model):
            data_size = kwargs.pop("data_size", None) or len(x)
            return self.model_enumerated_loss(model, guide, x, data_size, **kwargs)
        if has_discrete(model):
            labels, data_size = kwargs.pop("y", None), kwargs.pop("data_size", None)
            if kwargs:
                raise ConfigError(f"unexpected arguments {sorted(kwargs)} for a model with a discrete latent")
            return self.enumerated_loss(model, guide, x, labels, data_size or len(x))
        model_trace, guide_trace = get_traces(model, guide, x, num_particles=self.num_particles, **kwargs)
        return self.loss(model_trace, guide_trace)

    def enumerated_loss(self, model, guide, x, labels, data_size: int) -> torch.Tensor:
        """The loss of a model with a discrete latent summed out (:mod:`pyro_gen.infer.enumerate`)."""
        raise ConfigError(
            f"{type(self).__name__} cannot sum out the discrete latent {model.discrete_latents[0].name!r}; use the "
            "'elbo' or 'iwae' objective, which enumerate its values"
        )

    def model_enumerated_loss(self, model, guide, x, data_size: int, **kwargs) -> torch.Tensor:
        """The loss of a model that enumerates its discrete latents itself (``Latent(..., enumerate='parallel')``)."""
        raise ConfigError(
            f"{type(self).__name__} cannot sum out the model's enumerated latents {[lat.name for lat in model.enumerated_latents]}; "
            "use the 'elbo' or 'iwae' objective, or Pyro's TraceEnum_ELBO (pyro_gen.infer.gmm_fit.enum_objective(model))"
        )

    def validation_loss(self, model, guide, x, **kwargs) -> torch.Tensor:
        """The loss the trainer compares across epochs (best checkpoint, early stopping).

        It must not move with training schedules: objectives whose loss does (KL warm-up,
        free bits) return the unmodified bound here.
        """
        return self(model, guide, x, **kwargs)

    def __repr__(self):
        name = getattr(self.loss_fn, "__name__", type(self).__name__)
        return f"{type(self).__name__}({name}, num_particles={self.num_particles})"


def flow_kl(q, p, z):
    """One-sample KL(q || p) for a flow ``q`` (a base distribution pushed through transforms), or ``None``.

    With ``z = f(z0)``, ``z0 ~ q0``, two unbiased one-sample estimates of the KL are

    * ``mc = log q0(z0) - sum log|det J| - log p(z)``, i.e. ``log q(z) - log p(z)``, and
    * ``mc + cv`` with the zero-mean control variate ``cv = KL(q0 || p) - (log q0(z0) - log p(z0))``
      (the base's KL analytic, only the flow's correction sampled), which is exact for an
      identity flow:

    .. math:: \\mathrm{KL}(q \\| p) = \\mathrm{KL}(q_0 \\| p) - \\mathbb E\\Big[\\sum_k \\log|\\det J_{f_k}|\\Big]
              - \\mathbb E\\big[\\log p(z) - \\log p(z_0)\\big].

    Neither is best everywhere: near the identity ``mc + cv`` removes the variance that ``mc``
    carries in its prior term (several nats of ELBO on MNIST, BENCHMARKS.md section 6), but when
    the base is wide and the flow contracts it (coupling and IAF layers can), ``cv`` holds
    ``|z0|^2`` terms whose variance swamps everything: on the seed experiment such batches gave
    validation "ELBOs" of +1400 and wrecked training. So the estimate is ``mc + c * cv`` with the
    variance-minimising coefficient ``c = -Cov(mc, cv) / Var(cv)`` computed on the batch (detached,
    clipped to [0, 1]: between the two unbiased estimators above). Estimating ``c`` on the same
    draws adds a bias of order 1 / (number of draws), the usual price of a fitted control variate.

    ``z0`` and the log-determinants are read from the transforms' caches (no inverse is computed;
    planar and radial flows have none). Returns ``None`` when ``q`` is not a flow or its base has
    no analytic KL to ``p``.
    """
    transforms = getattr(q, "transforms", None)
    if not transforms or q.base_dist.event_shape != p.event_shape or not _is_real(p.support):
        # a prior on a constrained support: q's transforms then include biject_to(support), and the
        # base's KL to p is not defined (torch answers infinity for Normal || Gamma)
        return None
    try:
        base_kl = kl_divergence(q.base_dist, p)
    except NotImplementedError:
        return None
    # the same walk as TransformedDistribution.log_prob: back from z through each transform
    event_dim = len(q.event_shape)
    log_det = 0.0
    y = z
    for t in reversed(q.transforms):
        x = t.inv(y)
        event_dim += t.domain.event_dim - t.codomain.event_dim
        log_det = log_det + _sum_rightmost(t.log_abs_det_jacobian(x, y), event_dim - t.domain.event_dim)
        y = x
    log_p_z0 = p.log_prob(y)
    mc = q.base_dist.log_prob(y) - log_det - p.log_prob(z)
    cv = base_kl - (q.base_dist.log_prob(y) - log_p_z0)
    return mc + control_variate_coefficient(mc, cv) * cv


def _is_real(support) -> bool:
    while isinstance(support, torch.distributions.constraints.independent):
        support = support.base_constraint
    return type(support) is type(torch.distributions.constraints.real)


def control_variate_coefficient(estimate: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """``c`` in [0, 1] minimising the variance of ``estimate + c * control`` over these draws (detached).

    With fewer than two draws, or a control variate without variance, ``c = 1``.
    """
    e, c = estimate.detach().reshape(-1), control.detach().reshape(-1)
    if e.numel() < 2:
        return torch.ones((), dtype=e.dtype, device=e.device)
    dc = c - c.mean()
    var = dc.pow(2).mean()
    if not var > 0:
        return torch.ones((), dtype=e.dtype, device=e.device)
    return (-((e - e.mean()) * dc).mean() / var).clamp(0.0, 1.0)


def _total(terms: list):
    """The sum of a list of tensors, ``None`` for an empty list (no zero tensors enter the graph)."""
    return sum(terms[1:], terms[0]) if terms else None


def _per_datapoint(local, global_, batch_size: int, data_size: int, like: torch.Tensor) -> torch.Tensor:
    """Average over particles; local terms ``(P, B)`` per datapoint, global terms ``(P,)`` shared by all N datapoints.

    Either may be ``None`` (no such terms): this runs every step, and a model without global
    latents should not pay for adding zeros.
    """
    parts = []
    if local is not None:
        # the mean over particles and the sum over the batch in one reduction: sum / (P * B)
        parts.append(local.sum() / (local.shape[0] * batch_size))
    if global_ is not None:
        parts.append(global_.mean(0) / data_size)
    return _total(parts) if parts else like.new_zeros(())


class ELBO(TraceObjective):
    """The evidence lower bound, with analytic KL wherever it exists, beta weighting, KL warm-up and free bits.

    The loss is ``-(E_q[log p(x|z)] - beta_t * KL) / datapoint`` where

    * the KL of a latent site is analytic when ``torch.distributions.kl_divergence`` knows the
      (guide, prior) pair (a diagonal Normal guide and Normal prior), and the Monte Carlo
      estimate ``log q(z) - log p(z)`` otherwise (flows);
    * ``beta_t = beta * min(1, (epoch + 1) / (warmup_epochs + 1))`` rises linearly over the first
      ``warmup_epochs`` epochs (warm-up), then stays at ``beta``;
    * with ``free_bits = lam > 0``, each latent dimension's batch-average KL is clamped from below
      at ``lam`` nats (per site when the KL is not per-dimension analytic: ``lam * dim``), so the
      optimizer gains nothing by pushing it further down (Kingma et al. 2016).

    ``last_metrics`` holds the unmodified ELBO, reconstruction and KL (tensors, detached).
    """

    def __init__(
        self,
        num_particles: int = 1,
        analytic_kl: bool = True,
        beta: float = 1.0,
        warmup_epochs: int = 0,
        free_bits: float = 0.0,
        classification_weight: float = 0.0,
    ):
        super().__init__(num_particles=num_particles)
        if beta < 0 or warmup_epochs < 0 or free_bits < 0 or classification_weight < 0:
            raise ConfigError("beta, warmup_epochs, free_bits and classification_weight must be non-negative")
        self.analytic_kl, self.beta, self.warmup_epochs, self.free_bits = analytic_kl, beta, warmup_epochs, free_bits
        # M2's alpha (Kingma et al. 2014, eq. 9): + alpha * log q(y_n | x_n) on the labelled points, so
        # that the classifier q(y | x) also learns from the labels and not only from the unlabelled bound
        self.classification_weight = classification_weight
        self._no_analytic: set = set()

    @property
    def beta_now(self) -> float:
        return self.beta * min(1.0, (self.epoch + 1) / (self.warmup_epochs + 1))

    def _kl(self, msite, gsite):
        """Per-site KL: ``(value (P, B) or (P,), per-dim batch-mean KL or None, is_local, dim)``."""
        key = (type(gsite["fn"]), type(msite["fn"]))
        if self.analytic_kl and key not in self._no_analytic:
            try:
                kl = kl_divergence(gsite["fn"], msite["fn"])
            except NotImplementedError:
                self._no_analytic.add(key)
            else:
                value, local = reduce_site(gsite, kl)
                per_dim = None
                if self.free_bits and hasattr(gsite["fn"], "base_dist") and hasattr(msite["fn"], "base_dist"):
                    try:
                        per_dim = kl_divergence(gsite["fn"].base_dist, msite["fn"].base_dist)
                    except NotImplementedError:
                        per_dim = None
                return value, per_dim, local
        if self.analytic_kl:
            kl = flow_kl(gsite["fn"], msite["fn"], gsite["value"])
            if kl is not None:
                value, local = reduce_site(gsite, kl)
                return value, None, local
        log_q, local = reduce_site(gsite, gsite["fn"].log_prob(gsite["value"]))
        log_p, _ = reduce_site(msite, msite["fn"].log_prob(msite["value"]))
        return log_q - log_p, None, local

    def loss(self, model_trace, guide_trace):
        recon_l, kl_l, kl_g, penalties = [], [], [], []
        batch_size = data_size = None
        for _name, msite in model_trace.nodes.items():
            if msite["type"] != "sample" or not msite["is_observed"]:
                continue
            value, local = reduce_site(msite, msite["fn"].log_prob(msite["value"]))
            recon_l.append(value)
            if local and batch_size is None:
                batch_size = value.shape[-1]
                data_size = next(plate_full_size(f) for f in msite["cond_indep_stack"] if f.name == "data")
        if batch_size is None:
            trace_terms(model_trace, guide_trace)  # raises the explanatory error
        for name in latent_sites(model_trace):
            msite, gsite = model_trace.nodes[name], guide_trace.nodes[name]
            value, per_dim, local = self._kl(msite, gsite)
            (kl_l if local else kl_g).append(value)
            if self.free_bits and local:
                if per_dim is not None:
                    # batch-average KL of each latent dimension, clamped at lam nats
                    dims = per_dim.reshape(-1, per_dim.shape[-1]) if per_dim.dim() > 1 else per_dim.reshape(1, -1)
                    mean = dims.mean(0)
                    penalties.append((mean.clamp(min=self.free_bits) - mean).sum())
                else:
                    lam = self.free_bits * math.prod(gsite["fn"].event_shape)
                    mean = value.mean()
                    penalties.append(mean.clamp(min=lam) - mean)
        for name in auxiliary_sites(guide_trace):
            # e.g. an AutoNormal's "<name>_unconstrained": its log-density is part of log q
            gsite = guide_trace.nodes[name]
            value, local = reduce_site(gsite, gsite["fn"].log_prob(gsite["value"]))
            (kl_l if local else kl_g).append(value)
        recon = _total(recon_l)
        beta = self.beta_now
        if beta == 1.0 and not penalties and not kl_g and len(kl_l) == 1 and kl_l[0].shape == recon.shape:
            # the plain ELBO of local latents, every step of a VAE: one subtraction per datapoint and one
            # reduction, as a hand-written loss has it (two reductions and divisions fewer, forward and backward)
            n = recon.shape[0] * batch_size
            loss = (kl_l[0] - recon).sum() / n
            with torch.no_grad():
                rec_pd, kl_pd = recon.sum() / n, kl_l[0].sum() / n
            self.last_metrics = {"elbo": rec_pd - kl_pd, "reconstruction": rec_pd, "kl": kl_pd}
            return loss
        rec_pd = _per_datapoint(recon, None, batch_size, data_size, recon)
        kl_pd = _per_datapoint(_total(kl_l), _total(kl_g), batch_size, data_size, recon)
        # beta = 1 (the plain ELBO) costs no multiplication: each tensor op of the loss runs twice a step (forward, backward)
        loss = kl_pd - rec_pd if beta == 1.0 else beta * kl_pd - rec_pd
        if penalties:
            # the clamp replaces KL by max(KL, lam): add the difference, weighted like the KL
            loss = loss + beta * sum(penalties)
        rec_pd, kl_pd = rec_pd.detach(), kl_pd.detach()
        self.last_metrics = {"elbo": rec_pd - kl_pd, "reconstruction": rec_pd, "kl": kl_pd}
        return loss

    def enumerated_loss(self, model, guide, x, labels, data_size: int) -> torch.Tensor:
        """The ELBO with the discrete latent summed out (Monte Carlo KL for the continuous latents: the
        enumerated copies' terms are combined per datapoint, so the analytic KL is not separated)."""
        from pyro_gen.infer.enumerate import enumerated_elbo

        if self.beta != 1.0 or self.free_bits or self.warmup_epochs:
            raise ConfigError(
                "beta, warmup_epochs and free_bits weigh the KL term, which a model with an enumerated discrete latent "
                "does not separate: leave them at their defaults for such a model"
            )
        elbo, global_term = enumerated_elbo(model, guide, x, labels, self.num_particles)
        bound = elbo.mean() + global_term / data_size
        self.last_metrics = {"elbo": bound.detach()}
        loss = -bound
        if self.classification_weight and labels is not None and bool((labels >= 0).any()):
            known = labels.to(x.device) >= 0
            log_q = guide.discrete_log_probs(x[known]).gather(1, labels.to(x.device)[known][:, None])[:, 0]
            # per datapoint of the batch, like the bound: the labelled points' share of the batch carries it
            classification = log_q.sum() / len(x)
            self.last_metrics["classification"] = classification.detach()
            loss = loss - self.classification_weight * classification
        return loss

    def model_enumerated_loss(self, model, guide, x, data_size: int, **kwargs) -> torch.Tensor:
        """The ELBO with the model's enumerated latents summed out exactly (Monte Carlo in the continuous ones:
        a continuous latent whose prior reads a discrete one has no separate KL)."""
        from pyro_gen.infer.enumerate import model_enumerated_terms

        if self.beta != 1.0 or self.free_bits or self.warmup_epochs:
            raise ConfigError(
                "beta, warmup_epochs and free_bits weigh the KL term, which a model with enumerated discrete latents "
                "does not separate: leave them at their defaults for such a model"
            )
        t = model_enumerated_terms(model, guide, x, self.num_particles, data_size=data_size, **kwargs)
        bound = t.log_weight.mean(0).sum() / t.batch_size + (t.log_prior_global - t.log_q_global).mean() / data_size
        self.last_metrics = {"elbo": bound.detach()}
        return -bound

    def validation_loss(self, model, guide, x, **kwargs) -> torch.Tensor:
        """The negative ELBO per datapoint with beta = 1 and no free bits, whatever the schedule says."""
        self(model, guide, x, **kwargs)
        return -self.last_metrics["elbo"]


class IWAE(TraceObjective):
    """The importance-weighted bound of Burda et al. (2016) with ``num_particles`` samples per datapoint.

    ``log (1/K) sum_k p(x, z_k) / q(z_k | x)`` for the local latents; global latents (shared by all
    datapoints) enter as their ordinary ELBO terms, averaged over the K draws.
    """

    def __init__(self, num_particles: int = 5):
        super().__init__(num_particles=num_particles)

    def loss(self, model_trace, guide_trace):
        t = trace_terms(model_trace, guide_trace)
        k = t.log_weight.shape[0]
        bound_local = torch.logsumexp(t.log_weight, dim=0) - math.log(k)
        glob = t.log_prior_global - t.log_q_global
        bound = bound_local.sum() / t.batch_size + glob.mean() / t.data_size
        self.last_metrics = {"iwae_bound": bound.detach(), "elbo": t.log_weight.mean(0).sum().detach() / t.batch_size}
        return -bound

    def model_enumerated_loss(self, model, guide, x, data_size: int, **kwargs) -> torch.Tensor:
        """The importance-weighted bound with the model's enumerated latents summed out exactly in each weight."""
        from pyro_gen.infer.enumerate import model_enumerated_terms

        t = model_enumerated_terms(model, guide, x, self.num_particles, data_size=data_size, **kwargs)
        bound_local = torch.logsumexp(t.log_weight, dim=0) - math.log(t.log_weight.shape[0])
        bound = bound_local.sum() / t.batch_size + (t.log_prior_global - t.log_q_global).mean() / data_size
        self.last_metrics = {"iwae_bound": bound.detach()}
        return -bound

    def enumerated_loss(self, model, guide, x, labels, data_size: int) -> torch.Tensor:
        """``log sum_k (1/P) sum_p w_pk`` per unlabelled point (``w_p,label`` for a labelled one): exact in ``y``."""
        from pyro_gen.infer.enumerate import copy_terms

        terms, owner, _, _ = copy_terms(model, guide, x, labels, self.num_particles)
        per_copy = torch.logsumexp(terms.log_weight, dim=0) - math.log(terms.log_weight.shape[0])  # (C,)
        # log-sum-exp of each datapoint's copies: a labelled point has one copy, an unlabelled one K
        peak = torch.full((len(x),), -math.inf, dtype=per_copy.dtype, device=per_copy.device)
        peak = peak.scatter_reduce(0, owner, per_copy.detach(), reduce="amax")
        total = torch.zeros_like(peak).index_add(0, owner, (per_copy - peak[owner]).exp())
        bound_local = peak + total.log()
        glob = (terms.log_prior_global - terms.log_q_global).mean()
        bound = bound_local.mean() + glob / data_size
        self.last_metrics = {"iwae_bound": bound.detach()}
        return -bound


class PyroELBO(TraceObjective):
    """Use any Pyro ELBO (``Trace_ELBO``, ``TraceMeanField_ELBO``, ``RenyiELBO``, ...) as an objective.

    The loss is ``elbo.differentiable_loss(model, guide, x, ...)`` divided by the batch size.
    """

    def __init__(self, elbo):
        super().__init__(num_particles=getattr(elbo, "num_particles", 1))
        self.elbo = elbo

    def __call__(self, model, guide, x, **kwargs):
        loss = self.elbo.differentiable_loss(model, guide, x, **kwargs)
        return loss / (kwargs.get("data_size") or x.shape[0])


class MaximumLikelihood(TraceObjective):
    """The negative log-likelihood per datapoint of a model with no latent variables (an explicit density).

    Explicit-density models (a PixelCNN, a normalizing flow observed at ``x``) have an exact
    ``log p(x)``: they are fitted by maximum likelihood, without a guide (``Trainer(model, None,
    objective=MaximumLikelihood())``). The loss is ``-(1/B) sum_i log p(x_i)`` over the observed sites
    of the data plate, plus the log-density of any global observed / factor site divided by the
    dataset size. A model that samples a latent site has no exact likelihood here: it is refused,
    naming the site (fit it with a guide and the ``elbo`` objective).
    """

    needs_guide = False

    def __init__(self):
        super().__init__(num_particles=1)

    def __call__(self, model, guide, x, **kwargs) -> torch.Tensor:
        if guide is not None:
            raise ConfigError("maximum likelihood fits a model without latent variables: pass guide=None")
        data_size = kwargs.pop("data_size", None) or len(x)
        model_trace = poutine.trace(model).get_trace(x, **kwargs)
        local, global_ = [], []
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if not site["is_observed"]:
                raise ConfigError(
                    f"maximum likelihood needs an exact log p(x), but the model samples the latent {name!r}; "
                    "fit it with a guide and the 'elbo' objective"
                )
            values, is_local = reduce_site(site, site["fn"].log_prob(site["value"]))
            (local if is_local else global_).append(values)
        loss = -_per_datapoint(_total(local), _total(global_), len(x), data_size, x)
        self.last_metrics = {"nll": loss.item()}
        return loss

    def validation_loss(self, model, guide, x, **kwargs) -> torch.Tensor:
        return self(model, guide, x, **kwargs)


def as_objective(objective) -> TraceObjective:
    """Accept a :class:`TraceObjective`, a Pyro ELBO instance, or a callable over traces."""
    from pyro.infer import ELBO as _PyroELBOBase

    if isinstance(objective, TraceObjective):
        return objective
    if isinstance(objective, _PyroELBOBase):
        return PyroELBO(objective)
    if callable(objective):
        return TraceObjective(objective)
    raise ConfigError(f"an objective must be a TraceObjective, a Pyro ELBO or a callable over traces; got {objective!r}")


_OBJECTIVES = {"elbo": ELBO, "iwae": IWAE, "mle": MaximumLikelihood}


def objective_names() -> list[str]:
    return sorted(_OBJECTIVES)


def make_objective(name: str = "elbo", **options) -> TraceObjective:
    """Build a built-in objective by name (``elbo``, ``iwae``, ``mle``) with its options."""
    try:
        cls = _OBJECTIVES[name]
    except KeyError:
        raise ConfigError(f"unknown objective {name!r}; choose one of {objective_names()}") from None
    try:
        return cls(**options)
    except TypeError as e:
        raise ConfigError(f"objective {name!r}: {e}") from None
