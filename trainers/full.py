"""The full trainer: one exported config on an ImageNet-layout folder, on one device or DDP.

Knows nothing of Optuna or MLflow: after each epoch it calls `report(epoch, metrics)`.

Exact resume. A run killed at any step and resumed from its last checkpoint ends with the
same weights as a run never interrupted (same device, same process count). That holds
because nothing random depends on process history: the sample order of epoch e is a
permutation seeded by (seed, e); each sample's augmentation is drawn after seeding with
(seed, e, index), so DataLoader workers and restarts do not matter; and the main process
reseeds with (seed, e, step, rank) before mixing a batch (MixUp/CutMix, drop path). The
checkpoint holds the model, optimizer, grad scaler, RNG states and the position (epoch, step
in epoch); a resumed epoch skips the batches already trained, and its learning-rate schedule
is built again at the step (the rate is a function of the step alone).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import spaces
from spaces.errors import UserError
from trainers.full_config import FullConfig
from trainers.full_input import LOADERS, EpochSampler, make_input
from trainers.layout import LAYOUTS, adopt_checkpoint_layout, starting_layout
from trainers.plumbing import (
    NAN_CHECK_EVERY,
    load_checkpoint,
    lr_scheduler,
    mix_seed,
    param_groups,
    resolve_device,
    restore_rng,
    rng_state,
    save_atomic,
)

CHECKPOINT, WEIGHTS = "last.pt", "model.pt"
Report = Callable[[int, dict[str, float]], Any]


class TrainingFailed(Exception):
    """The run cannot go on (the loss diverged); its checkpoints are kept."""


@dataclass
class FullOptions:
    data: Path
    out: Path
    epochs: int | None = None  # default: the recipe's
    max_steps: int | None = None  # stop (and end the schedule) after this many steps
    batch_size: int | None = None  # global; default: the recipe's
    device: str | None = None
    resume: bool = False
    workers: int = min(4, os.cpu_count() or 1)  # DataLoader workers per process
    loader: str = LOADERS[0]  # device: decoded once, augmented on the device; torchvision
    cache: Path | None = None  # the decoded images (default: $PATCHNAS_CACHE, else out/cache)
    checkpoint_every: int = 0  # steps; 0: at epoch ends only
    seed: int = 0
    precision: str | None = None  # bf16 | fp16 | fp32; default bf16 on CUDA, fp32 on CPU
    progress: bool = True


@dataclass
class FullResult:
    top1: float
    top5: float
    epochs_completed: int
    steps: int
    completed: bool  # the recipe's whole schedule ran (not cut by --max-steps)
    seconds: float
    world_size: int
    num_classes: int
    weights: str
    history: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- processes --------------------------------------------------------------------------
@dataclass(frozen=True)
class Processes:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def join_processes(device: str | None) -> Processes:
    """This process's place: alone, or one of torchrun's (RANK/WORLD_SIZE in the env)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return Processes(0, 1, resolve_device(device))
    local = int(os.environ.get("LOCAL_RANK", 0))
    wanted = resolve_device(device)
    if wanted.type == "cuda":
        wanted = torch.device("cuda", local)
        torch.cuda.set_device(wanted)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if wanted.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), wanted)


# --- the trainer ------------------------------------------------------------------------
class FullTrainer:
    def __init__(self, config: FullConfig, options: FullOptions, procs: Processes):
        self.cfg, self.opt, self.procs = config, options, procs
        self.recipe = config.recipe
        self.device = procs.device
        self.cuda = self.device.type == "cuda"
        precision = options.precision or ("bf16" if self.cuda else "fp32")
        if precision not in ("bf16", "fp16", "fp32"):
            raise UserError(f"--precision {precision}: choose bf16, fp16 or fp32")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.epochs = self.recipe.epochs if options.epochs is None else options.epochs
        self.batch = self.recipe.batch_size if options.batch_size is None else options.batch_size
        if self.epochs < 1 or self.batch < 1:
            raise UserError("--epochs and --batch-size must be at least 1")
        if self.batch % procs.world:
            raise UserError(f"--batch-size {self.batch} is global: it must divide evenly "
                            f"over {procs.world} processes")
        cache = options.cache or Path(os.environ.get("PATCHNAS_CACHE") or options.out / "cache")
        self.input = make_input(options.loader, options.data, config.image_size, self.recipe,
                                options.seed, options.workers, self.device, cache)
        self.train_set, self.val_set = self.input.train_set, self.input.val_set
        self.classes = self.input.classes
        self.sampler = EpochSampler(len(self.train_set), options.seed, procs.rank, procs.world,
                                    self.batch // procs.world)
        if self.sampler.steps_per_epoch == 0:
            raise UserError(f"{options.data}/train has {len(self.train_set)} images, fewer "
                            f"than one batch of {self.batch}; lower --batch-size")
        planned = self.sampler.steps_per_epoch * self.epochs
        self.total_steps = planned if options.max_steps is None else min(planned,
                                                                      options.max_steps)
        self.completed_schedule = self.total_steps == planned
        self._build()

    def _agree_on_layout(self, model: nn.Module) -> None:
        """DDP wants one layout in every process: the first process's choice."""
        choice = torch.tensor([list(LAYOUTS).index(self.layout)], device=self.device)
        dist.broadcast(choice, 0)
        self.layout = list(LAYOUTS)[int(choice)]
        model.to(memory_format=LAYOUTS[self.layout])

    def _build(self) -> None:
        cfg, r = self.cfg, self.recipe
        torch.manual_seed(self.opt.seed)
        family = spaces.get(cfg.family)
        model = family.build(cfg.config, len(self.classes), cfg.image_size,
                             drop_path=r.drop_path).to(self.device)
        self.layout, self.layout_seconds = starting_layout(
            model, self.sampler.batch, cfg.image_size, self.amp_dtype,
            resuming=self.opt.resume and self.checkpoint.exists())
        if self.layout_seconds and self.procs.world > 1:
            self._agree_on_layout(model)
        self.model = model
        self.forward = (nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.cuda else None)
            if self.procs.world > 1 else model)
        self.optimizer = torch.optim.AdamW(  # lr: the scheduler sets it
            param_groups(model, r.weight_decay), lr=0.0, eps=r.eps)
        self.scheduler = self._scheduler(step=0)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.amp_dtype == torch.float16)
        self.epoch, self.step_in_epoch, self.step, self.history = 0, 0, 0, []
        # the epoch's training loss so far, over all processes (summed, count): a resumed
        # epoch reports the mean over the whole epoch, not only the steps after the restart
        self.epoch_loss = (0.0, 0)

    def _scheduler(self, step: int) -> torch.optim.lr_scheduler.LambdaLR:
        """The learning-rate schedule, positioned at update `step`."""
        r = self.recipe
        return lr_scheduler(self.optimizer, r.schedule, r.lr_for(self.batch), self.total_steps,
                            r.warmup, r.min_lr, step=step)

    # --- identity and checkpoints ---------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        return {"family": self.cfg.family, "config": asdict(self.cfg.config),
                "image_size": self.cfg.image_size, "num_classes": len(self.classes)}

    @property
    def checkpoint(self) -> Path:
        return self.opt.out / CHECKPOINT

    def save(self) -> None:
        if self.procs.main:
            state = {
                "identity": self.identity(), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": rng_state(self.device),
                "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "step": self.step,
                "total_steps": self.total_steps, "history": self.history,
                "epoch_loss": list(self.epoch_loss),
                "layout": self.layout,
            }
            save_atomic(state, self.checkpoint)
        if self.procs.world > 1:
            dist.barrier()

    def load(self) -> None:
        state = load_checkpoint(self.checkpoint, self.device)
        if state.get("identity") != self.identity():
            theirs = state.get("identity") or {}
            raise UserError(f"the checkpoint {self.checkpoint} is from another model "
                            f"({theirs.get('family')} {theirs.get('config')}, "
                            f"{theirs.get('num_classes')} classes); give another --out or "
                            f"delete it")
        if state["total_steps"] != self.total_steps:
            raise UserError(f"the checkpoint {self.checkpoint} was written for "
                            f"{state['total_steps']} steps, this run plans {self.total_steps}; "
                            f"resume with the same --epochs, --batch-size and --max-steps")
        self.layout = adopt_checkpoint_layout(self.model, state, state["rng"]["cuda"] is not None)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"], self.device)
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.step, self.history = state["step"], state["history"]
        self.epoch_loss = tuple(state.get("epoch_loss", (0.0, 0)))
        # the schedule from the step; an older checkpoint's "scheduler" entry is not needed
        self.scheduler = self._scheduler(self.step)

    # --- the loop -------------------------------------------------------------------------
    def fit(self, report: Report | None = None, log=print) -> FullResult:
        start = time.perf_counter()
        if self.layout_seconds and self.procs.main:
            log(f"memory layout: {self.layout} (" + ", ".join(
                f"{name} {sec * 1000:.0f} ms" for name, sec in self.layout_seconds.items())
                + " per forward+backward)")
        if self.checkpoint.exists():
            if not self.opt.resume:
                raise UserError(f"{self.opt.out} already holds a checkpoint: add --resume to "
                                f"continue it, or give another --out")
            self.load()
            log(f"resumed at epoch {self.epoch + 1}, step {self.step} of {self.total_steps}")
        while self.step < self.total_steps:
            epoch_start, steps_before = time.perf_counter(), self.step
            loss = self._train_epoch()
            train_seconds = time.perf_counter() - epoch_start
            top1, top5 = self.evaluate()
            finished_epoch = self.step_in_epoch >= self.sampler.steps_per_epoch
            metrics = {"epoch": self.epoch + 1, "step": self.step, "train_loss": loss,
                       "top1": top1, "top5": top5, "lr": self.scheduler.get_last_lr()[0],
                       "epoch_seconds": time.perf_counter() - epoch_start,
                       "images_per_s": (self.step - steps_before) * self.batch
                       / max(train_seconds, 1e-9)}
            self.history.append(metrics)
            if finished_epoch:
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
            self.save()
            if self.procs.main:
                log(f"epoch {metrics['epoch']}: step {self.step}/{self.total_steps} loss "
                    f"{loss:.4f} top1 {top1:.4f} top5 {top5:.4f} "
                    f"{metrics['images_per_s']:.0f} img/s")
                if report is not None:
                    report(metrics["epoch"], dict(metrics))
        last = self.history[-1] if self.history else {"top1": math.nan, "top5": math.nan}
        weights = self.opt.out / WEIGHTS
        if self.procs.main:
            save_atomic(self.model.state_dict(), weights)  # tensors only, never a pickled model
        return FullResult(last["top1"], last["top5"], self.epoch, self.step,
                          self.completed_schedule, time.perf_counter() - start,
                          self.procs.world, len(self.classes), str(weights), list(self.history))

    def _train_epoch(self) -> float:
        r = self.recipe
        self.model.train()
        self.sampler.set_position(self.epoch, self.step_in_epoch)
        loader = self.input.train_loader(self.sampler)
        bar = self._bar(min(len(loader), self.total_steps - self.step))
        loss_sum, seen = torch.zeros((), device=self.device), 0
        if self.procs.main:  # the part of this epoch trained before a restart
            loss_sum += self.epoch_loss[0]
            seen = self.epoch_loss[1]
        every = self.opt.checkpoint_every
        for batch in loader:
            torch.manual_seed(mix_seed(self.opt.seed, self.epoch, self.step_in_epoch,
                                   self.procs.rank))
            x, y = self.input.prepare(batch)
            x = x.contiguous(memory_format=LAYOUTS[self.layout])
            with torch.autocast(self.device.type, self.amp_dtype,
                                enabled=self.amp_dtype is not None):
                logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=r.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if r.clip_norm:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), r.clip_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            self.step_in_epoch += 1
            loss_sum += loss.detach() * len(x)
            seen += len(x)
            if bar is not None:
                bar.update(1)
            if self.step % NAN_CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
                raise TrainingFailed(f"the training loss diverged at step {self.step}")
            if self.step >= self.total_steps:
                break
            if every and self.step % every == 0 and \
                    self.step_in_epoch < self.sampler.steps_per_epoch:
                self.epoch_loss = self._epoch_loss_so_far(loss_sum, seen)
                self.save()  # mid-epoch; the epoch's end saves anyway
        if bar is not None:
            bar.close()
        total, seen = self._epoch_loss_so_far(loss_sum, seen)
        # a cut-short run (--max-steps) may end mid-epoch: its checkpoint carries the sums on
        self.epoch_loss = ((total, seen) if self.step_in_epoch < self.sampler.steps_per_epoch
                           else (0.0, 0))
        loss = total / max(1, seen)
        if not math.isfinite(loss):
            raise TrainingFailed(f"the training loss diverged in epoch {self.epoch + 1}")
        return loss

    def _epoch_loss_so_far(self, loss_sum: torch.Tensor, seen: int) -> tuple[float, int]:
        """(summed loss, samples) of the epoch so far, over all processes."""
        stats = torch.stack([loss_sum, torch.tensor(float(seen), device=self.device)])
        if self.procs.world > 1:
            stats = stats.clone()
            dist.all_reduce(stats)
        return float(stats[0]), int(stats[1])

    def _bar(self, total: int):
        if not (self.opt.progress and self.procs.main):
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc=f"epoch {self.epoch + 1}/{self.epochs}", unit="step",
                    leave=False, dynamic_ncols=True)

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Top-1 and top-5 on all of val/ (each process scores its share)."""
        self.model.eval()
        share = range(self.procs.rank, len(self.val_set), self.procs.world)
        loader = self.input.val_loader(share, max(1, self.sampler.batch))
        counts = torch.zeros(3, device=self.device)
        k = min(5, len(self.classes))
        for batch in loader:
            x, y = self.input.prepare_val(batch)
            x = x.contiguous(memory_format=LAYOUTS[self.layout])
            with torch.autocast(self.device.type, self.amp_dtype,
                                enabled=self.amp_dtype is not None):
                logits = self.model(x)
            top = logits.float().topk(k, dim=1).indices
            counts[0] += (top[:, 0] == y).sum()
            counts[1] += (top == y[:, None]).any(dim=1).sum()
            counts[2] += len(y)
        if self.procs.world > 1:
            dist.all_reduce(counts)
        n = max(1.0, float(counts[2]))
        return float(counts[0]) / n, float(counts[1]) / n
