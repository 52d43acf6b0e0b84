"""The default backend: worker processes on this host, supervised by the driver.

One `search worker` process per trial slot (one per GPU x `--trials-per-gpu`, or
`--workers` on the CPU), each running the worker loop against the study's storage. Ctrl-C
stops the workers cleanly: their trials are failed and queued again, so re-running the same
command resumes where it stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from search.backends.base import Backend, RunOptions, SearchJob
from spaces.errors import UserError


class LocalBackend(Backend):
    name = "optuna"

    def check(self, options: RunOptions) -> str:
        slots = worker_slots(options)
        devices = ", ".join(sorted({s["device"] for s in slots}))
        return f"{len(slots)} worker(s) on {devices}"

    def run(self, job: SearchJob) -> int:
        return run_workers(job, worker_slots(job.options))


def worker_slots(options: RunOptions) -> list[dict[str, str]]:
    """One entry per worker process: its device and environment."""
    import torch  # only to count CUDA devices

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


def run_workers(job: SearchJob, slots: list[dict[str, str]]) -> int:
    logs = job.workspace / "logs" / job.spec.name
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, slot in enumerate(slots):
        env = {**os.environ, **job.options.env,
               "PATCHNAS_STORAGE": job.storage_url,  # not on argv: no password leaks
               **{k: v for k, v in slot.items() if k != "device"}}
        cmd = [sys.executable, "-m", "search", "search", "worker", job.spec.name,
               "--device", slot["device"], "--workspace", str(job.workspace),
               "--data", job.data, "--worker-index", str(i)]
        log_file = open(logs / f"worker-{i}.log", "ab")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(cmd, env=env, stdout=log_file, stderr=log_file),
                      log_file))
    timeout = job.options.timeout
    deadline = time.monotonic() + timeout if timeout else None
    # Ctrl-C sets a flag: a KeyboardInterrupt raised inside a garbage-collection callback
    # (SQLAlchemy has some) would be swallowed by Python and the stop lost
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
    try:
        while any(p.poll() is None for p, _ in procs):
            if interrupted.is_set():
                raise KeyboardInterrupt
            if deadline is not None and time.monotonic() > deadline:
                job.log("--timeout reached: stopping the workers")
                _interrupt(procs)
                break
            job.tick()
            time.sleep(1.0)
    except KeyboardInterrupt:
        job.log("interrupted: stopping the workers (their trials are queued again)")
        _interrupt(procs)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
        for p, f in procs:
            p.wait()
            f.close()
    failed = [(i, p.returncode) for i, (p, _) in enumerate(procs)
              if p.returncode not in (0, 130, -signal.SIGINT)]
    for i, code in failed:
        tail = _last_line(logs / f"worker-{i}.log")
        job.log(f"worker {i} exited with code {code}: {tail} (log: {logs / f'worker-{i}.log'})")
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


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"
