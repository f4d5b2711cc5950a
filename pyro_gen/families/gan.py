"""The GAN family (``model.kind: gan``): a generator program and a critic, two players of one adversarial objective.

The generator is a Pyro program (``z`` sampled in the ``"data"`` plate, ``x = G(z)`` a deterministic
site); the critic is held by :class:`~pyro_gen.infer.adversarial.Adversarial`; the one trainer gives
each player its own Adam. A GAN has no likelihood and no guide: it is scored by its samples, with
mode coverage on the 2-D mixtures (VEEGAN protocol) and Frechet distance, KID and precision / recall
elsewhere, in the feature space :func:`~pyro_gen.evaluation.gan_scores.sample_feature_space` chooses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch

from pyro_gen.config import HUGE, EvalConfig, setting, size, widths
from pyro_gen.errors import ConfigError
from pyro_gen.evaluation.gan_scores import draw_samples
from pyro_gen.families.base import Family, Scores, check_finite_weights, epochs_record, finite, fit_with_trainer, make_trainer
from pyro_gen.io import atomic_path
from pyro_gen.rng import seeded
from pyro_gen.run.data import count_parameters, fixed_test_data

NETS = ("mlp", "dcgan")


@dataclass
class GANModelConfig:
    """``model`` of a GAN: a generator ``x = G(z)`` with ``z`` of size ``latent_dim`` and a critic.

    Both are ``net: mlp`` (vectors; generator ``hidden`` sizes, critic ``critic_hidden``, default
    ``hidden``) or ``net: dcgan`` (images; feature-map widths ``channels`` and ``critic_channels``,
    default by image size); ``conditional`` conditions both on the dataset's class labels; the
    critic can be spectrally normalized (``spectral_norm``) and score ``pack`` samples at once
    (PacGAN); ``prior`` is the distribution of ``z``: ``normal`` or ``uniform`` (on ``[-1, 1]``).
    """

    kind: str = "gan"
    latent_dim: int = size(40, high=100_000)
    hidden: list[int] = widths([300, 300])
    net: str = setting("mlp", choices=NETS)
    critic_hidden: list[int] | None = widths(None)
    channels: list[int] | None = widths(None)
    critic_channels: list[int] | None = widths(None)
    conditional: bool = False
    spectral_norm: bool = False
    pack: int = size(1, high=1000)
    prior: str = setting("normal", choices=("normal", "uniform"))


@dataclass
class AdversarialConfig:
    """The adversarial objective: ``name`` is the loss (``minimax``, ``non_saturating``, ``wgan_gp`` or ``hinge``);
    ``n_critic`` critic steps per generator step; ``lr_generator`` / ``lr_critic`` (``null``: ``train.lr``; two
    time-scale updates when they differ); ``betas`` of both Adam optimizers (``null``: ``[0.0, 0.9]`` for ``wgan_gp``,
    else ``[0.5, 0.999]``); ``gp_weight`` (``null``: 10 for ``wgan_gp``, else 0); ``ema_decay``: sample from a moving
    average of the generator's weights."""

    name: str = setting("non_saturating", choices=("minimax", "non_saturating", "wgan_gp", "hinge"))
    n_critic: int = size(1, high=1000)
    lr_generator: float | None = setting(None, low=0, low_open=True, high=10)
    lr_critic: float | None = setting(None, low=0, low_open=True, high=10)
    betas: list[float] | None = None
    gp_weight: float | None = setting(None, low=0, high=1e6)
    ema_decay: float | None = setting(None, low=0, high=1, high_open=True)


@dataclass
class SampleEvalConfig(EvalConfig):
    """A GAN is scored by its samples: ``quality_samples`` of them against as many real images (Frechet
    distance, KID, precision / recall: fewer when the real set is smaller), KID over random subsets of
    ``kid_subset_size`` (Binkowski et al. 2018). The 2-D mixtures use the VEEGAN protocol's 2500 samples."""

    quality_samples: int = size(2000, high=1_000_000)
    kid_subset_size: int = size(1000, high=1_000_000)


@dataclass
class GANScores(Scores):
    """``metrics.json`` of a GAN run: mode coverage (2-D mixtures) or Frechet distance, KID, precision / recall."""

    modes_covered: int | None = field(default=None, metadata={"group": "toy"})
    num_modes: int | None = field(default=None, metadata={"group": "toy"})
    high_quality: float | None = field(default=None, metadata={"group": "toy"})
    reverse_kl: float | None = field(default=None, metadata={"group": "toy"})
    mode_counts: list | None = field(default=None, metadata={"group": "toy"})
    frechet_distance: float | None = field(default=None, metadata={"group": "images"})
    kid: float | None = field(default=None, metadata={"group": "images"})
    kid_std: float | None = field(default=None, metadata={"group": "images"})
    precision: float | None = field(default=None, metadata={"group": "images"})
    recall: float | None = field(default=None, metadata={"group": "images"})
    feature_space: str | None = field(default=None, metadata={"group": "images"})
    num_samples: int | None = field(default=None, metadata={"group": "images"})
    references: dict | None = field(default=None, metadata={"group": "images"})
    epochs: int | None = None
    seconds_per_epoch: float | None = None
    generator_steps: int | None = None
    final_critic_loss: float | None = None
    final_generator_loss: float | None = None
    parameters: int | None = None
    generator_parameters: int | None = None
    critic_parameters: int | None = None
    objective: str | None = None
    model: str | None = None
    sampler: str | None = None
    protocol: dict = field(default_factory=dict)
    latent_arithmetic: dict | None = field(default=None, metadata={"group": "arithmetic"})

    def summary(self) -> str:
        if self.modes_covered is not None:
            kl = "n/a" if self.reverse_kl is None else f"{self.reverse_kl:.3f}"
            q = self.protocol["sample_quality"]
            return (
                f"{self.modes_covered}/{self.num_modes} modes covered, {100 * self.high_quality:.1f}% high quality, reverse KL {kl} "
                f"({q['samples']} samples, {q['num_std']:g} std)"
            )
        # lead with the informative figures: the Frechet distance between its two references, and
        # recall (a collapsed generator has precision 1 and recall 0)
        spread = "" if self.kid_std is None else f" (std {self.kid_std:.2g})"
        line = f"Frechet distance {self.frechet_distance:.4g}"
        if self.references:
            untrained = self.references.get("untrained_generator", {}).get("frechet_distance")
            floor = self.references.get("train_split", {}).get("frechet_distance")
            if untrained is not None and floor is not None:
                line += f" (untrained generator {untrained:.4g}, real images {floor:.4g})"
        return (
            f"{line}, recall {self.recall:.3f}, precision {self.precision:.3f}, KID {self.kid:.4g}{spread} "
            f"in the {self.feature_space} feature space ({self.num_samples} samples)"
        )


@dataclass
class GANRun:
    """A trained GAN rebuilt from its run directory (:meth:`GANFamily.load`).

    :ivar generator: the generator program with its trained weights.
    :ivar objective: the :class:`~pyro_gen.infer.adversarial.Adversarial` objective: its ``critic`` and,
        with ``objective.ema_decay``, ``ema`` (the moving average of the generator).
    :ivar splits: the ``train`` and ``test`` splits.
    """

    config: object
    generator: torch.nn.Module
    objective: torch.nn.Module
    splits: dict
    checkpoint: str = "last.pt"

    @property
    def sampler(self) -> torch.nn.Module:
        """The generator that samples are drawn from: the weights' moving average when there is one."""
        return self.objective.ema if self.objective.ema is not None else self.generator

    @property
    def sampler_name(self) -> str:
        if self.objective.ema is None:
            return "the generator's weights at the last epoch"
        return f"the moving average of the generator's weights (objective.ema_decay {self.objective.ema_decay})"


def build_gan(config, train_data):
    """The configured generator program and its :class:`~pyro_gen.infer.adversarial.Adversarial` objective (holding the critic).

    A conditional GAN has one class per label of the training split (``max label + 1``).
    """
    from pyro_gen.infer.adversarial import Adversarial
    from pyro_gen.models.gan import gan, gan_critic, latent_prior

    m, o = config.model, config.objective
    shape = tuple(train_data.event_shape)
    num_classes = int(train_data.y.max()) + 1 if m.conditional else None
    generator = gan(
        shape, m.latent_dim, m.hidden, m.net, num_classes=num_classes, channels=m.channels, prior=latent_prior(m.prior, m.latent_dim)
    )
    critic_hidden = m.critic_hidden if m.critic_hidden is not None else m.hidden
    critic = gan_critic(
        shape, critic_hidden, m.net, num_classes=num_classes, channels=m.critic_channels, pack=m.pack, spectral_norm=m.spectral_norm
    )
    objective = Adversarial(
        critic,
        o.name,
        n_critic=o.n_critic,
        lr_critic=o.lr_critic,
        lr_generator=o.lr_generator,
        betas=tuple(o.betas) if o.betas is not None else None,
        gp_weight=o.gp_weight,
        ema_decay=o.ema_decay,
    )
    return generator, objective


def load_gan_run(run_dir, device="cpu") -> GANRun:
    """A GAN run's generator, critic and weight average, from its run directory."""
    from pyro_gen.errors import RunDirError
    from pyro_gen.run.rundir import RunDir

    run = RunDir(run_dir)
    config = run.config()
    if config.model.kind != GANFamily.name:
        raise RunDirError(f"{run.path} is a model.kind: {config.model.kind} run, not a GAN run")
    return config.family.load(config, run, device)


def gan_batches(config, train_data):
    """Shuffled full batches of the training split (with labels for a conditional GAN).

    The last partial batch of an epoch is dropped: a GAN's step compares a batch of data with as
    many samples, and a small remainder would give a noisy step (or hold less than one pack).
    """
    from pyro_gen.infer.trainer import TensorBatches

    t = config.train
    labels = train_data.y if config.model.conditional else None
    return TensorBatches(
        train_data.x, t.batch_size, shuffle=True, seed=t.seed, transform=train_data.transform_batch, drop_last=True, y=labels
    )


class GANFamily(Family):
    name = "gan"
    description = "a generator and a critic"
    sections = {"model": GANModelConfig, "objective": AdversarialConfig, "eval": SampleEvalConfig}
    absent_sections = {"guide": "a GAN has no guide: its latent codes are not inferred"}
    scores = GANScores
    unsupported = {
        "analyze": "'analyze' draws Bayesian diagnostics of a posterior, and a GAN infers no posterior (no guide, no "
        "likelihood): its sample scores are in metrics.json ('pyro-gen evaluate') and its samples in samples.png ('pyro-gen sample')",
    }

    bf16_refusal = None  # networks in bf16, densities in float32 (pyro_gen.infer.precision)
    example = {
        "data": {"name": "ring8", "train_size": 256, "test_size": 100},
        "model": {"kind": "gan", "latent_dim": 2, "hidden": [16]},
        "train": {"epochs": 2, "batch_size": 64, "progress": False},
    }

    def label(self, config) -> str:
        return f"gan-{config.model.net}-{config.objective.name}"

    # -- checks ---------------------------------------------------------------------------------
    def check(self, config) -> None:
        m, o, t = config.model, config.objective, config.train
        if m.conditional and m.pack > 1:
            raise ConfigError(
                "model.pack > 1 packs several samples into one critic input, which would mix classes: a conditional GAN "
                "cannot be packed; set model.pack=1 or model.conditional=false"
            )
        if o.betas is not None and (
            len(o.betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in o.betas)
        ):
            raise ConfigError(f"objective.betas must be two numbers in [0, 1), Adam's (beta1, beta2), e.g. [0.5, 0.999]; got {o.betas}")
        if t.patience is not None:
            raise ConfigError(
                "train.patience stops on a validation score, and a GAN has none (its critic's loss says nothing about the "
                "samples' quality): remove train.patience and set train.epochs"
            )
        if config.data.valid_size is not None:
            raise ConfigError(
                "data.valid_size is set, but a GAN run uses no validation split (it is not selected by a validation score; "
                "its last epoch is scored on the test split): remove data.valid_size"
            )
        if m.latent_dim > HUGE:  # pragma: no cover - bounded by the field already
            raise ConfigError(f"model.latent_dim {m.latent_dim} is too large")

    def load_data(self, config, splits=("train", "test")) -> dict:
        return super().load_data(config, splits)

    def check_data(self, config, splits) -> None:
        """Refuse a GAN whose networks do not fit the training data, before any file is written."""
        m, t, name = config.model, config.train, config.data.name
        train_data = splits["train"]
        shape = tuple(train_data.event_shape)
        if m.net == "dcgan" and len(shape) != 3:
            raise ConfigError(
                f"model.net: dcgan builds convolutional networks for images (C, H, W), but {name!r} has points of shape {shape}: "
                "use model.net=mlp"
            )
        if m.net == "mlp" and len(shape) != 1:
            raise ConfigError(
                f"model.net: mlp builds a GAN for vectors (D,), but {name!r} has images of shape {shape}: use model.net=dcgan"
            )
        if m.conditional and train_data.y is None:
            raise ConfigError(
                f"model.conditional: true conditions the GAN on class labels, but {name!r} has no labels in its "
                f"{train_data.split} split: set model.conditional=false, or train on a labelled dataset (e.g. ring8, digits)"
            )
        self._check_net_options(m)
        if len(train_data) < t.batch_size:
            raise ConfigError(
                f"train.batch_size {t.batch_size} is larger than the {len(train_data)} training points, and a GAN steps on full "
                "batches only: lower train.batch_size or raise data.train_size"
            )
        if t.batch_size < m.pack:
            raise ConfigError(f"train.batch_size {t.batch_size} is smaller than model.pack {m.pack}: a batch must hold at least one pack")

    @staticmethod
    def _check_net_options(m) -> None:
        """Refuse the options of the other network (checked after the data's shape, so that a wrong
        ``model.net`` is reported as such, not as a leftover option of the right one)."""
        if m.net == "mlp":
            for key in ("channels", "critic_channels"):
                if getattr(m, key) is not None:
                    raise ConfigError(
                        f"model.{key} sets the widths of a DCGAN's convolutions, but model.net is 'mlp': size the MLPs with "
                        f"model.hidden and model.critic_hidden, or set model.net=dcgan; remove model.{key}"
                    )
            if m.critic_hidden is None and not m.hidden:
                raise ConfigError("the MLP critic needs at least one hidden layer: give model.critic_hidden (or a non-empty model.hidden)")
            return
        defaults = GANModelConfig()
        for key in ("hidden", "critic_hidden"):
            if getattr(m, key) != getattr(defaults, key):
                raise ConfigError(
                    f"model.{key} sizes an MLP, but model.net is 'dcgan': set the convolutions' widths with model.channels "
                    f"and model.critic_channels (or leave them to the image size), or set model.net=mlp; remove model.{key}"
                )

    # -- fit / load -----------------------------------------------------------------------------
    def fit(self, config, splits, run, resume) -> dict:
        """Train a generator and its critic with the one trainer (one Adam per player).

        No validation split is given to the trainer: a critic's validation loss says nothing about the
        samples' quality (it is lowest when the generator is worst), so it must not choose ``best.pt``;
        every epoch then writes ``best.pt`` and ``last.pt`` alike, and the last epoch is scored.
        """
        train_data = splits["train"]
        pyro.set_rng_seed(config.train.seed)  # the networks' initial weights
        generator, objective = build_gan(config, train_data)
        batches = gan_batches(config, train_data)
        trainer = make_trainer(config, generator, None, objective, run)
        if not resume:
            run.save_config(config)
        history = fit_with_trainer(trainer, batches, None, run, resume)
        last = history[-1] if history else {}
        return {
            # epochs, timing, threads and ranks as every trained family records them (final_train_loss: the critic's)
            **epochs_record(history, config.train.epochs),
            # the trainer counts batches over the whole run; the generator steps on every n_critic-th
            "generator_steps": len(history) * len(batches) // config.objective.n_critic,
            "final_critic_loss": last.get("train_critic_loss", math.nan),
            "final_generator_loss": last.get("train_generator_loss", math.nan),
        }

    def load(self, config, run, device="cpu") -> GANRun:
        """The generator, critic and weight average of the last checkpoint."""
        splits = self.load_data(config)
        ckpt, name = run.load_checkpoint(run.LAST, device)
        generator, objective = build_gan(config, splits["train"])
        # declaring the players makes the weight average (objective.ema) whose weights the checkpoint holds
        objective.players(generator, None)
        generator.load_state_dict(ckpt["model"])
        objective.load_state_dict(ckpt["objective"])
        check_finite_weights(run.path / name, generator, objective)
        generator.to(device).eval(), objective.to(device).eval()
        return GANRun(config, generator, objective, splits, name)

    def load_model(self, config, run, device="cpu"):
        gan_run = self.load(config, run, device)
        return gan_run.sampler, None, gan_run.splits

    # -- evaluate -------------------------------------------------------------------------------
    def evaluate(self, config, run, options) -> GANScores:
        """Score a GAN by its samples (drawn from :attr:`GANRun.sampler`, seeded with ``train.seed``); write the figures."""
        from pyro_gen.evaluation.gan_scores import TOY_DATASETS, toy_coverage_scores

        if options.nll_samples is not None:
            raise ConfigError(
                "--nll-samples sets the importance samples of a VAE's test NLL; a GAN has no likelihood (it is scored by "
                "its samples): drop --nll-samples"
            )
        gan_run = self.load(config, run, options.device or config.train.device)
        test, seed = gan_run.splits["test"], config.train.seed
        if config.data.name in TOY_DATASETS:
            from pyro_gen.evaluation.sample_quality import NUM_SAMPLES

            real = fixed_test_data(test, config.data.seed)
            samples = draw_samples(gan_run.sampler, NUM_SAMPLES, seed)
            scores, quality = toy_coverage_scores(samples, config.data.name)
        else:
            scores, quality, samples, real = self._image_quality(gan_run, config, seed)
        training = run.training()
        m, o = config.model, config.objective
        parameters = {"generator": count_parameters(gan_run.generator), "critic": count_parameters(gan_run.objective.critic)}
        record = GANScores(
            **scores,
            epochs=training.get("epochs"),
            seconds_per_epoch=training.get("seconds_per_epoch"),
            generator_steps=training.get("generator_steps"),
            final_critic_loss=finite(training.get("final_critic_loss")),
            final_generator_loss=finite(training.get("final_generator_loss")),
            parameters=sum(parameters.values()),
            generator_parameters=parameters["generator"],
            critic_parameters=parameters["critic"],
            objective=o.name,
            model=(
                f"gan: {m.net} generator (latent {m.latent_dim}) and critic"
                + (f", conditional on {gan_run.generator.num_classes} classes" if m.conditional else "")
                + (f", pack {m.pack}" if m.pack > 1 else "")
                + (", spectral norm" if m.spectral_norm else "")
            ),
            sampler=gan_run.sampler_name,
            protocol={
                "train": gan_run.splits["train"].protocol(),
                "test": test.protocol(),
                "sample_quality": quality,
                "sampler": gan_run.sampler_name,
                "checkpoint": gan_run.checkpoint,
                "seed": seed,
            },
        )
        arithmetic = self._latent_arithmetic(gan_run, seed)
        if arithmetic is not None:
            record.latent_arithmetic = {
                **arithmetic.as_dict(),
                "protocol": (
                    "class vectors v_c = mean code of the samples the domain classifier labels c; each source code z moves to "
                    "z - v_(its class) + v_c; target_accuracy: share of moved samples the classifier labels c"
                ),
            }
        run.write_scores(record)
        if options.figures if options.figures is not None else config.eval.images:
            from pyro_gen.analysis import write_gan_figures

            write_gan_figures(gan_run.sampler, samples, real, config.data.name, run.path, seed, arithmetic)
        return record

    @staticmethod
    def _latent_arithmetic(gan_run: GANRun, seed: int):
        """Class-vector arithmetic for an unconditional GAN on digit images, else ``None`` (also when some digit
        was never drawn: the metric is then missing rather than made up)."""
        from pyro_gen.analysis.latent_arithmetic import MissingClassError, latent_arithmetic
        from pyro_gen.evaluation.features import domain_classifier
        from pyro_gen.evaluation.gan_scores import digit_domain

        domain = digit_domain(gan_run.config.data.name)
        if domain is None or gan_run.generator.num_classes is not None:
            return None
        device = next(gan_run.sampler.parameters()).device
        classifier = domain_classifier(domain, data_dir=gan_run.config.data.data_dir, device=device)
        try:
            return latent_arithmetic(gan_run.sampler, classifier, rows=8, num_samples=gan_run.config.eval.quality_samples, seed=seed)
        except MissingClassError:
            return None

    @staticmethod
    def _image_quality(gan_run: GANRun, config, seed: int):
        """Frechet distance, KID and precision / recall of the samples with their two references
        (:func:`~pyro_gen.evaluation.gan_scores.gan_image_scores`); ``(scores, protocol, samples, real)``."""
        from pyro_gen.evaluation.gan_scores import gan_image_scores

        device = next(gan_run.generator.parameters()).device
        # the initial weights of the training run (torch's generator only: numpy and random stay untouched)
        with seeded(config.train.seed, device):
            untrained, _ = build_gan(config, gan_run.splits["train"])
        untrained.to(device).eval()
        e = config.eval
        return gan_image_scores(
            gan_run.sampler, untrained, gan_run.splits["train"], gan_run.splits["test"], config.data.name, seed,
            data_seed=config.data.seed, init_seed=config.train.seed, data_dir=config.data.data_dir,
            num_samples=e.quality_samples, kid_subset_size=e.kid_subset_size, progress=config.train.progress,
        )  # fmt: skip

    # -- sample ---------------------------------------------------------------------------------
    def sample_images(self, config, run, num, seed):
        gan_run = self.load(config, run)
        if len(gan_run.generator.data_shape) != 3:
            raise ConfigError(
                f"sample grids need images; {config.data.name!r} holds vectors: 'pyro-gen sample' draws them as a scatter plot"
            )
        return draw_samples(gan_run.sampler, num, seed), "generator samples"

    def sample(self, config, run, num, out, seed) -> list:
        """An image grid, or for vector data a scatter PNG and the points as ``.npy`` (``(num, D)`` float32)."""
        from pyro_gen.analysis import scatter_samples
        from pyro_gen.data import dataset_info
        from pyro_gen.evaluation.sample_quality import NUM_SAMPLES

        if dataset_info(config.data.name, config.data.binarize).image:
            return [self.write_image_samples(config, run, num or 64, out, seed)]
        gan_run = self.load(config, run)
        points = draw_samples(gan_run.sampler, num or NUM_SAMPLES, seed)
        png = scatter_samples(points, fixed_test_data(gan_run.splits["test"], config.data.seed), config.data.name, out.with_suffix(".png"))
        npy = out.with_suffix(".npy")
        with atomic_path(npy) as tmp, open(tmp, "wb") as f:
            np.save(f, points.numpy().astype(np.float32))
        return [png, npy]
