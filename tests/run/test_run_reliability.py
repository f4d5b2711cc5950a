"""The commands under failure, through the real ``pyro-gen`` command line in subprocesses (issue #9, point d).

Every test runs ``python -m pyro_gen.cli ...`` as a child process and plays a real failure on it: SIGKILL
at a seeded point (inside a checkpoint write, mid-epoch, before the first checkpoint), SIGTERM / SIGINT, a
second process writing the same run directory, damaged files, a file-size limit. The truths come from
outside the code under test: a run that was stopped and resumed ends with the very checkpoints, tensor
for tensor, and the very metrics of a run that never stopped; a refusal is one line on stderr (exit 2,
no traceback) naming the file and the fix, and writes no result.

Exact points come from ``tests/run/cli_faults/sitecustomize.py``: with that folder on ``PYTHONPATH`` the
child stops (``batch-pause@N``: waits at its N-th training batch for the test to kill or signal it) or
dies (``fsync-kill@N``: SIGKILL inside its N-th checkpoint write) where the test asks; the command line
itself runs unchanged. Children run with ``OMP_NUM_THREADS=1``, so that every run's arithmetic is the same.
"""

import copy
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from checkpoint_support import assert_same

from pyro_gen.families import get_family
from pyro_gen.infer.trainer import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("PYRO_GEN_DATA") or REPO.parent / "shared" / "data")
FAULTS = Path(__file__).resolve().with_name("cli_faults")

# each family's example, made long enough for several kill points, without figures (they are not what is tested)
LONGER = {
    "vae": {"train": {"epochs": 6}},  # 100 points, batches of 25: 4 batches per epoch, 24 in all
    "gmm": {"train": {"epochs": 4, "batch_size": 40, "method": "svi"}},  # 120 iris points: 3 batches per epoch
    "gan": {"train": {"epochs": 4, "lr_schedule": "linear"}},  # 256 points, batches of 64: 4 per epoch; the rate follows the batch index
}
BATCHES = {"vae": 4, "gmm": 3, "gan": 4}
SIGNAL_NOTE = "pyro_gen: {} received; stopping after the current batch"  # the trainer's acknowledgement, printed when the signal arrives
LIKELIHOOD_NOTE = "likelihood: "  # a fresh VAE run says on stderr which likelihood it chose


# -- the child processes ------------------------------------------------------------------------------
def child_env(faults: str | None = None, fault_dir: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO_GEN_TEST_")}
    env.update(OMP_NUM_THREADS="1", PYRO_GEN_DATA=str(DATA), PYTHONUNBUFFERED="1")
    if faults:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAULTS), env.get("PYTHONPATH")]))
        env.update(PYRO_GEN_TEST_FAULTS=faults, PYRO_GEN_TEST_FAULT_DIR=str(fault_dir))
    return env


def start(*args, faults=None, fault_dir=None, **kwargs) -> subprocess.Popen:
    """``python -m pyro_gen.cli ARGS`` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "pyro_gen.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(faults, fault_dir),
        cwd=REPO,
        **kwargs,
    )


def cli(*args, faults=None, fault_dir=None, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """``python -m pyro_gen.cli ARGS``, to its end."""
    child = start(*args, faults=faults, fault_dir=fault_dir, **kwargs)
    try:
        out, err = child.communicate(timeout=timeout)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def succeeds(*args, **kwargs) -> subprocess.CompletedProcess:
    result = cli(*args, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, args))}: rc={result.returncode}\n{result.stderr[-3000:]}"
    return result


def killed_by(*args, faults, fault_dir) -> None:
    """Run a command that a fault kills; check that it died by SIGKILL (it did not end, or fail, on its own)."""
    result = cli(*args, faults=faults, fault_dir=fault_dir)
    assert result.returncode == -signal.SIGKILL, f"{faults}: rc={result.returncode}\n{result.stderr[-3000:]}"


def paused(*args, at: int, fault_dir: Path) -> subprocess.Popen:
    """Start a command that waits when it draws its ``at``-th training batch; return once it waits there."""
    fault_dir.mkdir(parents=True, exist_ok=True)
    child = start(*args, faults=f"batch-pause@{at}", fault_dir=fault_dir)
    deadline = time.monotonic() + 120
    while not (fault_dir / "paused").exists():
        if child.poll() is not None:
            out, err = child.communicate()
            raise AssertionError(f"the child ended before batch {at}: rc={child.returncode}\n{err[-3000:]}")
        assert time.monotonic() < deadline, "the child did not reach its pause"
        time.sleep(0.01)
    assert (fault_dir / "paused").read_text() == str(child.pid)
    return child


def one_line_error(result: subprocess.CompletedProcess, command: str) -> str:
    """A user error: exit status 2, no traceback, one line on stderr; that line (its message part)."""
    assert result.returncode == 2, f"rc={result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith(f"pyro-gen {command}: error: "), lines[0]
    return lines[0]


# -- comparing runs -------------------------------------------------------------------------------------


def history(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock times."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


TIMINGS = ("seconds", "seconds_per_epoch", "wall_seconds")


def scores(run_dir: Path) -> dict:
    """metrics.json without the wall-clock times."""
    return {k: v for k, v in json.loads((run_dir / "metrics.json").read_text()).items() if k not in TIMINGS}


MAIN_SCORE = {"vae": "test_nll", "gmm": "test_log_likelihood", "gan": "final_critic_loss"}


def assert_like_reference(run_dir: Path, reference: Path, kind: str) -> None:
    """The same checkpoints (every tensor of the model, guide, objective and optimizer states, RNG states, counters),
    the same metrics.jsonl and the same test scores as the uninterrupted run."""
    for name in ("last.pt", "best.pt"):
        assert_same(load_checkpoint(reference / name), load_checkpoint(run_dir / name), name)
    assert history(run_dir) == history(reference)
    ours, theirs = scores(run_dir), scores(reference)
    assert ours[MAIN_SCORE[kind]] == theirs[MAIN_SCORE[kind]]
    assert ours == theirs  # the rest of metrics.json too, the VAE's likelihood note included


def temporaries(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.rglob("*") if ".tmp" in p.name)


def write_config(path: Path, kind: str, changes: dict) -> Path:
    config = copy.deepcopy(get_family(kind).example)
    for section, values in changes.items():
        config.setdefault(section, {}).update(values)
    config.setdefault("eval", {})["images"] = False
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("configs")
    return {kind: write_config(root / f"{kind}.yaml", kind, LONGER[kind]) for kind in LONGER}


@pytest.fixture(scope="module")
def references(tmp_path_factory, configs):
    """The uninterrupted runs (``train CONFIG --run-dir``), all three made on first use, two at a time."""
    root, done = tmp_path_factory.mktemp("references"), {}

    def get(kind: str) -> Path:
        if not done:
            with ThreadPoolExecutor(max_workers=2) as pool:
                results = dict(zip(configs, pool.map(lambda k: cli("train", configs[k], "--run-dir", root / k), configs)))
            for k, result in results.items():
                assert result.returncode == 0, f"the uninterrupted {k} run failed: rc={result.returncode}\n{result.stderr[-3000:]}"
                done[k] = root / k
        return done[kind]

    return get


# -- 1. kill -9 and resume, per family ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind, seed", [("vae", 0), ("gmm", 1), ("gan", 2)])
def test_kill_9_at_seeded_points_then_resume_ends_identical_to_an_uninterrupted_run(tmp_path, configs, references, kind, seed):
    """Three SIGKILLs, then ``train --resume``:

    1. ``train CONFIG`` dies inside its first or second checkpoint write (``fsync-kill@1|2``): no last.pt
       exists yet, so the resume starts the run from the beginning;
    2. that resume dies inside a later checkpoint write, a previous last.pt on disk;
    3. the next resume is killed from outside (``kill -9``) while it waits at a seeded training batch,
       at least one epoch done.
    """
    rng, run, faults = random.Random(seed), tmp_path / "run", tmp_path / "faults"
    reference = references(kind)
    batches, epochs = BATCHES[kind], LONGER[kind]["train"]["epochs"]

    killed_by("train", configs[kind], "--run-dir", run, faults=f"fsync-kill@{rng.randint(1, 2)}", fault_dir=faults)
    assert (run / "config.yaml").is_file() and not (run / "last.pt").exists(), "the kill did not land before the first last.pt"
    assert temporaries(run), "the kill did not land inside a checkpoint write"

    killed_by("train", "--resume", "--run-dir", run, faults=f"fsync-kill@{rng.randint(3, 5)}", fault_dir=faults)
    assert temporaries(run), "the kill did not land inside a checkpoint write"
    done = load_checkpoint(run / "last.pt")["epoch"]  # a previous last.pt was on disk, and is intact
    assert done >= 1
    # the resume's batch draws: 1 is the initialization pass, then the batches of epoch done + 1, ...
    at = rng.randint(batches + 2, 1 + (epochs - done) * batches)
    child = paused("train", "--resume", "--run-dir", run, at=at, fault_dir=faults)
    child.kill()
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert load_checkpoint(run / "last.pt")["epoch"] == done + (at - 2) // batches

    succeeds("train", "--resume", "--run-dir", run)
    assert_like_reference(run, reference, kind)
    assert temporaries(run) == []


# -- 2. SIGTERM and SIGINT -------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind, sig, seed", [("vae", signal.SIGTERM, 3), ("gan", signal.SIGINT, 4)], ids=["vae-sigterm", "gan-sigint"])
def test_a_signal_stops_train_with_one_line_and_exit_128_plus_signal_and_the_resume_is_identical(
    tmp_path, configs, references, kind, sig, seed
):
    batches, epochs = BATCHES[kind], LONGER[kind]["train"]["epochs"]
    at = random.Random(seed).randint(batches + 2, epochs * batches)  # not the last batch: there is something left to resume
    run, faults = tmp_path / "run", tmp_path / "faults"
    child = paused("train", configs[kind], "--run-dir", run, at=at, fault_dir=faults)
    child.send_signal(sig)
    (faults / "go").touch()
    out, err = child.communicate(timeout=120)
    assert child.returncode == 128 + sig, f"rc={child.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    # besides the acknowledgement the trainer writes when the signal arrives (and a fresh VAE run's likelihood
    # note), the command's report is one line
    notes = [line for line in lines if line.startswith((SIGNAL_NOTE.format(sig.name), LIKELIHOOD_NOTE))]
    assert any(line.startswith(SIGNAL_NOTE.format(sig.name)) for line in notes), err
    (report,) = [line for line in lines if line not in notes]
    assert report.startswith(f"pyro-gen train: training stopped on {sig.name}") and "Traceback" not in report, report
    assert report.endswith(f"continue with: pyro-gen train --resume --run-dir {run}"), report
    # the drawn batch is trained on, then the trainer stops: a mid-epoch checkpoint (or an epoch's end)
    done = at - 1  # training batches done when it stopped
    epoch, batch = divmod(done, batches)
    assert (f"after batch {batch} of {batches}" if batch else f"at the end of epoch {epoch}") in report, report
    ckpt = load_checkpoint(run / "last.pt")
    assert (ckpt["epoch"], (ckpt["position"] or {}).get("batch")) == (epoch, batch or None)

    succeeds("train", "--resume", "--run-dir", run)
    assert_like_reference(run, references(kind), kind)
    assert temporaries(run) == []


# -- 3. a second writer -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_writer_is_refused_naming_the_lock_and_pid_and_a_killed_holders_lock_is_taken_over(tmp_path, configs, references):
    run, faults = tmp_path / "run", tmp_path / "faults"
    holder = paused("train", configs["vae"], "--run-dir", run, at=BATCHES["vae"] + 3, fault_dir=faults)  # epoch 1 saved
    try:
        commands = {"train": ("train", "--resume", "--run-dir", run), "evaluate": ("evaluate", run)}
        with ThreadPoolExecutor(max_workers=2) as pool:  # both at once: each is refused before it does anything
            results = dict(zip(commands, pool.map(lambda args: cli(*args), commands.values())))
        for command, result in results.items():
            line = one_line_error(result, command)
            assert f"{run} is in use by process {holder.pid} (lock file {run / '.lock'})" in line, line
            assert f"kill {holder.pid}" in line, line
        assert not (run / "metrics.json").exists()
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the lock file keeps the dead holder's PID
        holder.communicate(timeout=60)
    assert (run / ".lock").read_text().strip() == str(holder.pid)
    succeeds("train", "--resume", "--run-dir", run)  # the kernel released the dead holder's flock: taken over
    assert_like_reference(run, references("vae"), "vae")
    assert temporaries(run) == []


# -- 4. damaged files ---------------------------------------------------------------------------------------------
# These cases, and the full disk's, each work on a copy of one small finished run; their children run two at a
# time (each on one thread) in one module fixture, and the tests below check what each one did.
def flip_bit(data: bytes, seed: int) -> bytes:
    rng = random.Random(seed)
    i = rng.randrange(len(data))
    return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]


def more_epochs(run: Path, epochs: int) -> None:
    """Ask the finished run's config for more epochs: ``train --resume`` then continues it."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["epochs"] = epochs
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def damage_checkpoint(name: str, how: str):
    def damage(run: Path) -> None:
        data = (run / name).read_bytes()
        if name == "last.pt":
            (run / "best.pt").unlink()  # evaluate reads best.pt when there is one
        damaged = {"truncated": data[: len(data) // 2], "zeroed": bytes(len(data)), "flipped": flip_bit(data, len(how))}[how]
        (run / name).write_bytes(damaged)

    return damage


def garble_metrics_line(run: Path) -> None:
    more_epochs(run, 4)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[1] = lines[1][: len(lines[1]) // 2] + "\n"  # a torn line in the middle: no kill during an append leaves that
    (run / "metrics.jsonl").write_text("".join(lines))


def flip_last_for_resume(run: Path) -> None:
    more_epochs(run, 4)
    (run / "last.pt").write_bytes(flip_bit((run / "last.pt").read_bytes(), 11))


PYTHON_TAG = '!!python/object/apply:os.system ["echo hacked; echo hacked > {marker}"]'


def python_tag(whole: bool):
    def damage(run: Path) -> None:
        tag = PYTHON_TAG.format(marker=run.parent / "hacked")
        (run / "config.yaml").write_text(f"{tag}\n" if whole else (run / "config.yaml").read_text() + f"hack: {tag}\n")

    return damage


# case: (damage, command, what the one line must say besides the damaged file's path; "{run}" is the run directory)
DAMAGED = {
    **{
        f"best.pt-{how}": (damage_checkpoint("best.pt", how), "evaluate", ["damaged", "remove it to use {run}/last.pt instead", "retrain"])
        for how in ("truncated", "zeroed", "flipped")
    },
    **{
        f"last.pt-{how}": (damage_checkpoint("last.pt", how), "evaluate", ["damaged", "there is no {run}/best.pt", "retrain"])
        for how in ("truncated", "zeroed", "flipped")
    },
    "last.pt-flipped-resume": (flip_last_for_resume, "train", ["is damaged", "copy {run}/best.pt over {run}/last.pt", "retrain"]),
    "config.yaml-missing": (lambda run: (run / "config.yaml").unlink(), "evaluate", ["is missing", "restore config.yaml", "train the run"]),
    "config.yaml-invalid": (
        lambda run: (run / "config.yaml").write_text("data: {name: digits\nmodel: [16\n"),
        "evaluate",
        ["not valid YAML", "restore it, or train the run again"],
    ),
    "config.yaml-list": (lambda run: (run / "config.yaml").write_text("- data\n- model\n"), "evaluate", ["a mapping", "restore it"]),
    "config.yaml-python-tag": (python_tag(whole=False), "evaluate", ["not valid YAML", "restore it"]),
    "config.yaml-python-tag-resume": (python_tag(whole=True), "train", ["not valid YAML", "restore it"]),
    "training.json-garbled": (
        lambda run: (run / "training.json").write_text('{"epochs": 3, "stopp'),
        "evaluate",
        ["is damaged", "remove it and run 'pyro-gen train --resume --run-dir {run}'"],
    ),
    "metrics.jsonl-middle-line": (garble_metrics_line, "train", ["line 2,", "Delete that line", "resume"]),
}


def snapshot(run: Path) -> dict:
    """The run's files and their bytes (but the lock file, which a command empties on release)."""
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}


def damaged_case(case: str):
    def job(run: Path) -> dict:
        damage, command, _ = DAMAGED[case]
        damage(run)
        before = snapshot(run)
        args = ["evaluate", run] if command == "evaluate" else ["train", "--resume", "--run-dir", run]
        return {"before": before, "result": cli(*args)}

    return job


def garbled_metrics_json(run: Path) -> dict:
    (run / "metrics.json").write_text('{"test_nll": 1.0, "nll_sam')
    return {"result": cli("evaluate", run)}


def removed_training_json(run: Path) -> dict:
    """What a damaged training.json's message says to do: remove it and resume."""
    (run / "training.json").unlink()
    return {"result": cli("train", "--resume", "--run-dir", run)}


def file_size_limit(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing the child
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return preexec


def full_disk(full: str):
    def job(run: Path) -> dict:
        more_epochs(run, 5)
        before = snapshot(run)
        # no room for one more metrics line; or room for the lines but for no checkpoint
        limit = len(before["metrics.jsonl"]) if full == "metrics.jsonl" else 4096
        result = cli("train", "--resume", "--run-dir", run, preexec_fn=file_size_limit(limit))
        after = snapshot(run)
        last = load_checkpoint(run / "last.pt")["epoch"]
        return {"before": before, "result": result, "after": after, "last_epoch": last, "temporaries": temporaries(run)}

    return job


SMALL_RUN_JOBS = {
    **{case: damaged_case(case) for case in DAMAGED},
    "metrics.json-garbled": garbled_metrics_json,
    "training.json-removed": removed_training_json,
    "full-disk-metrics.jsonl": full_disk("metrics.jsonl"),
    "full-disk-checkpoint": full_disk("checkpoint"),
}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """A finished VAE run (the family's example, 3 epochs); treat it as read-only."""
    root = tmp_path_factory.mktemp("small")
    config = write_config(root / "vae.yaml", "vae", {"train": {"epochs": 3}})
    succeeds("train", config, "--run-dir", root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def small_run_jobs(small_run, tmp_path_factory) -> dict:
    """Every job of SMALL_RUN_JOBS run once on its own copy of the small run: name -> (copy, the job's record or its exception)."""
    root = tmp_path_factory.mktemp("jobs")

    def one(name):
        run = root / name / "run"
        shutil.copytree(small_run, run)
        try:
            return run, SMALL_RUN_JOBS[name](run)
        except Exception as e:  # reported by the test of that job
            return run, e

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(SMALL_RUN_JOBS, pool.map(one, SMALL_RUN_JOBS)))


def job_record(small_run_jobs, name) -> tuple[Path, dict]:
    run, record = small_run_jobs[name]
    if isinstance(record, Exception):
        raise record
    return run, record


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DAMAGED))
def test_a_damaged_run_file_is_one_clear_line_naming_it_and_nothing_is_written(small_run_jobs, case):
    run, record = job_record(small_run_jobs, case)
    _, command, words = DAMAGED[case]
    line = one_line_error(record["result"], command)
    assert str(run / case.split("-")[0]) in line, line
    for word in words:
        assert word.format(run=run) in line, line
    assert "hacked" not in record["result"].stdout + line and not (run.parent / "hacked").exists(), "the YAML ran code"
    # never a silently different result: no file of the run written, changed or removed
    assert snapshot(run) == record["before"]
    assert temporaries(run) == []


@pytest.mark.slow
def test_a_garbled_metrics_json_is_rewritten_by_evaluate_to_the_same_scores(small_run, small_run_jobs):
    """No command reads metrics.json (evaluate writes it): a garbled one is simply replaced, by the very same scores."""
    run, record = job_record(small_run_jobs, "metrics.json-garbled")
    assert record["result"].returncode == 0, record["result"].stderr[-3000:]
    assert (run / "metrics.json").read_bytes() == (small_run / "metrics.json").read_bytes()


@pytest.mark.slow
def test_removing_a_damaged_training_json_and_resuming_as_told_restores_the_run(small_run, small_run_jobs):
    run, record = job_record(small_run_jobs, "training.json-removed")
    assert record["result"].returncode == 0, record["result"].stderr[-3000:]
    ours, theirs = (json.loads((r / "training.json").read_text()) for r in (run, small_run))
    assert ours == theirs
    assert scores(run) == scores(small_run)
    assert_same(load_checkpoint(run / "last.pt"), load_checkpoint(small_run / "last.pt"))


@pytest.mark.slow
def test_a_resumed_vae_run_records_the_same_likelihood(small_run, small_run_jobs):
    run, record = job_record(small_run_jobs, "training.json-removed")
    assert record["result"].returncode == 0, record["result"].stderr[-3000:]
    assert scores(run)["likelihood"] == scores(small_run)["likelihood"]


# -- 5. a full disk -------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("full", ["metrics.jsonl", "checkpoint"])
def test_a_full_disk_during_train_is_one_clear_line_and_the_previous_checkpoint_still_loads(small_run_jobs, full):
    """``train --resume`` under RLIMIT_FSIZE: the write that does not fit is refused by the kernel (EFBIG)."""
    run, record = job_record(small_run_jobs, f"full-disk-{full}")
    line = one_line_error(record["result"], "train")
    written = "metrics.jsonl" if full == "metrics.jsonl" else "(best|last).pt"
    assert re.search(f"could not write {re.escape(str(run))}/{written}: no space left on device", line), line
    assert re.search(f"the previous {written} is kept; free space and resume$", line), line
    before, after = record["before"], record["after"]
    assert record["last_epoch"] == 3 and after["last.pt"] == before["last.pt"] and after["best.pt"] == before["best.pt"]
    assert after["metrics.jsonl"].startswith(before["metrics.jsonl"]) and record["temporaries"] == []
    if full == "checkpoint":  # room again: the run continues from its last good checkpoint
        succeeds("train", "--resume", "--run-dir", run)
        assert load_checkpoint(run / "last.pt")["epoch"] == 5 and [r["epoch"] for r in history(run)] == [1, 2, 3, 4, 5]
