"""Mixed precision (``Trainer(precision="bf16")``, ``train.precision: bf16``): the networks run in bfloat16, every
density and the loss in float32 (issue #12 item 3).

CPU autocast to bfloat16 is the same mechanism as CUDA's, so these run everywhere. Truths: the dtype each
convolution actually produced (forward hooks), the dtype of every site's parameters and log-density, and the
float32 loss at the same weights and noise (bf16 keeps 8 bits of mantissa: agreement to ~1%, not to 1e-6).
"""

import pyro
import pytest
import torch

from pyro_gen import Trainer, make_guide, vae
from pyro_gen.config import load_config
from pyro_gen.errors import ConfigError
from pyro_gen.infer.adversarial import Adversarial
from pyro_gen.infer.objectives import MaximumLikelihood
from pyro_gen.infer.precision import training_autocast
from pyro_gen.infer.traces import get_traces, traced_only
from pyro_gen.models.gan import gan, gan_critic
from pyro_gen.models.pixelcnn import pixelcnn
from pyro_gen.run import check_config

CPU = torch.device("cpu")


def _conv_vae():
    torch.manual_seed(0)
    model = vae((1, 8, 8), latent_dim=3, hidden=(8,), net="conv")
    return model, make_guide("planar:2", model, hidden=(8,), net="conv")


def _conv_dtypes(*modules) -> list:
    """The dtypes of every convolution's outputs, recorded by forward hooks as the modules run."""
    seen = []
    for m in (m for module in modules for m in module.modules()):
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "traced"])
def test_networks_run_in_bf16_and_every_density_in_float32(direct):
    model, guide = _conv_vae()
    x = torch.rand(6, 1, 8, 8).round()
    seen = _conv_dtypes(model, guide)
    with training_autocast("bf16", CPU), torch.no_grad() if direct else traced_only():
        model_trace, guide_trace = get_traces(model, guide, x, data_size=6)
        for trace in (model_trace, guide_trace):
            for name, site in trace.nodes.items():
                if site["type"] != "sample" or name == "data":
                    continue
                assert site["value"].dtype == torch.float32, name
                assert site["fn"].log_prob(site["value"]).dtype == torch.float32, name
    assert seen and all(d == torch.bfloat16 for d in seen)  # the encoder's and the decoder's convolutions


def test_a_bf16_step_is_the_float32_step_to_bf16_accuracy_and_trains():
    model, guide = _conv_vae()
    x = torch.rand(32, 1, 8, 8).round()
    trainer = Trainer(model, guide, "elbo", batch_size=16, epochs=2, progress=False, precision="bf16")
    pyro.set_rng_seed(1)
    exact = Trainer(model, guide, "elbo", progress=False)._step_loss(x, 32)
    pyro.set_rng_seed(1)
    low = trainer._step_loss(x, 32)
    assert low.dtype == torch.float32
    assert abs(low.item() - exact.item()) < 0.02 * abs(exact.item())
    trainer.fit(x)
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in trainer.history)


def test_pixelcnn_logits_may_be_bf16_but_its_log_likelihood_is_float32():
    torch.manual_seed(0)
    model = pixelcnn((1, 6, 6), levels=2, channels=8, layers=2, first_kernel=3)
    x = torch.rand(4, 1, 6, 6).round()
    exact = MaximumLikelihood()(model, None, x)
    with training_autocast("bf16", CPU):
        low = MaximumLikelihood()(model, None, x)
    assert low.dtype == torch.float32
    assert abs(low.item() - exact.item()) < 0.02 * abs(exact.item())
    Trainer(model, None, "mle", batch_size=2, epochs=1, progress=False, precision="bf16").fit(x)


def test_a_dcgan_trains_with_bf16_and_its_critic_scores_are_float32():
    torch.manual_seed(0)
    generator = gan((1, 8, 8), latent_dim=4, net="dcgan", channels=[8, 4])
    objective = Adversarial(gan_critic((1, 8, 8), net="dcgan", channels=[4, 8]), "wgan_gp", gp_weight=10.0)
    seen = _conv_dtypes(objective.critic)
    with training_autocast("bf16", CPU):
        scores = objective.score(torch.rand(3, 1, 8, 8))
    assert scores.dtype == torch.float32 and seen[-1] == torch.bfloat16
    trainer = Trainer(generator, None, objective, batch_size=8, epochs=1, progress=False, precision="bf16")
    trainer.fit(torch.rand(16, 1, 8, 8))
    assert trainer.history and all(torch.isfinite(torch.tensor(v)) for h in trainer.history for k, v in h.items() if k.endswith("loss"))


def test_precision_is_checked_by_name():
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        Trainer(*_conv_vae(), precision="fp8")
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(None, ["train.precision=fp16"])
    for kind, reason in (("flow", "log-determinant"), ("gmm", "no networks")):
        config = load_config(
            None, [f"model.kind={kind}", "data.name=gmm2d" if kind == "gmm" else "data.name=ring8", "train.precision=bf16"]
        )
        with pytest.raises(ConfigError, match=f"train.precision: bf16 is not available for model.kind: {kind}: .*{reason}"):
            check_config(config)
    check_config(load_config(None, ["train.precision=bf16"]))  # a VAE takes it
