"""A promoted ConvMixer trained on Imagenette-128 with the full trainer: top-1 and wall time.

    python bench/imagenette_full.py --data /path/to/imagenette          # GPU; goal >= 80% in 10 min
    python bench/imagenette_full.py --data DIR --device cpu --max-steps 5 --epochs 1   # smoke

The config is what `patchnas export --target-size 128` writes for the 32 px proxy
ConvMixer h=256 d=8 p=1 k=9 (so p=4 at 128 px: the same 32x32 token grid), with the
published ConvMixer recipe, the epochs shortened and the batch (and, linearly, the lr) set
here. Prints one JSON line: top-1, top-5, wall seconds (everything included), the device.
Not a test: numbers go to bench/RESULTS.md with the date, machine and command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import spaces  # noqa: E402
from trainers.full_config import FullConfig  # noqa: E402
from trainers.recipes import published  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="Imagenette-128 in ImageNet's layout")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=12)
    args = p.parse_args()
    family = spaces.get("convmixer")
    proxy = family.config_of({"h": 256, "d": 8, "p": 1, "k": 9})
    config = FullConfig("convmixer", family.to_target(proxy, 128), 128,
                        published("convmixer", epochs=args.epochs, batch_size=args.batch_size),
                        proxy_config=proxy.__dict__)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "convmixer-256-8-128px.yaml"
        path.write_text(config.dump())
        cmd = [sys.executable, "-m", "search", "train", "full", str(path), "--data",
               args.data, "--device", args.device, "--workers", str(args.workers), "--out",
               str(Path(tmp) / "run"), "--no-tracking", "--no-progress", "--json",
               "--checkpoint-every", "0"]
        if args.max_steps:
            cmd += ["--max-steps", str(args.max_steps)]
        start = time.perf_counter()
        # its per-epoch lines go straight to our stderr, so a cut-short run still shows them
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"train full failed (exit {out.returncode}); its stderr is above")
    result = json.loads(out.stdout)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(json.dumps({"top1": result["top1"], "top5": result["top5"], "epochs": args.epochs,
                      "batch_size": args.batch_size, "wall_seconds": round(wall, 1),
                      "train_seconds": round(result["seconds"], 1), "device": device}))


if __name__ == "__main__":
    main()
