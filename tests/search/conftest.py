"""Small real image data for search tests: trials that train in a second on the CPU."""

import pytest
import torch
from PIL import Image


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


TINY = {"family": "convmixer", "overrides": {"h": "16..48:16", "d": "1..2", "p": "4",
                                             "k": "3"},
        "epochs": 2, "val_size": 40, "recipe": {"batch_size": 32}}
