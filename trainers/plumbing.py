"""What the proxy and the full trainer do the same way around their loops: the device, AdamW's
parameter groups, the learning-rate schedule as a LambdaLR, seeds, RNG state and atomic
checkpoint writes.

Imports torch. The schedule's formula stays in trainers/schedule.py, which does not, so the
CLI can check a recipe without loading torch.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from spaces.errors import UserError
from trainers.schedule import lr_at

NAN_CHECK_EVERY = 25  # steps between finiteness checks (each one syncs the device)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device asked for; by default CUDA when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device}: give cuda, cuda:N or cpu") from None
    if device.type not in ("cuda", "cpu"):
        raise UserError(f"--device {device}: patchnas trains on cuda or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but no CUDA device is visible; use --device cpu")
    return device


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's groups: weight decay on weights, none on biases and norm scales (ndim <= 1).

    The order of the parameters is the model's, so an optimizer's saved state lines up with
    them again on resume."""
    params = list(model.parameters())
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def lr_scheduler(optimizer: torch.optim.Optimizer, schedule: str, peak: float,
                 total_steps: int, warmup: float = 0.05, floor: float = 0.0,
                 step: int = 0) -> LambdaLR:
    """A LambdaLR that gives update `s` (0-based) exactly `lr_at(schedule, peak, s, ...)`.

    Step it after each optimizer step. It starts at update `step`: a resumed run builds it
    again from the step its checkpoint holds, so no scheduler state need be saved (and none
    from an older checkpoint can disagree with the formula)."""
    for group in optimizer.param_groups:
        # LambdaLR sets lr = initial_lr * lambda(s). The lambda returns the rate itself, so
        # the factor must be 1.0: peak * (rate / peak) can be an ulp off the rate.
        group["initial_lr"] = 1.0
    return LambdaLR(optimizer, lambda s: lr_at(schedule, peak, s, total_steps, warmup, floor),
                    last_epoch=step - 1)


def mix_seed(*numbers: int) -> int:
    """One seed from several integers, e.g. (seed, epoch, index): the numbers as digits in base
    1_000_003, so tuples of up to three numbers below that never collide (the value stays
    under 2**63 - 1) and longer ones practically never. Changing it changes every run."""
    out = 0
    for n in numbers:
        out = (out * 1_000_003 + n) % (2**63 - 1)
    return out


def rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    """The global random state: the CPU's, and `device`'s when it is a CUDA device."""
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_rng(state: dict[str, torch.Tensor | None], device: torch.device) -> None:
    """Put back the random state `rng_state` returned. A checkpoint's tensors may have been
    mapped to the device, and the setters want them on the CPU; a CUDA state is skipped on a
    CPU run."""
    torch.set_rng_state(state["cpu"].cpu())
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def load_checkpoint(path: str | Path, device: torch.device | str,
                    keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A checkpoint written by save_atomic; a folder, an unreadable file or one that lacks
    `keys` is one UserError (the file is left as it is)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder; give the path of a checkpoint file")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        first = ("not a file torch.save wrote" if isinstance(err, pickle.UnpicklingError)
                 else f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}")
        raise UserError(f"cannot read the checkpoint {path} ({first}); delete it or give "
                        f"another path to start over") from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise UserError(f"{path} is not a patchnas checkpoint (no {missing[0]!r}); delete it "
                        f"or give another path to start over")
    return state


def save_atomic(state: Any, path: str | Path) -> None:
    """torch.save `state` to `path` so that a crash or a failed write never leaves half a
    file there: write a temporary file beside it (os.replace is atomic only within one file
    system), then rename it over `path`.

    The temporary name is fixed, not unique: only one process writes a given checkpoint, and
    a file left by a killed process is overwritten by the next save instead of piling up (a
    Ray trial uploads its checkpoint's whole folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
