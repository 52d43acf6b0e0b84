"""`patchnas search run`: create or resume a study, start its workers, show progress, and
print the Pareto front.

The parent creates the databases and decodes the data once; then it starts one worker
process per trial slot (one per GPU x `--trials-per-gpu`, or `--workers` on the CPU) and
watches the storage. Ctrl-C stops the workers cleanly: their trials are failed and queued
again, so re-running the same command resumes where it stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from search.objectives import parse_objectives
from search.results import pareto, status
from search.review import refresh
from search.space import SearchSpace
from search.storage import default_url, redact
from search.study import BUDGET_ATTR, StudySpec, create_or_resume, find_spec
from search.train import load_splits, resolve_data
from search.workspace import workspace_dir
from spaces.errors import UserError

DEFAULTS: dict[str, Any] = {
    "family": "convmixer", "objectives": "val_acc:max,params:min", "epochs": 2,
    "min_epochs": 1, "eta": 3, "sampler": None, "pruner": None, "seed": 0, "subset": None,
    "val_size": 5000, "target_size": 224, "target_classes": 1000, "overrides": {},
    "max_params": None, "max_macs": None, "max_latency_ms": None, "recipe": {},
}


@dataclass
class RunOptions:
    """How to run (not part of the study's definition)."""

    trials: int | None = None
    timeout: float | None = None
    workers: int | None = None
    gpus: list[int] | None = None
    trials_per_gpu: int = 1
    device: str | None = None
    storage: str | None = None
    workspace: str | None = None
    data: str | None = None
    seed_presets: bool = False
    tracking: bool = True
    tracking_uri: str | None = None  # default: <workspace>/mlflow.db
    progress: bool = True
    env: dict[str, str] = field(default_factory=dict)
    backend: str = "optuna"  # or "ray"
    ray_address: str | None = None  # default: a local Ray instance sized to this machine
    ray_storage: str | None = None  # default: <workspace>/ray


def build_spec(name: str, given: dict[str, Any], stored: StudySpec | None,
               data: str) -> StudySpec:
    """Settings given now win; then those stored with the study; then the defaults."""
    base = dict(DEFAULTS)
    if stored is not None:
        base.update({
            "family": ",".join(stored.space.families), "overrides": {
                (f"{fam}.{k}" if len(stored.space.families) > 1 else k): v
                for fam, o in stored.space.overrides.items() for k, v in o.items()},
            "objectives": ",".join(str(o) for o in stored.objectives),
            **{k: getattr(stored, k) for k in (
                "epochs", "min_epochs", "eta", "sampler", "pruner", "seed", "subset",
                "val_size", "target_size", "target_classes", "max_params", "max_macs",
                "max_latency_ms", "recipe")}})
    base.update({k: v for k, v in given.items() if v is not None})
    objectives = parse_objectives(base["objectives"])
    several = len(objectives) > 1
    return StudySpec(
        name=name, space=SearchSpace.build(base["family"], base["overrides"]),
        objectives=objectives, epochs=base["epochs"], min_epochs=base["min_epochs"],
        eta=base["eta"], sampler=base["sampler"] or ("nsga2" if several else "tpe"),
        pruner=base["pruner"] or ("moasha" if several else "hyperband"),
        max_params=base["max_params"], max_macs=base["max_macs"],
        max_latency_ms=base["max_latency_ms"], seed=base["seed"], data=data,
        subset=base["subset"], val_size=base["val_size"], recipe=dict(base["recipe"]),
        target_size=base["target_size"], target_classes=base["target_classes"])


def run_search(name: str, given: dict[str, Any], options: RunOptions, log=None) -> dict:
    """Create or resume study `name`, run its workers to the end, return its front."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    workspace = workspace_dir(options.workspace)
    url = options.storage or default_url(workspace)
    stored = find_spec(name, url)  # also creates the database, before any worker starts
    data = str(resolve_data(options.data or (stored.data if stored else None), workspace,
                            download=False).resolve())
    spec = build_spec(name, given, stored, data)
    splits = load_splits(data, workspace, val_size=spec.val_size, subset=spec.subset,
                         seed=spec.seed)  # decodes into the cache once, for every worker
    spec = replace(spec, data_hash=splits.content_hash)
    if options.backend not in BACKENDS:
        raise UserError(f"--backend {options.backend}: choose {' or '.join(BACKENDS)}")
    slots = worker_slots(options)  # a bad device flag is refused before anything is stored
    study = create_or_resume(spec, url, options.trials, seed_presets=options.seed_presets,
                             log=log)
    n_trials = study.user_attrs[BUDGET_ATTR]
    runs, tracking_uri = _start_tracking(spec, workspace, options)
    log(f"study {name}: {n_trials} trials, {len(slots)} worker(s) on "
        f"{', '.join(sorted({s['device'] for s in slots}))}; storage {redact(url)}"
        + (f"; MLflow {redact(tracking_uri.split('?')[0])}" if runs else ""))
    options.env.update(PATCHNAS_TRACKING_URI=tracking_uri or "off", PATCHNAS_SPAWNED="1")
    review = (lambda: refresh(study, runs)) if runs else None
    if options.backend == "ray":
        from search.ray_backend import run_with_ray  # ray is imported for this backend only

        code = run_with_ray(spec, url, workspace, data, options, log,
                            _ticker(study, options, log, review), tracking_uri)
    else:
        code = _run_workers(name, url, workspace, data, slots, study, options, log, review)
    if runs is not None:
        refresh(study, runs)
        runs.end_study("KILLED" if code == 130 else "FINISHED")
    if code == 130:
        raise KeyboardInterrupt
    return {"status": status(study).as_dict(), "front": pareto(study)}


def worker_slots(options: RunOptions) -> list[dict[str, str]]:
    """One entry per worker process: its device and environment."""
    import torch

    gpus, visible = options.gpus, torch.cuda.device_count()
    if options.device == "cuda" and not visible:
        raise UserError("--device cuda, but no CUDA device is visible; use --device cpu")
    if gpus and options.device == "cpu":
        raise UserError("--gpus and --device cpu contradict each other; drop one")
    bad = [g for g in gpus or [] if not 0 <= g < visible]
    if bad:
        raise UserError(f"--gpus {bad[0]}: this machine has {visible} visible CUDA device(s)"
                        + ("; use --device cpu" if not visible else ""))
    if gpus is None and options.device in (None, "cuda") and visible:
        gpus = list(range(visible))
    if gpus:
        if options.trials_per_gpu < 1:
            raise UserError("--trials-per-gpu must be at least 1")
        slots = [{"device": "cuda", "CUDA_VISIBLE_DEVICES": str(g)} for g in gpus
                 for _ in range(options.trials_per_gpu)]
        return slots[: options.workers] if options.workers else slots
    workers = options.workers or 1
    if workers < 1:
        raise UserError("--workers must be at least 1")
    threads = max(1, (os.cpu_count() or 1) // workers)
    return [{"device": "cpu", "PATCHNAS_THREADS": str(threads)} for _ in range(workers)]


def _start_tracking(spec: StudySpec, workspace: Path, options: RunOptions):
    """The study's MLflow runs (created here, before any worker starts), and their URI."""
    if not options.tracking:
        return None, None
    from tracking.runs import StudyRuns, default_uri

    uri = options.tracking_uri or default_uri(workspace)
    runs = StudyRuns(uri, spec.name)
    params = {k: v for k, v in spec.to_dict().items() if k not in ("name", "data")}
    runs.start_study(params, {"study": spec.name, "data": spec.data})
    return runs, uri


REVIEW_SECONDS = 10.0
BACKENDS = ("optuna", "ray")


def _ticker(study, options: RunOptions, log, review):
    """Progress lines each call, an MLflow review every REVIEW_SECONDS."""
    state = {"line": None, "reviewed": time.monotonic()}

    def tick() -> None:
        if review is not None and time.monotonic() - state["reviewed"] > REVIEW_SECONDS:
            review()
            state["reviewed"] = time.monotonic()
        if options.progress:
            state["line"] = _progress(study, state["line"], log)

    return tick


def _run_workers(name, url, workspace, data, slots, study, options, log, review=None) -> int:
    logs = workspace / "logs" / name
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, slot in enumerate(slots):
        env = {**os.environ, **options.env, "PATCHNAS_STORAGE": url,  # not on argv: no leak
               **{k: v for k, v in slot.items() if k != "device"}}
        cmd = [sys.executable, "-m", "search.cli", "search", "worker", name,
               "--device", slot["device"], "--workspace", str(workspace), "--data", data,
               "--worker-index", str(i)]
        log_file = open(logs / f"worker-{i}.log", "ab")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(cmd, env=env, stdout=log_file, stderr=log_file),
                      log_file))
    deadline = time.monotonic() + options.timeout if options.timeout else None
    last, reviewed = None, time.monotonic()
    # Ctrl-C sets a flag: a KeyboardInterrupt raised inside a garbage-collection callback
    # (SQLAlchemy has some) would be swallowed by Python and the stop lost
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
    try:
        while any(p.poll() is None for p, _ in procs):
            if interrupted.is_set():
                raise KeyboardInterrupt
            if review is not None and time.monotonic() - reviewed > REVIEW_SECONDS:
                review()  # Pareto tags and parent metrics follow the front as it changes
                reviewed = time.monotonic()
            if deadline is not None and time.monotonic() > deadline:
                log("--timeout reached: stopping the workers")
                _interrupt(procs)
                break
            last = _progress(study, last, log) if options.progress else last
            time.sleep(1.0)
    except KeyboardInterrupt:
        log("interrupted: stopping the workers (their trials are queued again)")
        _interrupt(procs)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
        for p, f in procs:
            p.wait()
            f.close()
    if options.progress:
        _progress(study, last, log)
    failed = [(i, p.returncode) for i, (p, _) in enumerate(procs)
              if p.returncode not in (0, 130, -signal.SIGINT)]
    for i, code in failed:
        tail = _last_line(logs / f"worker-{i}.log")
        log(f"worker {i} exited with code {code}: {tail} (log: {logs / f'worker-{i}.log'})")
    if failed and len(failed) == len(procs):
        raise UserError(f"every worker failed; see {logs}")
    return 0


def _interrupt(procs) -> None:
    for p, _ in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    end = time.monotonic() + 60
    for p, _ in procs:
        try:
            p.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def _progress(study, last, log):
    s = status(study)
    c = s.counts
    line = (f"done {c['COMPLETE'] + c['REUSED']}/{s.budget}  running {c['RUNNING']}  "
            f"pruned {c['PRUNED']}  failed {c['FAIL']}  infeasible {c['INFEASIBLE']}  "
            f"front {s.front_size}  hypervolume {s.hypervolume:.4f}")
    if line != last:
        log(line)
    return line


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"
