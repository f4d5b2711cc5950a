"""Adversarial objectives, and GANs fitted by the one trainer.

Truths independent of the objective's code: the losses written with
``torch.nn.functional.binary_cross_entropy_with_logits`` / ``logsigmoid`` or by hand; the
gradient penalty of a linear critic ``f(x) = w.x + b`` (gradient ``w`` everywhere, so
``GP = lambda (||w|| - 1)^2``) and of ``f(x) = ||x||^2 / 2`` (gradient ``x``, at interpolates
rebuilt from the same random draws); an uninterrupted run for a resumed one; a run stopped
by design for a diverged one; the data's own mean for a fitted 1-D generator.
"""

import json
import math
from pathlib import Path

import pyro
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_gen import (
    Adversarial,
    ConfigError,
    DataError,
    GANGenerator,
    RunDirError,
    TensorBatches,
    Trainer,
    TrainingDivergedError,
    gan,
    gan_critic,
    make_guide,
    vae,
)
from pyro_gen.data.container import ArrayData
from pyro_gen.infer.adversarial import LOSSES, critic_loss, generator_loss, gradient_penalty
from pyro_gen.infer.trainer import load_checkpoint

REAL = torch.tensor([2.0, 0.5, -1.0, 0.0])
FAKE = torch.tensor([-2.0, 0.0, 1.0, 3.0])


# -- losses on fixed critic outputs ------------------------------------------------------------
def test_bce_losses_equal_the_discriminators_cross_entropy():
    bce = F.binary_cross_entropy_with_logits(REAL, torch.ones(4)) + F.binary_cross_entropy_with_logits(FAKE, torch.zeros(4))
    closed = -(torch.sigmoid(REAL).log().mean() + (1 - torch.sigmoid(FAKE)).log().mean())
    for loss in ("minimax", "non_saturating"):
        assert critic_loss(loss, REAL, FAKE) == pytest.approx(float(bce), abs=1e-6)
        assert critic_loss(loss, REAL, FAKE) == pytest.approx(float(closed), abs=1e-5)


def test_generator_losses_equal_their_formulas():
    # minimax: E log(1 - D(G(z))); non-saturating: -E log D(G(z))
    assert generator_loss("minimax", FAKE) == pytest.approx(float((1 - torch.sigmoid(FAKE)).log().mean()), abs=1e-5)
    assert generator_loss("non_saturating", FAKE) == pytest.approx(float(F.binary_cross_entropy_with_logits(FAKE, torch.ones(4))), abs=1e-6)
    assert generator_loss("non_saturating", FAKE) == pytest.approx(float(-F.logsigmoid(FAKE).mean()), abs=1e-6)
    for loss in ("wgan_gp", "hinge"):
        assert generator_loss(loss, FAKE) == pytest.approx(-0.5)  # -(-2 + 0 + 1 + 3) / 4


def test_wasserstein_and_hinge_critic_losses_by_hand():
    assert critic_loss("wgan_gp", REAL, FAKE) == pytest.approx(0.5 - 0.375)  # mean(fake) - mean(real)
    # relu(1 - real) = [0, .5, 2, 1], relu(1 + fake) = [0, 1, 2, 4]
    assert critic_loss("hinge", REAL, FAKE) == pytest.approx(3.5 / 4 + 7.0 / 4)


def test_unknown_loss_names_are_refused():
    with pytest.raises(ConfigError, match="minimax"):
        critic_loss("lsgan", REAL, FAKE)
    with pytest.raises(ConfigError, match="unknown adversarial loss"):
        Adversarial(nn.Linear(2, 1), "wgan")
    assert set(LOSSES) == {"minimax", "non_saturating", "wgan_gp", "hinge"}


# -- gradient penalty --------------------------------------------------------------------------
def test_gradient_penalty_of_a_linear_critic_is_lambda_times_norm_minus_one_squared():
    critic = nn.Linear(3, 1)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[1.0, 2.0, 2.0]]))  # ||w|| = 3
    real, fake = torch.randn(7, 3), torch.randn(7, 3)
    gp = gradient_penalty(critic, real, fake, weight=10.0)
    assert float(gp.detach()) == pytest.approx(10.0 * (3.0 - 1.0) ** 2)
    # differentiable in the critic: d/dw lambda (||w|| - 1)^2 = 2 lambda (||w|| - 1) w / ||w||
    (grad,) = torch.autograd.grad(gp, critic.weight)
    assert torch.allclose(grad, 2 * 10.0 * (3.0 - 1.0) * critic.weight / 3.0)


def test_gradient_penalty_is_taken_at_random_interpolates():
    """For f(u) = ||u||^2 / 2 the gradient is u itself: GP = mean((||u|| - 1)^2) at u = eps real + (1 - eps) fake."""

    def half_square(u):
        return 0.5 * u.square().sum(-1)

    real, fake = torch.randn(6, 2), 3 * torch.randn(6, 2)
    torch.manual_seed(11)
    gp = gradient_penalty(half_square, real, fake, weight=2.0)
    torch.manual_seed(11)
    eps = torch.rand(6, 1)
    u = eps * real + (1 - eps) * fake
    assert float(gp.detach()) == pytest.approx(float(2.0 * (u.norm(dim=1) - 1).square().mean()), rel=1e-5)


# -- the objective's pieces --------------------------------------------------------------------
def tiny_gan(loss="non_saturating", pack=1, num_classes=None, spectral_norm=False, **options):
    g = gan((2,), latent_dim=2, hidden=(8,), num_classes=num_classes)
    c = gan_critic((2,), hidden=(8,), num_classes=num_classes, pack=pack, spectral_norm=spectral_norm)
    return g, Adversarial(c, loss, **options)


def test_critic_step_loss_is_the_loss_of_the_critic_on_data_and_fresh_samples():
    g, obj = tiny_gan("wgan_gp", gp_weight=0.0)
    x = torch.randn(16, 2)
    pyro.set_rng_seed(3)
    loss = obj.player_loss("critic", g, None, x).item()
    with torch.no_grad():
        pyro.set_rng_seed(3)
        fake = g(batch_size=16)
        assert loss == pytest.approx(float(obj.critic(fake).mean() - obj.critic(x).mean()), abs=1e-6)
    pyro.set_rng_seed(4)
    gen_loss = obj.player_loss("generator", g, None, x).item()
    with torch.no_grad():
        pyro.set_rng_seed(4)
        assert gen_loss == pytest.approx(float(-obj.critic(g(batch_size=16)).mean()), abs=1e-6)
    assert set(obj.last_metrics) == {"critic_real", "critic_fake", "wasserstein"}


def test_nan_in_the_critic_output_raises_a_clear_error():
    class NaNCritic(nn.Module):
        def forward(self, x):
            return torch.full((len(x),), math.nan)

    g = gan((2,), latent_dim=2, hidden=(8,))
    obj = Adversarial(NaNCritic())
    with pytest.raises(TrainingDivergedError, match="critic returned 4 NaN or infinite score"):
        obj.player_loss("critic", g, None, torch.randn(4, 2))
    with pytest.raises(TrainingDivergedError, match="generated samples"):
        obj.player_loss("generator", g, None, torch.randn(4, 2))


def test_critic_output_of_the_wrong_shape_is_explained():
    g = gan((2,), latent_dim=2, hidden=(8,))
    obj = Adversarial(nn.Linear(2, 3))
    with pytest.raises(DataError, match="one score per input"):
        obj.player_loss("critic", g, None, torch.randn(4, 2))


def test_packing_concatenates_consecutive_samples_and_drops_the_remainder():
    _, obj = tiny_gan(pack=3)
    x = torch.arange(14.0).reshape(7, 2)
    assert torch.equal(obj._pack(x), torch.tensor([[0.0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]))
    images = torch.arange(6 * 2 * 2.0).reshape(6, 2, 2, 1)  # (B, C, H, W)
    packed = obj._pack(images)
    assert packed.shape == (2, 6, 2, 1) and torch.equal(packed[1, 2:4], images[4])
    with pytest.raises(DataError, match="smaller than the critic's pack size 3"):
        obj._pack(x[:2])


def test_ema_update_is_the_exponential_moving_average():
    g, obj = tiny_gan(ema_decay=0.9)
    obj.players(g, None)
    before = [p.detach().clone() for p in obj.ema.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, g.parameters()))
    with torch.no_grad():
        for p in g.parameters():
            p.add_(1.0)
    obj.update_ema(g)
    for e, b, p in zip(obj.ema.parameters(), before, g.parameters()):
        assert torch.allclose(e, 0.9 * b + 0.1 * p)
        assert not e.requires_grad


def test_players_refuse_generators_and_critics_that_do_not_fit_together():
    g28 = gan((1, 28, 28), latent_dim=2, net="dcgan", channels=(4, 4))
    critic32 = gan_critic((1, 32, 32), net="dcgan", channels=(4, 4))
    with pytest.raises(ConfigError, match=r"\(1, 28, 28\) but the critic was built for \(1, 32, 32\)"):
        Adversarial(critic32).players(g28, None)
    g_cond, obj = tiny_gan(num_classes=3)
    with pytest.raises(ConfigError, match="num_classes=None but the critic has num_classes=3"):
        obj.players(gan((2,), hidden=(8,)), None)
    with pytest.raises(ConfigError, match="num_classes=4 but the critic has num_classes=3"):
        obj.players(gan((2,), hidden=(8,), num_classes=4), None)
    with pytest.raises(ConfigError, match="guide=None"):
        obj.players(g_cond, nn.Linear(1, 1))
    with pytest.raises(ConfigError, match="conditional critics"):
        tiny_gan(pack=2, num_classes=3)
    with pytest.raises(ConfigError, match="n_critic"):
        tiny_gan(n_critic=0)


def test_conditional_objective_needs_labelled_batches_and_checks_the_label_count():
    g, obj = tiny_gan(num_classes=3)
    assert obj.needs_labels
    with pytest.raises(DataError, match=r"labelled batches \(x, y\)"):
        obj.player_loss("critic", g, None, torch.randn(4, 2))
    with pytest.raises(DataError, match="3 class labels for 4 samples"):
        obj.player_loss("critic", g, None, (torch.randn(4, 2), torch.tensor([0, 1, 2])))
    loss = obj.player_loss("critic", g, None, (torch.randn(4, 2), torch.tensor([0, 1, 2, 2])))
    assert loss.shape == () and torch.isfinite(loss)


# -- the one trainer -----------------------------------------------------------------------------
def ring(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    angle = 2 * math.pi * torch.randint(8, (n,), generator=g) / 8
    return torch.stack([2 * angle.cos(), 2 * angle.sin()], -1) + 0.02 * torch.randn(n, 2, generator=g)


def make_gan(init_seed=0, **options):
    torch.manual_seed(init_seed)
    return tiny_gan(**options)


def gan_trainer(g, obj, **kwargs):
    kwargs = {"lr": 1e-3, "batch_size": 8, "epochs": 3, "progress": False, **kwargs}
    return Trainer(g, None, obj, **kwargs)


def states(g, obj) -> dict:
    return {**{f"g.{k}": v.clone() for k, v in g.state_dict().items()}, **{f"o.{k}": v.clone() for k, v in obj.state_dict().items()}}


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def without_seconds(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


class Recording(Adversarial):
    """Records which player stepped on which batch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def player_loss(self, player, *args, **kwargs):
        self.calls.append(player)
        return super().player_loss(player, *args, **kwargs)


def test_the_critic_steps_n_critic_times_per_generator_step_across_epochs():
    torch.manual_seed(0)
    g = gan((2,), latent_dim=2, hidden=(8,))
    obj = Recording(gan_critic((2,), hidden=(8,)), "wgan_gp", n_critic=3)
    history = gan_trainer(g, obj, epochs=2).fit(ring(32))  # 4 batches per epoch
    c, G = "critic", "generator"
    assert obj.calls == [c, c, c, G, c, c, c, G, c, c]  # the 3-batch cycle runs on over the epoch boundary
    assert {"train_loss", "train_critic_loss", "train_generator_loss", "train_wasserstein", "train_gradient_penalty"} <= history[0].keys()
    assert history[0]["train_loss"] == history[0]["train_critic_loss"]


def test_each_player_has_its_own_optimizer_learning_rate_and_betas():
    g, obj = make_gan(lr_critic=4e-4, betas=(0.0, 0.9))
    trainer = gan_trainer(g, obj, lr=1e-4, epochs=1)
    trainer.fit(ring(16))
    critic_group, generator_group = trainer.optimizers["critic"].param_groups[0], trainer.optimizers["generator"].param_groups[0]
    assert (critic_group["lr"], critic_group["betas"]) == (4e-4, (0.0, 0.9))
    assert (generator_group["lr"], generator_group["betas"]) == (1e-4, (0.0, 0.9))  # no lr_generator: the trainer's lr
    assert {id(p) for p in critic_group["params"]} == {id(p) for p in obj.critic.parameters()}
    assert {id(p) for p in generator_group["params"]} == {id(p) for p in g.parameters()}


def test_only_the_player_whose_turn_it_is_moves():
    g, obj = make_gan(n_critic=10)  # 2 batches: the generator never gets a turn
    g0, c0 = [p.clone() for p in g.parameters()], [p.clone() for p in obj.critic.parameters()]
    gan_trainer(g, obj, epochs=1).fit(ring(16))
    assert all(torch.equal(a, b) for a, b in zip(g0, g.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(c0, obj.critic.parameters()))


@pytest.mark.parametrize("loss", ["non_saturating", "wgan_gp"])
def test_gan_resume_reproduces_an_uninterrupted_run_bit_for_bit(tmp_path, loss):
    """Spectral norm vectors, the EMA copy, both Adam states, the global critic/generator cycle and the
    gradient penalty's random draws must all survive the interruption."""
    options = {"loss": loss, "n_critic": 3, "ema_decay": 0.9, "spectral_norm": True, "lr_critic": 2e-3}
    train, valid = ring(40), ring(16, seed=1)  # 5 batches per epoch: the 3-cycle crosses epoch boundaries
    g, obj = make_gan(**options)
    full = gan_trainer(g, obj, epochs=4, run_dir=tmp_path / "a").fit(train, valid)

    g_b, obj_b = make_gan(**options)
    gan_trainer(g_b, obj_b, epochs=2, run_dir=tmp_path / "b").fit(train, valid)
    g_r, obj_r = make_gan(init_seed=99, **options)  # everything must come from last.pt
    torch.manual_seed(12345)
    resumed = gan_trainer(g_r, obj_r, epochs=4, run_dir=tmp_path / "b").fit(train, valid, resume=True)

    a, r = states(g, obj), states(g_r, obj_r)
    assert a.keys() == r.keys() and any(".ema." in k or k.startswith("o.ema.") for k in a) and any(k.endswith("_u") for k in a)
    for k in a:
        assert torch.equal(a[k], r[k]), k
    assert without_seconds(full) == without_seconds(resumed)
    assert without_seconds(read_metrics(tmp_path / "a")) == without_seconds(read_metrics(tmp_path / "b"))
    last_a, last_b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert last_a["step"] == last_b["step"] == 20
    for name in ("critic", "generator"):
        for k, v in last_a["optimizers"][name]["state"].items():
            for s in v:
                assert torch.equal(v[s], last_b["optimizers"][name]["state"][k][s])


def test_gan_checkpoints_hold_both_players_and_both_optimizers(tmp_path):
    g, obj = make_gan(ema_decay=0.5)
    gan_trainer(g, obj, epochs=1, run_dir=tmp_path).fit(ring(16))
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert set(ckpt["optimizers"]) == {"critic", "generator"} and "optimizer" not in ckpt
    assert all(ckpt["optimizers"][n]["state"] for n in ("critic", "generator"))
    assert ckpt["guide"] == {}
    for k, v in g.state_dict().items():
        assert torch.equal(ckpt["model"][k], v)
    for k, v in obj.critic.state_dict().items():
        assert torch.equal(ckpt["objective"][f"critic.{k}"], v)
    assert any(k.startswith("ema.") for k in ckpt["objective"])


def test_resuming_with_the_other_kind_of_objective_is_a_clear_error(tmp_path):
    g, obj = make_gan()
    gan_trainer(g, obj, epochs=1, run_dir=tmp_path / "gan").fit(ring(16))
    model = vae((2,), 2, hidden=(8,), likelihood="gaussian")
    with pytest.raises(RunDirError, match="resume with the objective that wrote it"):
        Trainer(model, make_guide("normal", model, hidden=(8,)), epochs=2, progress=False, run_dir=tmp_path / "gan").fit(
            ring(16), resume=True
        )
    Trainer(model, make_guide("normal", model, hidden=(8,)), epochs=1, progress=False, run_dir=tmp_path / "vae").fit(ring(16))
    with pytest.raises(RunDirError, match="resume with the objective that wrote it"):
        gan_trainer(*make_gan(), epochs=2, run_dir=tmp_path / "vae").fit(ring(16), resume=True)


def test_no_guide_is_refused_for_objectives_that_need_one():
    model = vae((2,), 2, hidden=(8,), likelihood="gaussian")
    with pytest.raises(ConfigError, match="give a guide"):
        Trainer(model, None, "elbo")


class NaNAtEpoch(Adversarial):
    def player_loss(self, player, *args, **kwargs):
        loss = super().player_loss(player, *args, **kwargs)
        return loss * math.nan if self.epoch >= 2 and player == "generator" else loss


def test_a_diverging_gan_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    x = ring(32)
    torch.manual_seed(0)
    g = gan((2,), latent_dim=2, hidden=(8,))
    obj = NaNAtEpoch(gan_critic((2,), hidden=(8,)))
    with pytest.raises(TrainingDivergedError, match="generator's loss became nan at epoch 3, step 1"):
        gan_trainer(g, obj, epochs=5, run_dir=tmp_path / "bad").fit(x)
    g_ref, obj_ref = make_gan()
    gan_trainer(g_ref, obj_ref, epochs=2, run_dir=tmp_path / "good").fit(x)
    last = load_checkpoint(tmp_path / "bad" / "last.pt")
    assert last["epoch"] == 2 and len(read_metrics(tmp_path / "bad")) == 2
    for k, v in g_ref.state_dict().items():
        assert torch.equal(last["model"][k], v)
    for k, v in obj_ref.state_dict().items():
        assert torch.equal(last["objective"][k], v)


def test_nan_critic_scores_during_training_name_the_epoch_and_keep_the_checkpoint(tmp_path):
    class Poisoned(nn.Module):
        """A linear critic whose scores become NaN from its 25th call on: epoch 3 (4 batches of 3 calls per epoch)."""

        def __init__(self):
            super().__init__()
            self.linear, self.calls = nn.Linear(2, 1), 0

        def forward(self, x):
            self.calls += 1
            out = self.linear(x).squeeze(-1)
            return out * math.nan if self.calls > 8 * 3 else out

    torch.manual_seed(0)
    g = gan((2,), latent_dim=2, hidden=(8,))
    obj = Adversarial(Poisoned(), "hinge")  # critic step: data + samples; generator step: samples: 3 calls per batch
    with pytest.raises(TrainingDivergedError, match=r"critic returned .* \(at epoch 3, step 1\); training stopped"):
        gan_trainer(g, obj, epochs=4, run_dir=tmp_path).fit(ring(32))
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2


def test_a_conditional_gan_trains_on_a_labelled_dataset():
    x = ring(32)
    labels = (torch.atan2(x[:, 1], x[:, 0]) / (2 * math.pi / 8)).round().long() % 8
    data = ArrayData(x, labels, name="ring8")
    g, obj = make_gan(num_classes=8)
    history = gan_trainer(g, obj, epochs=2).fit(data, data)
    assert len(history) == 2 and math.isfinite(history[-1]["valid_loss"])
    with pytest.raises(DataError, match="labelled batches"):
        gan_trainer(*make_gan(num_classes=8), epochs=1).fit(x)  # a bare tensor has no labels
    labelled = TensorBatches(x, 8, y=labels)
    assert gan_trainer(*make_gan(num_classes=8), epochs=1).fit(labelled)[0]["epoch"] == 1


def test_a_linear_generator_learns_the_mean_and_scale_of_1d_gaussian_data():
    torch.manual_seed(0)
    x = 3.0 + 0.5 * torch.randn(1024, 1)
    g = GANGenerator(nn.Linear(1, 1), (1,), (1,))
    critic = gan_critic((1,), hidden=(16, 16))
    gan_trainer(g, Adversarial(critic, "non_saturating"), lr=2e-2, batch_size=128, epochs=25).fit(x)
    with torch.no_grad():
        samples = g(batch_size=20000)
    assert float(samples.mean()) == pytest.approx(3.0, abs=0.25)  # from about 0 at initialization
    assert float(samples.std()) == pytest.approx(0.5, abs=0.15)
