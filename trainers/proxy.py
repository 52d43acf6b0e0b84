"""The proxy trainer: a short, fast, honest training run that scores one config.

Knows nothing of Optuna, Ray or MLflow: after each epoch it calls `report(epoch, metrics)`,
and stops if the answer is "stop". Speed comes from keeping the whole split on the device as
uint8, augmenting batches there (trainers/augment.py), bf16 autocast on CUDA in the memory
layout measured faster for the model (trainers/layout.py), and optionally torch.compile.
Honesty comes from scoring on a held-out part of the train set; the test set is only
evaluated when asked, never for selection.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spaces.errors import UserError
from trainers.augment import Normalize, cutout, random_crop, random_flip
from trainers.data import Splits
from trainers.layout import LAYOUTS, adopt_checkpoint_layout, starting_layout
from trainers.plumbing import (
    NAN_CHECK_EVERY,
    load_checkpoint,
    lr_scheduler,
    param_groups,
    resolve_device,
    restore_rng,
    rng_state,
    save_atomic,
)
from trainers.recipes import Recipe  # defined torch-free there; callers import it from here too
from trainers.schedule import lr_at

Report = Callable[[int, dict[str, float]], Any]


def learning_rate(recipe: Recipe, step: int, total_steps: int) -> float:
    """The proxy's rate at `step` (0-based) of `total_steps` (see trainers/schedule.py)."""
    return lr_at(recipe.schedule, recipe.lr, step, total_steps, recipe.warmup)


@dataclass
class ProxyResult:
    status: str  # "completed" | "stopped" (told to by report) | "diverged" | "oom"
    reason: str | None
    val_acc: float | None
    train_loss: float | None
    epochs: int
    epoch_seconds: list[float]
    images_per_s: float | None
    seconds: float
    peak_memory_bytes: int | None
    first_step_seconds: float | None  # includes compilation when compiled
    history: list[dict[str, float]] = field(default_factory=list)
    test_acc: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DeviceData:
    """A split moved to the device once, as uint8, with its normalization statistics;
    with `image_size` below the data's, downsampled there once (antialiased bilinear)."""

    def __init__(self, splits: Splits, device: torch.device, image_size: int | None = None):
        self.device = device
        self.num_classes = splits.num_classes
        self.image_size = image_size or splits.image_size
        if self.image_size > splits.image_size:
            raise UserError(f"--proxy-size {self.image_size}: the data's images are "
                            f"{splits.image_size} px; the proxy can train at that size or "
                            f"smaller, not upsampled")

        def move(x: torch.Tensor) -> torch.Tensor:
            return downsample(x.to(device), self.image_size)
        self.train_x, self.train_y = move(splits.train_x), splits.train_y.to(device)
        self.val_x, self.val_y = move(splits.val_x), splits.val_y.to(device)
        self.test_x, self.test_y = move(splits.test_x), splits.test_y.to(device)
        self.mean, self.std = channel_stats(self.train_x)


def downsample(x: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 NCHW images at `size` px (as they are when they are that size already)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return torch.cat([F.interpolate(x[i:i + chunk].float(), size=(size, size),
                                    mode="bilinear", antialias=True).round_().clamp_(0, 255)
                      .to(torch.uint8) for i in range(0, len(x), chunk)]) if len(x) else \
        x.new_zeros((0, x.shape[1], size, size))


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple, tuple]:
    total = torch.zeros(3, dtype=torch.float64, device=x.device)
    squares = torch.zeros(3, dtype=torch.float64, device=x.device)
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk].double() / 255
        total += part.sum((0, 2, 3))
        squares += (part * part).sum((0, 2, 3))
    n = len(x) * x.shape[2] * x.shape[3]
    mean = total / n
    # a channel that never varies (a constant colour, a grey image stored as RGB) would
    # divide by zero: a floor of one grey level keeps its inputs finite
    std = (squares / n - mean * mean).clamp(min=0).sqrt().clamp(min=1 / 255)
    return tuple(mean.tolist()), tuple(std.tolist())


class ProxyTrainer:
    def __init__(self, recipe: Recipe | None = None, device: str | torch.device | None = None,
                 compile: bool = False):
        self.recipe = recipe or Recipe()
        self.device = resolve_device(device)
        self.cuda = self.device.type == "cuda"
        self.compile = compile
        # bf16 autocast pays off on GPUs; on the CPU it costs time
        self.amp_dtype = torch.bfloat16 if self.cuda else None

    def fit(self, model: nn.Module | Callable[[], nn.Module], data: Splits | DeviceData,
            report: Report | None = None, seed: int = 0, checkpoint: str | Path | None = None,
            evaluate_test: bool = False) -> ProxyResult:
        """Train `model` on `data`; resume from `checkpoint` when it exists, write it after
        every epoch. Failures inside the run (NaN loss, CUDA OOM) end it with a status.

        `model` may be a function that builds it: it is then built on the device under
        `seed` (no initialization on the CPU, no copy)."""
        if not isinstance(data, DeviceData):
            data = DeviceData(data, self.device)
        start = time.perf_counter()
        try:
            run, reason = _Run(self, model, data, seed, checkpoint), None
        except torch.OutOfMemoryError as err:  # the model (or one step of it) does not fit
            run, reason = None, str(err).splitlines()[0] if str(err) else "out of memory"
        if run is None:
            gc.collect()  # out of the handler: its traceback no longer holds the tensors
            torch.cuda.empty_cache()
            return ProxyResult("oom", reason, None, None, 0, [], None,
                               time.perf_counter() - start, None, None)
        try:
            return run.train(report, evaluate_test, start)
        except torch.OutOfMemoryError as err:
            run.release()
            return run.result("oom", str(err).splitlines()[0] if str(err) else "out of memory",
                              start)


CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "step", "history", "recipe")


def check_checkpoint(path: str | Path | None) -> None:
    """A checkpoint to resume from can be read: a folder or a damaged file is refused before
    any work starts (its own load reads it again; proxy checkpoints are small)."""
    if path is not None and Path(path).exists():
        load_checkpoint(path, "cpu", CHECKPOINT_KEYS)


def checkpoint_history(path: str | Path) -> list[dict[str, float]]:
    """The epochs a checkpoint has trained (what a resumed fit will not report again); [] when
    there is none or it cannot be read (the fit then reports the problem)."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        return list(torch.load(path, map_location="cpu", weights_only=True)["history"])
    except Exception:
        return []


class _Run:
    """One fit: state that a checkpoint saves and restores."""

    def __init__(self, trainer: ProxyTrainer, model: nn.Module | Callable[[], nn.Module],
                 data: DeviceData, seed: int, checkpoint: str | Path | None):
        self.t, self.data, self.recipe = trainer, data, trainer.recipe
        self.checkpoint = Path(checkpoint) if checkpoint else None
        torch.manual_seed(seed)
        if not isinstance(model, nn.Module):
            with torch.device(trainer.device):
                model = model()
        self.model = model.to(trainer.device)
        resuming = self.checkpoint is not None and self.checkpoint.exists()
        self.layout, _ = starting_layout(self.model, min(self.recipe.batch_size,
                                                         len(data.train_y)),
                                         data.image_size, trainer.amp_dtype, resuming)
        if trainer.cuda:
            torch.cuda.reset_peak_memory_stats(trainer.device)
        self.forward = torch.compile(self.model) if trainer.compile else self.model
        self.optimizer = torch.optim.AdamW(  # lr: the scheduler sets it (below)
            param_groups(self.model, self.recipe.weight_decay), lr=0.0,
            fused=trainer.cuda or None)
        self.gen = torch.Generator(device=trainer.device).manual_seed(seed)
        self.normalize = Normalize(trainer.device, trainer.amp_dtype or torch.float32,
                                   self.layout == "channels_last", data.mean, data.std)
        self.steps_per_epoch = math.ceil(len(data.train_y) / self.recipe.batch_size)
        self.total_steps = self.steps_per_epoch * self.recipe.epochs
        self.epoch, self.step, self.history = 0, 0, []
        self.first_step_seconds: float | None = None
        if resuming:
            self._load()
        # built at the step the run starts from (0, or the checkpoint's)
        self.scheduler = lr_scheduler(self.optimizer, self.recipe.schedule, self.recipe.lr,
                                      self.total_steps, self.recipe.warmup, step=self.step)

    # --- the loop ---------------------------------------------------------------------------
    def train(self, report: Report | None, evaluate_test: bool, start: float) -> ProxyResult:
        while self.epoch < self.recipe.epochs:
            epoch_start = time.perf_counter()
            loss = self._train_epoch()
            if loss is None or not math.isfinite(loss):
                return self.result("diverged", "the training loss became NaN or infinite", start)
            train_seconds = time.perf_counter() - epoch_start
            val_acc = self.accuracy(self.data.val_x, self.data.val_y)
            self.epoch += 1
            metrics = {
                "epoch": self.epoch, "val_acc": val_acc, "train_loss": loss,
                "lr": learning_rate(self.recipe, self.step - 1, self.total_steps),
                "epoch_seconds": time.perf_counter() - epoch_start,
                "images_per_s": len(self.data.train_y) / train_seconds,
            }
            self.history.append(metrics)
            if self.checkpoint is not None:
                self._save()
            if report is not None and report(self.epoch, dict(metrics)) == "stop":
                if self.epoch < self.recipe.epochs:
                    return self.result("stopped", "stopped by the pruner", start)
        result = self.result("completed", None, start)
        if evaluate_test:
            result.test_acc = self.accuracy(self.data.test_x, self.data.test_y)
        return result

    def _train_epoch(self) -> float | None:
        r, data = self.recipe, self.data
        self.model.train()
        order = torch.randperm(len(data.train_y), device=self.t.device, generator=self.gen)
        loss_sum = torch.zeros((), device=self.t.device)
        for i in range(self.steps_per_epoch):
            idx = order[i * r.batch_size:(i + 1) * r.batch_size]
            x = random_crop(data.train_x[idx], r.crop_padding, self.gen)
            if r.flip:
                x = random_flip(x, self.gen)
            x = cutout(self.normalize(x), r.cutout, self.gen)
            tick = time.perf_counter() if self.first_step_seconds is None else None
            with torch.autocast(self.t.device.type, self.t.amp_dtype,
                                enabled=self.t.amp_dtype is not None):
                logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), data.train_y[idx],
                                   label_smoothing=r.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if r.clip_norm:
                nn.utils.clip_grad_norm_(self.model.parameters(), r.clip_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            loss_sum += loss.detach() * len(idx)
            if tick is not None:
                if self.t.cuda:
                    torch.cuda.synchronize(self.t.device)
                self.first_step_seconds = time.perf_counter() - tick
            if (i + 1) % NAN_CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
                return None
        return float(loss_sum) / len(data.train_y)

    @torch.no_grad()
    def accuracy(self, x_all: torch.Tensor, y_all: torch.Tensor) -> float:
        self.model.eval()
        correct = torch.zeros((), dtype=torch.long, device=self.t.device)
        for i in range(0, len(y_all), self.recipe.eval_batch_size):
            x = self.normalize(x_all[i:i + self.recipe.eval_batch_size])
            with torch.autocast(self.t.device.type, self.t.amp_dtype,
                                enabled=self.t.amp_dtype is not None):
                logits = self.forward(x)
            correct += (logits.argmax(1) == y_all[i:i + self.recipe.eval_batch_size]).sum()
        return int(correct) / len(y_all)

    # --- results, failures, checkpoints ----------------------------------------------------
    def result(self, status: str, reason: str | None, start: float) -> ProxyResult:
        times = [h["epoch_seconds"] for h in self.history]
        last = self.history[-1] if self.history else {}
        n = len(self.data.train_y)
        train_time = sum(n / h["images_per_s"] for h in self.history)
        peak = torch.cuda.max_memory_allocated(self.t.device) if self.t.cuda else None
        return ProxyResult(
            status=status, reason=reason, val_acc=last.get("val_acc"),
            train_loss=last.get("train_loss"), epochs=len(self.history), epoch_seconds=times,
            images_per_s=n * len(times) / train_time if times else None,
            seconds=time.perf_counter() - start, peak_memory_bytes=peak,
            first_step_seconds=self.first_step_seconds, history=list(self.history))

    def release(self) -> None:
        """Free the device memory of this run so the next run in the process fits."""
        self.optimizer.state.clear()
        self.model.zero_grad(set_to_none=True)
        self.forward = None
        gc.collect()
        if self.t.cuda:
            torch.cuda.empty_cache()

    def _save(self) -> None:
        state = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch, "step": self.step, "history": self.history,
            "recipe": asdict(self.recipe), "rng": rng_state(self.t.device),
            "gen": self.gen.get_state(), "layout": self.layout,
        }
        save_atomic(state, self.checkpoint)

    def _load(self) -> None:
        state = load_checkpoint(self.checkpoint, self.t.device, CHECKPOINT_KEYS)
        if state["recipe"] != asdict(self.recipe):
            raise UserError(f"checkpoint {self.checkpoint} was written with another recipe; "
                            f"delete it to start over")
        # checkpoints written before the two RNG states were one entry
        rng = state.get("rng") or {"cpu": state["cpu_rng"], "cuda": state["cuda_rng"]}
        self.layout = adopt_checkpoint_layout(self.model, state, rng["cuda"] is not None)
        self.normalize.memory_format = LAYOUTS[self.layout]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], state["history"]
        restore_rng(rng, self.t.device)
        self.gen.set_state(state["gen"].cpu())
