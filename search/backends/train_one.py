"""`patchnas train proxy`: one proxy run of a preset or a config, on real data."""

from __future__ import annotations

import sys
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import spaces
from search.study.workspace import load_splits, workspace_dir
from trainers.proxy import DeviceData, ProxyTrainer, Recipe, check_checkpoint


def train_proxy(*, preset: str | None = None, family: str | None = None,
                overrides: dict[str, Any] | None = None, recipe: Recipe | None = None,
                data: str | None = None, workspace: str | Path | None = None,
                device: str | None = None, subset: int | None = None, val_size: int = 5000,
                compile: bool = False, seed: int = 0, evaluate_test: bool = False,
                download: bool = False, checkpoint: str | None = None,
                progress: bool = True, proxy_size: int | None = None) -> dict[str, Any]:
    """Train one proxy config and return what `--json` prints."""
    recipe = recipe or Recipe()
    fam, proxy, _ = spaces.resolve(preset, family=family, overrides=overrides)
    trainer = ProxyTrainer(recipe, device=device, compile=compile)  # checks the device first
    check_checkpoint(checkpoint)
    splits = load_splits(data, workspace_dir(workspace), download=download, val_size=val_size,
                         subset=subset, seed=seed)
    size = proxy_size or splits.image_size
    fam.check_config_at(proxy, size)
    data = DeviceData(splits, trainer.device, size)  # downsampled there when smaller
    config = fam.to_target(proxy, size)  # the proxy itself on 32 px data
    model = partial(fam.build, config, splits.num_classes, size,
                    drop_path=recipe.drop_path)  # built by the trainer, on its device
    if progress:
        print(f"training {fam.label(config)} on {len(splits.train_y)} {splits.name} images "
              f"({splits.image_size} px, trained at {size}) for {recipe.epochs} epochs on "
              f"{trainer.device}",
              file=sys.stderr)
    report = _print_epoch(recipe.epochs) if progress else None
    result = trainer.fit(model, data, report=report, seed=seed, checkpoint=checkpoint,
                         evaluate_test=evaluate_test)
    out = {
        "status": result.status, "reason": result.reason, "family": fam.name,
        "config": asdict(config), "val_acc": result.val_acc, "epochs": result.epochs,
        "seconds": round(result.seconds, 3), "images_per_s": result.images_per_s,
        "train_loss": result.train_loss, "epoch_seconds": result.epoch_seconds,
        "first_step_seconds": result.first_step_seconds,
        "peak_memory_bytes": result.peak_memory_bytes, "device": str(trainer.device),
        "data": {"name": splits.name, "content_hash": splits.content_hash,
                 "train": len(splits.train_y), "val": len(splits.val_y),
                 "image_size": size, "num_classes": splits.num_classes},
    }
    if evaluate_test:
        out["test_acc"] = result.test_acc
    return out


def _print_epoch(total: int):
    def report(epoch: int, m: dict[str, float]) -> None:
        print(f"epoch {epoch}/{total}  val_acc {m['val_acc']:.4f}  loss {m['train_loss']:.4f}  "
              f"lr {m['lr']:.2e}  {m['epoch_seconds']:.1f}s  {m['images_per_s']:.0f} img/s",
              file=sys.stderr, flush=True)
    return report
