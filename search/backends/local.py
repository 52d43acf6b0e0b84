"""The default backend: worker processes on this host, supervised by the driver.

One `search worker` process per trial slot (one per GPU x `--trials-per-gpu`, or
`--workers` on the CPU), each running the worker loop against the study's storage. Ctrl-C
stops the workers cleanly: their trials are failed and queued again, so re-running the same
command resumes where it stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.backends.base import Backend, RunOptions, SearchJob
from search.backends.runner import queue_again
from search.study import record
from search.study.record import TrialRecord, live_trial, original_number
from search.study.results import budget
from search.study.workspace import workspace_dir
from spaces.errors import UserError


class LocalBackend(Backend):
    name = "optuna"

    def check(self, name: str, options: RunOptions) -> str:
        slots = worker_slots(options)
        live = live_workers(name, workspace_dir(options.workspace))
        if live:
            raise UserError(
                f"study {name} already has {len(live)} worker(s) running on this host (pid "
                f"{', '.join(map(str, live))}): wait for them, or stop them (kill "
                f"{' '.join(map(str, live))}; their trials are queued again), then run again")
        devices = ", ".join(sorted({s["device"] for s in slots}))
        return f"{len(slots)} worker(s) on {devices}"

    def run(self, job: SearchJob) -> int:
        return Supervisor(job, worker_slots(job.options)).run()


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
        return slots if options.workers is None else slots[: options.workers]
    workers = 1 if options.workers is None else options.workers
    if workers < 1:
        raise UserError("--workers must be at least 1")
    threads = max(1, (os.cpu_count() or 1) // workers)
    return [{"device": "cpu", "PATCHNAS_THREADS": str(threads)} for _ in range(workers)]


class Supervisor:
    """The driver's side of the local backend: starts one worker per slot, and watches them.

    A worker that dies (killed by the OS, a crash) is reported at once; its trial is failed
    and queued again (failed for good when it killed its worker before), and a new worker
    takes its slot while the budget lasts. Ctrl-C or SIGTERM stops every worker cleanly."""

    def __init__(self, job: SearchJob, slots: list[dict[str, str]]):
        self.job, self.slots = job, slots
        self.logs = job.workspace / "logs" / job.spec.name
        self.procs: list[subprocess.Popen | None] = [None] * len(slots)
        self.files: list = [None] * len(slots)
        self.restarts = [0] * len(slots)
        self.failed: dict[int, str] = {}  # slot -> why its worker is not replaced

    def run(self) -> int:
        self.logs.mkdir(parents=True, exist_ok=True)
        for i in range(len(self.slots)):
            self._start(i)
        timeout = self.job.options.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        # Ctrl-C and SIGTERM set a flag: a KeyboardInterrupt raised inside a garbage-
        # collection callback (SQLAlchemy has some) would be swallowed and the stop lost
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda signum, frame: stop.set())
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while any(p is not None and p.poll() is None for p in self.procs):
                if stop.is_set():
                    self.job.log("interrupted: stopping the workers (their trials are queued "
                                 "again)")
                    self._interrupt()
                    return 130
                if deadline is not None and time.monotonic() > deadline:
                    self.job.log("--timeout reached: stopping the workers")
                    self._interrupt()
                    break
                self._watch()
                self.job.tick()
                time.sleep(0.5)
            self._watch()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for p, f in zip(self.procs, self.files, strict=True):
                if p is not None:
                    p.wait()
                    f.close()
        if self.failed and len(self.failed) == len(self.slots):
            raise UserError(f"every worker failed; see {self.logs}")
        return 0

    def _start(self, i: int) -> None:
        job, slot = self.job, self.slots[i]
        env = {**os.environ, **job.options.env,
               "PATCHNAS_STORAGE": job.storage_url,  # not on argv: no password leaks
               **{k: v for k, v in slot.items() if k != "device"}}
        cmd = [sys.executable, "-m", "search", "search", "worker", job.spec.name,
               "--device", slot["device"], "--workspace", str(job.workspace),
               "--data", job.data, "--worker-index", str(i)]
        if self.files[i] is not None:
            self.files[i].close()
        self.files[i] = open(self.logs / f"worker-{i}.log", "ab")  # noqa: SIM115 - closed in run
        self.procs[i] = subprocess.Popen(cmd, env=env, stdout=self.files[i],
                                         stderr=self.files[i])

    def _watch(self) -> None:
        """Report, account for and replace each worker that died since the last look."""
        for i, p in enumerate(self.procs):
            if p is None or p.poll() is None or p.returncode in (0, 130, -signal.SIGINT):
                continue
            self.procs[i] = None
            why = died(p.returncode)
            lost = fail_trials_of(self.job.study, f"{socket.gethostname()}:{p.pid}", why)
            log = self.logs / f"worker-{i}.log"
            tail = "" if p.returncode < 0 else f": {_last_line(log)}"
            self.job.log(f"worker {i} (pid {p.pid}) {why}{tail}"
                         + "".join(f"; {line}" for line in lost) + f" (log: {log})")
            if p.returncode == 2:  # a mistake it reported (bad data, flags): it would repeat
                self.failed[i] = why
            elif self.restarts[i] >= MAX_RESTARTS:
                self.failed[i] = why
                self.job.log(f"worker {i} died {MAX_RESTARTS + 1} times: not started again")
            elif not budget(self.job.study).done:
                self.restarts[i] += 1
                self._start(i)
                self.job.log(f"started a new worker {i} (pid {self.procs[i].pid})")
            p.wait()

    def _interrupt(self) -> None:
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for p in live:
            p.send_signal(signal.SIGINT)
        end = time.monotonic() + 60
        for p in live:
            try:
                p.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()


MAX_RESTARTS = 3  # per slot


def died(code: int) -> str:
    """How a worker's exit code reads."""
    if code >= 0:
        return f"exited with code {code}"
    name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
    hint = ": likely out of memory" if -code == signal.SIGKILL else ""
    return f"was killed by signal {-code} ({name}){hint}"


def fail_trials_of(study: optuna.Study, worker: str, why: str) -> list[str]:
    """Fail the RUNNING trials of a dead worker at once (not after the heartbeat's grace):
    queued again, or failed for good when the same trial already killed a worker."""
    out = []
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.state != TrialState.RUNNING or TrialRecord.from_trial(t).worker != worker:
            continue
        original = original_number(t)
        before = [u for u in trials if u.number != t.number and original_number(u) == original
                  and (TrialRecord.from_trial(u).reason or "").startswith(KILLED)]
        live = live_trial(study, t)
        if before:
            record.write(live, state="FAIL", counted=True,
                         reason=f"{KILLED} twice (last {why})")
            out.append(f"trial {t.number} killed its worker twice: failed for good")
        else:
            queue_again(study, live, f"{KILLED} ({why})")
            out.append(f"trial {t.number} is queued again")
        study.tell(t.number, state=TrialState.FAIL)
    return out


KILLED = "its worker died"


def live_workers(name: str, workspace: Path) -> list[int]:
    """Pids of `search worker NAME --workspace WORKSPACE` processes on this host (Linux)."""
    want = [b"search", b"worker", name.encode(), str(workspace).encode()]
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if all(w in argv for w in want) and argv[argv.index(b"worker") - 1] == b"search":
            pids.append(int(entry.name))
    return sorted(pids)


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"
