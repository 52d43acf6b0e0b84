"""The README's pictures of a real study, taken by headless Chromium: `make pictures`.

Runs (or resumes) a small real CPU study on CIFAR-10, serves it with `patchnas ui` and takes
three pictures: the runs table with the study's parent expanded, the chart view of every
trial's validation curve, and the parent's Pareto picture in MLflow's artifact view.
Check each by eye before committing it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlflow import MlflowClient  # noqa: E402

from search.cli import main  # noqa: E402
from search.study.workspace import default_tracking_uri  # noqa: E402
from tracking.browser import Browser  # noqa: E402
from tracking.ui import (  # noqa: E402
    ASSISTANT_CLOSED,
    EXPAND_PARENTS,
    artifact_page,
    chart_page,
    port_is_free,
    runs_page,
)

STUDY = "readme"
COLUMNS = ["metrics.`val_acc`", "metrics.`params`", "metrics.`macs`", "tags.`state`",
           "tags.`pareto`"]


def run_study(workspace: Path, data: str) -> None:
    code = main(["search", "run", "--name", STUDY, "--family", "convmixer", "--set",
                 "h=64..128:32", "d=2..4", "p=2,4", "k=3,5", "--trials", "8", "--epochs", "2",
                 "--subset", "2000", "--val-size", "500", "--workers", "2", "--device", "cpu",
                 "--data", data, "--workspace", str(workspace)])
    if code != 0:
        raise SystemExit(f"the study failed (exit {code})")


def take(workspace: Path, out: Path) -> list[Path]:
    client = MlflowClient(default_tracking_uri(workspace))
    eid = client.get_experiment_by_name(STUDY).experiment_id
    parent = client.search_runs([eid], "tags.`patchnas.role` = 'study'")[0].info.run_id
    port = next(p for p in range(5100, 5200) if port_is_free("127.0.0.1", p))
    base = f"http://127.0.0.1:{port}"
    ui = subprocess.Popen([sys.executable, "-m", "search", "ui", STUDY, "--port", str(port),
                           "--workspace", str(workspace)], stderr=subprocess.DEVNULL)
    shots = []
    try:
        with Browser(workspace / "chromium-profile") as browser:
            _wait_for_server(browser, base)
            state = {f"MLflowLocalStorage-1.1-ExperimentPage-[\"{eid}\"]-ReactComponentState":
                     json.dumps({"selectedColumns": COLUMNS}), **ASSISTANT_CLOSED}
            browser.evaluate(f"Object.entries({json.dumps(state)}).forEach(([k, v]) => "
                             f"localStorage.setItem(k, v))")
            browser.open(base + runs_page(eid))
            browser.wait_for_text("matching runs", STUDY)
            _until(lambda: browser.click(EXPAND_PARENTS) == 1)
            browser.wait_for_text("t0007")
            time.sleep(1)
            shots.append(browser.screenshot(out / "mlflow-runs.png"))
            browser.open(base + chart_page(eid))
            browser.wait_for_text("Model metrics")
            browser.evaluate("document.querySelector('input[placeholder=\"Search metric "
                             "charts\"]').focus()")
            browser.call("Input.insertText", {"text": "val_"})
            time.sleep(3)
            shots.append(browser.screenshot(out / "mlflow-charts.png"))
            browser.open(base + artifact_page(eid, parent, "pareto.png"))
            _until(lambda: browser.evaluate("Array.from(document.images).some(i => "
                                            "i.src.startsWith('blob:') && i.naturalWidth > 300)"))
            time.sleep(1)
            shots.append(browser.screenshot(out / "mlflow-pareto.png"))
    finally:
        ui.terminate()
        ui.wait(timeout=60)
    return shots


def _wait_for_server(browser: Browser, base: str) -> None:
    def up() -> bool:
        browser.open(f"{base}/health")
        time.sleep(0.5)
        return browser.text().strip() == "OK"
    _until(up, 120)


def _until(predicate, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise SystemExit("the MLflow UI never showed the page; see the picture script")
        time.sleep(0.5)


def main_(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=ROOT / "patchnas-workspace-pictures")
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10-jpeg.tar.gz"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    run_study(args.workspace, args.data)  # resumes, and adds nothing, when it is complete
    for shot in take(args.workspace, args.out):
        print(shot)


if __name__ == "__main__":
    main_()
