"""Getting CIFAR-10 into one canonical form: uint8 arrays, labels and class names in one .npz.

Three sources (`data.source`): the official python archive (`download`), an image folder or
tar archive with `train/<class>/*` and `test/<class>/*` (`folder`), and generated images of the
same shapes (`synthetic`). Whatever the source, later stages load `data/cifar10.npz` in well
under a second.
"""
from __future__ import annotations

import io
import pickle
import shutil
import socket
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
from PIL import Image, UnidentifiedImageError

from cifar_study.cifar10 import CHANNELS, IMAGE_SHAPE, IMAGE_SIZE, ORIGINAL_MEAN, ORIGINAL_STD
from cifar_study.errors import DataError, ParamError, first_line
from cifar_study.io import atomic_path
from cifar_study.params import DataParams

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")
# Full size of the synthetic set; data.train_limit / data.test_limit subset it like real data.
SYNTHETIC_PER_CLASS = {"train": 500, "test": 100}
SYNTHETIC_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                     "dog", "frog", "horse", "ship", "truck")
DOWNLOAD_TIMEOUT_S = 30


@dataclass
class Split:
    images: np.ndarray  # (N, 32, 32, 3) uint8, HWC like torchvision's CIFAR10.data
    labels: np.ndarray  # (N,) int64


@dataclass
class Dataset:
    train: Split
    test: Split
    classes: list[str]

    def summary(self) -> dict:
        """Counts per class and per-channel mean/std of the training images (on a 0-1 scale)."""
        mean, std = channel_stats(self.train.images)
        channels = ("red", "green", "blue")
        return {
            "classes": len(self.classes),
            **{f"{name}_count": int(len(split.labels)) for name, split in self.splits()},
            **{f"{name}_per_class": {c: int((split.labels == i).sum()) for i, c in enumerate(self.classes)}
               for name, split in self.splits()},
            "mean": dict(zip(channels, mean)),
            "std": dict(zip(channels, std)),
        }

    def splits(self) -> Iterable[tuple[str, Split]]:
        return (("train", self.train), ("test", self.test))


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 HWC images on a 0-1 scale, rounded to 4 places."""
    mean, std = [], []
    for c in range(images.shape[-1]):
        channel = images[..., c].astype(np.float64) / 255.0
        mean.append(round(float(channel.mean()), 4))
        std.append(round(float(channel.std()), 4))
    return mean, std


def normalization(mode: str, train_images: np.ndarray) -> tuple[list[float], list[float]]:
    """The per-channel mean and std that `train.normalize` names: `original` (the original study's
    constants) or `computed` (the statistics of `train_images`, as metrics/data.json reports them)."""
    if mode == "original":
        return list(ORIGINAL_MEAN), list(ORIGINAL_STD)
    return channel_stats(train_images)


def save_dataset(ds: Dataset, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object keeps np.savez from appending ".npz" to tmp
            np.savez(f, x_train=ds.train.images, y_train=ds.train.labels,
                     x_test=ds.test.images, y_test=ds.test.labels, classes=np.array(ds.classes))


def load_dataset(path: str | Path) -> Dataset:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: canonical data not found (run the fetch_data stage: dvc repro fetch_data)")
    with np.load(path, allow_pickle=False) as z:
        return Dataset(Split(z["x_train"], z["y_train"]), Split(z["x_test"], z["y_test"]),
                       [str(c) for c in z["classes"]])


def fetch(p: DataParams, raw_dir: str | Path = "data/raw") -> Dataset:
    """Build the dataset that `p` describes, subset it, and check it."""
    if p.source == "download":
        ds = from_download(p.url, p.md5, Path(raw_dir))
    elif p.source == "folder":
        ds = from_folder(Path(p.path))
    else:
        ds = synthetic(p.seed)
    ds = Dataset(balanced_subset(ds.train, p.train_limit, len(ds.classes), p.seed, "data.train_limit"),
                 balanced_subset(ds.test, p.test_limit, len(ds.classes), p.seed, "data.test_limit"),
                 ds.classes)
    validate(ds)
    return ds


def validate(ds: Dataset) -> None:
    for name, split in ds.splits():
        if split.images.dtype != np.uint8 or split.images.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{name} images: expected uint8 (N, {IMAGE_SIZE}, {IMAGE_SIZE}, {CHANNELS}), "
                            f"got {split.images.dtype} {split.images.shape}")
        if len(split.labels) != len(split.images):
            raise DataError(f"{name}: {len(split.images)} images but {len(split.labels)} labels")
        bad = (split.labels < 0) | (split.labels >= len(ds.classes))
        if bad.any():
            raise DataError(f"{name}: label {int(split.labels[bad][0])} out of range 0..{len(ds.classes) - 1}")
        if len(split.labels) == 0:
            raise DataError(f"{name}: no images")


def balanced_indices(labels: np.ndarray, count: int, num_classes: int, seed: int, key: str) -> np.ndarray:
    """Sorted indices of `count` items with classes as equal as possible, chosen reproducibly."""
    if count > len(labels):
        raise ParamError(f"{key}: {count} is more than the {len(labels)} images available")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        k = count // num_classes + (c < count % num_classes)
        idx = np.flatnonzero(labels == c)
        if k > len(idx):
            raise ParamError(f"{key}: {count} needs {k} images of class {c}, only {len(idx)} exist")
        chosen.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(chosen))


def balanced_subset(split: Split, limit: int, num_classes: int, seed: int, key: str) -> Split:
    """A class-balanced subset of `limit` images (0 = all)."""
    if limit == 0:
        return split
    idx = balanced_indices(split.labels, limit, num_classes, seed, key)
    return Split(split.images[idx], split.labels[idx])


def heldout_split(ds: Dataset, p: DataParams) -> tuple[Split, Split, str]:
    """(train, held-out, its name): the test split by default (the original study's protocol), else a validation split."""
    if p.val_size == 0:
        return ds.train, ds.test, "test"
    train, val = split_validation(ds.train, p.val_size, len(ds.classes), p.seed)
    return train, val, "val"


def split_validation(split: Split, val_size: int, num_classes: int, seed: int) -> tuple[Split, Split]:
    """(train, validation): a class-balanced validation split of `val_size` images held out of `split`."""
    if val_size >= len(split.labels):
        raise ParamError(f"data.val_size: {val_size} must be smaller than the {len(split.labels)} training images")
    val = balanced_indices(split.labels, val_size, num_classes, seed, "data.val_size")
    keep = np.setdiff1d(np.arange(len(split.labels)), val)
    return Split(split.images[keep], split.labels[keep]), Split(split.images[val], split.labels[val])


# --- download: the official python archive ---------------------------------------------------

def from_download(url: str, md5: str, raw_dir: Path) -> Dataset:
    """Fetch cifar-10-python.tar.gz with torchvision, check its md5, and read its pickled batches.

    The archive is kept in `raw_dir`, so a re-run with the same md5 does not download again.
    """
    from torchvision.datasets.utils import check_integrity, download_url

    archive = raw_dir / "cifar-10-python.tar.gz"
    if not check_integrity(str(archive), md5):
        # Download beside the final name and rename only when the checksum matches: an
        # interrupted or corrupt download is never mistaken for the archive.
        part = archive.with_name(archive.name + ".part")
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # fail fast instead of hanging without network
        try:
            if url.startswith("file://"):  # torchvision's downloader cannot read file:// URLs
                raw_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(url2pathname(urlparse(url).path), part)
            else:
                download_url(url, str(raw_dir), part.name, md5=None)
        except Exception as exc:  # URLError, HTTPError, timeouts, OSError: all mean "no archive"
            part.unlink(missing_ok=True)
            raise DataError(
                f"could not download {url} ({first_line(exc)}). Offline? Set data.url to a local copy "
                f"(file:///path/to/cifar-10-python.tar.gz), or data.source: folder with data.path: "
                f"a directory or .tar.gz holding train/<class>/*.jpg and test/<class>/*.jpg") from None
        finally:
            socket.setdefaulttimeout(old_timeout)
        if not check_integrity(str(part), md5):
            part.unlink()
            raise DataError(f"{url}: the downloaded file's md5 is not data.md5={md5} (corrupt or wrong file; deleted)")
        part.replace(archive)
    return read_python_archive(archive)


def read_python_archive(archive: Path) -> Dataset:
    batches: dict[str, dict] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = Path(member.name).name
                if member.isfile() and (name.startswith(("data_batch_", "test_batch")) or name == "batches.meta"):
                    # The archive's md5 was checked above, so unpickling it is safe.
                    batches[name] = pickle.load(tar.extractfile(member), encoding="latin1")
    except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError, zlib.error) as exc:
        raise DataError(f"{archive}: not a readable CIFAR-10 python archive ({first_line(exc)})") from None
    train_names = sorted(n for n in batches if n.startswith("data_batch_"))
    if "test_batch" not in batches or "batches.meta" not in batches or not train_names:
        raise DataError(f"{archive}: missing data_batch_*, test_batch or batches.meta")

    def to_split(names: list[str]) -> Split:
        data = np.concatenate([np.asarray(batches[n]["data"], dtype=np.uint8) for n in names])
        labels = np.concatenate([np.asarray(batches[n]["labels"], dtype=np.int64) for n in names])
        return Split(data.reshape(-1, CHANNELS, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1).copy(), labels)

    return Dataset(to_split(train_names), to_split(["test_batch"]), list(batches["batches.meta"]["label_names"]))


# --- folder: train/<class>/*.jpg, test/<class>/*.jpg in a directory or tar archive -------------

def from_folder(path: Path) -> Dataset:
    if not path.exists():
        raise DataError(f"data.path: {path} does not exist")
    if path.is_dir():
        files = {str(p.relative_to(path)): p for p in path.rglob("*") if p.is_file()}
        return _from_image_files(files, lambda p: p.read_bytes(), str(path))
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError):
        raise DataError(f"data.path: {path} is neither a directory nor a readable tar archive "
                        f"(.tar, .tar.gz, .tar.bz2, .tar.xz)") from None
    with tar:
        try:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            return _from_image_files(members, lambda m: tar.extractfile(m).read(), str(path))
        except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as exc:
            raise DataError(f"data.path: {path} is truncated or corrupt ({first_line(exc)})") from None


def _from_image_files(files: dict, read, where: str) -> Dataset:
    """`files` maps archive-relative names to handles that `read` turns into bytes."""
    found: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}
    for name in files:
        parts = Path(name).parts
        if len(parts) >= 3 and parts[-3] in SPLITS and name.lower().endswith(IMAGE_EXTENSIONS):
            found[parts[-3]].setdefault(parts[-2], []).append(name)
    for split in SPLITS:
        if not found[split]:
            raise DataError(f"data.path: {where} has no {split}/<class>/*.jpg|png images")
    classes = sorted(found["train"])
    if sorted(found["test"]) != classes:
        missing = sorted(set(classes) ^ set(found["test"]))
        raise DataError(f"data.path: {where}: train and test have different classes (differ in: {', '.join(missing)})")

    def load(split: str) -> Split:
        names = [(n, c) for c, cls in enumerate(classes) for n in sorted(found[split][cls])]
        images = np.empty((len(names), *IMAGE_SHAPE), dtype=np.uint8)
        # Read in archive order: a compressed tar then only ever seeks forward.
        order = {n: i for i, n in enumerate(files)}
        for i in sorted(range(len(names)), key=lambda i: order[names[i][0]]):
            images[i] = decode_image(read(files[names[i][0]]), f"{where}:{names[i][0]}")
        return Split(images, np.array([c for _, c in names], dtype=np.int64))

    return Dataset(load("train"), load("test"), classes)


def decode_image(data: bytes, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode != "RGB" or im.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise DataError(f"{name}: expected a {IMAGE_SIZE}x{IMAGE_SIZE} RGB image, got {im.size[0]}x{im.size[1]} {im.mode}")
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{name}: cannot decode image ({first_line(exc)})") from None


# --- synthetic: learnable class patterns plus noise, for offline smoke runs and tests ---------

def synthetic(seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    # Each class is a smooth random colour pattern; images are that pattern plus noise, so a
    # small CNN learns them within an epoch or two and accuracy changes are visible in tests.
    prototypes = rng.uniform(0, 1, size=(len(SYNTHETIC_CLASSES), 4, 4, 3)).repeat(8, axis=1).repeat(8, axis=2)

    def make(per_class: int) -> Split:
        labels = np.repeat(np.arange(len(SYNTHETIC_CLASSES)), per_class)
        noise = rng.normal(0, 0.45, size=(len(labels), *IMAGE_SHAPE))
        images = np.clip(prototypes[labels] * 0.4 + 0.3 + noise, 0, 1)
        return Split((images * 255).round().astype(np.uint8), labels.astype(np.int64))

    return Dataset(make(SYNTHETIC_PER_CLASS["train"]), make(SYNTHETIC_PER_CLASS["test"]), list(SYNTHETIC_CLASSES))
