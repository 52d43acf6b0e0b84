"""The live display of `search run`: a tqdm bar on a terminal, plain lines elsewhere, and
stdout left to --json either way (real processes; a pseudo-terminal for stderr)."""

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

PATCHNAS = str(Path(sys.executable).with_name("patchnas"))


def _run(tiny_data, workspace, stderr):
    cmd = [PATCHNAS, "search", "run", "--name", "p", "--family", "convmixer", "--set",
           "h=16,32", "d=1", "p=4", "k=3", "act=gelu", "--trials", "2", "--epochs", "1",
           "--val-size", "40", "--device", "cpu", "--no-tracking", "--data", str(tiny_data),
           "--json"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True,
                            env={**os.environ, "PATCHNAS_WORKSPACE": str(workspace),
                                 "PATCHNAS_THREADS": "1"})


def test_on_a_terminal_the_progress_is_one_live_bar_and_stdout_stays_json(tmp_path,
                                                                           tiny_data):
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    run = _run(tiny_data, tmp_path, follower)
    os.close(follower)
    out, screen = run.communicate(timeout=300)[0], b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    assert run.returncode == 0, screen.decode(errors="replace")
    text = screen.decode(errors="replace")
    assert "p: 100%" in text and "2/2" in text and "trial" in text  # tqdm's bar, at the end
    assert "\r" in text  # redrawn in place, not a line per change
    assert "done 2/2" not in text  # no plain lines on a terminal
    assert len(json.loads(out)) >= 1  # stdout is the --json front, nothing else


def test_in_a_pipe_the_progress_is_plain_lines_with_elapsed_and_eta(tmp_path, tiny_data):
    run = _run(tiny_data, tmp_path, subprocess.PIPE)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("done ")]
    assert lines and lines[-1].startswith("done 2/2") and "elapsed " in lines[-1]
    assert "ETA 0m00s" in lines[-1] and "\r" not in err
    assert len(json.loads(out)) >= 1
