"""Pareto-smoothed importance sampling diagnostics: the Pareto shape ``k-hat`` of importance weights.

For importance weights ``w_s = p(z_s) / q(z_s)``, ``z_s ~ q``, the right tail of the weight
distribution is fitted by a generalized Pareto distribution; its shape ``k`` says how many
moments the weights have (``1/k``): ``k < 0.5`` finite variance, ``k < 0.7`` reliable
importance sampling in practice, ``k > 0.7`` estimates that cannot be trusted with any
practical number of draws, ``k >= 1`` not even a finite mean (Vehtari et al. 2024, sec. 3).
Used on ``log w = log p(x, z) - log q(z | x)`` per datapoint, it is a diagnostic of a
variational posterior (Yao et al. 2018): the share of datapoints with ``k-hat > 0.7``
measures where the guide is too light-tailed for the posterior.

The estimator follows the paper (and ArviZ's ``psislw``, which it matches to floating
point): the tail is the ``M = ceil(min(S / 5, 3 sqrt(S / r_eff)))`` largest weights, the
exceedances over the next largest weight are fitted by the empirical-Bayes estimator of
Zhang & Stephens (2009) with ``m = 30 + floor(sqrt(M))`` grid points, and the shape is shrunk
towards 0.5 by the weakly informative prior ``k <- (M k + 10 * 0.5) / (M + 10)``.
Everything is vectorized over datapoints (columns).

Degenerate tails, where the Zhang-Stephens fit is undefined:

* all of the ``M + 1`` largest log-weights equal (e.g. proposal equal to target: every
  weight is the same): the weights are bounded with an atom at their maximum, the limit
  ``k -> -inf`` of bounded tails; we return ``-inf`` (ArviZ and ``loo`` return ``inf`` with a
  warning "all tail values are the same", which would flag a perfect proposal as the worst);
* fewer than 5 weights strictly above the cutoff (ties at the cutoff): ``inf``, as ArviZ.

A guide equal to the posterior gives log-weights equal up to floating-point rounding; k-hat
then describes the rounding noise (bounded: usually negative, ``inf`` where ties leave fewer
than 5 distinct tail values), not the guide.

References:
  Vehtari, Simpson, Gelman, Yao & Gabry, Pareto smoothed importance sampling, JMLR 25(72), 2024.
  Zhang & Stephens, A new and efficient estimation method for the generalized Pareto
  distribution, Technometrics 51(3), 2009.
  Yao, Vehtari, Simpson & Gelman, Yes, but did it work?: Evaluating variational inference, ICML 2018.
"""

import math
import numbers
from dataclasses import dataclass

import torch

from pyro_gen.errors import DataError
from pyro_gen.evaluation.likelihood import log_weights as _log_weights
from pyro_gen.models.checks import check_data_tensor

KHAT_THRESHOLD = 0.7
#: the fewest draws per column whose tail (:func:`tail_length`) has the 5 points a fit needs
MIN_SAMPLES = 21
_PRIOR_K_STRENGTH, _PRIOR_K = 10.0, 0.5  # the weakly informative prior on k: 10 pseudo-observations at 0.5
_PRIOR_B_SCALE = 3.0  # Zhang & Stephens' prior on the GPD's b = -k / sigma, scaled by the first quartile


def tail_length(num_samples: int, r_eff: float = 1.0) -> int:
    """``M = ceil(min(S / 5, 3 sqrt(S / r_eff)))``, the number of weights in the fitted tail."""
    return int(math.ceil(min(num_samples / 5.0, 3 * math.sqrt(num_samples / r_eff))))


def gpd_fit(exceedances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zhang & Stephens' (2009) estimate of a generalized Pareto distribution, per row, with the weak prior on ``k``.

    :param exceedances: sorted positive exceedances over the threshold, ``(rows, M)`` (ascending along each row).
    :returns: ``(k, sigma)``, each ``(rows,)``; ``k`` includes the prior adjustment, ``sigma`` does not.
    """
    n = exceedances.shape[-1]
    m = 30 + int(math.sqrt(n))
    j = torch.arange(1, m + 1, dtype=exceedances.dtype, device=exceedances.device)
    quartile = exceedances[:, int(n / 4 + 0.5) - 1 : int(n / 4 + 0.5)]
    # candidate values of b = -k / sigma around 1 / max(x), spread by the first quartile
    b = 1 / exceedances[:, -1:] + (1 - torch.sqrt(m / (j - 0.5))) / (_PRIOR_B_SCALE * quartile)  # (rows, m)
    k = torch.log1p(-b.unsqueeze(-1) * exceedances.unsqueeze(-2)).mean(-1)  # (rows, m)
    profile = n * (torch.log(-b / k) - k - 1)  # profile log-likelihood of each candidate b
    # posterior weights of the candidates, computed as 1 / sum_j exp(L_j - L_i) as in the paper's code
    weights = 1 / torch.exp(profile.unsqueeze(-2) - profile.unsqueeze(-1)).sum(-1)
    weights = torch.where(weights >= 10 * torch.finfo(weights.dtype).eps, weights, torch.zeros_like(weights))
    weights = weights / weights.sum(-1, keepdim=True)
    b_post = (b * weights).sum(-1)
    k_post = torch.log1p(-b_post.unsqueeze(-1) * exceedances).mean(-1)
    sigma = -k_post / b_post
    k_post = (n * k_post + _PRIOR_K_STRENGTH * _PRIOR_K) / (n + _PRIOR_K_STRENGTH)
    return k_post, sigma


def psis_khat(log_weights, r_eff: float = 1.0, max_elements: int = 2**24) -> torch.Tensor:
    """The Pareto shape estimate ``k-hat`` of importance weights, one per column.

    :param log_weights: ``(num_samples, N)`` log importance weights (unnormalized; a 1-D
        array is one column), a floating-point tensor or numpy array (``-inf``: a zero weight).
    :param r_eff: relative efficiency of the draws (``ESS / S``; 1 for independent draws).
    :param max_elements: bound on the temporaries of the vectorized fit (columns are processed in groups).
    :returns: ``(N,)`` float64 tensor of k-hat (``-inf``/``inf`` for degenerate tails, see the module docstring).
    """
    # -inf is a valid log-weight (a zero weight): the value checks are the ones below
    lw = check_data_tensor(log_weights, "log_weights", values=False, arrays=True, allow_empty=True)
    lw = lw.detach().to("cpu", torch.float64)  # the fit is cheap; on the CPU its temporaries share one device
    squeeze = lw.dim() == 1
    if squeeze:
        lw = lw.unsqueeze(-1)
    if lw.dim() != 2:
        raise DataError(f"log_weights must have shape (num_samples, N), got {tuple(lw.shape)}")
    S, N = lw.shape
    if N == 0:
        raise DataError(f"log_weights has no columns (shape {tuple(lw.shape)}): give one column of draws per datapoint")
    if S < 2:
        raise DataError(f"need at least 2 samples per column to fit a tail, got {S}")
    if torch.isnan(lw).any() or (lw == math.inf).any():
        raise DataError("log_weights contain NaN or +inf; check the model and guide densities")
    if (lw.amax(0) == -math.inf).any():
        raise DataError("a column of log_weights is all -inf (every weight zero): the guide puts no mass where the model does")
    if isinstance(r_eff, bool) or not isinstance(r_eff, numbers.Real) or not r_eff > 0:
        raise DataError(f"r_eff must be a positive number, got {r_eff!r}")
    M = tail_length(S, r_eff)
    top = lw.T.topk(min(M + 1, S), dim=-1, sorted=True).values.flip(-1)  # (N, M+1) ascending, largest last
    # shift by the maximum for exp; a cutoff below the smallest normal number is clipped to it
    top = top - top[:, -1:]
    cutoff = top[:, :1].clamp(min=math.log(torch.finfo(torch.float64).tiny))
    tail = top[:, 1:]
    in_tail = tail > cutoff  # ties at the cutoff (or clipping) shorten a column's tail
    lengths = in_tail.sum(-1)
    khat = torch.full((N,), math.inf, dtype=torch.float64)
    khat[(top[:, -1:] == top).all(-1)] = -math.inf  # flat top: bounded weights with an atom at the maximum
    fit = lengths > 4
    # columns with the same tail length are fitted together (usually all of them: one group)
    for length in lengths[fit].unique().tolist():
        cols = torch.nonzero(fit & (lengths == length)).squeeze(-1)
        m = 30 + int(math.sqrt(length))
        step = max(1, max_elements // (m * max(m, length)))
        for start in range(0, len(cols), step):
            c = cols[start : start + step]
            exceed = torch.exp(tail[c, -length:]) - torch.exp(cutoff[c])
            khat[c] = gpd_fit(exceed)[0]
    return khat[0] if squeeze else khat


@dataclass
class KhatResult:
    """Per-datapoint ``khat`` ``(N,)`` and the number of draws per datapoint."""

    khat: torch.Tensor
    num_samples: int

    @property
    def threshold(self) -> float:
        """The sample-size dependent threshold ``min(1 - 1/log10(S), 0.7)`` of Vehtari et al. (2024)."""
        return min(1 - 1 / math.log10(self.num_samples), KHAT_THRESHOLD)

    def summary(self) -> dict:
        """Mean and max k-hat, the share of datapoints above 0.7 and above the sample-size threshold."""
        k = self.khat
        finite = k[torch.isfinite(k)]
        return {
            "khat_mean": finite.mean().item() if len(finite) else float("nan"),
            "khat_max": k.max().item(),
            "khat_share_above_0.7": (k > KHAT_THRESHOLD).double().mean().item(),
            "khat_threshold": self.threshold,
            "khat_share_above_threshold": (k > self.threshold).double().mean().item(),
            "khat_samples": self.num_samples,
            "n": len(k),
        }


def guide_khat(model, guide, x: torch.Tensor, num_samples: int = 1000, chunk_size: int = 2**15, seed: int | None = 0) -> KhatResult:
    """k-hat of ``log w = log p(x_n, z) - log q(z | x_n)`` per datapoint, ``z ~ q(z | x_n)``.

    The log-weights are drawn by the evaluator's machinery
    (:func:`pyro_gen.evaluation.likelihood.log_weights`, the draws of importance-sampled
    ``log p(x)``), so k-hat diagnoses exactly the estimate that :func:`~pyro_gen.evaluation.log_likelihood`
    reports. Models with global latents are scored at the guide's point estimate of them.
    """
    lw = _log_weights(model, guide, x, num_samples=num_samples, chunk_size=chunk_size, seed=seed)
    return KhatResult(psis_khat(lw), num_samples)
