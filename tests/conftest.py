"""Fixtures shared by the tests (helpers live in tests/helpers.py). GPU tests are marked
`gpu` and always skip without CUDA."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import CIFAR_ARCHIVE, IMAGENETTE, need


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """One workspace for the session, so the real data is decoded once."""
    path = tmp_path_factory.mktemp("workspace")
    os.environ["PATCHNAS_WORKSPACE"] = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory):
    """Every workspace of the session (and every process a test starts) shares one decoded
    copy of each dataset: decoding CIFAR-10 takes ~18 s here. `make test` gives its pytest
    processes one folder (they decode once between them, trainers.data locks it)."""
    path = Path(os.environ.get("PATCHNAS_TEST_CACHE") or tmp_path_factory.mktemp("cache"))
    os.environ["PATCHNAS_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def cifar(workspace):
    """The shared real CIFAR-10 (JPEG image-folder archive), decoded through the cache."""
    need(CIFAR_ARCHIVE.exists(), f"the shared CIFAR-10 archive is missing at {CIFAR_ARCHIVE}")
    from trainers.data import load

    return load(CIFAR_ARCHIVE, cache_dir=os.environ["PATCHNAS_CACHE"])


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """An image folder: 4 classes, 60 train and 10 test PNGs each, 32x32, colour-coded."""
    root = tmp_path_factory.mktemp("tiny") / "tiny"
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 60), ("test", 10)):
        for c in range(4):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                base = torch.tensor([60.0 * c + 20, 200 - 40.0 * c, 128.0]).view(3, 1, 1)
                img = (base + torch.randn(3, 32, 32, generator=gen) * 25).clamp(0, 255)
                Image.fromarray(img.to(torch.uint8).permute(1, 2, 0).numpy()).save(
                    folder / f"{i:03d}.png")
    return root


CLASSES = ("n01440764", "n02102040", "n02979186", "n03000684")  # tench, springer, ...


@pytest.fixture(scope="session")
def imagenette_small(tmp_path_factory) -> Path:
    """4 classes of the real Imagenette (ImageNet layout): 16 train and 6 val images each."""
    need(IMAGENETTE.exists(), f"the shared Imagenette archive is missing at {IMAGENETTE}")
    root = tmp_path_factory.mktemp("imagenette")
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(IMAGENETTE) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-2] not in CLASSES:
                continue
            key = (parts[-3], parts[-2])
            if taken.get(key, 0) >= (16 if key[0] == "train" else 6):
                continue
            taken[key] = taken.get(key, 0) + 1
            target = root / key[0] / key[1] / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    assert sorted(taken.values()) == [6] * 4 + [16] * 4
    return root
