"""The CUDA path (issue #12 item 3): every family trains and scores on a GPU, data are moved to it once, bf16 autocast
trains with float32 densities, and the numbers match the CPU's. Skipped without CUDA (CI has none); run on a
machine with a GPU: ``python -m pytest -q tests/cuda``.
"""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from pyro_gen import Trainer, evaluate, make_guide, vae  # noqa: E402
from pyro_gen.config import load_config  # noqa: E402
from pyro_gen.infer.objectives import MaximumLikelihood  # noqa: E402
from pyro_gen.models.pixelcnn import pixelcnn  # noqa: E402
from pyro_gen.run import load_run, train  # noqa: E402

TINY = ["data.train_size=200", "data.valid_size=50", "data.test_size=50", "train.epochs=1", "train.batch_size=50", "train.progress=false"]


def _conv_vae(device="cpu"):
    torch.manual_seed(0)
    model = vae((1, 8, 8), latent_dim=3, hidden=(16,), net="conv")
    return model.to(device), make_guide("normal", model, hidden=(16,), net="conv").to(device)


def test_tensor_data_move_to_the_gpu_once_and_a_vae_trains_there():
    model, guide = _conv_vae()
    x = torch.rand(256, 1, 8, 8).round()
    trainer = Trainer(model, guide, "elbo", batch_size=64, epochs=2, device="cuda", progress=False)
    trainer.fit(x)
    assert trainer.data_on_device and next(model.parameters()).is_cuda
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in trainer.history)


def test_the_same_weights_score_the_same_on_cpu_and_gpu():
    """A PixelCNN's exact NLL is deterministic: CPU and GPU agree to float32 accuracy; a VAE's IS estimate to its noise."""
    torch.manual_seed(0)
    density = pixelcnn((1, 8, 8), levels=2, channels=16, layers=3)
    x = torch.rand(32, 1, 8, 8).round()
    cpu = MaximumLikelihood()(density, None, x).item()
    gpu = MaximumLikelihood()(density.cuda(), None, x.cuda()).item()
    assert abs(cpu - gpu) < 1e-4 * abs(cpu)
    model, guide = _conv_vae()
    a = evaluate(model, guide, x, num_samples=500, seed=0)["nll"]
    model, guide = model.cuda(), guide.cuda()
    b = evaluate(model, guide, x.cuda(), num_samples=500, seed=0)["nll"]
    assert abs(a - b) < 0.5  # different random streams: Monte Carlo noise of a K=500 estimate on 32 images


def test_bf16_on_the_gpu_trains_with_float32_densities():
    model, guide = _conv_vae("cuda")
    x = torch.rand(128, 1, 8, 8, device="cuda").round()
    exact = Trainer(model, guide, "elbo", device="cuda", progress=False)._step_loss(x, 128)
    trainer = Trainer(model, guide, "elbo", batch_size=64, epochs=1, device="cuda", progress=False, precision="bf16")
    low = trainer._step_loss(x, 128)
    assert low.dtype == torch.float32 and abs(low.item() - exact.item()) < 0.05 * abs(exact.item())
    trainer.fit(x)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.net=conv", "model.hidden=[16]", "data.name=digits", "data.binarize=dynamic"],
        ["model.kind=gan", "data.name=ring8", "data.valid_size=null"],
        ["model.kind=pixelcnn", "model.channels=8", "model.layers=2", "data.name=digits"],
        ["model.kind=flow", "data.name=ring8"],
        ["model.net=conv", "model.hidden=[16]", "data.name=digits", "data.binarize=dynamic", "train.precision=bf16"],
    ],
    ids=["vae-conv", "gan", "pixelcnn", "flow", "vae-conv-bf16"],
)
def test_every_family_trains_and_scores_with_device_cuda(tmp_path, overrides):
    scores = train(load_config(None, [*TINY, *overrides, "train.device=cuda"]), tmp_path / "run")
    assert scores is not None
    _, model, _, _ = load_run(tmp_path / "run", device="cuda")
    assert next(model.parameters()).is_cuda


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL data-parallel needs 2 GPUs")
def test_two_gpu_ranks_train_with_nccl(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "c.yaml"
    config.write_text(
        "data: {name: digits, binarize: dynamic, train_size: 200, valid_size: 50, test_size: 50}\ntrain: {epochs: 1, batch_size: 50}\n"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "pyro_gen", "train", str(config),
           "train.device=cuda", "train.progress=false", "--run-dir", str(tmp_path / "run")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "metrics.json").exists()
