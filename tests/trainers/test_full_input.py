"""The device input path of the full trainer: the decoded cache, the batched augmentation
drawn as torchvision draws it, evaluation equal to torchvision's, and both loaders training."""

from __future__ import annotations

import math

import pytest
import torch

from trainers.full_input import (
    DeviceAugment,
    DeviceInput,
    EpochSampler,
    TorchvisionInput,
    make_input,
)
from trainers.recipes import published

CPU = torch.device("cpu")


def _recipe(**changes):
    return published("convmixer", batch_size=8, epochs=1, **changes)


def test_a_whole_image_crop_at_its_own_size_is_the_image():
    """The crop box convention: roi_align over the whole image at its own size samples each
    pixel's center, so the image comes back unchanged."""
    x = torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8)
    augment = DeviceAugment(20, _recipe(), 10, CPU)
    assert torch.equal(augment.resized_crops(x, scale=(1.0, 1.0), ratio=(1.0, 1.0)), x)


def test_crop_boxes_follow_torchvisions_scale_and_ratio():
    """Each crop covers 8-100% of the image at an aspect ratio in [3/4, 4/3] (rounding
    aside): a marked pixel grid shows which source pixels a crop kept."""
    torch.manual_seed(0)
    h = w = 64
    rows = torch.arange(h).view(1, 1, h, 1).expand(512, 1, h, w)
    cols = torch.arange(w).view(1, 1, 1, w).expand(512, 1, h, w)
    x = torch.cat([rows, cols, rows], 1).to(torch.uint8)
    out = DeviceAugment(16, _recipe(), 10, CPU).resized_crops(x).float()
    height = out[:, 0].amax((1, 2)) - out[:, 0].amin((1, 2)) + 1  # rows spanned
    width = out[:, 1].amax((1, 2)) - out[:, 1].amin((1, 2)) + 1
    area = height * width / (h * w)
    assert area.min() > 0.05 and area.max() <= 1.0 and area.mean() > 0.3
    ratio = width / height
    assert ratio.min() > 0.6 and ratio.max() < 1.6  # 3/4..4/3, widened by pixel rounding
    assert out.min() >= 0 and out.max() <= 63


def test_random_erasing_hits_its_probability_and_area():
    torch.manual_seed(1)
    x = torch.zeros(4000, 3, 32, 32)
    out = DeviceAugment.erase(x, 0.25)
    erased = (out != 0).flatten(1)
    hit = erased.any(1)
    assert 0.22 < hit.float().mean() < 0.28
    fraction = erased[hit].float().mean(1)
    assert fraction.min() >= 0.015 and fraction.max() <= 0.35


def test_the_same_seed_gives_the_same_batch_and_another_seed_another():
    x = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8)
    y = torch.arange(16) % 10
    augment = DeviceAugment(32, _recipe(), 10, CPU)
    batches = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        batches.append(augment(x, y))
    assert batches[0][0].shape == (16, 3, 32, 32) and batches[0][1].shape == (16, 10)
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1],
                                                                       batches[1][1])
    assert not torch.equal(batches[0][0], batches[2][0])


def test_evaluation_is_torchvisions_resize_and_center_crop(tmp_path, imagenette_small):
    recipe = _recipe()
    ours = DeviceInput(imagenette_small, 96, recipe, 0, 0, CPU, tmp_path / "cache")
    theirs = TorchvisionInput(imagenette_small, 96, recipe, 0, 0, CPU)
    n = len(theirs.val_set)
    assert len(ours.val_set) == n == 24 and ours.classes == theirs.classes
    x, y = ours.prepare_val(next(iter(ours.val_loader(range(n), n))))
    tx, ty = theirs.prepare_val(next(iter(theirs.val_loader(range(n), n))))
    assert torch.equal(y, ty)
    assert (x - tx).abs().max() < 1e-5  # the same uint8 pixels, normalized alike


def test_the_cache_is_decoded_once_and_follows_the_folder(tmp_path, imagenette_small):
    recipe = _recipe()
    first = DeviceInput(imagenette_small, 64, recipe, 0, 0, CPU, tmp_path / "cache")
    mtime = first.train_set.path.stat().st_mtime_ns
    again = DeviceInput(imagenette_small, 64, recipe, 0, 0, CPU, tmp_path / "cache")
    assert again.train_set.path == first.train_set.path
    assert again.train_set.path.stat().st_mtime_ns == mtime  # read, not decoded again
    assert len(again.train_set) == 64 and again.train_set.images.dtype.name == "uint8"


def test_a_corrupt_image_is_one_line(tmp_path, imagenette_small):
    import shutil

    from spaces.errors import UserError

    data = tmp_path / "data"
    shutil.copytree(imagenette_small, data)
    bad = next((data / "train").rglob("*.JPEG"))
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=f"cannot decode {bad}") as err:
        DeviceInput(data, 64, _recipe(), 0, 0, CPU, tmp_path / "cache")
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "cache").glob("*.tmp"))  # no half-written cache left


@pytest.mark.parametrize("loader", ["device", "torchvision"])
def test_both_loaders_give_training_batches_of_the_recipe(tmp_path, imagenette_small, loader):
    recipe = _recipe(mixup=0.0, cutmix=1.0)
    source = make_input(loader, imagenette_small, 64, recipe, 0, 0, CPU, tmp_path / "c")
    sampler = EpochSampler(len(source.train_set), 0, 0, 1, 8)
    batches = list(source.train_loader(sampler))
    assert len(batches) == sampler.steps_per_epoch == 8
    x, y = source.prepare(batches[0])
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32
    assert y.shape == (8, 4) and torch.allclose(y.sum(1), torch.ones(8))  # CutMix's soft labels
    assert math.isfinite(float(x.mean())) and -3 < float(x.mean()) < 3


@pytest.mark.parametrize("name", ["MixUp", "CutMix"])
def test_the_lean_mixers_give_torchvisions_batches(name):
    from torchvision.transforms import v2

    from trainers.full_input import _CutMixInPlace, _MixUpOnePass

    ours = {"MixUp": _MixUpOnePass, "CutMix": _CutMixInPlace}[name]
    x, y = torch.randn(16, 3, 24, 24), torch.arange(16) % 10
    torch.manual_seed(3)
    tx, ty = getattr(v2, name)(alpha=1.0, num_classes=10)(x.clone(), y)
    torch.manual_seed(3)
    ox, oy = ours(alpha=1.0, num_classes=10)(x.clone(), y)
    assert not torch.allclose(tx, x)  # it mixed something
    assert torch.allclose(ox, tx, atol=1e-6) and torch.equal(oy, ty)


def test_on_a_cpu_the_workers_augment_each_batch_as_the_main_process_would(tmp_path,
                                                                          imagenette_small):
    """The trainer seeds (seed, epoch, step, rank) before `prepare`; on a CPU device the
    loader's workers augment under that same seed, so the batches do not depend on the
    number of workers, and a resumed epoch's first batch is the batch it skipped to."""
    from trainers.plumbing import mix_seed

    recipe = _recipe()
    source = DeviceInput(imagenette_small, 64, recipe, 7, 2, CPU, tmp_path / "cache")
    sampler = EpochSampler(len(source.train_set), 7, 0, 1, 8)
    sampler.set_position(1, 3)  # epoch 1, resumed after 3 steps
    in_workers = [source.prepare(b) for b in source.train_loader(sampler)]
    assert len(in_workers) == sampler.steps_per_epoch - 3 == 5
    plain = DeviceInput(imagenette_small, 64, recipe, 7, 0, CPU, tmp_path / "cache")
    order = [i for _, i in sampler]
    for n, (x, y) in enumerate(in_workers):
        rows = torch.from_numpy(plain.train_set.images[order[n * 8:(n + 1) * 8]])
        torch.manual_seed(mix_seed(7, 1, 3 + n, 0))
        ex, ey = plain.augment(rows.permute(0, 3, 1, 2), plain.train_set.labels[
            order[n * 8:(n + 1) * 8]])
        assert torch.equal(x, ex) and torch.equal(y, ey)
