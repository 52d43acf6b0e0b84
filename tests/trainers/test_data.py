"""Loading CIFAR in both formats users have, caching, splitting, and refusing bad data."""

import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from spaces.errors import UserError
from trainers import data as D


def write_cifar10_pickles(root, per_batch=20, seed=0):
    """A small `cifar-10-batches-py` in the official format (protocol 2, bytes keys)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        batches[name] = (x, y)
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": y, b"data": x,
                         b"filenames": [b"x.png"] * per_batch}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in D.CIFAR10_CLASSES],
                     b"num_vis": 3072}, f, protocol=2)
    return folder, batches


def test_official_pickle_format(tmp_path):
    folder, batches = write_cifar10_pickles(tmp_path)
    for path in (folder, tmp_path):  # the folder itself or one that contains it
        ds = D.load(path)
        assert ds.name == "cifar10" and ds.classes == D.CIFAR10_CLASSES
        assert ds.train_x.shape == (100, 3, 32, 32) and ds.train_x.dtype == torch.uint8
        assert ds.test_x.shape == (20, 3, 32, 32)
        x, y = batches["data_batch_2"]
        torch.testing.assert_close(ds.train_x[20:40], torch.from_numpy(x).view(-1, 3, 32, 32))
        assert ds.train_y[20:40].tolist() == y
        assert ds.test_y.tolist() == batches["test_batch"][1]


def test_official_format_inside_an_archive(tmp_path):
    folder, _ = write_cifar10_pickles(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    torch.testing.assert_close(D.load(archive).train_x, D.load(folder).train_x)


def test_cifar100_pickle_format(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 50), ("test", 10)):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": [i % 100 for i in range(n)],
                         b"coarse_labels": [0] * n}, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    ds = D.load(tmp_path)
    assert ds.name == "cifar100" and ds.num_classes == 100
    assert ds.train_x.shape == (50, 3, 32, 32) and ds.train_y[:3].tolist() == [0, 1, 2]


def test_pickles_that_run_code_are_refused(tmp_path):
    folder, _ = write_cifar10_pickles(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Evil()}, f)
    with pytest.raises(UserError, match="corrupt data"):
        D.load(folder)


def write_png(path, img):
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)


def write_image_folder(root, sizes=((32, 32),), per_class=4, classes=("cat", "dog", "emu"),
                       test_name="test"):
    gen = torch.Generator().manual_seed(0)
    for split in ("train", test_name):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                h, w = sizes[i % len(sizes)]
                img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
                write_png(root / split / c / f"{i:04d}.png", img)
    return root


def test_image_folder_as_folder_and_archive(tmp_path):
    root = write_image_folder(tmp_path / "pets")
    ds = D.load(root)
    assert ds.classes == ["cat", "dog", "emu"] and ds.train_x.shape == (12, 3, 32, 32)
    assert ds.train_y.bincount().tolist() == [4, 4, 4]
    archive = tmp_path / "pets.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="pets")
    from_archive = D.load(archive)
    torch.testing.assert_close(from_archive.train_x, ds.train_x)
    assert from_archive.test_y.tolist() == ds.test_y.tolist()


def test_image_folder_with_val_split_and_mixed_sizes_resized(tmp_path):
    root = write_image_folder(tmp_path / "own", sizes=((40, 60), (64, 48)), test_name="val")
    with pytest.raises(UserError, match="differ in size"):
        D.load(root)
    ds = D.load(root, image_size=24)
    assert ds.train_x.shape == (12, 3, 24, 24) and ds.test_x.shape == (12, 3, 24, 24)


def test_the_shared_archive_is_real_cifar10(cifar):
    assert cifar.name == "cifar10" and cifar.classes == D.CIFAR10_CLASSES
    assert cifar.train_x.shape == (50000, 3, 32, 32) and cifar.test_x.shape == (10000, 3, 32, 32)
    assert cifar.train_y.bincount().tolist() == [5000] * 10
    assert cifar.test_y.bincount().tolist() == [1000] * 10
    # real photos: not constant, plausible mean brightness
    assert 110 < cifar.train_x[::50].float().mean() < 130


def test_cache_is_keyed_by_content_and_rebuilt_when_damaged(tmp_path):
    root = write_image_folder(tmp_path / "pets")
    cache = tmp_path / "cache"
    first = D.load(root, cache_dir=cache)
    files = list(cache.glob("*.pt"))
    assert len(files) == 1
    again = D.load(root, cache_dir=cache)
    torch.testing.assert_close(again.train_x, first.train_x)
    assert again.content_hash == first.content_hash
    files[0].write_bytes(b"garbage")  # a damaged cache is rebuilt, not trusted
    torch.testing.assert_close(D.load(root, cache_dir=cache).train_x, first.train_x)
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    write_png(root / "train" / "cat" / "0000.png", img)
    changed = D.load(root, cache_dir=cache)
    assert changed.content_hash != first.content_hash
    assert changed.train_x[0].sum() == 0


def test_a_load_waits_for_a_decode_in_progress_and_reads_its_copy(tmp_path):
    """The workers of a study start together: the second waits for the first's cache file
    instead of decoding the same data again."""
    import fcntl
    import shutil
    import threading

    root = write_image_folder(tmp_path / "pets")
    cache = tmp_path / "cache"
    first = D.load(root, cache_dir=cache)
    (pt,) = cache.glob("*.pt")
    shutil.move(pt, tmp_path / "decoded.pt")
    loaded = {}
    with open(pt.with_suffix(".lock"), "a") as lock:  # a decode in progress elsewhere
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: loaded.update(d=D.load(root, cache_dir=cache)))
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive() and not loaded  # it waits; it does not decode
        shutil.move(tmp_path / "decoded.pt", pt)  # the other process's copy lands
        stamp = pt.stat().st_mtime_ns
        fcntl.flock(lock, fcntl.LOCK_UN)
    waiter.join(30)
    torch.testing.assert_close(loaded["d"].train_x, first.train_x)
    assert pt.stat().st_mtime_ns == stamp  # read, not written again


def test_missing_and_corrupt_data_are_one_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"no data at .*missing.*--download"):
        D.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no dataset found"):
        D.load(tmp_path / "empty")
    root = write_image_folder(tmp_path / "pets")
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="pets")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(UserError, match="corrupt"):
        D.load(archive)
    (root / "train" / "cat" / "0001.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="corrupt image"):
        D.load(root)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="neither a folder nor"):
        D.load(tmp_path / "notes.txt")


def test_stratified_split_is_seeded_disjoint_and_balanced():
    labels = torch.arange(1000) % 10
    rest, val = D.stratified_split(labels, 100, seed=3)
    assert len(val) == 100 and len(rest) == 900
    assert set(rest.tolist()).isdisjoint(val.tolist())
    assert labels[val].bincount().tolist() == [10] * 10
    assert torch.equal(val, D.stratified_split(labels, 100, seed=3)[1])
    assert not torch.equal(val, D.stratified_split(labels, 100, seed=4)[1])
    uneven = torch.tensor([0] * 700 + [1] * 300)
    _, chosen = D.stratified_split(uneven, 10, seed=0)
    assert uneven[chosen].bincount().tolist() == [7, 3]


def test_default_split_of_real_cifar_is_45000_5000(cifar):
    splits = cifar.split()
    assert len(splits.train_y) == 45000 and len(splits.val_y) == 5000
    assert splits.val_y.bincount().tolist() == [500] * 10
    small = cifar.split(subset=5000)
    assert len(small.train_y) == 5000 and small.train_y.bincount().tolist() == [500] * 10
    torch.testing.assert_close(small.val_x, splits.val_x)  # the same held-out images
    with pytest.raises(UserError, match="--subset"):
        cifar.split(subset=0)


