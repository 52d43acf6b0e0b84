"""`patchnas promote`: export the selected configs, then launch their full trainings.

  local     one after another, here (`patchnas train full` per config)
  torchrun  the same through torchrun on this node's processes (DDP)
  print     write the YAMLs and print the commands for a user's own scheduler
  ray       submit each as a Ray job (the export folder travels as the job's working dir)

`--dry-run` selects and prints what would run, writing and running nothing.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.promote.export import config_path, export, target_of
from search.promote.select import Selection, select
from search.study.record import TrialRecord
from search.study.storage import redact
from search.study.studies import load_spec, load_study
from spaces.errors import UserError

LAUNCHES = ("local", "torchrun", "print", "ray")


@dataclass(frozen=True)
class LaunchOptions:
    launch: str
    full_data: str
    nproc_per_node: int = 1
    extra: tuple[str, ...] = ()  # flags passed to every `train full` (epochs, device, ...)
    ray_address: str | None = None  # the Ray dashboard, for --launch ray (default: auto)
    tracking_uri: str | None = None  # what the Ray jobs log to


def train_command(config: str, opts: LaunchOptions, storage_url: str | None) -> list[str]:
    """The argv after the program: `train full CONFIG --data DIR ...`."""
    argv = ["train", "full", config, "--data", opts.full_data, *opts.extra]
    if storage_url:
        argv += ["--storage", storage_url]
    return argv


def program(opts: LaunchOptions, printable: bool) -> list[str]:
    if opts.launch == "torchrun":
        head = ["torchrun"] if printable else [sys.executable, "-m", "torch.distributed.run"]
        return [*head, "--standalone", f"--nproc-per-node={opts.nproc_per_node}", "-m",
                "search"]
    return ["patchnas"] if printable else [sys.executable, "-m", "search"]


def promote(name: str, storage_url: str, selection: str, opts: LaunchOptions, *,
            out: str | Path, target_size: int | None = None,
            target_classes: int | None = None, confirm_seeds: int = 0,
            confirm=None, dry_run: bool = False, log=None) -> list[dict[str, Any]]:
    if opts.launch not in LAUNCHES:
        raise UserError(f"--launch {opts.launch}: choose {', '.join(LAUNCHES)}")
    if opts.nproc_per_node < 1:
        raise UserError("--nproc-per-node must be at least 1")
    if not dry_run and opts.launch in ("local", "torchrun") and \
            not (Path(opts.full_data) / "train").is_dir():
        raise UserError(f"{opts.full_data} has no train/ folder; give --full-data a folder in "
                        f"ImageNet's layout (train/<class>/..., val/<class>/...)")
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if dry_run:
        study = load_study(name, storage_url)
        spec = load_spec(study)
        size, _ = target_of(spec, opts.full_data, target_size, target_classes)
        written = [{"trial": t.number, "label": TrialRecord.from_trial(t).label,
                    "path": str(config_path(out, name, t.number, size))}
                   for t in select(study, spec, Selection.parse(selection))]
    else:
        written = export(name, storage_url, selection, out, target_size=target_size,
                         target_classes=target_classes, full_data=opts.full_data,
                         confirm_seeds=confirm_seeds,
                         confirm=confirm)
    if opts.launch == "ray" and not dry_run:
        submit_ray_jobs(name, written, opts, storage_url, log)
        return written
    for item in written:
        shown = program(opts, True) + train_command(item["path"], opts, redact(storage_url))
        item["command"] = shlex.join(shown)
        if dry_run or opts.launch == "print":
            log(item["command"])
            continue
        log(f"launching trial {item['trial']}: {item['command']}")
        code = subprocess.call(program(opts, False)
                               + train_command(item["path"], opts, storage_url))
        item["exit_code"] = code
        if code:
            log(f"the full training of trial {item['trial']} ended with exit code {code}")
    return written


def submit_ray_jobs(name: str, items: list[dict[str, Any]], opts: LaunchOptions,
                    storage_url: str, log) -> None:
    """One Ray job per config; the storage and tracking URLs travel in the job's env."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ModuleNotFoundError:
        raise UserError("--launch ray needs ray: pip install 'patchnas[ray]'") from None

    from search.backends.ray_tune import RAY_ERRORS, cannot_reach

    address = opts.ray_address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        client = JobSubmissionClient(address)
    except RAY_ERRORS as err:
        raise cannot_reach(address, err, "give --ray-address http://HEAD:8265 (its "
                                         "dashboard)") from None
    env = {"PATCHNAS_STORAGE": storage_url}
    if opts.tracking_uri:
        env["PATCHNAS_TRACKING_URI"] = opts.tracking_uri
    for item in items:
        path = Path(item["path"])
        argv = ["patchnas", *train_command(path.name, opts, None)]
        item["command"] = shlex.join(argv)
        item["ray_job"] = client.submit_job(
            entrypoint=item["command"],
            submission_id=f"patchnas-{name}-t{item['trial']:04d}-{uuid.uuid4().hex[:6]}",
            runtime_env={"working_dir": str(path.parent), "env_vars": env})
        log(f"submitted trial {item['trial']} as Ray job {item['ray_job']}: {item['command']}")
