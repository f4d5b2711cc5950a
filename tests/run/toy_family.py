"""A toy model family, written as a user would add one: a fixed Gaussian "model" with a closed-form likelihood.

``model.kind: toy_gaussian`` fits a diagonal Gaussian to vector data: ``guide.name: mle`` takes the
training split's mean and standard deviation, ``guide.name: prior`` keeps N(0, I). Its test
log-likelihood is exact. This one module and its :func:`register_family` call are all it takes for
``train``, ``evaluate``, ``sample`` and ``compare`` to work on it (``tests/run/test_families.py``).
"""

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from pyro_gen.config import setting
from pyro_gen.families import Family, Scores, register_family


@dataclass
class ToyModelConfig:
    kind: str = "toy_gaussian"


@dataclass
class ToyGuideConfig:
    name: str = setting("mle", choices=("mle", "prior"))


@dataclass
class ToyScores(Scores):
    test_log_likelihood: float | None = None
    guide: str | None = None
    protocol: dict = field(default_factory=dict)

    def summary(self) -> str:
        return f"test log-likelihood {self.test_log_likelihood:.4f} nats per point ({self.guide})"


class ToyGaussianFamily(Family):
    name = "toy_gaussian"
    description = "a diagonal Gaussian with a closed-form likelihood"
    sections = {"model": ToyModelConfig, "guide": ToyGuideConfig}
    scores = ToyScores
    compare_columns = ("guide", "test_log_likelihood")
    example = {"data": {"name": "iris"}, "model": {"kind": "toy_gaussian"}, "guide": "mle"}

    def fit(self, config, splits, run, resume):
        x = splits["train"].x
        loc, scale = (x.mean(0), x.std(0)) if config.guide.name == "mle" else (torch.zeros(x.shape[1]), torch.ones(x.shape[1]))
        run.save_config(config)
        run.write_json("gaussian.json", {"loc": loc.tolist(), "scale": scale.tolist()})
        return {"method": "closed form"}

    def _gaussian(self, run):
        params = run.read_json("gaussian.json", required=True)
        return torch.distributions.Normal(torch.tensor(params["loc"]), torch.tensor(params["scale"]))

    def evaluate(self, config, run, options):
        test = self.load_data(config, ("test",))["test"].x
        log_p = self._gaussian(run).log_prob(test).sum(-1).mean().item()
        record = ToyScores(test_log_likelihood=log_p, guide=config.guide.name, protocol={"estimator": "exact"})
        run.write_scores(record)
        return record

    def sample(self, config, run, num, out, seed):
        from pyro_gen.analysis import scatter_samples

        generator = torch.Generator().manual_seed(seed)
        gaussian = self._gaussian(run)
        points = gaussian.loc + gaussian.scale * torch.randn((num or 500, len(gaussian.loc)), generator=generator)
        test = self.load_data(config, ("test",))["test"].x
        np.save(out.with_suffix(".npy"), points.numpy())
        return [scatter_samples(points, test, config.data.name, out), out.with_suffix(".npy")]


def exact_test_log_likelihood(train: torch.Tensor, test: torch.Tensor) -> float:
    """The same number by hand: the Gaussian log-density formula."""
    loc, scale = train.mean(0), train.std(0)
    z = (test - loc) / scale
    return float((-0.5 * z**2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1).mean())


register_family(ToyGaussianFamily)
