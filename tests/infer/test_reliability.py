"""The trainer under failure: damaged checkpoints, a full disk, a second process, signals, kill -9, torn metrics, blow-ups.

The truths come from outside the code under test: a bit-flipped file must be refused whatever the
flip; a run that was stopped (SIGTERM, SIGINT, SIGKILL, a full disk) and resumed must end with the
very same checkpoint, tensor for tensor, as a run that never stopped; a real second process, a real
file-size limit and real signals play the failures.

Run as a script, this file is the child process of those tests (see :func:`child_main`).
"""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from checkpoint_support import assert_same

from pyro_gen import (
    ELBO,
    Adversarial,
    ConfigError,
    Latent,
    LatentModel,
    RunDirError,
    TensorBatches,
    Trainer,
    TrainingDivergedError,
    gan,
    gan_critic,
    make_guide,
    make_likelihood,
    vae,
)
from pyro_gen.errors import CheckpointCorruptError, DeviceUnavailableError, RunInUseError, StorageError, TrainingInterrupted
from pyro_gen.infer import trainer as trainer_module
from pyro_gen.infer.trainer import CHECKPOINT_TRAILER, decode_checkpoint, load_checkpoint
from pyro_gen.io import atomic_path, run_lock

HERE = Path(__file__).resolve()
EPOCHS, N, BATCH = 4, 64, 8  # 8 batches per epoch; the hook's first call is the trainer's initialization pass
CALLS = 1 + EPOCHS * N // BATCH


# -- the runs: the same construction in the test process and in its children --------------------------
def build(kind: str, run_dir, epochs: int = EPOCHS, hook=None, **kwargs):
    """A tiny run of ``kind`` ("vae", "vae-iterable", "gan"): (trainer, train, valid). ``hook()`` runs once per batch drawn."""

    def touch(batch):
        if hook is not None:
            hook()
        return batch

    g = torch.Generator().manual_seed(7)
    torch.manual_seed(0)
    if kind == "gan":
        generator, critic = gan((2,), latent_dim=2, hidden=(8,)), gan_critic((2,), hidden=(8,))
        objective = Adversarial(critic, "wgan_gp", n_critic=2)  # two players, turns, a random gradient penalty
        train = TensorBatches(torch.randn(N, 2, generator=g), BATCH, seed=5, transform=lambda b, _: touch(b))
        # a linear schedule: the rate depends on the global batch index, which a resumed run must continue
        trainer = Trainer(
            generator, None, objective, lr=1e-3, epochs=epochs, batch_size=BATCH, progress=False, run_dir=run_dir, lr_schedule="linear"
        )
        return trainer, train, None
    model = vae((6,), 2, hidden=(8,))
    guide = make_guide("normal", model, hidden=(8,))
    probs = torch.rand(N, 6, generator=g)
    valid = torch.bernoulli(torch.full((16, 6), 0.3), generator=g)
    kwargs = {"lr": 1e-2, "batch_size": BATCH, "epochs": epochs, "progress": False, "run_dir": run_dir, "seed": 3, **kwargs}
    trainer = Trainer(model, guide, "elbo", **kwargs)
    if kind == "vae":  # dynamic binarization: each batch's draw comes from the epoch's generator
        return trainer, TensorBatches(probs, BATCH, seed=5, transform=lambda b, gen: touch(torch.bernoulli(b, generator=gen))), valid
    fixed = torch.bernoulli(probs, generator=g)
    return trainer, HookedBatches(fixed, hook), valid


class HookedBatches:
    """Fixed batches through a plain iterable: the trainer cannot skip ahead in it, so it stops at epoch ends."""

    def __init__(self, data, hook):
        self.data, self.hook = data, hook  # not ``.x``: that would make it a dataset the trainer turns into TensorBatches

    def __iter__(self):
        for b in self.data.split(BATCH):
            if self.hook is not None:
                self.hook()
            yield b

    def __len__(self):
        return len(self.data) // BATCH


def train(kind, run_dir, epochs=EPOCHS, resume=False, **kwargs) -> Trainer:
    trainer, data, valid = build(kind, run_dir, epochs, **kwargs)
    trainer.fit(data, valid, resume=resume)
    return trainer


def metrics(run_dir) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def assert_like_reference(run_dir, reference_dir):
    """Same final checkpoint (weights, optimizer moments, RNG states, counters) and same metrics as the uninterrupted run."""
    assert_same(load_checkpoint(Path(reference_dir) / "last.pt"), load_checkpoint(Path(run_dir) / "last.pt"))
    assert metrics(run_dir) == metrics(reference_dir)


def temporaries(run_dir) -> list[str]:
    return sorted(p.name for p in Path(run_dir).rglob("*") if ".tmp" in p.name)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The uninterrupted runs, once per kind."""
    root, done = tmp_path_factory.mktemp("references"), {}

    def get(kind, epochs=EPOCHS):
        if (kind, epochs) not in done:
            train(kind, root / f"{kind}-{epochs}", epochs)
            done[kind, epochs] = root / f"{kind}-{epochs}"
        return done[kind, epochs]

    return get


# -- the child process ------------------------------------------------------------------------------
def spawn(*args) -> subprocess.Popen:
    # the child runs this file as a script: it needs the shared test helpers' folder (pytest's pythonpath) too
    tests = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, str(HERE), str(torch.get_num_threads()), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for_batch(child: subprocess.Popen, n: int) -> None:
    """Read the child's "batch i" lines until the n-th batch was drawn."""
    for line in child.stdout:
        if line.strip() == f"batch {n}":
            return
    raise AssertionError(f"the child ended before batch {n}: rc={child.wait()} stderr={child.stderr.read()[-2000:]}")


def child_main(argv) -> None:
    """``test_reliability.py THREADS MODE KIND RUN_DIR EPOCHS [ACTIONS...]``: train and report on stdout.

    Modes: ``fresh`` / ``resume`` train; ``hold`` takes the run lock and sleeps; ``diskfull`` trains under a
    file-size limit. Actions: ``sleep=S`` per batch, ``SIG@i`` (``TERM@12``) sends the signal to itself
    while drawing batch i, ``fsync-kill@i`` dies by SIGKILL at the i-th fsync (a checkpoint complete in its
    temporary file, not yet renamed), ``append-kill@i`` dies halfway through the i-th metrics append.
    """
    threads, mode, kind, run_dir, epochs, *actions = argv
    torch.set_num_threads(int(threads))
    run_dir, epochs = Path(run_dir), int(epochs)
    if mode == "hold":
        with run_lock(run_dir):
            print("locked", flush=True)
            time.sleep(120)
        return
    sleep, at = 0.0, {}
    for action in actions:
        name, _, value = action.partition("@") if "@" in action else action.partition("=")
        if name == "sleep":
            sleep = float(value)
        elif name == "fsync-kill":
            kill_at_fsync(int(value))
        elif name == "append-kill":
            kill_in_append(int(value))
        else:
            at.setdefault(int(value), []).append(getattr(signal, f"SIG{name}"))
    drawn = [0]

    def hook():
        drawn[0] += 1
        print(f"batch {drawn[0]}", flush=True)
        for s in at.get(drawn[0], []):
            os.kill(os.getpid(), s)
        time.sleep(sleep)

    if mode == "diskfull":
        return diskfull(kind, run_dir)
    trainer, data, valid = build(kind, run_dir, epochs, hook=hook)
    try:
        trainer.fit(data, valid, resume=mode == "resume")
    except TrainingInterrupted as e:
        print(f"INTERRUPTED {e.signal_name} {e.epoch} {e.batch} | {e}", flush=True)
        sys.exit(3)
    print("DONE", flush=True)


def kill_at_fsync(n: int) -> None:
    """Die by SIGKILL at the n-th ``os.fsync``: a checkpoint's new bytes are complete in its temporary file, not yet renamed."""
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGKILL)
        real_fsync(fd)

    os.fsync = fsync


def kill_in_append(n: int) -> None:
    """Die by SIGKILL halfway through writing the n-th metrics line."""
    real_append, calls = trainer_module._append_metrics, []

    def append(path, record):
        calls.append(record)
        if len(calls) == n:
            line = (json.dumps(record) + "\n").encode()
            with open(path, "ab") as f:
                f.write(line[: len(line) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real_append(path, record)

    trainer_module._append_metrics = append


def diskfull(kind, run_dir):
    """Train one epoch, then resume under file-size limits that a metrics line, then a checkpoint, cannot fit in."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG instead of killing us
    train(kind, run_dir, epochs=1)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    for limit in ((run_dir / "metrics.jsonl").stat().st_size, 4096):  # no room for one more line; then for no checkpoint
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        try:
            train(kind, run_dir, epochs=2, resume=True)
        except StorageError as e:
            print(f"STORAGE {e.errno} {e.path.name} | {e}", flush=True)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


# -- 1. checkpoint integrity --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("small")
    trainer, data, _ = build("vae", run_dir, epochs=1)
    trainer.fit(data)
    return run_dir / "last.pt"


def test_every_one_bit_flip_of_a_real_checkpoint_is_refused(small_checkpoint):
    """All 8 x len(file) single-bit flips (payload and trailer), through the decoder load_checkpoint uses after reading."""
    data = small_checkpoint.read_bytes()
    assert decode_checkpoint(data, small_checkpoint)["epoch"] == 1  # the intact file loads
    flipped, refused = bytearray(data), 0
    for i in range(len(data)):
        for bit in range(8):
            flipped[i] ^= 1 << bit
            try:
                decode_checkpoint(bytes(flipped), small_checkpoint)
            except CheckpointCorruptError as e:
                refused += 1
                assert str(small_checkpoint) in str(e) and ("best.pt" in str(e) or "retrain" in str(e))
            else:
                pytest.fail(f"a flip of bit {bit} of byte {i} of {len(data)} loaded silently")
            flipped[i] ^= 1 << bit
    assert refused == 8 * len(data)


def test_flipped_truncated_zeroed_and_empty_checkpoint_files_are_refused_by_name(small_checkpoint, tmp_path):
    data = small_checkpoint.read_bytes()
    rng = random.Random(0)
    damaged = {
        "truncated-half": data[: len(data) // 2],
        "trailer-cut": data[: len(data) - 10],
        "trailer-gone": data[: -(len(CHECKPOINT_TRAILER) + 65)],  # a plain torch file again, but written with a digest
        "zeroed": bytes(len(data)),
        "zeroed-block": data[:4096] + bytes(4096) + data[8192:],
        "empty": b"",
        "text": b"not a checkpoint\n" * 10,
    }
    for k in range(20):  # real files, read by load_checkpoint itself
        i, bit = rng.randrange(len(data)), rng.randrange(8)
        damaged[f"flip-{k}"] = data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1 :]
    for name, content in damaged.items():
        path = tmp_path / name / "last.pt"
        path.parent.mkdir()
        path.write_bytes(content)
        with pytest.raises(CheckpointCorruptError) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value) and "best.pt" in str(info.value), name


def test_checkpoints_of_the_first_release_still_load_and_resume(tmp_path, references):
    """A bare torch file with the first release's keys only (no digest) resumes to the uninterrupted run."""
    train("vae", tmp_path, epochs=2)
    old = load_checkpoint(tmp_path / "last.pt")
    for key in ("initial_loss", "position"):  # keys this release added
        del old[key]
    torch.save(old, tmp_path / "last.pt")
    assert (tmp_path / "last.pt").read_bytes()[:2] == b"PK"
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    train("vae", tmp_path, resume=True)
    ref = load_checkpoint(references("vae") / "last.pt")
    new = load_checkpoint(tmp_path / "last.pt")
    ref.pop("initial_loss"), new.pop("initial_loss")  # the old file had no reference loss to carry on
    assert_same(ref, new)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_loading_onto_cuda_without_cuda_blames_the_machine_not_the_checkpoint(small_checkpoint):
    with pytest.raises(DeviceUnavailableError, match="no CUDA device") as info:
        load_checkpoint(small_checkpoint, map_location="cuda")
    assert isinstance(info.value, ConfigError) and "not a readable" not in str(info.value)
    with pytest.raises(DeviceUnavailableError, match="use device='cpu'"):
        build("vae", None, device="cuda")


# -- 2. full disk ---------------------------------------------------------------------------------------
def test_a_full_disk_inside_atomic_path_keeps_the_previous_file_and_says_so(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"the good one")
    with pytest.raises(StorageError) as info:
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half a chec")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    message = str(info.value)
    assert str(path) in message and "no space left on device" in message and "the previous last.pt is kept" in message
    assert "free space and resume" in message and info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert path.read_bytes() == b"the good one" and os.listdir(tmp_path) == ["last.pt"]
    with pytest.raises(StorageError, match="read-only"):
        with atomic_path(tmp_path / "new.txt"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    with pytest.raises(FileNotFoundError):  # not a storage failure: unchanged
        with atomic_path(tmp_path / "other.txt"):
            raise FileNotFoundError(errno.ENOENT, "no such input")


@pytest.mark.slow
def test_a_real_file_size_limit_stops_training_cleanly_and_the_run_resumes(tmp_path, references):
    """RLIMIT_FSIZE makes the writes fail with EFBIG: first the metrics append, then the best.pt write."""
    child = spawn("diskfull", "vae", tmp_path, 2)
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err[-3000:]
    reports = [line for line in out.splitlines() if line.startswith("STORAGE")]
    assert [r.split(" | ")[0] for r in reports] == [f"STORAGE {errno.EFBIG} metrics.jsonl", f"STORAGE {errno.EFBIG} best.pt"]
    assert "no space left on device" in reports[0] and "the previous metrics.jsonl is kept" in reports[0]
    assert "the previous best.pt is kept; free space and resume" in reports[1]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1 and temporaries(tmp_path) == []
    train("vae", tmp_path, epochs=2, resume=True)
    assert_like_reference(tmp_path, references("vae", 2))


# -- 3. the run-directory lock ----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_process_is_refused_with_the_holders_pid_and_a_dead_holders_lock_is_taken_over(tmp_path):
    child = spawn("hold", "vae", tmp_path, 1)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError) as info:
            with run_lock(tmp_path):
                pass
        assert info.value.pid == child.pid and info.value.lock_path == tmp_path / ".lock"
        assert f"in use by process {child.pid} (lock file {tmp_path / '.lock'}); wait for it to finish" in str(info.value)
        with pytest.raises(RunInUseError, match=f"process {child.pid}"):
            train("vae", tmp_path, epochs=1)
        assert not (tmp_path / "last.pt").exists()
    finally:
        child.kill()  # SIGKILL: no cleanup runs, the lock file keeps its PID
        child.wait()
    assert (tmp_path / ".lock").read_text().strip() == str(child.pid)
    with run_lock(tmp_path):  # the kernel released the dead holder's flock: the stale lock is taken over
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    train("vae", tmp_path, epochs=1)


def test_fit_sweeps_only_dead_writers_temporaries(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = [tmp_path / f".last.tmp{dead}.pt", tmp_path / "metrics.jsonl.tmp"]
    live = tmp_path / f".plot.tmp{os.getppid()}.png"  # a live process's write in progress: not ours to remove
    for p in (*stale, live):
        p.write_bytes(b"partial")
    train("vae", tmp_path, epochs=1)
    assert not any(p.exists() for p in stale) and live.exists()


def test_the_lock_is_reentrant_in_one_process_and_released_after_fit(tmp_path):
    with run_lock(tmp_path), run_lock(tmp_path):  # the run layer around training, the trainer inside
        train("vae", tmp_path, epochs=1)
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    assert (tmp_path / ".lock").read_text() == ""  # released: emptied, left in place


# -- 4. SIGTERM / SIGINT ------------------------------------------------------------------------------------
def expected_stop(batch_drawn: int) -> tuple[int, int | None]:
    """Where a stop asked for while drawing batch ``batch_drawn`` (1 = the initialization pass) lands: (epoch, batch)."""
    index = max(batch_drawn - 2, 0)  # 0-based training batch
    epoch, batch = index // (N // BATCH) + 1, index % (N // BATCH) + 1
    return (epoch, None) if batch == N // BATCH else (epoch, batch)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, sig, seed",
    [("vae", "TERM", 0), ("gan", "INT", 1), ("vae-iterable", "TERM", 2)],
    ids=["vae-sigterm", "gan-sigint", "plain-iterable-stops-at-epoch-end"],
)
def test_a_signal_stops_at_the_next_batch_and_resuming_matches_an_uninterrupted_run(tmp_path, references, kind, sig, seed):
    at = random.Random(seed).randint(10, CALLS - 9)  # in epoch 2 or 3: a checkpoint exists, epochs remain
    child = spawn("fresh", kind, tmp_path, EPOCHS, f"{sig}@{at}")
    out, err = child.communicate(timeout=300)
    assert child.returncode == 3, err[-3000:]
    report = next(line for line in out.splitlines() if line.startswith("INTERRUPTED"))
    epoch, batch = expected_stop(at)
    if kind == "vae-iterable":
        batch = None  # an iterable without positions finishes its epoch
    assert report.split(" | ")[0] == f"INTERRUPTED SIG{sig} {epoch} {batch}"
    assert "--resume" in report and str(tmp_path / "last.pt") in report
    assert (f"after batch {batch} of 8" if batch else f"at the end of epoch {epoch}") in report
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert (ckpt["epoch"], (ckpt["position"] or {}).get("batch")) == ((epoch - 1, batch) if batch else (epoch, None))
    train(kind, tmp_path, resume=True)
    assert_like_reference(tmp_path, references(kind))
    assert temporaries(tmp_path) == []


@pytest.mark.slow
def test_an_external_signal_at_a_seeded_moment_and_then_a_second_one(tmp_path, references):
    """A real SIGTERM from another process while the child trains; then, in a second run, SIGTERM + SIGINT stop at once."""
    child = spawn("fresh", "gan", tmp_path, EPOCHS, "sleep=0.01")
    wait_for_batch(child, random.Random(3).randint(12, 20))
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=300)
    assert child.returncode == 3 and "INTERRUPTED SIGTERM" in out, err[-3000:]
    # the second signal: no orderly stop, a KeyboardInterrupt wherever it lands; last.pt is the last good one
    child = spawn("resume", "gan", tmp_path, EPOCHS, "TERM@4", "INT@4")
    out, err = child.communicate(timeout=300)
    assert child.returncode not in (0, 3) and "KeyboardInterrupt" in err and "INTERRUPTED" not in out
    train("gan", tmp_path, resume=True)
    assert_like_reference(tmp_path, references("gan"))
    assert temporaries(tmp_path) == []


def test_signal_handlers_are_restored_after_fit(tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    train("vae", tmp_path, epochs=1)
    with pytest.raises(RunDirError):
        train("vae", tmp_path / "empty", resume=True)  # also when fit raises
    assert {s: signal.getsignal(s) for s in before} == before


def test_fit_in_another_thread_trains_without_touching_signals(tmp_path, references):
    """Python delivers signals to the main thread only: elsewhere fit installs no handler (and does not fail trying)."""
    import threading

    before, errors = signal.getsignal(signal.SIGTERM), []
    worker = threading.Thread(target=lambda: _capture(errors, train, "vae", tmp_path))
    worker.start()
    worker.join()
    assert errors == [] and signal.getsignal(signal.SIGTERM) == before
    assert_like_reference(tmp_path, references("vae"))


def _capture(errors, f, *args):
    try:
        f(*args)
    except Exception as e:  # reported to the test thread
        errors.append(e)


# -- 5. SIGKILL at any moment ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_kill_9_at_seeded_moments_and_inside_writes_resumes_to_the_same_weights_with_no_temporaries(tmp_path, references):
    rng = random.Random(5)
    # an external kill -9 mid-epoch, twice (after epoch 1's checkpoint, so that there is something to resume)
    for mode, at in (("fresh", rng.randint(11, 20)), ("resume", rng.randint(3, 8))):
        child = spawn(mode, "vae", tmp_path, EPOCHS, "sleep=0.01")
        wait_for_batch(child, at)
        child.kill()
        child.wait()
    # a kill with best.pt's or last.pt's new bytes complete in their temporary file, not renamed
    child = spawn("resume", "vae", tmp_path, EPOCHS, "fsync-kill@1")
    child.communicate(timeout=300)
    assert child.returncode == -signal.SIGKILL and temporaries(tmp_path), "the kill did not land inside a checkpoint write"
    # a kill halfway through appending a metrics line
    child = spawn("resume", "vae", tmp_path, EPOCHS, "append-kill@1")
    child.communicate(timeout=300)
    assert child.returncode == -signal.SIGKILL and not (tmp_path / "metrics.jsonl").read_bytes().endswith(b"\n")
    train("vae", tmp_path, resume=True)
    assert_like_reference(tmp_path, references("vae"))
    assert temporaries(tmp_path) == []


# -- 6. damaged metrics.jsonl --------------------------------------------------------------------------------------
def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, references):
    train("vae", tmp_path, epochs=2)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_loss": 4.1')  # a kill during the append of epoch 3's record
    train("vae", tmp_path, resume=True)
    assert_like_reference(tmp_path, references("vae"))


@pytest.mark.parametrize("bad, line", [("garbage{\n", 1), ("[1, 2]\n", 2), ('{"no": "epoch"}\n', 2)])
def test_a_damaged_metrics_line_elsewhere_is_one_clear_error(tmp_path, bad, line):
    train("vae", tmp_path, epochs=3)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[line - 1] = bad
    (tmp_path / "metrics.jsonl").write_text("".join(lines))
    with pytest.raises(RunDirError) as info:
        train("vae", tmp_path, resume=True)
    assert f"{tmp_path / 'metrics.jsonl'}, line {line}," in str(info.value) and "Delete that line" in str(info.value)


# -- 7. divergence ------------------------------------------------------------------------------------------------
def test_a_finite_blow_up_is_a_divergence_naming_the_losses(tmp_path):
    # the control: the run's loss is finite, and without the check it would end "successfully"
    trainer = train("vae", None, epochs=1, lr=10.0, divergence_factor=None)
    assert 1e3 < trainer.history[0]["train_loss"] < float("inf")
    with pytest.raises(
        TrainingDivergedError, match=r"blew up: its mean over epoch 1 is [\d.e+]+, against [\d.]+ at initialization"
    ) as info:
        train("vae", tmp_path, lr=10.0)
    assert f"before this run wrote any checkpoint to {tmp_path}" in str(info.value)
    assert not (tmp_path / "last.pt").exists()
    with pytest.raises(TrainingDivergedError, match="nothing was saved"):
        train("vae", None, lr=10.0)


def test_a_blow_up_after_good_epochs_says_which_checkpoint_is_kept(tmp_path):
    class BlowsUpAtEpoch3(ELBO):
        def loss(self, model_trace, guide_trace):
            return super().loss(model_trace, guide_trace) * (1e6 if self.epoch >= 2 else 1.0)

    trainer, data, valid = build("vae", tmp_path)
    trainer.objective = BlowsUpAtEpoch3()
    with pytest.raises(
        TrainingDivergedError, match=f"the last good checkpoint is kept \\({tmp_path / 'last.pt'} holds the end of epoch 2\\)"
    ):
        trainer.fit(data, valid)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2


def test_healthy_runs_do_not_trip_the_blow_up_check():
    """Negative losses of continuous data falling far below zero, and a KL warm-up raising the loss."""
    torch.manual_seed(0)
    x = 0.01 * torch.randn(256, 4, generator=torch.Generator().manual_seed(0))  # tiny scale: log-densities >> 0
    model = LatentModel(
        [Latent("z", shape=(2,))], torch.nn.Linear(2, 4), make_likelihood("gaussian", data_shape=(4,), scale="learned"), (4,)
    )
    trainer = Trainer(model, make_guide("normal", model, hidden=(8,)), lr=3e-2, batch_size=32, epochs=15, progress=False)
    history = trainer.fit(x)
    assert trainer._initial_loss > 0 > history[-1]["train_loss"]
    trainer, data, valid = build("vae", None, epochs=8)
    trainer.objective = ELBO(warmup_epochs=5)
    trainer.fit(data, valid)


if __name__ == "__main__":
    child_main(sys.argv[1:])
