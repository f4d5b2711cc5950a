"""Data-parallel training and sharded evaluation on 2 CPU ranks (gloo), against one process (issue #12 a, b).

The truths are single-process runs: the same global batches through a deterministic objective (a
delta guide, no draws) must give the same weights to 1e-5 after 20 steps, however the run is split
over ranks and however it is interrupted and resumed (2 ranks -> 2 ranks, 1 -> 2, 2 -> 1); the sharded
importance-sampled NLL must equal one process's with the same seed (``block_seeds=True``) to 1e-6.

The 2-rank work is done once per module by ``torch.multiprocessing.spawn`` (the ranks find each other
through torchrun's environment variables, as :func:`pyro_gen.distributed.setup` reads them); the tests
read what the ranks left in a temporary directory.
"""

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_gen import TraceObjective, Trainer, make_guide, vae
from pyro_gen.errors import TrainingInterrupted
from pyro_gen.evaluation.likelihood import log_likelihood, log_weights
from pyro_gen.infer.trainer import load_checkpoint

pytestmark = pytest.mark.slow

N, BATCH, EPOCHS, STOP_AT = 148, 15, 2, 7  # 10 global batches an epoch (the last of 13: 6 + 7), 20 steps in all
DTYPE = torch.float64  # the split changes the order of float sums; in float64 that stays far below 1e-5


class Decoder(nn.Module):
    """z ~ N(0, I) in the data plate, x ~ N(dec(z), 1)."""

    def __init__(self):
        super().__init__()
        self.dec = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 4)).to(DTYPE)

    def forward(self, x, **kwargs):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 2, dtype=DTYPE), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 1.0).to_event(1), obs=x)


class Encoder(nn.Module):
    """A delta guide: z = enc(x), no draws."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).to(DTYPE)

    def forward(self, x, **kwargs):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Delta(self.enc(x)).to_event(1))


class MAPLoss(TraceObjective):
    """-log p(x, z = enc(x)) per datapoint (mean over the batch) + a weight penalty / data size: deterministic.

    ``stop_at``: on that call, this process sends itself SIGTERM (the trainer's handler takes it).
    """

    def __init__(self, stop_at=None):
        super().__init__()
        self.calls, self.stop_at = 0, stop_at

    def __call__(self, model, guide, x, data_size=None, **kwargs):
        self.calls += 1
        if self.calls == self.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        z = guide.enc(x)
        loss = 0.5 * ((model.dec(z) - x) ** 2).sum(-1).mean() + 0.5 * (z**2).sum(-1).mean()
        if data_size:
            loss = loss + sum((p**2).sum() for p in model.parameters()) / data_size
        self.last_metrics = {"rec": float(((model.dec(z) - x) ** 2).sum(-1).mean().detach())}
        return loss

    def validation_loss(self, model, guide, x, **kwargs):
        return self(model, guide, x)


def data():
    g = torch.Generator().manual_seed(5)
    return torch.randn(N, 4, generator=g, dtype=DTYPE), torch.randn(40, 4, generator=g, dtype=DTYPE)


#: both ways of a data-parallel step: with gradient clipping (every rank averages all gradients, in a buffer of its
#: own) and without (each rank averages and steps only its share of the parameters, which the ranks share)
CLIPS = {"clipped": 5.0, "unclipped": None}


def trainer(run_dir, stop_at=None, clip="clipped"):
    torch.manual_seed(0)
    return Trainer(
        Decoder(), Encoder(), MAPLoss(stop_at), lr=1e-2, batch_size=BATCH, epochs=EPOCHS, seed=3, run_dir=run_dir,
        progress=False, clip_norm=CLIPS[clip], lr_schedule="linear",
    )  # fmt: skip


def fit(run_dir, stop_at=None, resume=False, clip="clipped"):
    train, valid = data()
    t = trainer(run_dir, stop_at, clip)
    try:
        t.fit(train, valid, resume=resume)
    except TrainingInterrupted:
        return "interrupted"
    return "finished"


def weights(run_dir) -> dict:
    ckpt = load_checkpoint(Path(run_dir) / "last.pt")
    return {**{f"model.{k}": v for k, v in ckpt["model"].items()}, **{f"guide.{k}": v for k, v in ckpt["guide"].items()}}


def eval_pair():
    torch.manual_seed(1)
    model = vae((6,), 2, hidden=(8,))
    guide = make_guide("normal", model, hidden=(8,))
    x = torch.bernoulli(torch.full((37, 6), 0.3), generator=torch.Generator().manual_seed(2))
    return model, guide, x


EVAL = {"num_samples": 50, "chunk_size": 200, "seed": 11}  # blocks of 4 datapoints: 10 blocks, the last of 1


def eval_scores(**kwargs) -> dict:
    model, guide, x = eval_pair()
    seen = {}
    result = log_likelihood(model, guide, x, **EVAL, weights_fn=lambda data, lw: seen.setdefault(data.start, lw.max(0).values), **kwargs)
    lw = log_weights(model, guide, x, EVAL["num_samples"], EVAL["chunk_size"], EVAL["seed"], **kwargs)
    return {
        "log_px": result.log_px,
        "elbo": result.elbo,
        "kl": result.kl,
        "posterior_mean": result.posterior_mean,
        "max_lw": torch.cat([seen[k] for k in sorted(seen)]),
        "log_weights": lw,
        "protocol": result.protocol,
    }


# -- what the ranks do ---------------------------------------------------------------------------
def _rank_main(rank, world, port, tmp, clip):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )  # fmt: skip
    torch.set_num_threads(1)
    from pyro_gen import distributed

    assert distributed.setup("cpu")
    tmp = Path(tmp)
    outcome = {
        "full": fit(tmp / "ddp_full", clip=clip),
        "interrupt": fit(tmp / "ddp_resumed", stop_at=STOP_AT if rank == 1 else None, clip=clip),  # SIGTERM on rank 1 only
    }
    outcome["resume"] = fit(tmp / "ddp_resumed", resume=True, clip=clip)
    fit(tmp / "ddp_stopped", stop_at=STOP_AT + 5 if rank == 0 else None, clip=clip)  # left for one process to resume
    outcome["single_resumed"] = fit(tmp / "single_then_ddp", resume=True, clip=clip)
    scores = eval_scores()
    if rank == 0:
        torch.save({"outcome": outcome, "eval": scores}, tmp / "rank0.pt")
    distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=list(CLIPS))
def runs(tmp_path_factory, request):
    clip = request.param
    tmp = tmp_path_factory.mktemp(f"ddp_{clip}")
    fit(tmp / "single", clip=clip)  # the truth
    assert fit(tmp / "single_then_ddp", stop_at=13, clip=clip) == "interrupted"  # epoch 2, batch 3: resumed by 2 ranks
    torch.multiprocessing.spawn(_rank_main, args=(2, _free_port(), str(tmp), clip), nprocs=2, join=True)
    out = torch.load(tmp / "rank0.pt", weights_only=False)
    assert fit(tmp / "ddp_stopped", resume=True, clip=clip) == "finished"  # 2 ranks -> one process
    return tmp, out


def assert_close(a: dict, b: dict, tol: float):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=tol, rtol=0), (k, (a[k] - b[k]).abs().max().item())


def test_two_ranks_take_the_steps_of_one_process(runs):
    tmp, out = runs
    assert out["outcome"]["full"] == "finished"
    assert_close(weights(tmp / "ddp_full"), weights(tmp / "single"), 1e-5)
    # the records are the global batch's: same losses, validation included; rank 0 alone wrote them
    single = [json.loads(line) for line in (tmp / "single" / "metrics.jsonl").read_text().splitlines()]
    ddp = [json.loads(line) for line in (tmp / "ddp_full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["ranks"] for r in ddp] == [2, 2] and [r["ranks"] for r in single] == [1, 1]
    for a, b in zip(single, ddp):
        for key in ("train_loss", "valid_loss", "train_rec"):
            assert a[key] == pytest.approx(b[key], rel=1e-9), key


def test_a_distributed_run_stopped_on_one_rank_resumes_exactly(runs):
    tmp, out = runs
    assert (out["outcome"]["interrupt"], out["outcome"]["resume"]) == ("interrupted", "finished")
    assert_close(weights(tmp / "ddp_resumed"), weights(tmp / "ddp_full"), 1e-5)
    assert_close(weights(tmp / "ddp_resumed"), weights(tmp / "single"), 1e-5)


def test_runs_resume_across_numbers_of_ranks(runs):
    tmp, out = runs
    assert out["outcome"]["single_resumed"] == "finished"
    assert_close(weights(tmp / "single_then_ddp"), weights(tmp / "single"), 1e-5)  # 1 -> 2
    assert_close(weights(tmp / "ddp_stopped"), weights(tmp / "single"), 1e-5)  # 2 -> 1


def test_sharded_evaluation_equals_one_process(runs):
    _, out = runs
    sharded = out["eval"]
    one = eval_scores(block_seeds=True)
    assert sharded["protocol"]["ranks"] == 2 and "draw_seeding" in one["protocol"]
    assert abs(sharded["log_px"].mean() - one["log_px"].mean()) < 1e-6  # the test NLL
    for key in ("log_px", "elbo", "kl", "posterior_mean", "max_lw", "log_weights"):
        assert torch.allclose(sharded[key], one[key], atol=1e-6, rtol=0), key
    # the default in one process is still the single stream of earlier releases (another draw, same estimate)
    stream = eval_scores()
    assert "draw_seeding" not in stream["protocol"] and not torch.equal(stream["log_px"], one["log_px"])


CONFIG = """\
data: {name: digits, train_size: 200, valid_size: 50, test_size: 40}
model: {latent_dim: 2, hidden: [16]}
guide: normal
train: {epochs: 2, batch_size: 32, progress: false, bind_cpus: true}
eval: {nll_samples: 20, images: false}
"""


def torchrun_train(config, run_dir) -> dict:
    """``torchrun --standalone --nproc_per_node 2 -m pyro_gen train CONFIG --run-dir D``; its ``training.json``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pyro_gen", "train", str(config)]
    done = subprocess.run([*cmd, "--run-dir", str(run_dir)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory:") == 1  # rank 0 alone reports
    return json.loads((run_dir / "training.json").read_text())


def test_torchrun_trains_and_scores_a_run_with_two_ranks(tmp_path):
    """The README's command: ``torchrun --nproc_per_node 2 -m pyro_gen train CONFIG --run-dir D``."""
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    run_dir = tmp_path / "run"
    training = torchrun_train(config, run_dir)
    assert (training["epochs"], training["ranks"], training["threads"]) == (2, 2, 1)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) >= 2:  # rank 0 was bound to the first share of the CPUs (train.bind_cpus: true)
        assert training["bound_cpus"] == cpus[: len(cpus) // 2]
    assert math.isfinite(json.loads((run_dir / "metrics.json").read_text())["test_nll"])
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


OTHER_FAMILIES = {
    # a GAN: both players' gradients averaged over the ranks, turns and the weight average as in one process
    "gan": """\
data: {name: ring8, train_size: 1024, test_size: 256}
model: {kind: gan, latent_dim: 2, hidden: [16], critic_hidden: [16]}
objective: {name: non_saturating, n_critic: 2, ema_decay: 0.9}
train: {epochs: 2, batch_size: 128, progress: false}
""",
    # a mixture's MAP fit (delta guide, SVI): the one Trainer with the mixture's own model
    "gmm": """\
data: {name: iris}
model: {kind: gmm, components: 3, covariance: diag}
guide: delta
objective: {name: elbo}
train: {method: svi, epochs: 5, batch_size: 40, lr: 0.05, progress: false}
eval: {images: false}
""",
}


@pytest.mark.parametrize("kind", sorted(OTHER_FAMILIES))
def test_torchrun_trains_the_other_gradient_families_with_two_ranks(tmp_path, kind):
    config = tmp_path / f"{kind}.yaml"
    config.write_text(OTHER_FAMILIES[kind])
    run_dir = tmp_path / "run"
    training = torchrun_train(config, run_dir)
    assert (training["ranks"], training["threads"]) == (2, 1) and math.isfinite(training["final_train_loss"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["ranks"] for r in records] == [2] * len(records) and len(records) == training["epochs"]
    assert (run_dir / "metrics.json").is_file()
