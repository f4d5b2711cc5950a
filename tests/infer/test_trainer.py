"""The trainer: reproducibility, exact resume, safe checkpoints, metrics, early stopping, divergence.

The truths these tests check against do not come from the trainer itself: an uninterrupted run
for a resumed one, Pyro's own ``Trace_ELBO`` for the logged losses, the exact marginal likelihood
of factor-analysis data for learning, and objectives whose loss per epoch is fixed in advance
for the early-stopping and best-checkpoint bookkeeping.
"""

import hashlib
import json
import math
import os
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from pyro_gen import (
    ELBO,
    ConfigError,
    DataError,
    Latent,
    LatentModel,
    RunDirError,
    TensorBatches,
    TraceObjective,
    Trainer,
    TrainingDivergedError,
    make_guide,
    make_likelihood,
    vae,
)
from pyro_gen.infer.trainer import CHECKPOINT_FORMAT, CHECKPOINT_TRAILER, atomic_save, initialize, load_checkpoint

DATA_SHAPE, LATENT, HIDDEN = (6,), 2, (8,)


# -- helpers -----------------------------------------------------------------------------
def make_pair(init_seed=0, guide="normal"):
    """A tiny VAE and its guide, initialised from ``init_seed`` (independent of the trainer's seed)."""
    torch.manual_seed(init_seed)
    model = vae(DATA_SHAPE, LATENT, hidden=HIDDEN)
    return model, make_guide(guide, model, hidden=HIDDEN)


def binary_data(n, p=0.3, seed=0):
    return torch.bernoulli(torch.full((n, *DATA_SHAPE), p), generator=torch.Generator().manual_seed(seed))


def make_trainer(model, guide, objective="elbo", **kwargs):
    kwargs = {"lr": 1e-2, "batch_size": 8, "epochs": 3, "progress": False, **kwargs}
    return Trainer(model, guide, objective, **kwargs)


def state(model, guide) -> dict:
    return {
        **{f"model.{k}": v.clone() for k, v in model.state_dict().items()},
        **{f"guide.{k}": v.clone() for k, v in guide.state_dict().items()},
    }


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def without_seconds(records) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def pyro_negative_elbo(model, guide, x, num_particles=500):
    """-ELBO per datapoint by Pyro's Trace_ELBO (Monte Carlo KL): an implementation independent of pyro_gen's."""
    with pyro.settings.context(module_local_params=True), torch.no_grad():
        pyro.set_rng_seed(123)
        elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
        return elbo.loss(model, guide, x) / len(x)


class ScheduledLoss(TraceObjective):
    """A loss fixed in advance for each epoch; the parameters get zero gradient and never move.

    The validation curve is then known exactly, so the trainer's bookkeeping can be checked against it.
    """

    def __init__(self, model, values):
        super().__init__()
        self.model, self.values = model, values

    def loss(self, model_trace, guide_trace):
        anchor = 0.0 * sum(p.sum() for p in self.model.parameters())  # keeps loss.backward() valid
        return anchor + self.values[self.epoch]


# -- TensorBatches -------------------------------------------------------------------------
def test_tensor_batches_cover_every_datapoint_once_and_reshuffle_per_epoch():
    x = torch.arange(10.0).unsqueeze(-1)
    batches = TensorBatches(x, batch_size=3, seed=1)
    orders = []
    for epoch in (0, 1):
        batches.set_epoch(epoch)
        first = torch.cat(list(batches))
        assert torch.equal(torch.cat(list(batches)), first)  # same epoch, same order
        assert torch.equal(first.sort(0).values, x)  # a permutation of the data
        assert [len(b) for b in batches] == [3, 3, 3, 1]
        orders.append(first)
    assert not torch.equal(orders[0], orders[1])
    assert len(TensorBatches(x, batch_size=3, drop_last=True)) == 3


# -- reproducibility -------------------------------------------------------------------------
def test_same_seed_gives_identical_history_and_parameters_and_another_seed_does_not():
    x, v = binary_data(32), binary_data(16, seed=1)
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        model, guide = make_pair(init_seed=0)
        history = make_trainer(model, guide, seed=seed).fit(x, v)
        runs[name] = (without_seconds(history), state(model, guide))
    assert runs["a"][0] == runs["b"][0]
    assert_same_state(runs["a"][1], runs["b"][1])
    assert runs["a"][0] != runs["c"][0]
    assert any(not torch.equal(runs["a"][1][k], runs["c"][1][k]) for k in runs["a"][1])


# -- exact resume ------------------------------------------------------------------------------
@pytest.mark.parametrize("guide_name", ["normal", "iaf:2"])
@pytest.mark.parametrize("binarize", [False, True], ids=["static", "dynamic-binarization"])
def test_resume_reproduces_an_uninterrupted_run_bit_for_bit(tmp_path, guide_name, binarize):
    if binarize:
        # a fresh Bernoulli draw of every batch: the generator state must be restored too
        probs = torch.rand(32, *DATA_SHAPE, generator=torch.Generator().manual_seed(7))
        train = TensorBatches(probs, batch_size=8, seed=5, transform=lambda b, g: torch.bernoulli(b, generator=g))
    else:
        train = binary_data(32)
    valid = binary_data(16, seed=1)
    epochs, interrupted_at = 4, 2

    model, guide = make_pair(guide=guide_name)
    full = make_trainer(model, guide, epochs=epochs, run_dir=tmp_path / "a", patience=10).fit(train, valid)

    model_b, guide_b = make_pair(guide=guide_name)
    make_trainer(model_b, guide_b, epochs=interrupted_at, run_dir=tmp_path / "b", patience=10).fit(train, valid)
    # a differently initialised pair: everything the resumed run needs must come from last.pt
    model_r, guide_r = make_pair(init_seed=99, guide=guide_name)
    torch.manual_seed(12345)
    resumed = make_trainer(model_r, guide_r, epochs=epochs, run_dir=tmp_path / "b", patience=10).fit(train, valid, resume=True)

    assert_same_state(state(model, guide), state(model_r, guide_r))
    assert without_seconds(read_metrics(tmp_path / "a")) == without_seconds(read_metrics(tmp_path / "b"))
    assert without_seconds(full) == without_seconds(resumed)
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4]
    last_a, last_b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert last_a["epoch"] == last_b["epoch"] == epochs
    assert last_a["best_valid"] == last_b["best_valid"]
    for k, v in last_a["optimizer"]["state"].items():  # Adam moments continue, not restart
        for name in v:
            assert torch.equal(v[name], last_b["optimizer"]["state"][k][name])


def test_resume_restores_the_early_stopping_state(tmp_path):
    """Valid losses 1, 2, 3, 0.5 with patience 2 stop after epoch 3, interrupted at epoch 2 or not."""
    values, x, v = [1.0, 2.0, 3.0, 0.5], binary_data(16), binary_data(8, seed=1)
    model, guide = make_pair()
    full = make_trainer(model, guide, ScheduledLoss(model, values), epochs=4, patience=2, run_dir=tmp_path / "a").fit(x, v)
    assert [r["valid_loss"] for r in full] == [1.0, 2.0, 3.0]

    model, guide = make_pair()
    make_trainer(model, guide, ScheduledLoss(model, values), epochs=2, patience=2, run_dir=tmp_path / "b").fit(x, v)
    model, guide = make_pair()
    resumed = make_trainer(model, guide, ScheduledLoss(model, values), epochs=4, patience=2, run_dir=tmp_path / "b").fit(x, v, resume=True)
    assert without_seconds(resumed) == without_seconds(full)
    assert load_checkpoint(tmp_path / "b" / "best.pt")["epoch"] == 1


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    model, guide = make_pair()
    with pytest.raises(ConfigError, match="run_dir"):
        make_trainer(model, guide).fit(binary_data(8), resume=True)
    with pytest.raises(RunDirError, match="last.pt"):
        make_trainer(model, guide, run_dir=tmp_path / "empty").fit(binary_data(8), resume=True)


# -- checkpoints -------------------------------------------------------------------------------
def test_checkpoints_hold_the_trained_weights_and_load_with_weights_only(tmp_path):
    model, guide = make_pair()
    make_trainer(model, guide, epochs=2, run_dir=tmp_path).fit(binary_data(16), binary_data(8, seed=1))
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(tmp_path / name, weights_only=True)  # torch reads the file itself: the digest trailer is after the zip
        assert ckpt["format"] == CHECKPOINT_FORMAT
    # the file: a plain torch file, then the trailer with the SHA-256 of everything before it
    data = (tmp_path / "last.pt").read_bytes()
    payload, digest = data.rsplit(CHECKPOINT_TRAILER, 1)
    assert digest == hashlib.sha256(payload).hexdigest().encode() + b"\n"
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["epoch"] == 2
    assert_same_state(
        {**{f"model.{k}": v for k, v in last["model"].items()}, **{f"guide.{k}": v for k, v in last["guide"].items()}}, state(model, guide)
    )


class _Payload:
    """Unpickling this runs ``os.mkdir(path)``: the stand-in for a malicious checkpoint."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


class _Plain:
    pass


def test_load_checkpoint_rejects_foreign_and_broken_files_naming_the_path(tmp_path):
    model, guide = make_pair()
    make_trainer(model, guide, epochs=1, run_dir=tmp_path / "run").fit(binary_data(8))
    real = (tmp_path / "run" / "last.pt").read_bytes()

    plain_dict = tmp_path / "plain.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 1}, plain_dict)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint\n" * 20)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(real[: len(real) // 2])
    with_object = tmp_path / "object.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "epoch": 1, "extra": _Plain()}, with_object)
    not_a_dict = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), not_a_dict)

    for path in (plain_dict, garbage, truncated, with_object, not_a_dict, tmp_path / "missing.pt"):
        with pytest.raises(RunDirError) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)


def test_load_checkpoint_runs_no_code_from_the_file(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "epoch": 1, "model": _Payload(marker)}, path)
    with pytest.raises(RunDirError, match="evil.pt"):
        load_checkpoint(path)
    assert not marker.exists()
    # control: the payload is live, an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.is_dir()


def test_atomic_save_leaves_only_the_target_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"a": torch.arange(3)}, path)
    atomic_save({"a": torch.arange(4)}, path)  # replaces
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(4))


def test_atomic_save_keeps_the_old_file_when_saving_fails_midway(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_save({"a": torch.arange(3)}, path)
    old = path.read_bytes()
    written = []

    def save_half_then_fail(obj, f, *args, **kwargs):
        written.append(Path(f))
        Path(f).write_bytes(old[: len(old) // 2])  # a half-written file, like a full disk or a kill
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": torch.arange(5)}, path)
    monkeypatch.undo()
    assert written and written[0] != path  # the failing write went elsewhere ...
    assert path.read_bytes() == old  # ... so the old checkpoint is intact
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # and no temporary file is left behind
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(3))


# -- metrics, best checkpoint, early stopping -----------------------------------------------------
def test_metrics_jsonl_has_one_record_per_epoch(tmp_path):
    model, guide = make_pair()
    history = make_trainer(model, guide, epochs=3, run_dir=tmp_path / "v").fit(binary_data(16), binary_data(8, seed=1))
    records = read_metrics(tmp_path / "v")
    assert records == history  # JSON round-trips floats exactly
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for r in records:
        assert {"epoch", "train_loss", "seconds", "valid_loss"} <= r.keys()
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["valid_loss"]) and r["seconds"] >= 0

    model, guide = make_pair()
    make_trainer(model, guide, epochs=2, run_dir=tmp_path / "nv").fit(binary_data(16))
    assert [("valid_loss" in r) for r in read_metrics(tmp_path / "nv")] == [False, False]


def test_logged_losses_are_the_negative_elbo_per_datapoint():
    """With lr=0 the parameters stay put, so both losses must match Pyro's -ELBO estimate at those parameters."""
    model, guide = make_pair()
    train, valid = binary_data(64, p=0.2), binary_data(64, p=0.8, seed=1)
    (record,) = make_trainer(model, guide, lr=0.0, batch_size=16, epochs=1).fit(train, valid)
    expected_train, expected_valid = pyro_negative_elbo(model, guide, train), pyro_negative_elbo(model, guide, valid)
    assert abs(expected_train - expected_valid) > 0.3  # the two data sets are told apart
    assert record["train_loss"] == pytest.approx(expected_train, abs=0.1)
    assert record["valid_loss"] == pytest.approx(expected_valid, abs=0.1)


def test_validation_loss_ignores_the_kl_warm_up_and_free_bits():
    """Model selection compares the same bound every epoch.

    With lr=0 nothing moves, so the validation loss must stay at Pyro's -ELBO (beta = 1) through a
    warm-up whose early epochs weight the KL by 1/5, 2/5, ...: scored with the training loss, the
    first epoch would look best and early stopping would keep a warm-up checkpoint.
    """
    model, guide = make_pair()
    train, valid = binary_data(64, p=0.2), binary_data(64, p=0.8, seed=1)
    objective = ELBO(warmup_epochs=4, free_bits=0.5)
    history = make_trainer(model, guide, objective, lr=0.0, batch_size=16, epochs=3).fit(train, valid)
    expected = pyro_negative_elbo(model, guide, valid)
    for record in history:
        assert record["valid_loss"] == pytest.approx(expected, abs=0.1)
    assert history[0]["beta"] == pytest.approx(0.2)  # the training loss did see the schedule


def test_best_checkpoint_is_written_on_improvement_only(tmp_path):
    values = [3.0, 1.0, 2.0, 0.5, 0.5]  # a tie is no improvement
    model, guide = make_pair()
    history = make_trainer(model, guide, ScheduledLoss(model, values), epochs=5, run_dir=tmp_path).fit(
        binary_data(16), binary_data(8, seed=1)
    )
    assert [r["valid_loss"] for r in history] == values
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert (best["epoch"], best["best_valid"]) == (4, 0.5)
    assert (last["epoch"], last["best_valid"], last["bad_epochs"]) == (5, 0.5, 1)


@pytest.mark.parametrize("patience, epochs_run", [(None, 5), (2, 3), (3, 5)])
def test_early_stopping_after_patience_epochs_without_improvement(tmp_path, patience, epochs_run):
    """Valid losses 1, 2, 3, 0.5, 0.1: patience 2 stops after epoch 3; patience 3 reaches the improvement at epoch 4."""
    values = [1.0, 2.0, 3.0, 0.5, 0.1]
    model, guide = make_pair()
    trainer = make_trainer(model, guide, ScheduledLoss(model, values), epochs=5, patience=patience, run_dir=tmp_path)
    history = trainer.fit(binary_data(16), binary_data(8, seed=1))
    assert [r["epoch"] for r in history] == list(range(1, epochs_run + 1))
    assert len(read_metrics(tmp_path)) == epochs_run
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == epochs_run


def test_fitting_twice_returns_only_the_second_runs_records(tmp_path):
    """A fresh (non-resumed) fit starts a new history, like the metrics.jsonl it rewrites."""
    model, guide = make_pair()
    trainer = make_trainer(model, guide, epochs=2, run_dir=tmp_path)
    trainer.fit(binary_data(16))
    history = trainer.fit(binary_data(16))
    assert [r["epoch"] for r in history] == [1, 2]
    assert history == read_metrics(tmp_path)


# -- divergence ----------------------------------------------------------------------------------
class BadLossAtEpoch(ELBO):
    """The ELBO, except that the loss is ``bad`` from the given (0-based) epoch on."""

    def __init__(self, epoch, bad):
        super().__init__()
        self.bad_epoch, self.bad = epoch, bad

    def loss(self, model_trace, guide_trace):
        loss = super().loss(model_trace, guide_trace)
        return loss * self.bad if self.epoch >= self.bad_epoch else loss


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, bad):
    x = binary_data(32)
    model, guide = make_pair()
    with pytest.raises(TrainingDivergedError, match="at epoch 3"):
        make_trainer(model, guide, BadLossAtEpoch(2, bad), epochs=5, run_dir=tmp_path / "bad").fit(x)
    # the reference: the same run, stopped by design after the two good epochs
    model, guide = make_pair()
    make_trainer(model, guide, epochs=2, run_dir=tmp_path / "good").fit(x)
    last = load_checkpoint(tmp_path / "bad" / "last.pt")
    assert last["epoch"] == 2
    for k, v in model.state_dict().items():
        assert torch.equal(last["model"][k], v)
    assert len(read_metrics(tmp_path / "bad")) == 2


def test_non_finite_loss_in_the_first_epoch_writes_no_checkpoint(tmp_path):
    model, guide = make_pair()
    with pytest.raises(TrainingDivergedError, match="at epoch 1"):
        make_trainer(model, guide, BadLossAtEpoch(0, math.nan), run_dir=tmp_path).fit(binary_data(16))
    assert not (tmp_path / "last.pt").exists()


def test_non_finite_gradient_on_an_epochs_last_step_does_not_poison_last_pt(tmp_path):
    """A finite loss with a NaN gradient turns the parameters to NaN; the checkpoint of that epoch is not 'good'."""
    model, guide = make_pair()
    steps = []

    def nan_gradient_on_step_8(model_trace, guide_trace):
        steps.append(1)
        loss = -model_trace.nodes["x"]["fn"].log_prob(model_trace.nodes["x"]["value"]).mean()
        if len(steps) == 8:  # the last of 4 steps of epoch 2; sqrt'(0) * 0 = nan
            loss = loss + torch.sqrt(0.0 * sum(p.sum() for p in model.parameters()))
        return loss

    with pytest.raises(TrainingDivergedError, match="at epoch 2"):
        make_trainer(model, guide, nan_gradient_on_step_8, epochs=4, run_dir=tmp_path).fit(binary_data(32))
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in [*last["model"].values(), *last["guide"].values()])


# -- device and progress ---------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_config_error():
    model, guide = make_pair()
    with pytest.raises(ConfigError, match="cuda"):
        Trainer(model, guide, device="cuda")


def test_progress_bar_is_shown_only_when_asked(capsys):
    model, guide = make_pair()
    make_trainer(model, guide, epochs=2, progress=True).fit(binary_data(16))
    assert "epoch 1/2" in capsys.readouterr().err
    make_trainer(model, guide, epochs=2, progress=False).fit(binary_data(16))
    captured = capsys.readouterr()
    assert "epoch" not in captured.err + captured.out


# -- learning --------------------------------------------------------------------------------------
def test_training_approaches_the_true_likelihood_of_factor_analysis_data():
    """ELBO after training on x = W z + mu + noise must close most of the gap to the true mean log-likelihood."""
    d, k, n, sigma = 6, 2, 128, 0.3
    g = torch.Generator().manual_seed(0)
    w, mu = torch.randn(d, k, generator=g), torch.randn(d, generator=g)
    x = torch.randn(n, k, generator=g) @ w.T + mu + sigma * torch.randn(n, d, generator=g)
    true_ll = float(dist.MultivariateNormal(mu, w @ w.T + sigma**2 * torch.eye(d)).log_prob(x).mean())

    torch.manual_seed(0)
    model = LatentModel([Latent("z", shape=(k,))], nn.Linear(k, d), make_likelihood("gaussian", data_shape=(d,), scale="learned"), (d,))
    guide = make_guide("normal", model, hidden=HIDDEN)
    with pyro.settings.context(module_local_params=True):
        initialize(model, guide, x)
    before = -pyro_negative_elbo(model, guide, x, num_particles=200)
    history = make_trainer(model, guide, lr=2e-2, batch_size=32, epochs=30).fit(x)
    after = -pyro_negative_elbo(model, guide, x, num_particles=200)

    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert after - before > 0.75 * (true_ll - before)
    assert after < true_ll + 0.5  # a lower bound: it cannot beat the likelihood by much (MLE and MC slack only)


# -- data checks: the whole dataset once, then per batch only where batches are transformed -----------
def test_bad_values_anywhere_in_the_training_or_validation_tensor_stop_the_fit_before_any_step(tmp_path):
    model, guide = make_pair()
    before = state(model, guide)
    bad = binary_data(64)
    bad[50, 3] = float("nan")  # not in the first batch, which initialize() sees
    with pytest.raises(DataError, match="the training data: the data contain 1 NaN or infinite"):
        make_trainer(model, guide, run_dir=tmp_path / "a").fit(bad)
    half = binary_data(32)
    half[20, 0] = 0.5
    with pytest.raises(DataError, match="the validation data: the Bernoulli likelihood needs binary data"):
        make_trainer(model, guide, run_dir=tmp_path / "b").fit(binary_data(64), half)
    # nothing was trained and nothing written
    assert all(torch.equal(v, state(model, guide)[k]) for k, v in before.items())
    assert not (tmp_path / "a" / "last.pt").exists() and not (tmp_path / "b" / "last.pt").exists()


def test_checked_tensors_are_not_rechecked_batch_by_batch(monkeypatch):
    model, guide = make_pair()
    calls = []
    original = type(model.likelihood).validate
    monkeypatch.setattr(type(model.likelihood), "validate", lambda self, x: (calls.append(len(x)), original(self, x))[1])
    make_trainer(model, guide, epochs=2, batch_size=8).fit(binary_data(64), binary_data(16))
    # initialize() checks two points of the first batch, then each tensor once as a whole; 2 epochs x (8 + 2) batches add nothing
    assert calls == [2, 64, 16]


def test_transformed_batches_are_still_checked_one_by_one():
    """A per-batch transform can make any values, so the model keeps checking each batch."""
    model, guide = make_pair()
    data = binary_data(64)

    class Halved:
        x = data

        @staticmethod
        def transform_batch(batch, generator):
            return batch * 0.5  # not binary: the Bernoulli likelihood must refuse it

    with pytest.raises(DataError, match="needs binary data"):
        make_trainer(model, guide).fit(Halved())


# -- per-module learning rates: flow layers train at lr / K by default ---------------------------------
def test_flow_layers_get_their_scaled_learning_rate_and_everything_else_the_base_one():
    model, guide = make_pair(guide="planar:4")
    trainer = make_trainer(model, guide, lr=1e-2, epochs=1)
    trainer.fit(binary_data(16))
    groups = trainer.optimizer.param_groups
    flow = {id(p) for p in guide.families[0].transforms.parameters()}
    assert [g["lr"] for g in groups] == [pytest.approx(1e-2), pytest.approx(1e-2 / 4)]
    assert {id(p) for p in groups[1]["params"]} == flow
    assert not flow & {id(p) for p in groups[0]["params"]}
    assert sum(len(g["params"]) for g in groups) == len(trainer.parameters())


def test_adam_moves_flow_weights_by_the_scaled_rate_on_its_first_step():
    """Adam's first step moves every weight by about lr (sign of its gradient): lr / K for the flow's."""
    model, guide = make_pair(guide="planar:4")
    before = {n: p.detach().clone() for n, p in guide.named_parameters()}
    make_trainer(model, guide, lr=1e-2, epochs=1, batch_size=16).fit(binary_data(16))
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in guide.named_parameters()}
    flow = [v for n, v in moved.items() if ".transforms." in n]
    rest = [v for n, v in moved.items() if ".transforms." not in n]
    assert flow and rest
    assert max(flow) <= 1e-2 / 4 * 1.01 and max(rest) > 1e-2 / 4 * 2


def test_a_normal_guide_keeps_one_parameter_group():
    model, guide = make_pair()
    trainer = make_trainer(model, guide, epochs=1)
    trainer.fit(binary_data(16))
    assert len(trainer.optimizer.param_groups) == 1


# -- learning-rate schedule -------------------------------------------------------------------
class RecordRates(TraceObjective):
    """A single-sample ELBO that records the optimizer's rates at every step (the trainer sets them before the step)."""

    def __init__(self):
        super().__init__()
        self.trainer, self.rates = None, []

    def loss(self, model_trace, guide_trace):
        self.rates.append([g["lr"] for g in self.trainer.optimizer.param_groups])
        return guide_trace.log_prob_sum() - model_trace.log_prob_sum()


def test_linear_schedule_sets_lr_times_one_minus_the_batch_fraction():
    model, guide = make_pair()
    recorder = RecordRates()
    trainer = make_trainer(model, guide, recorder, lr=0.02, epochs=3, lr_schedule="linear")
    recorder.trainer = trainer
    trainer.fit(binary_data(32))  # 4 batches of 8 per epoch: 12 steps
    expected = [0.02 * (1 - b / 12) for b in range(12)]
    assert [r[0] for r in recorder.rates] == pytest.approx(expected, rel=1e-12)
    assert trainer.optimizer.param_groups[0]["initial_lr"] == 0.02


def test_constant_schedule_keeps_the_rate():
    model, guide = make_pair()
    recorder = RecordRates()
    trainer = make_trainer(model, guide, recorder, lr=0.02, epochs=2)
    recorder.trainer = trainer
    trainer.fit(binary_data(16))
    assert all(r == [0.02] for r in recorder.rates) and len(recorder.rates) == 4


def test_linear_schedule_scales_each_group_and_both_gan_players():
    from pyro_gen import Adversarial, gan, gan_critic

    torch.manual_seed(0)
    generator, critic = gan((2,), latent_dim=2, hidden=(8,)), gan_critic((2,), hidden=(8,))
    objective = Adversarial(critic, "non_saturating", lr_critic=1e-3, lr_generator=4e-3)
    trainer = Trainer(generator, None, objective, batch_size=8, epochs=2, progress=False, lr_schedule="linear")
    trainer.fit(torch.randn(32, 2))  # 8 batches; the last has factor 1 - 7/8
    assert trainer.optimizers["critic"].param_groups[0]["lr"] == pytest.approx(1e-3 / 8)
    assert trainer.optimizers["generator"].param_groups[0]["lr"] == pytest.approx(4e-3 / 8)


def test_resume_continues_the_linear_schedule_bit_for_bit(tmp_path):
    x = binary_data(32)
    model, guide = make_pair()
    full = make_trainer(model, guide, epochs=4, run_dir=tmp_path / "a", lr_schedule="linear").fit(x)

    calls = {"n": 0}

    def crash_in_epoch_3(batch, generator):
        calls["n"] += 1
        if calls["n"] > 9:  # one call to initialize the networks, then 4 batches per epoch: epoch 3 starts
            raise KeyboardInterrupt
        return batch

    model_b, guide_b = make_pair()
    with pytest.raises(KeyboardInterrupt):
        make_trainer(model_b, guide_b, epochs=4, run_dir=tmp_path / "b", lr_schedule="linear").fit(
            TensorBatches(x, batch_size=8, seed=0, transform=crash_in_epoch_3)
        )
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 2
    model_r, guide_r = make_pair(init_seed=99)
    resumed = make_trainer(model_r, guide_r, epochs=4, run_dir=tmp_path / "b", lr_schedule="linear").fit(x, resume=True)
    assert_same_state(state(model, guide), state(model_r, guide_r))
    assert without_seconds(full) == without_seconds(resumed)


def test_unknown_schedule_and_unsized_data_are_clear_errors():
    model, guide = make_pair()
    with pytest.raises(ConfigError, match="unknown lr_schedule 'cosine'; choose one of 'constant', 'linear'"):
        make_trainer(model, guide, lr_schedule="cosine")
    batches = (b for b in binary_data(16).split(8))  # a generator: no len()
    with pytest.raises(ConfigError, match="needs to know the run's length"):
        make_trainer(model, guide, lr_schedule="linear").fit(batches)


# -- the optimizer's parameter order ---------------------------------------------------------------------------
@pytest.mark.parametrize("guide_name", ["normal", "planar:2"])  # planar: a second optimizer group (lr_scaled_parameters)
def test_checkpoints_of_the_model_first_order_resume_exactly(tmp_path, monkeypatch, guide_name):
    """The optimizer lists the guide's parameters first (their gradients are the last backward computes); a checkpoint
    of the first releases, model first and without ``parameter_order``, is renumbered when restored, so resuming it
    continues exactly as an uninterrupted run."""
    from pyro_gen.infer import trainer as trainer_module
    from pyro_gen.infer.trainer import FIRST_PARAMETER_ORDER, Trainer, load_checkpoint, save_checkpoint

    x = torch.bernoulli(torch.full((60, 6), 0.3), generator=torch.Generator().manual_seed(0))

    def fit(run_dir, epochs, resume=False):
        torch.manual_seed(0)
        model = vae((6,), 2, hidden=(8,))
        guide = make_guide(guide_name, model, hidden=(8,))
        t = Trainer(model, guide, lr=1e-2, batch_size=20, epochs=epochs, progress=False, run_dir=run_dir)
        t.fit(x, resume=resume)
        return t

    straight = fit(tmp_path / "straight", 2)
    assert straight.optimizer.param_groups[0]["params"][0] is next(straight.guide.parameters())  # guide first

    # the first epoch as the first releases wrote it: parameters numbered model first, no "parameter_order"
    original = trainer_module.Trainer.parameters
    monkeypatch.setattr(trainer_module.Trainer, "parameters", lambda self, order=FIRST_PARAMETER_ORDER: original(self, order))
    fit(tmp_path / "old", 1)
    monkeypatch.undo()
    ckpt = load_checkpoint(tmp_path / "old" / "last.pt")
    del ckpt["parameter_order"]
    save_checkpoint(ckpt, tmp_path / "old" / "last.pt")
    first_shapes = [tuple(ckpt["optimizer"]["state"][i]["exp_avg"].shape) for i in sorted(ckpt["optimizer"]["state"])]
    assert first_shapes[0] == tuple(next(straight.model.parameters()).shape)  # model first: renumbering is needed

    resumed = fit(tmp_path / "old", 2, resume=True)
    for a, b in zip(resumed.parameters(), straight.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(resumed.optimizer.state_dict()["state"].values(), straight.optimizer.state_dict()["state"].values()):
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=0, atol=0)
