"""The one trainer: fits any (model, guide, objective) on batches of data.

It knows no dataset names and no model families. Each epoch it shuffles with a
generator derived from ``(seed, epoch)``, steps a torch optimizer over the model's and
guide's parameters, scores the validation batches, appends a JSON line to
``metrics.jsonl`` and atomically writes ``last.pt`` (and ``best.pt`` when validation
improves). ``fit(..., resume=True)`` continues from ``last.pt`` exactly: parameters,
optimizer moments, epoch counter, early-stopping state and every random number
generator are restored, so a resumed run reproduces an uninterrupted one bit for bit.

Objectives with several players (a GAN's critic and generator,
:class:`~pyro_gen.infer.adversarial.Adversarial`) use the same loop: an objective with a
``players(model, guide)`` method gets one Adam optimizer per declared
:class:`~pyro_gen.infer.objectives.Player`, and on each batch every player whose turn it
is steps on its own ``player_loss``. Such an objective is an ``nn.Module`` holding its
own networks (the critic); the checkpoint holds its state and every optimizer's.

Checkpoints hold tensors and plain Python values only and are read with
``torch.load(..., weights_only=True)``: a run directory from someone else cannot run code.

Reliability (the run layer builds on these):

* every checkpoint carries the SHA-256 of its bytes (:func:`save_checkpoint`); a damaged file is refused
  by name (:class:`~pyro_gen.errors.CheckpointCorruptError`), never loaded; first-release files still load;
* a full disk or read-only file system gives one :class:`~pyro_gen.errors.StorageError` naming the file,
  with the previous file kept (:func:`~pyro_gen.io.atomic_path`, the metrics append);
* :meth:`Trainer.fit` holds the run directory's :func:`~pyro_gen.io.run_lock`, sweeps the temporary
  files of a killed run, and stops on SIGINT / SIGTERM at the next batch with a checkpoint that resumes
  exactly (:class:`~pyro_gen.errors.TrainingInterrupted`); after ``kill -9`` the directory resumes to the
  same weights, a torn last line of ``metrics.jsonl`` being dropped;
* a finite blow-up of the loss is a :class:`~pyro_gen.errors.TrainingDivergedError`, like a NaN.
"""

import contextlib
import copy
import hashlib
import hmac
import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Iterable
from contextlib import ExitStack
from io import BytesIO
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_gen import distributed
from pyro_gen.errors import (
    CheckpointCorruptError,
    ConfigError,
    DataError,
    DeviceUnavailableError,
    RunDirError,
    TrainingDivergedError,
    TrainingInterrupted,
)
from pyro_gen.infer.objectives import as_objective, make_objective
from pyro_gen.infer.precision import check_precision, training_autocast
from pyro_gen.infer.traces import check_sites, get_traces
from pyro_gen.io import atomic_path, remove_stale_temporaries, run_lock, storage_error
from pyro_gen.models.checks import check_data_tensor, check_labels, checked_dataset

CHECKPOINT_FORMAT = "pyro_gen-checkpoint-1"
#: the order of the single optimizer's parameters (:meth:`Trainer.parameters`); checkpoints without the key used
#: :data:`FIRST_PARAMETER_ORDER`
PARAMETER_ORDER = "guide-model-objective"
FIRST_PARAMETER_ORDER = "model-guide-objective"


class TensorBatches:
    """Minibatches of a tensor, reshuffled each epoch from ``(seed, epoch)``.

    :param x: data tensor ``(N, ...)``.
    :param transform: optional ``transform(batch, generator) -> batch`` applied per batch,
        e.g. dynamic binarization ``lambda b, g: torch.bernoulli(b, generator=g)``.
    :param y: optional labels ``(N,)``; batches are then ``(x, y)`` pairs (``transform`` acts on ``x``).
    """

    def __init__(
        self, x: torch.Tensor, batch_size: int, shuffle: bool = True, seed: int = 0, transform=None, drop_last: bool = False, y=None
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        # no pass over the values here: the trainer checks them once per dataset with the model's own check
        check_data_tensor(x, "x", values=False)
        if y is not None:
            check_labels(y, len(x), "y")
        self.y = y
        self.x, self.batch_size, self.shuffle, self.seed, self.transform, self.drop_last = (
            x,
            batch_size,
            shuffle,
            seed,
            transform,
            drop_last,
        )
        self.epoch = 0
        self.rank, self.world = 0, 1

    def shard(self, rank: int, world: int) -> "TensorBatches":
        """A copy whose batches are rank ``rank``'s slice (of ``world``) of each global batch (data-parallel training).

        Every rank draws the same permutation from ``(seed, epoch)`` and the same global batches of
        ``batch_size``; each takes its contiguous part of every batch (sizes differing by at most one).
        A per-batch ``transform`` (dynamic binarization) acts on the whole global batch with the epoch's
        generator before slicing, so its draws, the generator's state and a mid-epoch position are those
        of a single-process pass. ``len`` and :attr:`num_datapoints` stay global: the data plate is
        given the full data size.
        """
        out = copy.copy(self)
        out.rank, out.world = rank, world
        return out

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_datapoints(self) -> int:
        return len(self.x)

    def __iter__(self):
        return _EpochBatches(self)

    def iter_from(self, batch: int, generator_state: torch.Tensor) -> "_EpochBatches":
        """The rest of the current epoch from batch ``batch`` (0-based), exactly as an uninterrupted pass continues.

        ``generator_state`` is :meth:`_EpochBatches.state`'s ``"generator"`` after the last consumed batch:
        the order is redrawn from ``(seed, epoch)`` as always, then the generator is put where the
        transforms of the skipped batches left it, so the remaining batches and their random
        transforms (dynamic binarization) are the very ones the interrupted pass would have made.
        """
        if not 0 <= batch <= len(self):
            raise RunDirError(f"cannot resume at batch {batch} of an epoch of {len(self)} batches: the data or batch size changed")
        return _EpochBatches(self, start=batch, generator_state=generator_state)


class _EpochBatches:
    """One epoch's pass over a :class:`TensorBatches`; knows how far it got, so a checkpoint can record it.

    The epoch's generator draws the order first, then each batch's transform in turn; between two
    batches its state is all that the rest of the epoch depends on.
    """

    def __init__(self, batches: TensorBatches, start: int = 0, generator_state: torch.Tensor | None = None):
        self.batches, self.position, self.length = batches, start, len(batches)
        self.generator = torch.Generator().manual_seed(batches.seed * 1_000_003 + batches.epoch)
        self.order = torch.randperm(len(batches.x), generator=self.generator) if batches.shuffle else None
        if generator_state is not None:
            self.generator.set_state(generator_state)

    def __iter__(self):
        return self

    def __len__(self):
        return self.length - self.position

    def __next__(self):
        if self.position >= self.length:
            raise StopIteration
        b, i = self.batches, self.position
        idx = slice(i * b.batch_size, (i + 1) * b.batch_size)
        if b.world > 1:
            return self._next_shard(idx)
        batch = b.x[self.order[idx]] if self.order is not None else b.x[idx]
        batch = b.transform(batch, self.generator) if b.transform is not None else batch
        self.position += 1
        if b.y is None:
            return batch
        return batch, (b.y[self.order[idx]] if self.order is not None else b.y[idx])

    def _next_shard(self, idx: slice):
        """This rank's part of the global batch ``idx`` (see :meth:`TensorBatches.shard`)."""
        from pyro_gen.distributed import shard_bounds

        b = self.batches
        rows = self.order[idx] if self.order is not None else torch.arange(len(b.x))[idx]
        lo, hi = shard_bounds(len(rows), b.world, b.rank)
        if b.transform is not None:  # the whole global batch, so that the generator moves as in one process
            batch = b.transform(b.x[rows], self.generator)[lo:hi]
        else:
            batch = b.x[rows[lo:hi]]
        self.position += 1
        return batch if b.y is None else (batch, b.y[rows[lo:hi]])

    def state(self) -> dict:
        """Where the pass stands: batches consumed and the generator's state after them (weights_only-safe)."""
        return {"batch": self.position, "generator": self.generator.get_state()}


def _as_batches(data, batch_size: int, shuffle: bool, seed: int, labels: bool = False):
    """Accept a tensor, a dataset object with ``.x`` (and optional ``transform_batch``, and ``.y`` when
    ``labels``), or any iterable of batches."""
    if data is None or isinstance(data, TensorBatches):
        return data
    if torch.is_tensor(data) or isinstance(data, np.ndarray):
        return TensorBatches(data, batch_size, shuffle, seed)  # it refuses an array with the fix
    if isinstance(data, (list, tuple)) and not (data and torch.is_tensor(_first(data[0]))):
        what = "an empty list" if not data else f"a list of {type(data[0]).__name__} (not of batch tensors)"
        raise DataError(f"the data are {what}: give a tensor (torch.tensor(data, dtype=torch.float32)) or a list of batch tensors")
    if hasattr(data, "x") and torch.is_tensor(data.x):
        y = getattr(data, "y", None) if labels else None
        return TensorBatches(data.x, batch_size, shuffle, seed, transform=getattr(data, "transform_batch", None), y=y)
    if isinstance(data, Iterable):
        return data
    raise ConfigError(f"cannot make batches of {type(data).__name__}; give a tensor, a pyro_gen dataset or an iterable of batches")


def _num_datapoints(batches) -> int | None:
    n = getattr(batches, "num_datapoints", None)
    if n is None:
        dataset = getattr(batches, "dataset", None)
        n = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
    return n


def _labels(batch):
    """The labels of a labelled batch ``(x, y)``, else ``None``."""
    return batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None


def _model_reads_labels(model) -> bool:
    """A model conditioned on class labels (``num_classes``) or with a discrete latent they observe."""
    return bool(getattr(model, "num_classes", None) or getattr(model, "discrete_latents", None))


def _first(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _to_device(batch, device):
    if isinstance(batch, (tuple, list)):
        return type(batch)(b.to(device, non_blocking=True) if torch.is_tensor(b) else b for b in batch)
    return batch.to(device, non_blocking=True)


def rng_state() -> dict:
    """Every random number generator's state, as tensors and plain values (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            *map(lambda v: v.item() if hasattr(v, "item") else v, np_state[2:]),
        ),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- checkpoint files --------------------------------------------------------------------------
#: A checkpoint file written by :func:`save_checkpoint` is the ``torch.save`` payload followed by this
#: prefix, the SHA-256 hex digest of the payload and a newline. The digest goes last, not first, because
#: torch's zip reader ignores bytes after the archive: ``torch.load("last.pt", weights_only=True)`` keeps
#: working on the file itself, for scripts and tools that read checkpoints directly. Files of the first
#: release are bare torch zip files with no trailer; they still load, without the integrity check.
CHECKPOINT_TRAILER = b"\nPYROGEN-CKPT-2 sha256 "
_TRAILER_LENGTH = len(CHECKPOINT_TRAILER) + 64 + 1  # the prefix, 64 lowercase hex digits, a newline
_ZIP_SIGNATURE = b"PK\x03\x04"
#: The key :func:`save_checkpoint` adds to the payload: a file whose payload has it but whose trailer is
#: missing or mangled is damaged, not a first-release checkpoint (so a flip in the trailer is caught too).
INTEGRITY_KEY = "integrity"


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a half-written file.

    A bare torch file, for any object; trainer checkpoints go through :func:`save_checkpoint`, which adds a digest.

    :raises StorageError: the disk is full or read-only; the previous ``path`` is kept, the temporary file removed.
    """
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(ckpt: dict, path: Path) -> None:
    """Write ``ckpt`` atomically, as its ``torch.save`` payload then :data:`CHECKPOINT_TRAILER` and the payload's SHA-256.

    The digest turns every kind of damage (a truncated copy, a flipped bit on disk or in transit,
    an edit) into a refusal by :func:`load_checkpoint` instead of silently wrong weights; torch's
    zip container checks no such thing. The file is ``fsync``'d before the rename, so that after a
    crash of the machine the name points at complete bytes, and so that a full disk that only shows
    at write-back (network file systems) is reported here, while the previous file still stands.

    :raises StorageError: the disk is full or read-only; the previous ``path`` is kept, the temporary file removed.
    """
    buffer = BytesIO()
    torch.save({**ckpt, INTEGRITY_KEY: "sha256"}, buffer)
    payload = buffer.getbuffer()
    digest = hashlib.sha256(payload).hexdigest().encode("ascii")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(payload)
        f.write(CHECKPOINT_TRAILER + digest + b"\n")
        f.flush()
        os.fsync(f.fileno())


def _damage_hint(path: Path) -> str:
    best, last = path.with_name("best.pt"), path.with_name("last.pt")
    if path.name == "last.pt":
        if not best.is_file():
            return f"there is no {best} to resume from instead: retrain"
        return f"resume from best.pt instead (copy {best} over {path}; training continues from its epoch) or retrain"
    if path.name == "best.pt":
        if not last.is_file():
            return "there is no last.pt beside it: retrain"
        return f"remove it to use {last} instead (the run's final weights; the run's commands fall back to it), or retrain"
    return "use another checkpoint of the run (best.pt or last.pt), or retrain"


def decode_checkpoint(data: bytes, path, map_location="cpu") -> dict:
    """The checkpoint in the file bytes ``data``, its digest verified; what :func:`load_checkpoint` does after reading.

    :param path: the file ``data`` was read from, for the messages.
    :raises CheckpointCorruptError: any damage: every one-bit flip anywhere in a file written by
        :func:`save_checkpoint` (payload or trailer) lands here, as do truncation, zeroing and
        files that are no torch file at all.
    :raises RunDirError: a readable torch file that is not a pyro_gen checkpoint.
    """
    path = Path(path)
    damaged = f"so it was not loaded; {_damage_hint(path)}"
    tail = data[-_TRAILER_LENGTH:]
    if len(data) > _TRAILER_LENGTH and tail.startswith(CHECKPOINT_TRAILER) and tail.endswith(b"\n"):
        payload = memoryview(data)[:-_TRAILER_LENGTH]
        # compare the exact bytes: an upper-case hex digit is a flipped bit, not the same digest
        if not hmac.compare_digest(hashlib.sha256(payload).hexdigest().encode(), tail[len(CHECKPOINT_TRAILER) : -1]):
            raise CheckpointCorruptError(
                f"{path} is damaged: its bytes do not match the SHA-256 digest written with them (a truncated or altered copy, "
                f"or a disk error), {damaged}",
                path,
            )
        verified = True
    elif data.startswith(_ZIP_SIGNATURE):
        payload, verified = data, False  # a first-release checkpoint (no trailer), or one whose trailer is damaged: see below
    elif not data:
        raise CheckpointCorruptError(f"{path} is empty (0 bytes), {damaged}", path)
    else:
        raise CheckpointCorruptError(f"{path} is not a pyro_gen checkpoint, or it is damaged: it is no torch file, {damaged}", path)
    try:
        ckpt = torch.load(BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, truncated first-release files, foreign objects
        raise CheckpointCorruptError(
            f"{path} is not a readable pyro_gen checkpoint ({type(e).__name__}: {e}), or it is damaged; {_damage_hint(path)}", path
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RunDirError(f"{path} is not a pyro_gen checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    if not verified and INTEGRITY_KEY in ckpt:
        raise CheckpointCorruptError(
            f"{path} is damaged: it was written with a SHA-256 digest at its end, and that digest is missing or mangled "
            f"(a truncated copy or a disk error), {damaged}",
            path,
        )
    ckpt.pop(INTEGRITY_KEY, None)
    return ckpt


def require_device(device, purpose: str = "use it") -> None:
    """Refuse a CUDA device that this machine lacks, before anything is blamed on a file.

    :param device: a device string or ``torch.device``; anything else (a ``map_location`` dict or callable) is not checked.
    :raises DeviceUnavailableError: a ``ConfigError`` the caller can catch to reword with its own flag.
    """
    if not isinstance(device, (str, torch.device)):
        return
    d = torch.device(device)
    if d.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device {str(device)!r} was asked for to {purpose}, but torch sees no CUDA device on this machine "
            "(torch.cuda.is_available() is False); use device='cpu'",
            device=str(device),
        )
    if d.index is not None and d.index >= torch.cuda.device_count():
        raise DeviceUnavailableError(
            f"device {str(device)!r} was asked for to {purpose}, but torch sees {torch.cuda.device_count()} CUDA device(s); "
            f"use one of cuda:0 ... cuda:{torch.cuda.device_count() - 1}",
            device=str(device),
        )


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a pyro_gen checkpoint safely and check it.

    The file's digest is verified first (:func:`decode_checkpoint`), then the payload is read with
    ``torch.load(..., weights_only=True)``, which builds tensors and plain values only: no code from
    the file runs. Checkpoints of the first release (no digest) still load.

    :raises DeviceUnavailableError: ``map_location`` is a CUDA device this machine lacks (the file is not blamed).
    :raises CheckpointCorruptError: the file is damaged or no checkpoint (a :class:`RunDirError`).
    :raises RunDirError: the file is missing or unreadable, or holds something else than a pyro_gen checkpoint.
    """
    path = Path(path)
    require_device(map_location, f"load {path}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunDirError(f"no checkpoint at {path}; is this a pyro_gen run directory that finished an epoch?") from None
    except OSError as e:
        raise RunDirError(f"{path} could not be read ({e.strerror or e})") from None
    return decode_checkpoint(data, path, map_location)


def initialize(model, guide, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """Run model and guide once on a small batch: create lazy parameters (autoguides) and check the sites match.

    With ``guide=None`` (a GAN generator) the model runs once on its own. Modules run in eval
    mode here, so that this pass does not move batch-norm statistics. ``y``: the batch's labels,
    for a model conditioned on them; a model with an enumerated discrete latent runs at its value 0.
    """
    kwargs = {}
    if getattr(model, "discrete_latents", None):  # its labels may be -1 (unknown): any valid value will do
        kwargs["y"] = torch.zeros(len(x[:2]), dtype=torch.long, device=x.device)
    elif y is not None:
        kwargs["y"] = y[:2].to(x.device)
    modes = [(m, m.training) for m in (model, guide) if isinstance(m, torch.nn.Module)]
    for m, _ in modes:
        m.eval()
    try:
        with torch.no_grad():
            model_trace, guide_trace = get_traces(model, guide, x[:2], **kwargs)
    finally:
        for m, training in modes:
            m.train(training)
    if guide is not None:
        check_sites(model_trace, guide_trace)


# -- stopping on a signal ------------------------------------------------------------------------
class _StopRequests:
    """SIGINT / SIGTERM handlers for the length of one fit: the first signal asks for a stop, the second stops at once.

    The first signal only sets :attr:`signum`; the loop looks at it after each batch (a safe point:
    the optimizer has stepped, nothing is half-updated) and saves a checkpoint it resumes from
    exactly. A second signal restores the previous handlers and raises ``KeyboardInterrupt`` where the
    program is: files are written atomically, so that leaves the last checkpoint intact.

    Signals are only caught in the main thread (Python delivers them there and nowhere else), and a
    signal the process was told to ignore (``nohup``, a background job's SIGINT) stays ignored.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool):
        self.signum: int | None = None
        self._previous: dict = {}
        self.enabled = enabled and threading.current_thread() is threading.main_thread()

    @property
    def name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

    def __enter__(self) -> "_StopRequests":
        if not self.enabled:
            return self
        for s in self.SIGNALS:
            previous = signal.getsignal(s)
            if previous is signal.SIG_IGN or previous is None:  # ignored, or a handler not set from Python: leave it
                continue
            self._previous[s] = previous
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            # os.write, not print: a handler may run in the middle of another write to stderr
            os.write(
                2,
                f"\npyro_gen: {signal.Signals(signum).name} received; stopping after the current batch (the current epoch for data "
                "that cannot resume mid-epoch) and saving a checkpoint to resume from; send it again to stop at once\n".encode(),
            )
            return
        self._restore()
        raise KeyboardInterrupt

    def _restore(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()


# -- data-parallel draws and intra-op threads --------------------------------------------------
def batch_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The seed of rank ``rank``'s draws for batch ``step`` of ``epoch`` (``step=-1``: the epoch's validation) in a data-parallel run.

    A hash, so that neighbouring positions and ranks get unrelated streams; a function of the position
    alone, so that a resumed run draws what an uninterrupted one draws without per-rank state in the checkpoint.
    """
    digest = hashlib.sha256(f"pyro_gen-batch:{seed}:{epoch}:{step}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seed_draws(seed: int, device: torch.device) -> None:
    """Seed torch's CPU generator and, for a CUDA ``device``, that device's: the generators a rank draws from.

    What ``torch.manual_seed`` does for them, without its pass over every other device type and GPU (~0.1 ms, 1% of a
    small step, taken at every data-parallel step).
    """
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def _affinity() -> set | None:
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):  # macOS, Windows
        return None


def bind_rank_cpus(local_rank: int, ranks_on_this_machine: int, threads: int) -> tuple[list[int] | None, str]:
    """Bind this process to rank ``local_rank``'s share of the CPUs it may use: ``(the CPUs, '')``, or ``(None, why not)``.

    The usable CPUs (:func:`usable_cpus`), in order, are cut into ``ranks_on_this_machine`` contiguous shares (sizes
    differing by at most one; contiguous numbers are usually one core's hyperthreads or one socket's cores); every
    rank of the machine computes the same cut, so the shares do not overlap. Nothing is bound when there are fewer
    CPUs than ranks, or when ``threads`` would not fit in the share.
    """
    from pyro_gen.distributed import shard_bounds

    cpus = _affinity()
    if cpus is None:
        return None, "not bound: this platform has no CPU affinity"
    cpus = sorted(cpus)
    if len(cpus) < ranks_on_this_machine:
        return None, f"not bound: {len(cpus)} usable CPUs for {ranks_on_this_machine} ranks"
    lo, hi = shard_bounds(len(cpus), ranks_on_this_machine, local_rank)
    share = cpus[lo:hi]
    if threads > len(share):
        return None, f"not bound: {threads} threads per rank would not fit in a share of {len(share)} CPUs"
    os.sched_setaffinity(0, share)
    return share, ""


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: what taskset, cgroups' cpusets and schedulers leave it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


#: Floating-point operations of one training step (forward and backward, per rank) per intra-op thread that
#: ``threads="auto"`` asks for: a smaller step runs on one thread. See BENCHMARKS.md, "Intra-op threads".
FLOPS_PER_THREAD = 2e9


def step_flops(model, guide, x: torch.Tensor, multi: bool = False) -> int | None:
    """Floating-point operations of one training step on the batch ``x``, estimated from one forward pass.

    The model and guide run once (eval mode, no gradient, the random state restored afterwards, so the
    fit draws what it would have drawn) under torch's ``FlopCounterMode``; a step is taken as three times
    the forward (backward ~ twice the forward), twice that for a two-player objective (a GAN's critic is
    about the generator's size and runs on real and generated batches). ``None`` if the count fails.
    """
    from torch.utils.flop_counter import FlopCounterMode

    modules = [m for m in (model, guide) if isinstance(m, torch.nn.Module)]
    modes = [(m, m.training) for m in modules]
    try:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), torch.no_grad():
            for m in modules:
                m.eval()
            counter = FlopCounterMode(display=False)
            with counter:
                get_traces(model, guide, x)
            return int(counter.get_total_flops() * 3 * (2 if multi else 1))
    except Exception:  # a model the counter cannot follow: no estimate, the caller falls back
        return None
    finally:
        for m, training in modes:
            m.train(training)


def choose_threads(requested: int | None, flops: int | None, ranks_on_this_machine: int = 1) -> tuple[int, str]:
    """Intra-op threads for a fit: ``(threads, the rule that chose them)``.

    ``requested`` (``train.threads``) wins. Otherwise each rank on this machine gets an equal share of the
    CPUs this process may use (:func:`usable_cpus`; one thread per rank when there are as many ranks as
    CPUs), and of that share one thread per :data:`FLOPS_PER_THREAD` of a step: small networks lose more
    to thread start-up and contention than they gain (issue #12: ring8's GAN took 1-14 s an epoch on two
    busy threads against 0.9 s on one).
    """
    if requested is not None:
        return int(requested), "train.threads"
    cpus = usable_cpus()
    share = max(1, cpus // max(1, ranks_on_this_machine))
    if flops is None:
        return share, f"auto: {cpus} usable CPUs / {ranks_on_this_machine} rank(s) on this machine (step size unknown)"
    n = max(1, min(share, int(flops // FLOPS_PER_THREAD)))
    return n, (
        f"auto: {cpus} usable CPUs / {ranks_on_this_machine} rank(s) on this machine = {share}, and one thread per "
        f"{FLOPS_PER_THREAD:.0e} FLOP of a step ({flops:.2e})"
    )


#: Learning-rate schedules of :class:`Trainer`.
LR_SCHEDULES = ("constant", "linear")


class Trainer:
    """Fit a model and guide with an objective by stochastic gradient steps.

    :param model: a Pyro program (e.g. a :class:`~pyro_gen.models.LatentModel`), an ``nn.Module``.
    :param guide: a guide over the same latent sites, an ``nn.Module``; ``None`` for models that
        are not inferred (a GAN generator).
    :param objective: ``"elbo"``, ``"iwae"``, a :class:`~pyro_gen.infer.TraceObjective`, a Pyro
        ELBO instance, a callable ``(model_trace, guide_trace) -> loss``, or a multi-player
        objective such as :class:`~pyro_gen.infer.adversarial.Adversarial`.
    :param lr: Adam learning rate (the default of players that declare none).
    :param batch_size: minibatch size when data are given as a tensor or dataset.
    :param epochs: number of passes over the training data.
    :param device: ``"cpu"`` or ``"cuda"`` (or a ``torch.device``); modules and batches move there.
    :param seed: seeds every generator; shuffling is derived from ``(seed, epoch)``.
    :param run_dir: where ``metrics.jsonl`` and checkpoints go (nothing is written when ``None``).
        :meth:`fit` holds the directory's :func:`~pyro_gen.io.run_lock` while it runs.
    :param patience: stop after this many epochs without a better validation loss.
    :param progress: show a progress bar per epoch.
    :param clip_norm: optional gradient-norm clipping.
    :param lr_schedule: ``"constant"``, or ``"linear"``: every learning rate falls linearly from its
        initial value to zero over the run's batches (the rate of batch ``b`` of ``B`` is
        ``lr * (1 - b / B)``), as in the WGAN-GP reference code (Gulrajani et al. 2017). For GANs
        on the 2-D mixtures it is what turns blurred modes into sharp ones (BENCHMARKS.md §7). The
        rate is a function of the batch index, so a resumed run continues the same schedule.
    :param divergence_factor: a single-player objective's run is stopped as diverged when an epoch's
        mean training loss exceeds the loss at initialization ``L0`` (that of the first batch, before
        any step) by more than ``divergence_factor * max(|L0|, 1)``; ``None`` turns the check off.
        See :meth:`_check_blow_up` for why 100 cannot fire on healthy training.
    :param threads: torch's intra-op threads while fitting: ``None`` leaves torch's setting alone, an
        integer sets it, ``"auto"`` chooses from the CPUs this process may use and the size of a step
        (:func:`choose_threads`); the count is restored after :meth:`fit` and recorded in every epoch's
        record (``threads``, with ``ranks``) and in :attr:`threads_choice`.
    :param precision: ``"float32"`` (default) or ``"bf16"``: each training step's forward pass under bfloat16
        autocast, with every density and the loss in float32 (:mod:`pyro_gen.infer.precision`); validation
        and evaluation always run in float32.
    :param bind_cpus: data-parallel ranks on one machine's CPUs: bind each rank to its own share of the CPUs
        this process may use (:func:`bind_rank_cpus`), as CPU launchers such as Intel's do, so that the scheduler
        cannot stack two ranks on one core. Off by default: on the 2-core VM of BENCHMARKS.md section 9d it made
        no measurable difference, and two jobs on one machine that both bind would share their first cores
        while the scheduler spreads them. The affinity is restored after :meth:`fit`; the choice is in
        :attr:`threads_choice` and in the epochs' records (``bound_cpus``).

    **CUDA**: with ``device="cuda"`` a tensor dataset (without a per-batch transform) that takes at most a
    quarter of the free GPU memory is moved to the GPU once, before the first epoch (:attr:`data_on_device`),
    and its batches are sliced there; otherwise each batch is copied when it is used.

    **Data-parallel** (under ``torchrun``, see :mod:`pyro_gen.distributed`): :meth:`fit` joins the process
    group, gives each rank its slice of every global batch (:meth:`TensorBatches.shard`; the data plate
    keeps the full data size, ``batch_size`` is the global batch), and after each backward pass averages
    the gradients over the ranks, each rank's weighted by its datapoints, so that the optimizer takes the
    step one process would take on the whole batch (learning rate and schedules keep their meaning): by
    :func:`~pyro_gen.distributed.gradient_reducer`'s reducer, which on one machine's CPUs shares the weights
    and Adam's state between the ranks and has each step its own share of the parameters, and elsewhere
    all-reduces gradients during backward for every rank to step its own copy. The same exchange carries
    the loss and a stop request (SIGTERM on any rank stops all of them after the same batch). Rank 0 alone writes checkpoints and
    ``metrics.jsonl`` and shows progress; checkpoints hold global state only, so a run resumes under
    another number of ranks. Each rank's random draws are seeded per batch from ``(seed, epoch, batch,
    rank)``: distinct across ranks, and a function of the position, so a distributed run resumes exactly.
    :raises DeviceUnavailableError: ``device`` is CUDA and this machine has none (a ``ConfigError``).
    """

    def __init__(
        self,
        model,
        guide,
        objective="elbo",
        *,
        lr: float = 1e-3,
        batch_size: int = 128,
        epochs: int = 10,
        device="cpu",
        seed: int = 0,
        run_dir=None,
        patience: int | None = None,
        progress: bool = True,
        clip_norm: float | None = None,
        lr_schedule: str = "constant",
        divergence_factor: float | None = 100.0,
        threads: int | str | None = None,
        precision: str = "float32",
        bind_cpus: bool = False,
    ):
        self.precision = check_precision(precision)
        if not isinstance(bind_cpus, bool):
            raise ConfigError(f"bind_cpus must be true or false, got {bind_cpus!r}")
        self.bind_cpus = bind_cpus
        if not (threads is None or threads == "auto" or (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1)):
            raise ConfigError(f"threads must be a positive integer, 'auto' or None (leave torch's setting), got {threads!r}")
        self.threads = threads
        self.threads_choice: dict | None = None
        if lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown lr_schedule {lr_schedule!r}; choose one of {', '.join(map(repr, LR_SCHEDULES))}")
        self.lr_schedule = lr_schedule
        self.model, self.guide = model, guide
        self.objective = make_objective(objective) if isinstance(objective, str) else as_objective(objective)
        needs_guide = getattr(self.objective, "needs_guide", True) and not callable(getattr(self.objective, "players", None))
        if guide is None and needs_guide:
            raise ConfigError(
                "guide=None is for objectives that fit a model without inferring its latents (Adversarial, "
                "MaximumLikelihood for an explicit density); "
                "give a guide for this objective, e.g. make_guide('normal', model)"
            )
        self.lr, self.batch_size, self.epochs, self.seed = lr, batch_size, epochs, seed
        self.device = torch.device(device)
        require_device(self.device, "train")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.patience, self.progress, self.clip_norm = patience, progress, clip_norm
        self.divergence_factor = divergence_factor
        self.optimizer = None
        # multi-player objectives: the declared players and one optimizer per player
        self.players, self.optimizers = None, None
        self.history: list[dict] = []
        # the loss of the run's first batch before any step (divergence reference), and what last.pt holds now
        self._initial_loss: float | None = None
        self._saved: str | None = None
        self._rank, self._world = 0, 1
        self._batch_count, self._stop, self._stop_all = 0, None, False
        # the data-parallel gradient reducer (built by fit() before the first epoch; buckets put hooks on the parameters)
        self._reducer = None
        #: whether fit() moved its tensor data to the CUDA device once (see the class docstring)
        self.data_on_device = False

    # -- helpers -------------------------------------------------------------
    def _modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.model, self.guide, self.objective) if isinstance(m, torch.nn.Module)]

    def parameters(self, order: str = PARAMETER_ORDER) -> list[torch.nn.Parameter]:
        """Every parameter once, in the optimizer's order: the guide's, the model's, the objective's (``order``).

        The guide runs first in a step, so backward computes its gradients last; Adam meeting them first finds
        them still in cache (0.18 ms of an 8 ms MNIST VAE step: BENCHMARKS.md section 14). Checkpoints record the
        order (``"parameter_order"``); those of earlier releases, model first, are converted when restored.
        """
        owners = {"guide": self.guide, "model": self.model, "objective": self.objective}
        seen, params = set(), []
        for module in (owners[name] for name in order.split("-")):
            if not isinstance(module, torch.nn.Module):
                continue
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    def _param_groups(self) -> list:
        """All parameters at ``lr``, except those a submodule scales (``lr_scaled_parameters()``, e.g. flow layers)."""
        scales: dict[int, float] = {}
        for module in self._modules():
            for sub in module.modules():
                scaled = getattr(sub, "lr_scaled_parameters", None)
                if callable(scaled):
                    for scale, params in scaled():
                        scales.update({id(p): float(scale) for p in params})
        params = self.parameters()
        if not scales:
            return params
        groups = [{"params": [p for p in params if id(p) not in scales]}]
        for scale in sorted(set(scales.values()), reverse=True):
            groups.append({"params": [p for p in params if scales.get(id(p)) == scale], "lr": self.lr * scale})
        return [g for g in groups if g["params"]]

    def _all_optimizers(self) -> list:
        return [self.optimizer] if self.players is None else list(self.optimizers.values())

    def _schedule(self, batch_index: int, total: int) -> None:
        """Set every parameter group's rate for batch ``batch_index`` (0-based) of ``total`` (the linear schedule)."""
        factor = 1.0 - batch_index / total
        for optimizer in self._all_optimizers():
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor

    def _step_loss(self, x, data_size, y=None):
        if self.precision != "float32":
            with training_autocast(self.precision, self.device):
                return self._objective_loss(x, data_size, y)
        return self._objective_loss(x, data_size, y)

    def _objective_loss(self, x, data_size, y=None):
        if y is None:
            return self.objective(self.model, self.guide, x, data_size=data_size)
        return self.objective(self.model, self.guide, x, data_size=data_size, y=y.to(x.device))

    @torch.no_grad()
    def evaluate_loss(self, batches, data_size=None) -> float:
        """Mean validation loss per datapoint over ``batches`` (no gradient).

        Single-player objectives are scored by their ``validation_loss``: the unmodified bound,
        so that a KL warm-up (whose early, down-weighted KL makes the training loss look better)
        cannot make an early epoch the "best" one.
        """
        total, count = 0.0, 0
        for batch in batches:
            if len(_first(batch)) == 0:  # this rank's slice of a short batch
                continue
            if self.players is not None:  # multi-player objectives read whole (possibly labelled) batches
                batch = _to_device(batch, self.device)
                x, loss = _first(batch), self.objective(self.model, self.guide, batch)
            else:
                x = _first(batch).to(self.device)
                y = _labels(batch)
                extra = {} if y is None else {"y": y.to(self.device)}
                loss = self.objective.validation_loss(self.model, self.guide, x, data_size=None, **extra)
            total += float(loss) * len(x)
            count += len(x)
        if self._world > 1:  # each rank scored its shard (or, for other iterables, everything: the mean is then the ranks' mean)
            total, count = distributed.all_reduce_sum([total, count])
        return total / max(count, 1)

    def _checkpoint(self, epoch: int, best: float, bad_epochs: int, position: dict | None = None) -> dict:
        """The checkpoint after ``epoch`` complete epochs; ``position`` adds how far the next one got (mid-epoch)."""
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "guide": self.guide.state_dict() if self.guide is not None else {},
            "rng": rng_state(),
            "best_valid": best,
            "bad_epochs": bad_epochs,
            "seed": self.seed,
            # added after the first release (readers use .get): the divergence reference and the mid-epoch position
            "initial_loss": self._initial_loss,
            "position": position,
        }
        if self.players is None:
            ckpt["optimizer"] = self.optimizer.state_dict()
            ckpt["parameter_order"] = PARAMETER_ORDER
        else:
            ckpt["optimizers"] = {name: opt.state_dict() for name, opt in self.optimizers.items()}
            ckpt["step"] = self._step
        if isinstance(self.objective, torch.nn.Module):
            ckpt["objective"] = self.objective.state_dict()
        return ckpt

    def _restore(self, ckpt: dict) -> None:
        saved = ckpt.get("optimizers", {"": None} if "optimizer" in ckpt else {})
        wanted = {""} if self.players is None else set(self.optimizers)
        if set(saved) != wanted:
            # e.g. a GAN's run directory resumed with a likelihood objective, or the reverse
            raise RunDirError(
                f"the checkpoint holds optimizer(s) {sorted(saved)} but this objective's players are {sorted(wanted)} "
                "('' = one optimizer): resume with the objective that wrote it"
            )
        self.model.load_state_dict(ckpt["model"])
        if self.guide is not None:
            self.guide.load_state_dict(ckpt["guide"])
        if isinstance(self.objective, torch.nn.Module) and "objective" in ckpt:
            self.objective.load_state_dict(ckpt["objective"])
        self._initial_loss = ckpt.get("initial_loss")  # None in checkpoints of the first release: no blow-up check then
        if self.players is None:
            order = ckpt.get("parameter_order", FIRST_PARAMETER_ORDER)
            state = ckpt["optimizer"] if order == PARAMETER_ORDER else self._reordered(ckpt["optimizer"], order)
            self.optimizer.load_state_dict(state)
            return
        for name, opt in self.optimizers.items():
            opt.load_state_dict(saved[name])
        self._step = ckpt["step"]

    def _reordered(self, state: dict, order: str) -> dict:
        """``state``, an optimizer state dict saved with the parameters in ``order``, renumbered for this optimizer.

        An optimizer state dict numbers the parameters in the order of its groups; the groups themselves (the
        unscaled rate, then each ``lr_scaled_parameters`` scale) are the same sets in either order.
        """
        if order not in (PARAMETER_ORDER, FIRST_PARAMETER_ORDER):
            raise RunDirError(f"{self.run_dir / 'last.pt'} numbers its optimizer's parameters in an unknown order {order!r}")
        saved_groups = state["param_groups"]
        if len(saved_groups) != len(self.optimizer.param_groups):
            raise RunDirError(
                f"{self.run_dir / 'last.pt'} holds {len(saved_groups)} optimizer groups, this model and guide make "
                f"{len(self.optimizer.param_groups)}: resume with the config that wrote it"
            )
        # the saved numbering: the old parameter order, filtered into the same groups
        group_of = {id(p): g for g, group in enumerate(self.optimizer.param_groups) for p in group["params"]}
        old = [[] for _ in saved_groups]
        for p in self.parameters(order):
            old[group_of[id(p)]].append(p)
        saved_id, groups, moved, index = {}, [], {}, 0
        for saved, members, current in zip(saved_groups, old, self.optimizer.param_groups):
            if len(saved["params"]) != len(members):
                raise RunDirError(f"{self.run_dir / 'last.pt'} does not fit this model and guide: resume with the config that wrote it")
            saved_id.update({id(p): i for p, i in zip(members, saved["params"])})
            numbers = list(range(index, index + len(current["params"])))
            index += len(numbers)
            groups.append({**saved, "params": numbers})
            for p, number in zip(current["params"], numbers):
                if saved_id[id(p)] in state["state"]:
                    moved[number] = state["state"][saved_id[id(p)]]
        return {"state": moved, "param_groups": groups}

    def _setup_optimizers(self) -> None:
        """One Adam over all parameters, or one per player of a multi-player objective."""
        players = getattr(self.objective, "players", None)
        self.players = players(self.model, self.guide) if callable(players) else None
        if self.players is None:
            self.optimizer, self.optimizers = torch.optim.Adam(self._param_groups(), lr=self.lr), None
            self._remember_initial_rates()
            return
        self.optimizer, self._step = None, 0
        self.optimizers = {
            p.name: torch.optim.Adam(p.params, lr=self.lr if p.lr is None else p.lr, **({} if p.betas is None else {"betas": p.betas}))
            for p in self.players
        }
        self._remember_initial_rates()

    def _remember_initial_rates(self) -> None:
        # the schedule scales these; they travel in the optimizers' state dicts, so a resumed run keeps them
        for optimizer in self._all_optimizers():
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])

    def _play(self, batch, data_size, epoch: int, step: int) -> dict[str, float]:
        """One batch of a multi-player objective: each player whose turn it is takes one step on its own loss."""
        values = {}
        for player in self.players:
            if (self._step + 1) % player.every:
                continue
            where = f"at epoch {epoch + 1}, step {step + 1}"
            n = len(_first(batch))
            try:
                with training_autocast(self.precision, self.device):
                    loss = (
                        self.objective.player_loss(player.name, self.model, self.guide, batch, data_size) if n or self._world == 1 else None
                    )
            except TrainingDivergedError as e:  # e.g. the critic's scores became NaN
                raise TrainingDivergedError(f"{e} ({where}); {self._kept()}") from None
            optimizer = self.optimizers[player.name]
            if self._world > 1:
                optimizer.zero_grad(set_to_none=True)
                if loss is not None:
                    loss.backward()
                value, self._batch_count = self._all_reduce_gradients(list(player.params), loss, n)
            else:
                value, self._batch_count = loss.item(), n
            if not math.isfinite(value):
                raise TrainingDivergedError(f"the {player.name}'s loss became {value} {where}; {self._kept()}")
            if self._world == 1:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            if self.clip_norm:
                torch.nn.utils.clip_grad_norm_(player.params, self.clip_norm)
            optimizer.step()
            if player.after_step is not None:
                player.after_step()
            values[player.name] = value
        self._step += 1
        return values

    # -- data-parallel steps ------------------------------------------------------
    def _distributed_step(self, x, data_size, epoch: int, step: int, y=None) -> tuple[float, int]:
        """One single-player step on this rank's shard ``x``, gradients averaged over the ranks: ``(global loss, global count)``."""
        n = len(x)
        loss = self._step_loss(x, data_size, y) if n else None  # a rank whose slice of a short last batch is empty adds nothing
        self.optimizer.zero_grad(set_to_none=True)
        # shared memory between the ranks of one machine; across machines the buckets' all-reduces start inside
        # backward, as their gradients become ready (overlapping the two)
        self._reducer.arm(n)
        if loss is not None:
            loss.backward()
        # clipping rescales the gradients in place: they must be this rank's own, not the ranks' shared ones
        value, total, stops = self._reducer.finish(loss, self._stop.signum is not None, private=bool(self.clip_norm))
        total = int(total)
        self._stop_all = self._stop_all or stops
        if not math.isfinite(value):
            raise TrainingDivergedError(f"the loss became {value} at epoch {epoch + 1}, step {step + 1}; {self._kept()}")
        if self.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.parameters(), self.clip_norm)
        self._reducer.step(self.optimizer)  # ranks on one machine: each steps its share of the shared weights
        return value, total

    def _all_reduce_gradients(self, params: list, loss, n: int) -> tuple[float, int]:
        """Replace each parameter's gradient by the datapoint-weighted mean over the ranks: ``sum_r n_r g_r / sum_r n_r``.

        Each rank's loss is a mean over its ``n_r`` datapoints (plus global terms over the data size), so
        this is the gradient of the whole global batch's mean loss: one process's gradient on the whole
        batch. One flat all-reduce carries the gradients, which of them exist (a parameter without a
        gradient on every rank keeps ``None``, so Adam skips it as in one process), ``n_r * loss_r``,
        ``n_r`` and whether this rank was asked to stop. Returns ``(global mean loss, global count)``.
        """
        dtype = params[0].dtype if params else torch.float32
        parts = [
            p.grad.reshape(-1).to(dtype) * n if p.grad is not None else torch.zeros(p.numel(), dtype=dtype, device=p.device) for p in params
        ]
        flags = torch.tensor([float(p.grad is not None) for p in params], dtype=dtype, device=self.device)
        loss_sum = loss.detach().reshape(1).to(dtype) * n if loss is not None else torch.zeros(1, dtype=dtype, device=self.device)
        extra = torch.tensor([float(n), float(self._stop.signum is not None)], dtype=dtype, device=self.device)
        buffer = distributed.all_reduce_(torch.cat([*parts, flags, loss_sum, extra]))
        size = sum(p.numel() for p in params)
        loss_total, total, stops = buffer[size + len(params) :].tolist()
        present = buffer[size : size + len(params)].tolist()
        offset = 0
        for p, flag in zip(params, present):
            k = p.numel()
            p.grad = (buffer[offset : offset + k] / total).view_as(p).to(p.dtype) if flag > 0 else None
            offset += k
        self._stop_all = self._stop_all or stops > 0
        return loss_total / total, int(total)

    def _global_sums(self, sums: dict) -> dict:
        """The objective's running sums added over the ranks (keys in a fixed order)."""
        keys = sorted(sums)
        return dict(zip(keys, distributed.all_reduce_sum([sums[k] for k in keys]))) if keys else {}

    def _stopping(self) -> bool:
        """A stop was asked for: on this process, or (data-parallel) on any rank, as the last all-reduce said."""
        return self._stop_all if self._world > 1 else self._stop.signum is not None

    def _kept(self) -> str:
        """What is left to go back to, truthfully: nothing saved, nothing saved yet, or what last.pt holds."""
        advice = "Lower the learning rate, clip gradients (clip_norm) or check the data."
        if self.run_dir is None:
            return f"training stopped; nothing was saved (no run_dir was given). {advice}"
        if self._saved is None:
            return f"training stopped before this run wrote any checkpoint to {self.run_dir}. {advice}"
        return f"training stopped; the last good checkpoint is kept ({self._saved}). {advice}"

    def _check_blow_up(self, train_loss: float, epoch: int) -> None:
        """Stop a single-player run whose epoch's mean training loss rose far above its loss at initialization.

        A finite blow-up (``lr=10`` on a VAE: a training loss of ~1e12 nats) is no success, but no NaN
        catches it. The rule: ``train_loss - L0 > divergence_factor * max(|L0|, 1)``, with ``L0`` the
        first batch's loss before any step. It cannot fire on healthy training: a likelihood objective
        starts from its worst point and moves down (negative losses of continuous data only move further
        from the threshold, which lies above ``L0``); what can legitimately raise a mean training loss
        above ``L0`` (minibatch noise, Adam's first steps, a KL warm-up raising beta from 1/(warm-up+1)
        to 1, at most a factor of a few) is two orders of magnitude below a rise of 100 x |L0|; and the
        floor of 1 per datapoint keeps a loss that starts near zero from tripping on noise.
        """
        if self.divergence_factor is None or self._initial_loss is None or self.players is not None:
            return
        l0 = self._initial_loss
        if train_loss - l0 > self.divergence_factor * max(abs(l0), 1.0):
            raise TrainingDivergedError(
                f"the training loss blew up: its mean over epoch {epoch + 1} is {train_loss:.4g}, against {l0:.4g} at initialization "
                f"(a rise of more than {self.divergence_factor:g} x max(|{l0:.4g}|, 1)); {self._kept()}"
            )

    # -- the loop --------------------------------------------------------------
    def fit(self, train, valid=None, resume: bool = False) -> list[dict]:
        """Train; returns one record per epoch (also written to ``run_dir/metrics.jsonl``).

        With a ``run_dir``, the fit holds the directory's :func:`~pyro_gen.io.run_lock` (another process
        gets :class:`~pyro_gen.errors.RunInUseError`), first removes the temporary files a killed run left
        there, and, in the main thread, catches SIGINT and SIGTERM: the first signal stops training at the
        next safe point, writes ``last.pt`` and raises :class:`~pyro_gen.errors.TrainingInterrupted`;
        ``fit(..., resume=True)`` then continues exactly where it stopped. With
        :class:`TensorBatches` (tensors and pyro_gen datasets are turned into those) that point is the end
        of the current batch; other iterables cannot skip ahead to a batch, so they stop at the end of the
        current epoch. A second signal stops at once (``KeyboardInterrupt``); ``last.pt`` then holds the
        last completed epoch. After a ``kill -9`` the directory resumes the same way.

        :raises TrainingInterrupted: on SIGINT / SIGTERM, after saving ``last.pt``; ``.epoch`` and ``.batch`` say where.
        :raises TrainingDivergedError: the loss became NaN or infinite, or blew up (see ``divergence_factor``).
        :raises RunInUseError: another process holds ``run_dir``.
        :raises StorageError: a checkpoint or ``metrics.jsonl`` could not be written (disk full, read-only).
        """
        with ExitStack() as stack:
            self._join_process_group()
            if self.run_dir is not None and self._rank == 0:  # rank 0 alone writes into the run directory
                stack.enter_context(run_lock(self.run_dir))
                # ours alone now: any temporary file here is a dead write's (a kill during a save or a metrics rewrite)
                remove_stale_temporaries(self.run_dir, extra=("metrics.jsonl.tmp",))
            stack.enter_context(pyro.settings.context(module_local_params=True))
            stack.enter_context(pyro.validation_enabled(False))
            stop = stack.enter_context(_StopRequests(enabled=self.run_dir is not None))
            self._stop, self._stop_all = stop, False
            stack.callback(torch.set_num_threads, torch.get_num_threads())
            stack.callback(self._remove_reducer)  # no hooks left on the user's parameters, and private copies of shared ones
            return self._fit(train, valid, resume, stack, stop)

    def _remove_reducer(self) -> None:
        if self._reducer is not None:
            self._reducer.remove()
            self._reducer = None

    def _join_process_group(self) -> None:
        """Under torchrun, join the process group (gloo for a CPU device, NCCL for CUDA) and take this rank's GPU."""
        if distributed.setup(self.device):
            self._rank, self._world = distributed.rank(), distributed.world_size()
            if self.device.type == "cuda" and self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self._rank, self._world = 0, 1

    def _set_threads(self, x: torch.Tensor, stack: ExitStack) -> None:
        """Set torch's intra-op threads for the fit (``threads``), bind this rank's CPUs (``bind_cpus``), and record
        the choice in :attr:`threads_choice`."""
        ranks_here = distributed.local_world_size() if self._world > 1 else 1
        if self.threads is None:
            self.threads_choice = {"threads": torch.get_num_threads(), "rule": "torch's setting (threads=None)"}
        else:
            multi = callable(getattr(self.objective, "players", None))
            flops = None if self.threads != "auto" else step_flops(self.model, self.guide, x, multi=multi)
            n, rule = choose_threads(None if self.threads == "auto" else self.threads, flops, ranks_here)
            torch.set_num_threads(n)
            self.threads_choice = {"threads": n, "rule": rule, "cpus": usable_cpus(), "ranks_on_this_machine": ranks_here}
            if flops is not None:
                self.threads_choice["step_flops"] = flops
        if self.bind_cpus and ranks_here > 1 and self.device.type == "cpu":
            before = _affinity()
            bound, why = bind_rank_cpus(distributed.local_rank(), ranks_here, torch.get_num_threads())
            if bound is not None and before is not None:
                stack.callback(os.sched_setaffinity, 0, before)
            self.threads_choice["bound_cpus"] = bound if bound is not None else why

    def _resident(self, batches):
        """``batches`` with its tensors moved to a CUDA device once, when they fit (a quarter of the free memory)
        and no per-batch transform draws on the host generator (dynamic binarization); else ``batches``."""
        if self.device.type != "cuda" or not isinstance(batches, TensorBatches) or batches.transform is not None:
            return batches
        size = batches.x.numel() * batches.x.element_size() + (0 if batches.y is None else batches.y.numel() * batches.y.element_size())
        free, _ = torch.cuda.mem_get_info(self.device)
        if batches.x.device == self.device or size > free // 4:
            return batches
        moved = copy.copy(batches)
        moved.x = batches.x.to(self.device)
        moved.y = None if batches.y is None else batches.y.to(self.device)
        self.data_on_device = True
        return moved

    def _check_datasets_once(self, *batches) -> bool:
        """Validate whole data tensors up front; True when every batch will be an untransformed slice of one.

        Then the loop runs inside :func:`~pyro_gen.models.checks.checked_dataset` and the model skips its
        per-batch value check (a pass over every value, ~2% of a VAE step); with a per-batch transform
        (dynamic binarization, a user's augmentation) or arbitrary iterables, batches are checked one by one.
        """
        check = getattr(self.model, "check_data", None)
        if check is None or self.players is not None:
            return False
        plain = [b for b in batches if b is not None]
        if not all(isinstance(b, TensorBatches) and b.transform is None for b in plain):
            return False
        for b, role in zip(batches, ("training", "validation")):
            if b is None:
                continue
            for chunk in b.x.split(4096):
                try:
                    check(chunk.to(self.device))
                except DataError as e:
                    raise DataError(f"the {role} data: {e}") from None
        return True

    def _epoch_batches(self, train_batches, position: dict | None):
        """The epoch's batch iterator, positioned after ``position["batch"]`` batches when resuming mid-epoch."""
        if position is None:
            return iter(train_batches)
        if not isinstance(train_batches, TensorBatches) or position.get("num_datapoints") != len(train_batches.x):
            raise RunDirError(
                f"{self.run_dir / 'last.pt'} was saved in the middle of epoch {position['epoch'] + 1} (after batch {position['batch']}) "
                f"of a {position.get('num_datapoints')}-point tensor dataset; resume it with the same training data"
            )
        if position.get("batch_size") != train_batches.batch_size:
            raise RunDirError(
                f"{self.run_dir / 'last.pt'} was saved in the middle of an epoch of batches of {position.get('batch_size')}; "
                f"resume it with that batch size, not {train_batches.batch_size}"
            )
        return train_batches.iter_from(position["batch"], position["generator"])

    def _save_last(self, ckpt: dict, improved: bool, where: str) -> None:
        if improved:
            save_checkpoint(ckpt, self.run_dir / "best.pt")
        save_checkpoint(ckpt, self.run_dir / "last.pt")
        self._saved = f"{self.run_dir / 'last.pt'} holds {where}"

    def _fit(self, train, valid, resume, stack, stop):
        from tqdm.auto import tqdm

        pyro.set_rng_seed(self.seed)
        # labels travel with the batches for a GAN that asks for them, a model conditioned on them and a
        # model whose discrete latent they observe (semi-supervised: -1 where unknown)
        labels = bool(getattr(self.objective, "needs_labels", False)) or _model_reads_labels(self.model)
        train_batches = _as_batches(train, self.batch_size, True, self.seed, labels)
        valid_batches = _as_batches(valid, self.batch_size, False, self.seed, labels)
        data_size = _num_datapoints(train_batches)
        if self._world > 1:
            if not isinstance(train_batches, TensorBatches):
                raise ConfigError(
                    f"data-parallel training ({self._world} ranks) shards TensorBatches: give the training data as a tensor, "
                    f"a pyro_gen dataset or TensorBatches, not {type(train_batches).__name__}"
                )
            train_batches = train_batches.shard(self._rank, self._world)
            if isinstance(valid_batches, TensorBatches):
                valid_batches = valid_batches.shard(self._rank, self._world)
        for module in self._modules():
            module.to(self.device)
        train_batches, valid_batches = self._resident(train_batches), self._resident(valid_batches)
        first_batch = next(iter(train_batches))
        first = _first(first_batch).to(self.device)
        initialize(
            self.model,
            self.guide,
            first,
            _labels(first_batch) if self.players is None and not callable(getattr(self.objective, "players", None)) else None,
        )
        if self._check_datasets_once(train_batches, valid_batches):
            stack.enter_context(checked_dataset())
        self._set_threads(first, stack)
        self._setup_optimizers()
        if self._world > 1 and self.players is None:
            # set up before the first epoch (the shared-memory file, the buckets' hooks), not inside its timing
            self._reducer = distributed.gradient_reducer(self.parameters(), self.optimizer)
        try:
            batches_per_epoch = len(train_batches)
        except TypeError:
            batches_per_epoch = None
        if self.lr_schedule != "constant" and batches_per_epoch is None:
            raise ConfigError(
                f"lr_schedule={self.lr_schedule!r} needs to know the run's length: give the training data as a tensor, a "
                "dataset or TensorBatches (an iterable with len()), or use lr_schedule='constant'"
            )
        start, best, bad_epochs, position = 0, math.inf, 0, None
        self._initial_loss, self._saved = None, None
        metrics_path = self.run_dir / "metrics.jsonl" if self.run_dir else None
        main = self._rank == 0
        if self.run_dir and main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            if not self.run_dir:
                raise ConfigError("resume=True needs a run_dir holding last.pt")
            ckpt = load_checkpoint(self.run_dir / "last.pt", map_location=self.device)
            self._restore(ckpt)
            set_rng_state(ckpt["rng"])
            start, best, bad_epochs = ckpt["epoch"], ckpt["best_valid"], ckpt["bad_epochs"]
            position = ckpt.get("position")
            where = f"epoch {start}" if position is None else f"epoch {start + 1} up to batch {position['batch']}"
            self._saved = f"{self.run_dir / 'last.pt'} holds {where}, where this run resumed"
            self.history = _read_metrics(metrics_path, upto=start)
            if main:
                _write_metrics(metrics_path, self.history)  # drop epochs past the checkpoint, and a torn last line
        else:
            self.history = []  # a fresh fit starts a new history, as it starts a new metrics.jsonl
            if main and metrics_path is not None and metrics_path.exists():
                metrics_path.unlink()
        if self._world > 1:
            # every rank built the same weights from the same seed; make sure of it (and of restored ones) from rank 0
            for module in self._modules():
                distributed.broadcast_module_(module)
            if self._reducer is not None:  # every rank holds the same weights and optimizer state now
                self._reducer.share(self.optimizer)
            if position is not None and not main:
                # the epoch's running sums in the checkpoint are global: rank 0 carries them, the others add to zero
                position = {**position, "sums": {k: 0.0 for k in position["sums"]}}

        multi = self.players is not None
        for epoch in range(start, self.epochs):
            if hasattr(train_batches, "set_epoch"):
                train_batches.set_epoch(epoch)
            if hasattr(self.objective, "set_epoch"):
                self.objective.set_epoch(epoch)
            for module in self._modules():
                module.train()
            # the epoch's running sums, continued from the checkpoint when it was saved mid-epoch
            resumed = position if (position is not None and epoch == start) else None
            batches = self._epoch_batches(train_batches, resumed)
            first_step = resumed["batch"] if resumed else 0
            total, count = (resumed["total"], resumed["count"]) if resumed else (0.0, 0)
            sums = dict(resumed["sums"]) if resumed else {}
            player_sums = {k: tuple(v) for k, v in resumed["player_sums"].items()} if resumed else {}
            t0 = time.perf_counter() - (resumed["seconds"] if resumed else 0.0)
            # only an _EpochBatches pass can be saved mid-epoch; any other iterable stops at the epoch's end
            skippable = isinstance(batches, _EpochBatches)
            bar = tqdm(
                batches,
                desc=f"epoch {epoch + 1}/{self.epochs}",
                total=batches_per_epoch,
                initial=first_step,
                disable=not (self.progress and main),
                leave=False,
                mininterval=1.0,
            )
            for step, batch in enumerate(bar, start=first_step):
                if batches_per_epoch is not None and self.lr_schedule != "constant":
                    self._schedule(epoch * batches_per_epoch + step, self.epochs * batches_per_epoch)
                if self._world > 1:  # each rank its own draws, a function of the position alone (exact resume)
                    seed_draws(batch_seed(self.seed, epoch, step, self._rank), self.device)
                if multi:
                    batch = _to_device(batch, self.device)
                    x = _first(batch)
                    values = self._play(batch, data_size, epoch, step)
                    n_batch = self._batch_count
                    for name, value in values.items():
                        s, c = player_sums.get(name, (0.0, 0))
                        player_sums[name] = (s + value * n_batch, c + n_batch)
                    if step % 50 == 0 and values:
                        bar.set_postfix({f"{k}_loss": f"{v:.3f}" for k, v in values.items()})
                elif self._world > 1:
                    x = _first(batch).to(self.device, non_blocking=True)
                    value, n_batch = self._distributed_step(x, data_size, epoch, step, _labels(batch))
                    if self._initial_loss is None and not resume:
                        self._initial_loss = value
                    total += value * n_batch
                    if step % 50 == 0:
                        bar.set_postfix(loss=f"{value:.3f}")
                else:
                    x = _first(batch).to(self.device, non_blocking=True)
                    n_batch = len(x)
                    loss = self._step_loss(x, data_size, _labels(batch))
                    value = loss.item()
                    if not math.isfinite(value):
                        raise TrainingDivergedError(f"the loss became {value} at epoch {epoch + 1}, step {step + 1}; {self._kept()}")
                    if self._initial_loss is None and not resume:
                        self._initial_loss = value  # the loss at initialization: the blow-up check's reference
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if self.clip_norm:
                        torch.nn.utils.clip_grad_norm_(self.parameters(), self.clip_norm)
                    self.optimizer.step()
                    total += value * len(x)
                    if step % 50 == 0:
                        bar.set_postfix(loss=f"{value:.3f}")
                count += n_batch
                for k, v in self.objective.last_metrics.items():
                    sums[k] = sums.get(k, 0.0) + v * len(x)
                if self._stopping() and skippable and batches.position < batches.length:
                    # a safe point: save where this epoch stands, so that resuming continues with its next batch
                    bar.close()
                    self._interrupt_mid_epoch(
                        stop, epoch, best, bad_epochs, batches, total, count, sums, player_sums, time.perf_counter() - t0
                    )
            bar.close()
            seconds = time.perf_counter() - t0
            if self._world > 1:
                sums = self._global_sums(sums)
                for module in self._modules():  # batch-norm statistics, spectral-norm vectors: rank 0's, as DDP's buffers
                    for buffer in module.buffers():
                        distributed.broadcast_(buffer)
                seed_draws(batch_seed(self.seed, epoch, -1, self._rank), self.device)  # the validation's draws
            # a finite loss can still give a non-finite gradient; never checkpoint NaN parameters as "good"
            if not all(bool(torch.isfinite(p).all()) for p in self.parameters()):
                raise TrainingDivergedError(
                    f"the parameters became NaN or infinite at epoch {epoch + 1} (a non-finite gradient); {self._kept()}"
                )
            train_loss, losses = total / max(count, 1), {}
            if multi:
                # each player's mean loss over its steps; the first player's (a GAN's critic) is the train_loss
                losses = {f"train_{name}_loss": s / c for name, (s, c) in player_sums.items()}
                train_loss = losses.get(f"train_{self.players[0].name}_loss", math.nan)
            else:
                self._check_blow_up(train_loss, epoch)
            record = {"epoch": epoch + 1, "train_loss": train_loss, "seconds": seconds, **losses}
            record.update(threads=torch.get_num_threads(), ranks=self._world)
            bound = (self.threads_choice or {}).get("bound_cpus")
            if isinstance(bound, list):  # this rank's CPUs (train.bind_cpus); rank 0's, since rank 0 writes the record
                record["bound_cpus"] = bound
            record.update({f"train_{k}": float(v) / max(count, 1) for k, v in sums.items()})
            if hasattr(self.objective, "beta_now"):
                record["beta"] = self.objective.beta_now
            for module in self._modules():
                module.eval()
            improved = True
            if valid_batches is not None:
                record["valid_loss"] = self.evaluate_loss(valid_batches)
                improved = record["valid_loss"] < best
                if improved:
                    best, bad_epochs = record["valid_loss"], 0
                else:
                    bad_epochs += 1
            self.history.append(record)
            if self.progress and main:
                tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            if self.run_dir and main:
                # the record goes first: a kill between the two leaves a record past last.pt, which resuming drops
                _append_metrics(metrics_path, record)
                self._save_last(self._checkpoint(epoch + 1, best, bad_epochs), improved, f"the end of epoch {epoch + 1}")
            if self.patience is not None and bad_epochs >= self.patience:
                if self.progress and main:
                    tqdm.write(f"early stopping: no validation improvement in {self.patience} epochs")
                break
            if self._world > 1:  # a signal may have come after the epoch's last batch: agree on it
                self._stop_all = distributed.all_reduce_sum([float(self._stop_all or stop.signum is not None)])[0] > 0
            if self._stopping() and epoch + 1 < self.epochs:
                raise TrainingInterrupted(
                    f"training stopped on {stop.name} at the end of epoch {epoch + 1} of {self.epochs}; "
                    f"{self.run_dir / 'last.pt'} holds it, and resuming (fit(resume=True), --resume) continues from there exactly",
                    signal_name=stop.name,
                    epoch=epoch + 1,
                    batch=None,
                    checkpoint=self.run_dir / "last.pt",
                )
        return self.history

    def _interrupt_mid_epoch(self, stop, epoch, best, bad_epochs, batches, total, count, sums, player_sums, seconds):
        if not all(bool(torch.isfinite(p).all()) for p in self.parameters()):  # never save NaN weights to resume from
            raise TrainingDivergedError(
                f"the parameters became NaN or infinite in epoch {epoch + 1} (a non-finite gradient); {self._kept()}"
            )
        where = batches.state()
        if self._world > 1:
            sums = self._global_sums(sums)
        position = {
            "epoch": epoch,  # 0-based, == the checkpoint's "epoch" (completed epochs)
            "batch": where["batch"],  # batches of this epoch already trained on
            "generator": where["generator"],  # the epoch generator after them: the next batches' order and transforms
            "num_datapoints": len(batches.batches.x),
            "batch_size": batches.batches.batch_size,
            "total": total,
            "count": count,
            "sums": dict(sums),
            "player_sums": {k: tuple(v) for k, v in player_sums.items()},
            "seconds": seconds,
        }
        path = self.run_dir / "last.pt"
        if self._rank == 0:
            save_checkpoint(self._checkpoint(epoch, best, bad_epochs, position), path)
        distributed.barrier()  # every rank stops once the file is there
        self._saved = f"{path} holds epoch {epoch + 1} up to batch {where['batch']}"
        raise TrainingInterrupted(
            f"training stopped on {stop.name} in epoch {epoch + 1} of {self.epochs}, after batch {where['batch']} of {batches.length}; "
            f"{path} holds that point, and resuming (fit(resume=True), --resume) continues from the next batch exactly",
            signal_name=stop.name,
            epoch=epoch + 1,
            batch=where["batch"],
            checkpoint=path,
        )


# -- metrics.jsonl ------------------------------------------------------------------------------
def _append_metrics(path: Path, record: dict) -> None:
    """Append one JSON line; on a full disk, cut the file back to its previous end and raise :class:`StorageError`.

    An unbuffered ``os.write`` loop: a buffered file could fail again in ``close()`` and hide the first error.
    """
    data = memoryview((json.dumps(record) + "\n").encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data) :]
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # no torn line left behind
            error = storage_error(e, path)
            if error is None:
                raise
            raise error from e
    finally:
        os.close(fd)


def _read_metrics(path: Path | None, upto: int) -> list[dict]:
    """The records of epochs ``<= upto``; a torn last line (a kill during its append) is dropped.

    Every append ends with a newline, so a last line without one was being written when the process
    died; its epoch's checkpoint was never written (records go first), so nothing is lost. Any other
    line that is not a JSON object is damage that resuming cannot guess around.

    :raises RunDirError: a damaged line, naming the file, the line number and the fix.
    """
    if path is None or not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline, as every complete append does
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError both
            raise RunDirError(
                f"{path}, line {number}, is not a JSON record ({e}): the file is damaged. Delete that line (that epoch's "
                f"record is then missing from the history) or restore the file, and resume; or retrain"
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise RunDirError(
                f"{path}, line {number}, is not an epoch record (a JSON object with an integer 'epoch'): the file is damaged. "
                "Delete that line or restore the file, and resume; or retrain"
            )
        records.append(record)
    if torn.strip():
        with contextlib.suppress(ValueError):
            record = json.loads(torn)
            if isinstance(record, dict) and isinstance(record.get("epoch"), int):
                records.append(record)  # complete but for its newline: keep it (it is dropped below if past upto)
    return [r for r in records if r["epoch"] <= upto]


def _write_metrics(path: Path | None, records: list[dict]) -> None:
    if path is None:
        return
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
