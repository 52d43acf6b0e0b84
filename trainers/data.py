"""Image classification data for proxy runs, decoded once into a uint8 tensor cache.

Accepted at `path` (a folder or a file):
  * CIFAR-10 / CIFAR-100 in the official Python format: `cifar-10-batches-py/`
    (`data_batch_1..5`, `test_batch`, `batches.meta`) or `cifar-100-python/` (`train`,
    `test`, `meta`), the folder itself or a folder/archive that contains it;
  * an image-folder tree `train/<class>/*` and `test/<class>/*` (or `val/<class>/*`), PNG or
    JPEG, as a folder or a `.tar` / `.tar.gz` archive of one (grayscale decodes to RGB).
Images are resized (shorter side, then center crop) when `image_size` is given; otherwise
all must share one size. The decoded tensors are cached under `cache_dir`, keyed by a hash
of the data's bytes, so later loads take a moment. Train/validation splits are stratified
with a fixed seed; the test set is never used for selection.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from spaces.errors import UserError

CACHE_VERSION = 1
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
TEST_SPLITS = ("test", "val")
HOW_TO_GET = ("get CIFAR-10 with `patchnas train proxy --download ...` (needs internet) or "
              "point --data / $PATCHNAS_DATA at cifar-10-batches-py/, an image folder with "
              "train/ and test/, or a .tar.gz of one")


@dataclass
class Dataset:
    """All images of a dataset as uint8 NCHW tensors, with int64 labels."""

    name: str
    classes: list[str]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    content_hash: str

    @property
    def image_size(self) -> int:
        return self.train_x.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, val_size: int = 5000, seed: int = 0, subset: int | None = None) -> Splits:
        """Train/validation from the train set (stratified, seeded); `subset` keeps that
        many training images (stratified too); the test set is kept apart."""
        if not 0 < val_size < len(self.train_y):
            raise UserError(f"the validation split must hold between 1 and "
                            f"{len(self.train_y) - 1} images, not {val_size}")
        train_idx, val_idx = stratified_split(self.train_y, val_size, seed)
        if subset is not None:
            if not 0 < subset <= len(train_idx):
                raise UserError(f"--subset must be between 1 and {len(train_idx)}, not {subset}")
            keep, _ = stratified_split(self.train_y[train_idx], len(train_idx) - subset, seed,
                                       allow_all=True)
            train_idx = train_idx[keep] if subset < len(train_idx) else train_idx
        return Splits(self.name, self.classes, self.train_x[train_idx], self.train_y[train_idx],
                      self.train_x[val_idx], self.train_y[val_idx], self.test_x, self.test_y,
                      self.content_hash)


@dataclass
class Splits:
    name: str
    classes: list[str]
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    content_hash: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return self.train_x.shape[-1]


def stratified_split(labels: torch.Tensor, size: int, seed: int,
                     allow_all: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(rest, chosen) indices; `chosen` holds `size` items in the classes' proportions."""
    n = len(labels)
    if size == 0 and allow_all:
        return torch.arange(n), torch.arange(0)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    # a stable sort by label keeps the random order within each class
    by_class = order[torch.sort(labels[order], stable=True).indices]
    counts = torch.bincount(labels)
    quota = (counts.double() * size / n).floor().long()
    short = size - int(quota.sum())
    if short:  # hand the rounding leftovers to the largest remainders
        rem = counts.double() * size / n - quota
        quota[torch.argsort(rem, descending=True)[:short]] += 1
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[labels[by_class]]
    chosen_mask = rank < quota[labels[by_class]]
    chosen, rest = by_class[chosen_mask], by_class[~chosen_mask]
    return rest.sort().values, chosen.sort().values


# --- loading --------------------------------------------------------------------------------
def load(path: str | Path, image_size: int | None = None,
         cache_dir: str | Path | None = None) -> Dataset:
    """The dataset at `path`, from the cache when its bytes were decoded before."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"no data at {path}: {HOW_TO_GET}")
    digest = _content_hash(path, image_size)
    cache = Path(cache_dir) / f"data-{digest[:20]}.pt" if cache_dir else None
    if cache is None:
        return _decode_at(path, image_size, digest)
    found = _cached(cache, digest)  # written whole (atomic rename): no lock to read it
    if found is not None:
        return found
    cache.parent.mkdir(parents=True, exist_ok=True)
    # the workers of a study start together: one decodes, the others wait and read its copy
    with _exclusive(cache.with_suffix(".lock")):
        found = _cached(cache, digest)
        if found is not None:
            return found
        data = _decode_at(path, image_size, digest)
        _to_cache(cache, data)
        return data


def _cached(cache: Path, digest: str) -> Dataset | None:
    if not cache.exists():
        return None
    try:
        return _from_cache(cache, digest)
    except Exception:  # a damaged cache file is rebuilt, never trusted
        cache.unlink(missing_ok=True)
        return None


@contextmanager
def _exclusive(lock: Path):
    """An advisory lock between processes (POSIX); without one (another OS, a lock file
    this user cannot open, a filesystem without flock) each process may decode."""
    try:
        import fcntl

        fd = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o666)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # ENOLCK, EOPNOTSUPP
            pass
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _decode_at(path: Path, image_size: int | None, digest: str) -> Dataset:
    source = _find_source(path)
    try:
        return source.decode(image_size, digest)
    except UserError:
        raise
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError, tarfile.TarError,
            KeyError, ValueError) as err:
        raise UserError(f"corrupt data at {path} ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}); re-download or "
                        f"re-extract it") from None


def _from_cache(cache: Path, digest: str) -> Dataset:
    blob = torch.load(cache, weights_only=True)
    if blob["version"] != CACHE_VERSION or blob["content_hash"] != digest:
        raise ValueError("stale cache")
    return Dataset(blob["name"], list(blob["classes"]), blob["train_x"], blob["train_y"],
                   blob["test_x"], blob["test_y"], digest)


def _to_cache(cache: Path, data: Dataset) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")  # a reader never sees half a file
    torch.save({"version": CACHE_VERSION, "name": data.name, "classes": data.classes,
                "train_x": data.train_x, "train_y": data.train_y, "test_x": data.test_x,
                "test_y": data.test_y, "content_hash": data.content_hash}, tmp)
    tmp.replace(cache)


def _content_hash(path: Path, image_size: int | None) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION} size={image_size}".encode())
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        h.update(str(file.relative_to(path) if file != path else file.name).encode())
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


# --- sources --------------------------------------------------------------------------------
class _Source:
    """Where the bytes come from: a folder or an archive, read the same way."""

    def __init__(self, path: Path):
        self.path = path

    def files(self) -> Iterator[tuple[str, bytes]]:
        if self.path.is_dir():
            for file in sorted(self.path.rglob("*")):
                if file.is_file():
                    yield file.relative_to(self.path).as_posix(), file.read_bytes()
        else:
            with tarfile.open(self.path, "r:*") as tar:
                for member in tar:
                    if member.isfile():
                        yield member.name, tar.extractfile(member).read()

    def names(self) -> list[str]:
        if self.path.is_dir():
            return [p.relative_to(self.path).as_posix() for p in self.path.rglob("*")]
        with tarfile.open(self.path, "r:*") as tar:
            return tar.getnames()


class _CifarPickles(_Source):
    """The official CIFAR-10 / CIFAR-100 Python format."""

    def __init__(self, path: Path, prefix: str, hundred: bool):
        super().__init__(path)
        self.prefix, self.hundred = prefix, hundred
        self.name = "cifar100" if hundred else "cifar10"

    def decode(self, image_size: int | None, digest: str) -> Dataset:
        wanted = (["train", "test", "meta"] if self.hundred else
                  [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])
        blobs = {}
        for name, data in self.files():
            base = name[len(self.prefix):] if name.startswith(self.prefix) else None
            if base in wanted:
                blobs[base] = _safe_unpickle(data)
        missing = [w for w in wanted if w not in blobs]
        if missing:
            raise UserError(f"incomplete CIFAR data at {self.path}: {missing[0]} is missing; "
                            f"{HOW_TO_GET}")
        label_key = "fine_labels" if self.hundred else "labels"
        train_parts = ["train"] if self.hundred else wanted[:5]
        test_part = "test" if self.hundred else "test_batch"
        meta = blobs["meta" if self.hundred else "batches.meta"]
        classes = [_text(c) for c in _get(meta, "fine_label_names" if self.hundred
                                          else "label_names")]

        def images(parts):
            x = torch.cat([torch.as_tensor(_get(blobs[p], "data")).reshape(-1, 3, 32, 32)
                           for p in parts])
            y = torch.cat([torch.as_tensor(list(_get(blobs[p], label_key))) for p in parts])
            return _resize_all(x, image_size), y.long()

        train_x, train_y = images(train_parts)
        test_x, test_y = images([test_part])
        return Dataset(self.name, classes, train_x, train_y, test_x, test_y, digest)


class _ImageFolder(_Source):
    """`train/<class>/*` and `test/<class>/*` (or `val/`), in a folder or an archive."""

    name = "imagefolder"

    def decode(self, image_size: int | None, digest: str) -> Dataset:
        splits: dict[str, list[tuple[str, torch.Tensor]]] = {"train": [], "test": []}
        for name, data in self.files():
            parts = name.split("/")
            if len(parts) < 3 or Path(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            split = {"train": "train", "test": "test", "val": "test"}.get(parts[-3])
            if split is None:
                continue
            try:
                image = _decode(data)
            except (OSError, ValueError) as err:
                raise UserError(f"corrupt image {name} in {self.path} ({err}); re-download "
                                f"or remove it") from None
            splits[split].append((parts[-2], _resize(image, image_size)))
        if not splits["train"] or not splits["test"]:
            missing = "train" if not splits["train"] else "test (or val)"
            raise UserError(f"no images under {missing}/<class>/ in {self.path}; {HOW_TO_GET}")
        classes = sorted({c for c, _ in splits["train"]})
        unknown = sorted({c for c, _ in splits["test"]} - set(classes))
        if unknown:
            raise UserError(f"class {unknown[0]!r} appears in the test split of {self.path} but "
                            f"not in train/")
        index = {c: i for i, c in enumerate(classes)}

        def stack(items):
            sizes = {tuple(img.shape[-2:]) for _, img in items}
            if len(sizes) > 1:
                raise UserError(f"images in {self.path} differ in size ({sorted(sizes)[:2]}); "
                                f"give an image size to resize them")
            return (torch.stack([img for _, img in items]),
                    torch.tensor([index[c] for c, _ in items], dtype=torch.long))

        train_x, train_y = stack(splits["train"])
        test_x, test_y = stack(splits["test"])
        name = "cifar10" if classes == CIFAR10_CLASSES else self.path.name.split(".")[0]
        return Dataset(name, classes, train_x, train_y, test_x, test_y, digest)


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


def _find_source(path: Path) -> _Source:
    if path.is_file() and not tarfile.is_tarfile(path):
        raise UserError(f"{path} is neither a folder nor a .tar/.tar.gz archive; {HOW_TO_GET}")
    try:
        names = _Source(path).names()
    except (OSError, EOFError, tarfile.TarError) as err:
        raise UserError(f"corrupt archive {path} ({err}); re-download it") from None
    for name in names:
        base = name.rsplit("/", 1)
        if base[-1] == "data_batch_1":
            return _CifarPickles(path, name[: -len("data_batch_1")], hundred=False)
        if base[-1] == "meta" and any(n.endswith(name[:-4] + "fine_label_names") or
                                      n == name[:-4] + "train" for n in names):
            return _CifarPickles(path, name[:-4], hundred=True)
    if any(n.split("/")[-2:-1] and n.split("/")[-3:-2] == ["train"] for n in names):
        return _ImageFolder(path)
    raise UserError(f"no dataset found at {path}; {HOW_TO_GET}")


class _NumpyOnly(pickle.Unpickler):
    """CIFAR's pickles hold dicts of numpy arrays and lists: allow nothing else to load."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray",
               "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("_codecs", "encode")}  # protocol-2 pickles written by Python 3 use it

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _safe_unpickle(data: bytes):
    return _NumpyOnly(io.BytesIO(data), encoding="bytes").load()


def _get(blob: dict, key: str):
    return blob[key] if key in blob else blob[key.encode()]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(data: bytes) -> torch.Tensor:
    """Image bytes (JPEG, PNG, ...) -> uint8 CHW RGB; grayscale and palettes become RGB."""
    with Image.open(io.BytesIO(data)) as image:
        rgb = np.asarray(image.convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def _resize(image: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or tuple(image.shape[-2:]) == (size, size):
        return image
    image = TF.resize(image, size, antialias=True)  # shorter side to `size`
    return TF.center_crop(image, [size, size])


def _resize_all(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or x.shape[-1] == size:
        return x
    return torch.stack([_resize(img, size) for img in x])


def download_cifar(root: str | Path, hundred: bool = False) -> Path:
    """Fetch the official CIFAR-10 (or -100) Python files into `root` with torchvision."""
    from torchvision import datasets

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cls = datasets.CIFAR100 if hundred else datasets.CIFAR10
    try:
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
    except (OSError, RuntimeError) as err:
        raise UserError(f"could not download {cls.__name__} into {root} ({err}); without "
                        f"internet, copy cifar-10-batches-py/ or an image-folder archive there "
                        f"or point --data at one") from None
    return root
