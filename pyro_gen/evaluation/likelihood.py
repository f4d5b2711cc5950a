"""Importance-sampled log-likelihood and the ELBO family of scores, for any model/guide pair.

For each datapoint,

.. math:: \\log p(x) \\approx \\log \\frac{1}{K} \\sum_{k=1}^K \\frac{p(x, z_k)}{q(z_k \\mid x)}, \\quad z_k \\sim q(z \\mid x),

where ``log q`` is the guide's full log-density (a flow's includes its log-det-Jacobian).
The K samples are drawn vectorized, in chunks of at most ``chunk_size`` (sample,
datapoint) pairs, and combined with a running ``logsumexp``: memory is bounded by the
chunk, not by K, and no weight is exponentiated outside ``logsumexp``. The same draws
give the ELBO (mean log-weight), its reconstruction and KL parts, and the posterior
means used for active units (Burda et al. 2016: dimension u is active when
``Cov_x(E_q[z_u | x]) > 0.01``). Each ``E_q[z | x]`` is a mean of K draws, so the spread of those
means over datapoints holds the draws' noise too (``Var_q[z_u | x] / K``, about 0.02 for a collapsed
unit at K = 50: every unit would pass the threshold); the noise is estimated from the same draws
and subtracted, so the count is of ``Cov_x(E_q[z_u | x])`` itself.

Models with global latents are scored at the guide's point estimate of them (its
median), i.e. ``log p(x | theta_hat)`` with the local latents marginalized.

**Sharded** (under ``torchrun``, :mod:`pyro_gen.distributed`): the datapoints fall into the same blocks as
in one process (``max(1, chunk_size // min(K, chunk_size))`` datapoints each); rank ``r`` of ``W`` draws
blocks ``r, r + W, ...`` and the per-datapoint results are gathered, so every rank returns the whole
result. So that the split cannot change the draws, each block's are then seeded from ``(seed, block's first
datapoint)`` (``block_seeds``); one process with ``block_seeds=True`` gives the same numbers. Without it
(the default in one process) the draws are one stream over the blocks in order, as in every release
before: single-process results and the scores of existing run directories are unchanged.

Reference: Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders, ICLR 2016.
"""

import contextlib
import hashlib
import math
from dataclasses import dataclass, field

import pyro
import pyro.poutine as poutine
import torch

from pyro_gen import distributed
from pyro_gen.errors import ConfigError, SiteMismatchError
from pyro_gen.infer.traces import check_sites, get_traces, latent_sites, trace_terms
from pyro_gen.models.checks import check_data_tensor
from pyro_gen.rng import seeded


@dataclass
class LikelihoodResult:
    """Per-datapoint scores (tensors of shape ``(N,)``) and the protocol that produced them."""

    log_px: torch.Tensor
    elbo: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor
    posterior_mean: torch.Tensor
    num_samples: int
    chunk_size: int
    protocol: dict = field(default_factory=dict)
    #: per datapoint and dimension, the variance of :attr:`posterior_mean` as an estimate (the draws'
    #: sample variance over K); ``None`` where it was not recorded
    posterior_mean_noise: torch.Tensor | None = None

    @property
    def active_units(self) -> int | None:
        """Latent dimensions whose posterior mean varies across datapoints by more than 0.01 (variance);
        ``None`` where no posterior means were recorded (a model with an enumerated discrete latent)."""
        if self.posterior_mean.shape[-1] == 0:
            return None
        if len(self.posterior_mean) < 2:
            return 0
        if self.posterior_mean_noise is None:
            return None  # one draw per point: its spread cannot be told from the posterior means'
        between = self.posterior_mean.var(0, unbiased=True) - self.posterior_mean_noise.mean(0)
        return int((between > 0.01).sum())

    def summary(self) -> dict:
        """Means over datapoints, in nats per datapoint, with the protocol."""
        return {
            "nll": -self.log_px.mean().item(),
            "elbo": self.elbo.mean().item(),
            "reconstruction": self.reconstruction.mean().item(),
            "kl": self.kl.mean().item(),
            "active_units": self.active_units,
            "nll_samples": self.num_samples,
            "n": len(self.log_px),
            "protocol": dict(self.protocol),
        }


def _with_fixed_globals(model, guide, x):
    """Condition model and guide on the guide's point estimate of global latents (if any)."""
    estimate = getattr(guide, "global_point_estimate", None)
    values = estimate(x) if estimate is not None else {}
    if not values:
        return model, guide
    return poutine.condition(model, data=values), poutine.condition(guide, data=values)


@contextlib.contextmanager
def _drawing(device: torch.device, seed: int | None):
    """Module-local parameters, Pyro's argument checks off and, with a seed, a forked and seeded RNG."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(pyro.settings.context(module_local_params=True))
        stack.enter_context(pyro.validation_enabled(False))
        if seed is not None:
            stack.enter_context(seeded(seed, device))
        yield


def _blocks(n: int, num_samples: int, chunk_size: int) -> list[slice]:
    """The blocks of datapoints drawn together: as many as one chunk of ``min(num_samples, chunk_size)`` particles allows.

    A chunk is filled with as many particles as possible, then datapoints: the encoder and the guide's flow
    parameters are computed once per datapoint and chunk, so fewer chunks is faster. The partition does
    not depend on the number of ranks.
    """
    per_chunk = min(num_samples, chunk_size)
    batch = max(1, min(n, chunk_size // per_chunk))
    return [slice(start, min(start + batch, n)) for start in range(0, n, batch)]


def _block_draws(model, guide, xb: torch.Tensor, num_samples: int, chunk_size: int, check: bool, yb=None):
    """Yield ``(particles, model_trace, guide_trace)`` for every chunk of the ``num_samples`` draws for the block ``xb``.

    ``particles`` is a slice: which of the draws the chunk's traces hold (vectorized in a ``"particles"`` plate).
    """
    per_chunk = min(num_samples, chunk_size)
    m, g = _with_fixed_globals(model, guide, xb)
    done = 0
    while done < num_samples:
        k = min(per_chunk, num_samples - done)
        model_trace, guide_trace = get_traces(m, g, xb, num_particles=k, **({} if yb is None else {"y": yb}))
        if done == 0 and check:
            check_sites(model_trace, guide_trace)
        yield slice(done, done + k), model_trace, guide_trace
        done += k


def block_seed(seed: int, start: int) -> int:
    """The seed of the draws for the block whose first datapoint is ``start`` (``block_seeds=True``)."""
    digest = hashlib.sha256(f"pyro_gen-is-block:{seed}:{start}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _device(model) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _check_inputs(model, x, num_samples, chunk_size) -> torch.Tensor:
    """The entry checks of :func:`log_likelihood`: ``x`` shaped ``(N, *model.data_shape)`` in the model's dtype, finite.

    ``x`` may live on another device than the model (it is moved batch by batch), but not on ``meta``.
    """
    for name, value in (("num_samples", num_samples), ("chunk_size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    ref = next(iter(model.parameters()), None)
    if ref is None:
        ref = next(iter(model.buffers()), None)
    data_shape = getattr(model, "data_shape", None)
    return check_data_tensor(x, "x", data_shape, dtype=None if ref is None else ref.dtype)


@torch.no_grad()
def log_likelihood(
    model,
    guide,
    x: torch.Tensor,
    num_samples: int = 1000,
    chunk_size: int = 2**15,
    seed: int | None = 0,
    progress: bool = False,
    weights_fn=None,
    shard: bool | None = None,
    block_seeds: bool | None = None,
    y: torch.Tensor | None = None,
) -> LikelihoodResult:
    """Importance-sampled ``log p(x)`` per datapoint with ``num_samples`` draws from the guide.

    :param x: data ``(N, *data_shape)``, a tensor of the model's dtype (moved to the model's device batch by batch).
    :raises DataError: ``x`` is not such a tensor, is empty or has NaN / inf (see
        :func:`~pyro_gen.models.checks.check_data_tensor`).
    :param num_samples: K, importance samples per datapoint.
    :param chunk_size: at most this many (sample, datapoint) pairs per vectorized pass.
    :param seed: seed for the draws (``None``: use the current random state).
    :param weights_fn: called as ``weights_fn(data, lw)`` once all K draws of a block of
        datapoints ``x[data]`` (a slice) are made, with their log-weights ``lw`` of shape
        ``(K, len(block))``: the estimate's own draws, e.g. for per-datapoint PSIS k-hat. A block
        holds at most ``max(chunk_size, K)`` log-weights, so memory stays bounded. Sharded, the blocks' weights
        are gathered round by round and every rank calls ``weights_fn`` on every block, in order.
    :param shard: split the blocks of datapoints over the ranks of the process group and gather the results
        (every rank must call); ``None``: when a process group of several ranks is initialized (torchrun).
    :param y: class labels, one per datapoint, for a model conditioned on them (``num_classes``): the
        estimate is then ``log p(x | y)``. A model with a discrete latent has it summed out exactly
        (:func:`~pyro_gen.infer.enumerate.enumerated_log_likelihood`), ``y`` not given.
    :param block_seeds: seed each block's draws from ``(seed, its first datapoint)``, so that they do not
        depend on how the blocks are shared out; ``None``: exactly when sharded. Off, the draws are one
        stream from ``seed`` over the blocks in order (the single-process numbers of every earlier release).
    """
    _check_inputs(model, x, num_samples, chunk_size)
    if getattr(model, "enumerated_latents", None):
        return _model_enumerated(model, guide, x, num_samples, chunk_size, seed)
    if getattr(model, "discrete_latents", None):
        return _enumerated(model, guide, x, num_samples, chunk_size, seed)
    if getattr(model, "num_classes", None):
        y = model.check_labels(y, len(x))
    elif y is not None:
        raise ConfigError("y (class labels) is for a model conditioned on them (LatentModel(..., num_classes=K)); this model takes none")
    device = _device(model)
    shard = distributed.active() if shard is None else bool(shard and distributed.active())
    rank, world = (distributed.rank(), distributed.world_size()) if shard else (0, 1)
    block_seeds = shard if block_seeds is None else block_seeds
    if block_seeds and seed is None:  # one base seed for every rank, from the current random state of rank 0
        seed = distributed.broadcast_object(int(torch.randint(0, 2**62, (1,))))
    acc = torch.full((len(x),), -math.inf, device=device)
    sums = torch.zeros(3, len(x), device=device)
    mean_sum = square_sum = None
    blocks = _blocks(len(x), num_samples, chunk_size)
    mine = [i for i in range(len(blocks)) if i % world == rank]
    with _drawing(device, seed):
        from tqdm.auto import tqdm

        first = True
        for i in tqdm(range(0, len(blocks), world), disable=not (progress and rank == 0), desc="log-likelihood", leave=False):
            lw_block = None
            if i + rank < len(blocks):
                data = blocks[i + rank]
                if block_seeds:
                    torch.manual_seed(block_seed(seed, data.start))
                xb = x[data].to(device)
                yb = None if y is None else y[data].to(device)
                b = len(xb)
                for particles, model_trace, guide_trace in _block_draws(model, guide, xb, num_samples, chunk_size, first, yb):
                    first = False
                    k = particles.stop - particles.start
                    t = trace_terms(model_trace, guide_trace)
                    lw = t.log_weight
                    acc[data] = torch.logaddexp(acc[data], torch.logsumexp(lw, 0))
                    sums[:, data] += torch.stack([lw.sum(0), t.log_likelihood.sum(0), (t.log_q_local - t.log_prior_local).sum(0)])
                    z, z2 = _local_values(model_trace, guide_trace, k, b)
                    if mean_sum is None:
                        mean_sum, square_sum = z.new_zeros((len(x), z.shape[-1])), z.new_zeros((len(x), z.shape[-1]))
                    mean_sum[data] += z
                    square_sum[data] += z2
                    if weights_fn is not None:
                        # a block's particles come in consecutive chunks, so K*b values suffice
                        if particles.start == 0:
                            lw_block = lw.new_empty((num_samples, b))
                        lw_block[particles] = lw
            if weights_fn is None:
                continue
            if world == 1:
                weights_fn(blocks[i], lw_block)
                continue
            # every rank's block of this round, to every rank: weights_fn sees every block, in order
            width = blocks[0].stop - blocks[0].start
            padded = torch.zeros((num_samples, width), dtype=acc.dtype, device=device)
            if lw_block is not None:
                padded[:, : lw_block.shape[1]] = lw_block
            for w, got in enumerate(distributed.all_gather(padded)):
                if i + w < len(blocks):
                    data = blocks[i + w]
                    weights_fn(data, got[:, : data.stop - data.start])
    if shard:
        acc, sums, mean_sum, square_sum = _gather_rows(acc, sums, mean_sum, square_sum, [blocks[i] for i in mine], len(x))
    mean = mean_sum / num_samples
    # the sample variance of each point's K draws over K: the noise in its posterior-mean estimate
    noise = ((square_sum - num_samples * mean.square()) / (num_samples - 1)).clamp(min=0) / num_samples if num_samples > 1 else None
    out = [acc - math.log(num_samples), sums[0] / num_samples, sums[1] / num_samples, sums[2] / num_samples, mean]
    protocol = {
        "estimator": f"importance sampling: log (1/K) sum_k p(x, z_k) / q(z_k | x), K={num_samples} draws from the guide per point",
        "num_samples": num_samples,
        "chunk_size": chunk_size,
        "seed": seed,
        "datapoints": len(x),
        "global_latents": "at the guide's point estimate: log p(x | theta_hat)" if getattr(model, "global_latents", None) else "none",
        "threads": torch.get_num_threads(),
    }
    if shard:
        protocol["ranks"] = world
    if block_seeds:
        protocol["draw_seeding"] = "per block of datapoints, from (seed, the block's first datapoint): the same for any number of ranks"
    return LikelihoodResult(*(t.cpu() for t in out), num_samples, chunk_size, protocol, None if noise is None else noise.cpu())


def _model_enumerated(model, guide, x, num_samples: int, chunk_size: int, seed) -> LikelihoodResult:
    """``log p(x)`` of a model that enumerates its discrete latents (``enumerate='parallel'``): each importance
    weight has them summed out exactly (:func:`~pyro_gen.infer.enumerate.model_enumerated_terms`).

    The ELBO is the mean log-weight over the same K draws; reconstruction and KL are not separated (NaN).
    """
    from pyro_gen.infer.enumerate import model_enumerated_terms

    device = _device(model)
    names = [lat.name for lat in model.enumerated_latents]
    # how many joint values the enumeration spans, to size the chunks: a fixed prior says; a callable one
    # (read from its parents) is assumed to take 16
    values = math.prod(
        lat.prior.enumerate_support().shape[0] if isinstance(lat.prior, torch.distributions.Distribution) else 16
        for lat in model.enumerated_latents
    )
    chunk = max(1, min(num_samples, chunk_size // (values * len(x))))
    log_sum, weight_sum = None, None
    with _drawing(device, seed):
        xd = x.to(device)
        for start in range(0, num_samples, chunk):
            lw = model_enumerated_terms(model, guide, xd, min(chunk, num_samples - start)).log_weight
            part = lw.logsumexp(0)
            log_sum = part if log_sum is None else torch.logaddexp(log_sum, part)
            weight_sum = lw.sum(0) if weight_sum is None else weight_sum + lw.sum(0)
    log_px, elbo = log_sum - math.log(num_samples), weight_sum / num_samples
    nan = torch.full_like(log_px, math.nan)
    protocol = {
        "estimator": (
            f"log (1/K) sum_k sum_y p(x, y, z_k) / q(z_k | x): the enumerated latents {names} summed exactly in each weight, "
            f"K={num_samples} draws of the others"
        ),
        "num_samples": num_samples,
        "seed": seed,
        "datapoints": len(x),
        "kl_and_reconstruction": "not separated for a model with enumerated discrete latents (NaN)",
        "threads": torch.get_num_threads(),
    }
    return LikelihoodResult(
        log_px.cpu(), elbo.cpu(), nan.cpu(), nan.cpu(), log_px.new_zeros((len(x), 0)).cpu(), num_samples, chunk_size, protocol
    )


def _enumerated(model, guide, x, num_samples: int, chunk_size: int, seed) -> LikelihoodResult:
    """``log p(x)`` of a model whose discrete latent is summed out: exact in it, importance-sampled in the rest.

    The ELBO is the enumerated bound (one draw of the continuous latents per value); the
    reconstruction and KL terms are not separated for such a model and are reported as NaN.
    """
    from pyro_gen.infer.enumerate import enumerated_elbo, enumerated_log_likelihood

    device = _device(model)
    k = model.discrete_latents[0].num_values
    chunk = max(1, min(num_samples, chunk_size // max(1, k * len(x))))
    with _drawing(device, seed):
        xd = x.to(device)
        log_px = enumerated_log_likelihood(model, guide, xd, num_samples, chunk=chunk)
        elbo, _ = enumerated_elbo(model, guide, xd)
    nan = torch.full_like(log_px, math.nan)
    no_means = log_px.new_zeros((len(x), 0))  # active units are not defined here: reported as None
    protocol = {
        "estimator": (
            f"log sum_y (1/K) sum_k p(x, y, z_k) / q(z_k | x, y): the discrete latent "
            f"{model.discrete_latents[0].name!r} summed exactly, K={num_samples} draws of the others per value"
        ),
        "num_samples": num_samples,
        "seed": seed,
        "datapoints": len(x),
        "kl_and_reconstruction": "not separated for a model with an enumerated discrete latent (NaN)",
        "threads": torch.get_num_threads(),
    }
    return LikelihoodResult(log_px.cpu(), elbo.cpu(), nan.cpu(), nan.cpu(), no_means.cpu(), num_samples, chunk_size, protocol)


def _gather_rows(acc, sums, mean_sum, square_sum, owned: list[slice], n: int):
    """Every rank's rows (the blocks it drew) on every rank: one sum over the ranks, other rows being zero."""
    mask = torch.zeros(n, dtype=torch.bool, device=acc.device)
    for data in owned:
        mask[data] = True
    dim = distributed.broadcast_object(None if mean_sum is None else mean_sum.shape[-1])  # rank 0 drew block 0
    if mean_sum is None:
        mean_sum, square_sum = acc.new_zeros((n, dim)), acc.new_zeros((n, dim))
    acc = torch.where(mask, acc, torch.zeros_like(acc))  # -inf elsewhere would poison the sum
    buffer = torch.cat([acc[None], sums, mean_sum.T, square_sum.T]).contiguous()
    buffer = distributed.all_reduce_(buffer * mask)
    return buffer[0], buffer[1:4], buffer[4 : 4 + dim].T.contiguous(), buffer[4 + dim :].T.contiguous()


def log_weights(
    model, guide, x: torch.Tensor, num_samples: int = 1000, chunk_size: int = 2**15, seed: int | None = 0, **sharding
) -> torch.Tensor:
    """The importance log-weights ``log p(x_n, z_s) - log q(z_s | x_n)``, ``z_s ~ q(z | x_n)``: ``(num_samples, N)``.

    The draws of :func:`log_likelihood` with the same seed (``logsumexp`` over dim 0 minus
    ``log num_samples`` is its ``log_px``), collected by its ``weights_fn``; e.g. for PSIS
    diagnostics (:mod:`pyro_gen.analysis.psis`). ``sharding``: ``shard`` / ``block_seeds`` of :func:`log_likelihood`.
    """
    blocks = []
    log_likelihood(model, guide, x, num_samples, chunk_size, seed, weights_fn=lambda data, lw: blocks.append(lw.cpu()), **sharding)
    return torch.cat(blocks, -1)  # the blocks come in the order of the datapoints


def _local_values(model_trace, guide_trace, k: int, b: int) -> torch.Tensor:
    """Sums over the k particles of every local latent's value and of its square, flattened: two ``(b, D)``."""
    parts = []
    for name in latent_sites(model_trace):
        site = guide_trace.nodes.get(name)
        if site is None:
            raise SiteMismatchError(f"the guide does not sample the model's latent site {name!r}")
        if not any(f.name == "data" for f in site["cond_indep_stack"]):
            continue
        v = site["value"]
        v = v.reshape((k, b, -1)) if k > 1 else v.reshape((1, b, -1))
        parts.append(v)
    values = torch.cat(parts, -1)
    return values.sum(0), values.square().sum(0)


def evaluate(
    model, guide, x: torch.Tensor, num_samples: int = 1000, chunk_size: int = 2**15, seed: int = 0, progress: bool = False, y=None
) -> dict:
    """Test scores in nats per datapoint: ``nll``, ``elbo``, ``reconstruction``, ``kl``, ``active_units``, with ``nll_samples`` and ``n``.

    ``y``: the labels of a conditional model (``log p(x | y)``)."""
    was_training = [model.training, guide.training]  # log_likelihood checks the inputs
    model.eval(), guide.eval()
    try:
        return log_likelihood(model, guide, x, num_samples, chunk_size, seed, progress, y=y).summary()
    finally:
        model.train(was_training[0]), guide.train(was_training[1])
