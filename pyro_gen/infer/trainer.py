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
"""

import json
import math
import os
import random
import time
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_gen.errors import ConfigError, DataError, RunDirError, TrainingDivergedError
from pyro_gen.infer.objectives import as_objective, make_objective
from pyro_gen.infer.traces import check_sites, get_traces
from pyro_gen.io import atomic_path
from pyro_gen.models.checks import check_data_tensor, check_labels, checked_dataset

CHECKPOINT_FORMAT = "pyro_gen-checkpoint-1"


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

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_datapoints(self) -> int:
        return len(self.x)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.x)
        order = torch.randperm(n, generator=g) if self.shuffle else None
        for i in range(len(self)):
            idx = slice(i * self.batch_size, (i + 1) * self.batch_size)
            batch = self.x[order[idx]] if order is not None else self.x[idx]
            batch = self.transform(batch, g) if self.transform is not None else batch
            if self.y is None:
                yield batch
            else:
                yield batch, (self.y[order[idx]] if order is not None else self.y[idx])


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


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a half-written checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a pyro_gen checkpoint safely (``weights_only=True``) and check its format."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise RunDirError(f"no checkpoint at {path}; is this a pyro_gen run directory that finished an epoch?") from None
    except Exception as e:  # pickle errors, truncated files, foreign objects
        raise RunDirError(f"{path} is not a readable pyro_gen checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RunDirError(f"{path} is not a pyro_gen checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    return ckpt


def initialize(model, guide, x: torch.Tensor) -> None:
    """Run model and guide once on a small batch: create lazy parameters (autoguides) and check the sites match.

    With ``guide=None`` (a GAN generator) the model runs once on its own. Modules run in eval
    mode here, so that this pass does not move batch-norm statistics.
    """
    modes = [(m, m.training) for m in (model, guide) if isinstance(m, torch.nn.Module)]
    for m, _ in modes:
        m.eval()
    try:
        with torch.no_grad():
            model_trace, guide_trace = get_traces(model, guide, x[:2])
    finally:
        for m, training in modes:
            m.train(training)
    if guide is not None:
        check_sites(model_trace, guide_trace)


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
    :param patience: stop after this many epochs without a better validation loss.
    :param progress: show a progress bar per epoch.
    :param clip_norm: optional gradient-norm clipping.
    :param lr_schedule: ``"constant"``, or ``"linear"``: every learning rate falls linearly from its
        initial value to zero over the run's batches (the rate of batch ``b`` of ``B`` is
        ``lr * (1 - b / B)``), as in the WGAN-GP reference code (Gulrajani et al. 2017). For GANs
        on the 2-D mixtures it is what turns blurred modes into sharp ones (BENCHMARKS.md §7). The
        rate is a function of the batch index, so a resumed run continues the same schedule.
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
    ):
        if lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown lr_schedule {lr_schedule!r}; choose one of {', '.join(map(repr, LR_SCHEDULES))}")
        self.lr_schedule = lr_schedule
        self.model, self.guide = model, guide
        self.objective = make_objective(objective) if isinstance(objective, str) else as_objective(objective)
        if guide is None and not callable(getattr(self.objective, "players", None)):
            raise ConfigError(
                "guide=None is for objectives that fit a model without inferring its latents (e.g. Adversarial); "
                "give a guide for this objective, e.g. make_guide('normal', model)"
            )
        self.lr, self.batch_size, self.epochs, self.seed = lr, batch_size, epochs, seed
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but torch sees no CUDA device; use device='cpu'")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.patience, self.progress, self.clip_norm = patience, progress, clip_norm
        self.optimizer = None
        # multi-player objectives: the declared players and one optimizer per player
        self.players, self.optimizers = None, None
        self.history: list[dict] = []

    # -- helpers -------------------------------------------------------------
    def _modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.model, self.guide, self.objective) if isinstance(m, torch.nn.Module)]

    def parameters(self) -> list[torch.nn.Parameter]:
        seen, params = set(), []
        for module in self._modules():
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

    def _step_loss(self, x, data_size):
        return self.objective(self.model, self.guide, x, data_size=data_size)

    @torch.no_grad()
    def evaluate_loss(self, batches, data_size=None) -> float:
        """Mean validation loss per datapoint over ``batches`` (no gradient).

        Single-player objectives are scored by their ``validation_loss``: the unmodified bound,
        so that a KL warm-up (whose early, down-weighted KL makes the training loss look better)
        cannot make an early epoch the "best" one.
        """
        total, count = 0.0, 0
        for batch in batches:
            if self.players is not None:  # multi-player objectives read whole (possibly labelled) batches
                batch = _to_device(batch, self.device)
                x, loss = _first(batch), self.objective(self.model, self.guide, batch)
            else:
                x = _first(batch).to(self.device)
                loss = self.objective.validation_loss(self.model, self.guide, x, data_size=None)
            total += float(loss) * len(x)
            count += len(x)
        return total / max(count, 1)

    def _checkpoint(self, epoch: int, best: float, bad_epochs: int) -> dict:
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "guide": self.guide.state_dict() if self.guide is not None else {},
            "rng": rng_state(),
            "best_valid": best,
            "bad_epochs": bad_epochs,
            "seed": self.seed,
        }
        if self.players is None:
            ckpt["optimizer"] = self.optimizer.state_dict()
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
        if self.players is None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            return
        for name, opt in self.optimizers.items():
            opt.load_state_dict(saved[name])
        self._step = ckpt["step"]

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

    def _play(self, batch, data_size, epoch: int, step: int, start: int) -> dict[str, float]:
        """One batch of a multi-player objective: each player whose turn it is takes one step on its own loss."""
        values = {}
        for player in self.players:
            if (self._step + 1) % player.every:
                continue
            where = f"at epoch {epoch + 1}, step {step + 1}"
            try:
                loss = self.objective.player_loss(player.name, self.model, self.guide, batch, data_size)
            except TrainingDivergedError as e:  # e.g. the critic's scores became NaN
                raise TrainingDivergedError(f"{e} ({where}); {self._kept(epoch, start)}") from None
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingDivergedError(f"the {player.name}'s loss became {value} {where}; {self._kept(epoch, start)}")
            optimizer = self.optimizers[player.name]
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

    def _kept(self, epoch: int, start: int) -> str:
        where = f" ({self.run_dir / 'last.pt'} holds epoch {epoch})" if self.run_dir and epoch > start else ""
        return (
            f"training stopped and the last good checkpoint is kept{where}. "
            "Lower the learning rate, clip gradients (clip_norm) or check the data."
        )

    # -- the loop --------------------------------------------------------------
    def fit(self, train, valid=None, resume: bool = False) -> list[dict]:
        """Train; returns one record per epoch (also written to ``run_dir/metrics.jsonl``)."""
        with pyro.settings.context(module_local_params=True), pyro.validation_enabled(False), ExitStack() as stack:
            return self._fit(train, valid, resume, stack)

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

    def _fit(self, train, valid, resume, stack):
        from tqdm.auto import tqdm

        pyro.set_rng_seed(self.seed)
        labels = bool(getattr(self.objective, "needs_labels", False))
        train_batches = _as_batches(train, self.batch_size, True, self.seed, labels)
        valid_batches = _as_batches(valid, self.batch_size, False, self.seed, labels)
        data_size = _num_datapoints(train_batches)
        for module in self._modules():
            module.to(self.device)
        first = _first(next(iter(train_batches))).to(self.device)
        initialize(self.model, self.guide, first)
        if self._check_datasets_once(train_batches, valid_batches):
            stack.enter_context(checked_dataset())
        self._setup_optimizers()
        batches_per_epoch = None
        if self.lr_schedule != "constant":
            try:
                batches_per_epoch = len(train_batches)
            except TypeError:
                raise ConfigError(
                    f"lr_schedule={self.lr_schedule!r} needs to know the run's length: give the training data as a tensor, a "
                    "dataset or TensorBatches (an iterable with len()), or use lr_schedule='constant'"
                ) from None
        start, best, bad_epochs = 0, math.inf, 0
        metrics_path = self.run_dir / "metrics.jsonl" if self.run_dir else None
        if self.run_dir:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            if not self.run_dir:
                raise ConfigError("resume=True needs a run_dir holding last.pt")
            ckpt = load_checkpoint(self.run_dir / "last.pt", map_location=self.device)
            self._restore(ckpt)
            set_rng_state(ckpt["rng"])
            start, best, bad_epochs = ckpt["epoch"], ckpt["best_valid"], ckpt["bad_epochs"]
            self.history = _read_metrics(metrics_path, upto=start)
            _write_metrics(metrics_path, self.history)  # drop epochs past the checkpoint
        else:
            self.history = []  # a fresh fit starts a new history, as it starts a new metrics.jsonl
            if metrics_path is not None and metrics_path.exists():
                metrics_path.unlink()

        for epoch in range(start, self.epochs):
            if hasattr(train_batches, "set_epoch"):
                train_batches.set_epoch(epoch)
            if hasattr(self.objective, "set_epoch"):
                self.objective.set_epoch(epoch)
            for module in self._modules():
                module.train()
            t0 = time.perf_counter()
            total, count, sums, player_sums = 0.0, 0, {}, {}
            bar = tqdm(train_batches, desc=f"epoch {epoch + 1}/{self.epochs}", disable=not self.progress, leave=False, mininterval=1.0)
            multi = self.players is not None
            for step, batch in enumerate(bar):
                if batches_per_epoch is not None:
                    self._schedule(epoch * batches_per_epoch + step, self.epochs * batches_per_epoch)
                if multi:
                    batch = _to_device(batch, self.device)
                    x = _first(batch)
                    values = self._play(batch, data_size, epoch, step, start)
                    for name, value in values.items():
                        s, c = player_sums.get(name, (0.0, 0))
                        player_sums[name] = (s + value * len(x), c + len(x))
                    for k, v in self.objective.last_metrics.items():
                        sums[k] = sums.get(k, 0.0) + v * len(x)
                    count += len(x)
                    if step % 50 == 0 and values:
                        bar.set_postfix({f"{k}_loss": f"{v:.3f}" for k, v in values.items()})
                    continue
                x = _first(batch).to(self.device, non_blocking=True)
                loss = self._step_loss(x, data_size)
                value = loss.item()
                if not math.isfinite(value):
                    raise TrainingDivergedError(
                        f"the loss became {value} at epoch {epoch + 1}, step {step + 1}; {self._kept(epoch, start)}"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.clip_norm:
                    torch.nn.utils.clip_grad_norm_(self.parameters(), self.clip_norm)
                self.optimizer.step()
                total += value * len(x)
                count += len(x)
                for k, v in self.objective.last_metrics.items():
                    sums[k] = sums.get(k, 0.0) + v * len(x)
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{value:.3f}")
            seconds = time.perf_counter() - t0
            # a finite loss can still give a non-finite gradient; never checkpoint NaN parameters as "good"
            if not all(bool(torch.isfinite(p).all()) for p in self.parameters()):
                raise TrainingDivergedError(
                    f"the parameters became NaN or infinite at epoch {epoch + 1} (a non-finite gradient); {self._kept(epoch, start)}"
                )
            train_loss, losses = total / max(count, 1), {}
            if multi:
                # each player's mean loss over its steps; the first player's (a GAN's critic) is the train_loss
                losses = {f"train_{name}_loss": s / c for name, (s, c) in player_sums.items()}
                train_loss = losses.get(f"train_{self.players[0].name}_loss", math.nan)
            record = {"epoch": epoch + 1, "train_loss": train_loss, "seconds": seconds, **losses}
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
            if self.progress:
                tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            if self.run_dir:
                _append_metrics(metrics_path, record)
                ckpt = self._checkpoint(epoch + 1, best, bad_epochs)
                if improved:
                    atomic_save(ckpt, self.run_dir / "best.pt")
                atomic_save(ckpt, self.run_dir / "last.pt")
            if self.patience is not None and bad_epochs >= self.patience:
                if self.progress:
                    tqdm.write(f"early stopping: no validation improvement in {self.patience} epochs")
                break
        return self.history


def _append_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _read_metrics(path: Path | None, upto: int) -> list[dict]:
    if path is None or not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["epoch"] <= upto]


def _write_metrics(path: Path | None, records: list[dict]) -> None:
    if path is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)
