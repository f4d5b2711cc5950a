"""Latent vector arithmetic on a generator program, measured by a classifier.

Radford et al. (2016, section 6.3) averaged the codes of a few hand-picked samples per concept and
showed ``z(smiling woman) - z(neutral woman) + z(neutral man)``. Picking by hand does not scale
and cannot be scored, so here a classifier labels the samples: the *class vector* ``v_c`` is the
mean code of the samples it assigns to class ``c``, and

.. math:: z_{i \\to c} = z_i - v_{\\hat c(z_i)} + v_c

moves sample ``i`` from its own class to class ``c`` while keeping what makes it differ from its
class's average (its "style"). The same classifier then says how often the moved sample *is* of
class ``c``: the arithmetic's accuracy, against ``1 / num_classes`` for chance.

Codes enter through ``poutine.condition`` on the generator's latent site, so the program runs
unchanged (the same mechanism as :func:`pyro_gen.run.gan_interpolation`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import torch

from pyro_gen.errors import ConfigError
from pyro_gen.rng import seeded


class MissingClassError(ConfigError):
    """The generator drew no sample of some class, so that class has no vector to add."""


@dataclass
class ArithmeticResult:
    """What :func:`latent_arithmetic` computed.

    :ivar images: ``(rows, num_classes, *data_shape)``; row ``r`` is one source sample moved to every class.
    :ivar sources: ``(rows, *data_shape)`` the unmoved source samples.
    :ivar source_classes: ``(rows,)`` the classifier's label of each source sample.
    :ivar target_accuracy: fraction of moved samples (all rows x classes) that the classifier assigns
        to their target class; chance is ``1 / num_classes``.
    :ivar class_vectors: ``(num_classes, *latent_shape)`` the mean code per class.
    :ivar class_counts: ``(num_classes,)`` samples behind each class vector.
    :ivar num_samples: samples drawn to estimate the class vectors.
    """

    images: torch.Tensor
    sources: torch.Tensor
    source_classes: torch.Tensor
    target_accuracy: float
    class_vectors: torch.Tensor
    class_counts: torch.Tensor
    num_samples: int

    def as_dict(self) -> dict:
        """The scalar results and the protocol, for ``metrics.json``."""
        return {
            "target_accuracy": self.target_accuracy,
            "chance": 1.0 / len(self.class_counts),
            "rows": len(self.sources),
            "num_samples": self.num_samples,
            "class_counts": self.class_counts.tolist(),
        }


def _decode(generator, codes: torch.Tensor) -> torch.Tensor:
    conditioned = pyro.poutine.condition(generator, data={generator.latent_name: codes})
    return conditioned(batch_size=len(codes))


@torch.no_grad()
def latent_arithmetic(generator, classifier, rows: int = 8, num_samples: int = 2000, seed: int = 0, chunk: int = 500) -> ArithmeticResult:
    """Move ``rows`` samples of an unconditional generator to every class by class-vector arithmetic.

    :param generator: an unconditional :class:`~pyro_gen.models.gan.GANGenerator` (a program with a
        latent site ``generator.latent_name``).
    :param classifier: a module mapping a batch of samples to class logits ``(N, num_classes)``,
        e.g. the digit classifier behind the ``mnist28`` feature space
        (:func:`pyro_gen.evaluation.features.domain_classifier`).
    :param rows: source samples to move (the first ``rows`` of the draws).
    :param num_samples: samples drawn to estimate the class vectors.
    :param seed: seeds the draws without touching the global random state.
    :param chunk: samples decoded at once.
    :raises MissingClassError: a class the generator never produced in the draws (no vector to add).
    :raises ConfigError: for a conditional generator (its class is an input, not a direction in
        ``z``) or a classifier whose output is not ``(N, num_classes)`` logits.
    """
    if getattr(generator, "num_classes", None) is not None:
        raise ConfigError(
            "latent arithmetic needs an unconditional generator; a conditional one takes its class as the input y "
            "(vary y with z fixed instead)"
        )
    if num_samples < rows:
        raise ConfigError(f"num_samples ({num_samples}) must be at least rows ({rows})")
    with seeded(seed, next(generator.parameters()).device):
        return _arithmetic(generator, classifier, rows, num_samples, chunk)


def _arithmetic(generator, classifier, rows: int, num_samples: int, chunk: int) -> ArithmeticResult:
    codes = generator.prior().sample((num_samples,))
    labels = []
    for start in range(0, num_samples, chunk):
        logits = classifier(_decode(generator, codes[start : start + chunk]))
        if logits.dim() != 2:
            raise ConfigError(f"the classifier must return (N, num_classes) logits; got shape {tuple(logits.shape)}")
        labels.append(logits.argmax(-1))
    labels = torch.cat(labels)
    num_classes = logits.shape[-1]
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise MissingClassError(
            f"the generator produced no sample of class(es) {missing} in {num_samples} draws, so they have no class vector; "
            "draw more samples (num_samples) or train the generator longer"
        )
    flat = codes.reshape(num_samples, -1)
    vectors = torch.zeros(num_classes, flat.shape[1], device=flat.device, dtype=flat.dtype).index_add_(0, labels, flat)
    vectors = vectors / counts[:, None].to(flat.dtype)
    # z_i - v_{class(i)} + v_c for every source row i and target class c
    style = flat[:rows] - vectors[labels[:rows]]
    moved = (style[:, None, :] + vectors[None, :, :]).reshape((rows * num_classes,) + tuple(codes.shape[1:]))
    images = _decode(generator, moved)
    hits = classifier(images).argmax(-1).reshape(rows, num_classes) == torch.arange(num_classes, device=labels.device)
    return ArithmeticResult(
        images=images.reshape((rows, num_classes) + tuple(images.shape[1:])).cpu(),
        sources=_decode(generator, codes[:rows]).cpu(),
        source_classes=labels[:rows].cpu(),
        target_accuracy=float(hits.float().mean()),
        class_vectors=vectors.reshape((num_classes,) + tuple(codes.shape[1:])).cpu(),
        class_counts=counts.cpu(),
        num_samples=num_samples,
    )
