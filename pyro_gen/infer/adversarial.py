"""Adversarial objectives: a critic compares a generator program's samples with data.

The generator is a Pyro program (e.g. :class:`~pyro_gen.models.gan.GANGenerator`); its
samples are read off its trace (the site ``"x"``) by :func:`~pyro_gen.infer.traces.get_traces`.
The critic is a plain ``nn.Module`` held by the objective. The objective declares two
:class:`~pyro_gen.infer.objectives.Player` s to the one :class:`~pyro_gen.infer.trainer.Trainer`:
the critic, stepped on every batch, then the generator, stepped once every ``n_critic``
batches, each with its own Adam optimizer (learning rates may differ: TTUR).

With critic scores ``r = D(x)`` on data and ``f = D(G(z))`` on samples (logits for the first
two), averaged over the batch:

* ``minimax``: the critic minimizes ``softplus(-r) + softplus(f)``, the generator
  ``-softplus(f) = log(1 - sigmoid(f))``;
* ``non_saturating``: the same critic; the generator minimizes ``softplus(-f) = -log sigmoid(f)``;
* ``wgan_gp``: the critic minimizes ``f - r + lambda * GP``, the generator ``-f``;
* ``hinge``: the critic minimizes ``relu(1 - r) + relu(1 + f)``, the generator ``-f``.

``softplus(-r) + softplus(f) = -log sigmoid(r) - log(1 - sigmoid(f))`` is the discriminator's
binary cross-entropy. The gradient penalty is ``GP = E[(||grad_u D(u)||_2 - 1)^2]`` at
``u = eps x + (1 - eps) G(z)``, ``eps ~ U(0, 1)`` per sample; any loss can add it
(``gp_weight``), ``wgan_gp`` does by default (``lambda = 10``).

Options: ``n_critic`` critic steps per generator step; ``lr_critic`` / ``lr_generator``
(two time-scale update rule); ``betas``; ``ema_decay``: an exponential moving average of the
generator's weights (:attr:`Adversarial.ema`, a copy of the generator to sample from and
evaluate). Spectral normalization and packing are properties of the critic
(:func:`~pyro_gen.models.gan.gan_critic`); the objective reads ``critic.pack`` and feeds it
``pack`` samples concatenated.

References:
  Goodfellow et al., Generative Adversarial Nets, NeurIPS 2014 (minimax and non-saturating losses).
  Arjovsky, Chintala & Bottou, Wasserstein GAN, ICML 2017.
  Gulrajani et al., Improved Training of Wasserstein GANs, NeurIPS 2017 (gradient penalty, n_critic = 5, Adam(0, 0.9)).
  Lim & Ye, Geometric GAN, 2017; Miyato et al., Spectral Normalization for GANs, ICLR 2018 (hinge loss).
  Heusel et al., GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium, NeurIPS 2017.
  Yazici et al., The Unusual Effectiveness of Averaging in GAN Training, ICLR 2019 (EMA of generator weights).
  Lin et al., PacGAN: The power of two samples in generative adversarial networks, NeurIPS 2018.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from pyro_gen.errors import ConfigError, DataError, TrainingDivergedError
from pyro_gen.infer.objectives import Player, TraceObjective
from pyro_gen.infer.precision import as_float32
from pyro_gen.infer.traces import get_traces

LOSSES = ("minimax", "non_saturating", "wgan_gp", "hinge")


def _check_loss(loss: str) -> None:
    if loss not in LOSSES:
        raise ConfigError(f"unknown adversarial loss {loss!r}; choose one of {list(LOSSES)}")


def critic_loss(loss: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The critic's loss (without gradient penalty) from its scores on data ``real`` and samples ``fake``."""
    _check_loss(loss)
    if loss in ("minimax", "non_saturating"):
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if loss == "wgan_gp":
        return fake.mean() - real.mean()
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def generator_loss(loss: str, fake: torch.Tensor) -> torch.Tensor:
    """The generator's loss from the critic's scores on its samples."""
    _check_loss(loss)
    if loss == "minimax":
        return -F.softplus(fake).mean()
    if loss == "non_saturating":
        return F.softplus(-fake).mean()
    return -fake.mean()


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor | None = None, weight: float = 1.0) -> torch.Tensor:
    """``weight * E[(||grad_u D(u)||_2 - 1)^2]`` at random interpolates ``u = eps real + (1 - eps) fake``.

    ``real`` and ``fake`` are critic inputs of equal shape ``(B, ...)``; ``eps ~ U(0, 1)`` is drawn
    per row from torch's global generator. The penalty is differentiable in the critic's
    parameters (``create_graph=True``), so it can be minimized.
    """
    if real.shape != fake.shape:
        raise DataError(f"the gradient penalty needs data and samples of one shape; got {tuple(real.shape)} and {tuple(fake.shape)}")
    eps = torch.rand((len(real),) + (1,) * (real.dim() - 1), device=real.device, dtype=real.dtype)
    u = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    scores = critic(u) if y is None else critic(u, y)
    (grad,) = torch.autograd.grad(scores.sum(), u, create_graph=True)
    return weight * (grad.flatten(1).norm(dim=1) - 1).square().mean()


class Adversarial(TraceObjective, nn.Module):
    """A GAN objective: the critic and the generator as two players of the one trainer.

    Use with ``Trainer(generator, None, Adversarial(critic, ...))``; batches are data ``x``,
    or ``(x, y)`` with class labels for a conditional critic (the trainer passes a dataset's
    labels when :attr:`needs_labels`). Each critic step draws as many samples as the data
    batch (with the batch's labels, for conditional models); each generator step draws a
    fresh set. The logged ``train_loss`` and ``valid_loss`` are the critic's loss (without
    penalty on validation data); ``train_generator_loss`` is the generator's.

    :param critic: an ``nn.Module`` mapping ``(B, ...)`` inputs (and ``(B,)`` labels when it has
        ``num_classes``) to ``B`` scores; ``critic.pack`` (default 1) samples form one input.
    :param str loss: one of :data:`LOSSES`.
    :param int n_critic: critic steps per generator step.
    :param lr_critic: the critic's Adam learning rate (``None``: the trainer's ``lr``).
    :param lr_generator: the generator's Adam learning rate (``None``: the trainer's ``lr``).
    :param betas: Adam betas for both players; default ``(0.0, 0.9)`` for ``wgan_gp``
        (Gulrajani et al.) and ``(0.5, 0.999)`` otherwise (Radford et al.).
    :param gp_weight: gradient-penalty weight ``lambda``; default 10 for ``wgan_gp``, else 0.
    :param ema_decay: keep :attr:`ema`, a moving average of the generator's weights with this
        decay (e.g. 0.999), updated after each generator step; ``None``: no average.
    """

    def __init__(
        self,
        critic: nn.Module,
        loss: str = "non_saturating",
        *,
        n_critic: int = 1,
        lr_critic: float | None = None,
        lr_generator: float | None = None,
        betas: tuple[float, float] | None = None,
        gp_weight: float | None = None,
        ema_decay: float | None = None,
    ):
        nn.Module.__init__(self)
        TraceObjective.__init__(self)
        _check_loss(loss)
        if not isinstance(critic, nn.Module):
            raise ConfigError(f"the critic must be an nn.Module, got {type(critic).__name__}")
        if n_critic < 1:
            raise ConfigError(f"n_critic must be >= 1, got {n_critic}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.critic = critic
        self.loss_name, self.n_critic = loss, n_critic
        self.lr_critic, self.lr_generator = lr_critic, lr_generator
        self.betas = tuple(betas) if betas is not None else ((0.0, 0.9) if loss == "wgan_gp" else (0.5, 0.999))
        self.gp_weight = float(gp_weight if gp_weight is not None else (10.0 if loss == "wgan_gp" else 0.0))
        if self.gp_weight < 0:
            raise ConfigError(f"gp_weight must be non-negative, got {gp_weight}")
        self.ema_decay = ema_decay
        self.pack = int(getattr(critic, "pack", 1))
        self.num_classes = getattr(critic, "num_classes", None)
        if self.pack > 1 and self.num_classes is not None:
            raise ConfigError("packing (pack > 1) is not supported for conditional critics: a pack would mix classes")
        self.register_module("ema", None)

    @property
    def needs_labels(self) -> bool:
        """Whether batches must carry class labels (a conditional critic)."""
        return self.num_classes is not None

    # -- the trainer's interface ---------------------------------------------------------
    def players(self, model, guide) -> list[Player]:
        """Check that generator and critic fit together, start the weight average, and declare the two players."""
        if guide is not None:
            raise ConfigError("an adversarial objective trains a generator and a critic, not a guide: pass guide=None")
        data_shape, in_shape = getattr(model, "data_shape", None), getattr(self.critic, "in_shape", None)
        if data_shape is not None and in_shape is not None and tuple(data_shape) != tuple(in_shape):
            raise ConfigError(
                f"the generator makes samples of shape {tuple(data_shape)} but the critic was built for {tuple(in_shape)}: "
                "build both for the data's shape"
            )
        model_classes = getattr(model, "num_classes", None)
        if model_classes != self.num_classes:
            raise ConfigError(
                f"the generator has num_classes={model_classes} but the critic has num_classes={self.num_classes}: "
                "a conditional GAN needs both conditioned on the same classes (an unconditional one, neither)"
            )
        if self.ema_decay is not None:
            self.ema = copy.deepcopy(model).requires_grad_(False)
        return [
            Player("critic", self.critic.parameters(), self.lr_critic, self.betas),
            Player(
                "generator",
                model.parameters(),
                self.lr_generator,
                self.betas,
                every=self.n_critic,
                after_step=lambda: self.update_ema(model),
            ),
        ]

    def player_loss(self, player: str, model, guide, batch, data_size=None) -> torch.Tensor:
        """The loss of ``player`` (``"critic"`` or ``"generator"``) on a batch ``x`` or ``(x, y)``."""
        x, y = self._split(batch)
        if player == "critic":
            with torch.no_grad():  # the critic's step needs no gradient through the generator
                fake = self.sample(model, guide, len(x), y)
            real_in, fake_in = self._pack(x), self._pack(fake)
            real, fake_scores = self.score(real_in, y, "data"), self.score(fake_in, y, "generated")
            loss = critic_loss(self.loss_name, real, fake_scores)
            metrics = {"critic_real": real.mean().detach(), "critic_fake": fake_scores.mean().detach()}
            if self.loss_name == "wgan_gp":
                metrics["wasserstein"] = metrics["critic_real"] - metrics["critic_fake"]
            if self.gp_weight:
                penalty = gradient_penalty(self.critic, real_in, fake_in, y)
                loss = loss + self.gp_weight * penalty
                metrics["gradient_penalty"] = penalty.detach()
            self.last_metrics = metrics
            return loss
        if player == "generator":
            fake = self.sample(model, guide, len(x), y)
            return generator_loss(self.loss_name, self.score(self._pack(fake), y, "generated"))
        raise ConfigError(f"unknown player {player!r}; an adversarial objective has 'critic' and 'generator'")

    def __call__(self, model, guide, batch, data_size=None) -> torch.Tensor:
        """The critic's loss without penalty (the validation score; called without gradients)."""
        x, y = self._split(batch)
        fake = self.sample(model, guide, len(x), y)
        return critic_loss(self.loss_name, self.score(self._pack(x), y, "data"), self.score(self._pack(fake), y, "generated"))

    # -- pieces ----------------------------------------------------------------------------
    def sample(self, model, guide, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """Draw ``n`` samples: the value of the generator's site ``x`` in its trace."""
        kwargs = {"batch_size": n} if y is None else {"batch_size": n, "y": y}
        model_trace, _ = get_traces(model, guide, **kwargs)
        name = getattr(model, "obs_name", "x")
        if name not in model_trace.nodes:
            raise DataError(f"the generator program has no site {name!r} holding its samples (record them with pyro.deterministic)")
        return model_trace.nodes[name]["value"]

    def score(self, inputs: torch.Tensor, y: torch.Tensor | None = None, what: str = "data") -> torch.Tensor:
        """The critic's scores ``(B,)`` on (packed) inputs; raises on a wrong shape or a non-finite score."""
        # float32 scores: the losses (softplus, hinge) in float32 under a bf16 training step
        scores = as_float32(self.critic(inputs) if y is None else self.critic(inputs, y))
        if scores.dim() == 2 and scores.shape[-1] == 1:
            scores = scores.squeeze(-1)
        if scores.shape != (len(inputs),):
            raise DataError(
                f"the critic must return one score per input, shape ({len(inputs)},) or ({len(inputs)}, 1); got {tuple(scores.shape)}"
            )
        if not torch.isfinite(scores).all():
            bad = int((~torch.isfinite(scores)).sum())
            hint = "check the data, or the critic diverged" if what == "data" else "the generator or the critic diverged"
            raise TrainingDivergedError(
                f"the critic returned {bad} NaN or infinite score(s) of {len(scores)} on {what} samples ({hint}); "
                "lower the learning rates, add a gradient penalty or spectral normalization"
            )
        return scores

    def _split(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, y = (batch[0], batch[1] if len(batch) > 1 else None) if isinstance(batch, (tuple, list)) else (batch, None)
        if self.num_classes is None:
            return x, None
        if y is None:
            raise DataError(
                f"the critic is conditional ({self.num_classes} classes) and needs labelled batches (x, y); give a dataset with labels "
                "or an iterable of (x, y) pairs"
            )
        return x, y

    def _pack(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate each ``pack`` consecutive samples along the first feature axis; a remainder is dropped."""
        if self.pack == 1:
            return x
        rows = len(x) // self.pack
        if rows == 0:
            raise DataError(f"a batch of {len(x)} samples is smaller than the critic's pack size {self.pack}")
        x = x[: rows * self.pack]
        return x.reshape((rows, self.pack * x.shape[1]) + tuple(x.shape[2:]))

    @torch.no_grad()
    def update_ema(self, model) -> None:
        """``ema <- decay * ema + (1 - decay) * weights``; buffers (batch-norm statistics) are copied."""
        if self.ema is None:
            return
        for e, p in zip(self.ema.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - self.ema_decay)
        for e, b in zip(self.ema.buffers(), model.buffers()):
            e.copy_(b)

    def __repr__(self):
        return f"Adversarial({self.loss_name}, n_critic={self.n_critic}, pack={self.pack}, gp_weight={self.gp_weight}, ema_decay={self.ema_decay})"
