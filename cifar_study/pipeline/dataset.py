"""Getting CIFAR-10 into one canonical form: uint8 arrays, labels and class names in one .npz.

Three sources (`data.source`): the official python archive (`download`), an image folder or
tar archive with `train/<class>/*` and `test/<class>/*` (`folder`), and generated images of the
same shapes (`synthetic`). Whatever the source, later stages load `data/cifar10.npz` in well
under a second.

Every source is first *listed*: its class names and the label of every image it declares, before
any image is decoded (files are read under the rules of `untrusted`). The listing is checked (two
classes or more, every class in both splits, limits that fit) before any work, then the chosen
images are decoded; an image that was declared but cannot be read stops the stage: data never
shrinks or merges silently.
"""
from __future__ import annotations

import contextlib
import http.client
import os
import re
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

import numpy as np

from cifar_study.core.cifar10 import CHANNELS, IMAGE_SHAPE, IMAGE_SIZE, ORIGINAL_MEAN, ORIGINAL_STD
from cifar_study.pipeline import untrusted
from cifar_study.pipeline.errors import DataError, OutputError, ParamError, first_line
from cifar_study.pipeline.outputs import atomic_path, refuse_links
from cifar_study.pipeline.params import DataParams

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")
# Full size of the synthetic set; data.train_limit / data.test_limit subset it like real data.
SYNTHETIC_PER_CLASS = {"train": 500, "test": 100}
SYNTHETIC_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                     "dog", "frog", "horse", "ship", "truck")
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCH_SHAPE = (CHANNELS, IMAGE_SIZE, IMAGE_SIZE)  # an official batch row: 3072 bytes, channel-major


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
    constants) or `computed` (the statistics of `train_images`, as reports/data.json reports them)."""
    if mode == "original":
        return list(ORIGINAL_MEAN), list(ORIGINAL_STD)
    return channel_stats(train_images)


def save_dataset(ds: Dataset, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object keeps np.savez from appending ".npz" to tmp
            np.savez(f, x_train=ds.train.images, y_train=ds.train.labels,
                     x_test=ds.test.images, y_test=ds.test.labels, classes=np.array(ds.classes))


def load_dataset(path: str | Path) -> Dataset:
    """The canonical data that fetch_data wrote; anything else is one line saying to re-run it."""
    path = Path(path)
    rerun = "run dvc repro fetch_data"
    if not path.is_file():
        raise DataError(f"{path}: canonical data not found ({rerun})")
    try:
        # np.load allocates what a member declares: a few MB of zeros can declare gigabytes
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(member.file_size for member in archive.infolist())
        if unpacked > untrusted.MAX_INPUT_BYTES:
            raise DataError(f"{path}: unpacks to {untrusted.mib(unpacked)}, more than the "
                            f"{untrusted.mib(untrusted.MAX_INPUT_BYTES)} of any canonical data: {rerun}")
        with np.load(path, allow_pickle=False) as z:  # no pickle: an npz cannot run code
            ds = Dataset(Split(z["x_train"], z["y_train"]), Split(z["x_test"], z["y_test"]),
                         [str(c) for c in z["classes"]])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, MemoryError) as exc:
        raise DataError(f"{path}: not canonical data written by fetch_data ({first_line(exc)}): {rerun}") from None
    try:
        validate(ds)
    except DataError as exc:
        raise DataError(f"{path}: {exc}: {rerun}") from None
    return ds


# --- listing a source: what it declares, before any image is decoded --------------------------

@dataclass
class Listing:
    where: str  # the source, as messages name it
    classes: list[str]
    labels: dict[str, np.ndarray]  # per split: the label of every declared image
    decode: Callable[[str, np.ndarray], np.ndarray]  # (split, sorted indices) -> (n, 32, 32, 3) uint8


def fetch(p: DataParams, raw_dir: str | Path = "data/raw") -> Dataset:
    """Build the dataset that `p` describes, subset it, and check it."""
    with _open_source(p, Path(raw_dir)) as listing:
        check_listing(listing)
        keys = {"train": ("data.train_limit", p.train_limit), "test": ("data.test_limit", p.test_limit)}
        chosen = {}
        for split, (key, limit) in keys.items():  # every limit is checked before any image is decoded
            labels = listing.labels[split]
            chosen[split] = np.arange(len(labels)) if limit == 0 else \
                balanced_indices(labels, limit, len(listing.classes), p.seed, key)
        ds = Dataset(*(Split(listing.decode(s, chosen[s]), listing.labels[s][chosen[s]]) for s in SPLITS),
                     listing.classes)
    validate(ds)
    return ds


@contextlib.contextmanager
def _open_source(p: DataParams, raw_dir: Path) -> Iterator[Listing]:
    if p.source == "download":
        yield from_download(p.url, p.md5, raw_dir)
    elif p.source == "folder":
        with folder_listing(Path(p.path)) as listing:
            yield listing
    else:
        yield _in_memory("synthetic", synthetic(p.seed))


def _in_memory(where: str, ds: Dataset) -> Listing:
    images = {name: split.images for name, split in ds.splits()}
    return Listing(where, ds.classes, {name: split.labels for name, split in ds.splits()},
                   lambda split, idx: images[split][idx])


# Class names are written into plots, the `dvc plots` page (inside a <script> block), Markdown tables and W&B:
# a name that could close a tag, a string or a table cell is refused where the data comes in.
CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.+-]{0,39}")
CLASS_RULE = "letters, digits, space and _ . + -, starting with a letter or digit, at most 40 characters"


def check_class_names(classes: list[str], where: str) -> None:
    for name in classes:
        if not isinstance(name, str):
            raise DataError(f"{where}: class name {str(name)[:60]} is not text ({type(name).__name__})")
        if not CLASS_NAME.fullmatch(name):
            raise DataError(f"{where}: class name {name[:60]!r} is not allowed ({CLASS_RULE})")


def check_listing(ls: Listing) -> None:
    """Allowed class names, at least two classes, every label in range, and every class in both splits."""
    check_class_names(ls.classes, ls.where)
    n = len(ls.classes)
    if len(set(ls.classes)) != n:
        raise DataError(f"{ls.where}: class names repeat ({', '.join(ls.classes)})")
    for split in SPLITS:
        labels = ls.labels[split]
        if len(labels) == 0:
            raise DataError(f"{ls.where}: no {split} images")
        bad = (labels < 0) | (labels >= n)
        if bad.any():
            raise DataError(f"{ls.where}: {split}: label {int(labels[bad][0])} out of range 0..{n - 1}")
    if n < 2:
        raise DataError(f"{ls.where}: only {n} class ({', '.join(ls.classes)}); a classifier needs at least 2")
    absent = {split: [c for i, c in enumerate(ls.classes) if not (ls.labels[split] == i).any()] for split in SPLITS}
    if absent["train"] or absent["test"]:
        sides = [f"only in {have}: {', '.join(absent[lack])}" for have, lack in (("train", "test"), ("test", "train"))
                 if absent[lack]]
        raise DataError(f"{ls.where}: train and test have different classes ({'; '.join(sides)})")


def validate(ds: Dataset) -> None:
    check_class_names(ds.classes, "classes")
    for name, split in ds.splits():
        if split.images.dtype != np.uint8 or split.images.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{name} images: expected uint8 (N, {IMAGE_SIZE}, {IMAGE_SIZE}, {CHANNELS}), "
                            f"got {split.images.dtype} {split.images.shape}")
        if split.labels.ndim != 1 or split.labels.dtype.kind not in "iu":
            raise DataError(f"{name} labels: expected integers (N,), got {split.labels.dtype} {split.labels.shape}")
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
    if count < num_classes:
        raise ParamError(f"{key}: {count} is fewer than the {num_classes} classes (every class needs an image)")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        k = count // num_classes + (c < count % num_classes)
        idx = np.flatnonzero(labels == c)
        if k > len(idx):
            raise ParamError(f"{key}: {count} needs {k} images of class {c}, only {len(idx)} exist")
        chosen.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(chosen))


HELDOUT_NAMES = ("test", "val")  # what heldout_split names the held-out set (metrics/train.json's heldout_split)


def heldout_split(ds: Dataset, p: DataParams) -> tuple[Split, Split, str]:
    """(train, held-out, its name): the test split by default (the seed's protocol), else a validation split."""
    if p.val_size == 0:
        return ds.train, ds.test, HELDOUT_NAMES[0]
    train, val = split_validation(ds.train, p.val_size, len(ds.classes), p.seed)
    return train, val, HELDOUT_NAMES[1]


def split_validation(split: Split, val_size: int, num_classes: int, seed: int) -> tuple[Split, Split]:
    """(train, validation): a class-balanced validation split of `val_size` images held out of `split`."""
    if val_size >= len(split.labels):
        raise ParamError(f"data.val_size: {val_size} must be smaller than the {len(split.labels)} training images")
    val = balanced_indices(split.labels, val_size, num_classes, seed, "data.val_size")
    keep = np.setdiff1d(np.arange(len(split.labels)), val)
    return Split(split.images[keep], split.labels[keep]), Split(split.images[val], split.labels[val])


# --- download: the official python archive ---------------------------------------------------

def from_download(url: str, md5: str, raw_dir: Path) -> Listing:
    """Fetch cifar-10-python.tar.gz, check its md5, and read its pickled batches (no code runs).

    The archive is kept in `raw_dir` only once its md5 matches and its batches are read and
    checked, so a re-run with the same md5 does not download again, and a refused download leaves
    no file behind.
    """
    archive, md5 = raw_dir / ARCHIVE_NAME, md5.lower()
    if archive.exists() and not archive.is_file():  # refused before a download that could not be kept
        raise OutputError(f"{archive} is a {untrusted.kind_of(archive.stat().st_mode)}, not a regular file: the "
                          f"downloaded archive is kept under that name (move it away)")
    if archive.is_file() and untrusted.md5_file(archive) == md5:
        return read_python_archive(archive)
    part = archive.with_name(archive.name + ".part")
    if not part.is_absolute():  # the project's data/raw: a link there would take the download out of the project
        refuse_links(part, folders_only=True)
    with _created_dirs(raw_dir):
        try:
            untrusted.download(url, part)
        except (DataError, OutputError):
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError, timeouts, resets: no archive
            raise DataError(
                f"could not download {url} ({first_line(exc)}). Offline? Set data.url to a local copy "
                f"(file:///path/to/cifar-10-python.tar.gz), or data.source: folder with data.path: "
                f"a directory or .tar.gz holding train/<class>/*.jpg and test/<class>/*.jpg") from None
        try:
            if untrusted.md5_file(part) != md5:
                raise DataError(f"{url}: the downloaded file's md5 is not data.md5={md5} (corrupt or wrong file; deleted)")
            listing = read_python_archive(part, where=url)
            check_listing(listing)
            part.replace(archive)
        finally:
            part.unlink(missing_ok=True)
    return listing


@contextlib.contextmanager
def _created_dirs(path: Path) -> Iterator[None]:
    """Create `path` and its missing parents; remove the ones created here if they end up empty."""
    created = [d for d in (path, *path.parents) if not d.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create the download folder ({exc.strerror or first_line(exc)})") from None
    try:
        yield
    finally:
        for d in created:  # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()


def read_python_archive(archive: Path, where: str = "") -> Listing:
    """The official archive's batches, unpickled without running code and checked for their shape."""
    where = where or str(archive)
    batches: dict[str, object] = {}
    with untrusted.open_tar(archive, "data.url", f"{where}: not a readable tar archive") as tar:
        for m in untrusted.tar_members(tar, where):
            name = PurePosixPath(m.name).name
            if name.startswith(("data_batch_", "test_batch")) or name == "batches.meta":
                if not m.isreg():
                    raise DataError(f"{where}:{m.name} is not a regular file in the archive")
                if name in batches:
                    raise DataError(f"{where} holds {name} twice (two copies of the dataset?)")
                batches[name] = untrusted.unpickle_batch(untrusted.read_member(tar, m, where, untrusted.MAX_INPUT_BYTES),
                                                      f"{where}:{m.name}")
    train_names = sorted(n for n in batches if n.startswith("data_batch_"))
    if "test_batch" not in batches or "batches.meta" not in batches or not train_names:
        raise DataError(f"{where}: missing data_batch_*, test_batch or batches.meta")
    meta = batches["batches.meta"]
    names = meta.get("label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        raise DataError(f"{where}:batches.meta: expected 'label_names', a list of class names")

    def split(batch_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for n in batch_names:
            b = batches[n]
            data = b.get("data") if isinstance(b, dict) else None
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                    or data.shape[1] != np.prod(BATCH_SHAPE):
                raise DataError(f"{where}:{n}: expected 'data', a uint8 array of N x 3072 pixels")
            try:
                y = np.asarray(b.get("labels"))
            except (TypeError, ValueError):
                y = np.zeros(0, dtype=object)
            if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != len(data):
                raise DataError(f"{where}:{n}: expected 'labels', a list of {len(data)} integers")
            images.append(data.reshape(-1, *BATCH_SHAPE).transpose(0, 2, 3, 1))
            labels.append(y.astype(np.int64))
        return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)

    arrays = {"train": split(train_names), "test": split(["test_batch"])}
    return Listing(where, names, {s: labels for s, (_, labels) in arrays.items()},
                   lambda s, idx: arrays[s][0][idx])


# --- folder: train/<class>/*.jpg, test/<class>/*.jpg in a directory or tar archive -------------

def from_folder(path: Path) -> Dataset:
    """Every image of an image folder or tar archive of one."""
    with folder_listing(path) as ls:
        check_listing(ls)
        return Dataset(*(Split(ls.decode(s, np.arange(len(ls.labels[s]))), ls.labels[s]) for s in SPLITS), ls.classes)


@contextlib.contextmanager
def folder_listing(path: Path) -> Iterator[Listing]:
    where = f"data.path: {path}"
    if not path.exists():
        raise DataError(f"data.path: {path.absolute()} does not exist")  # the path checked, where the stage ran
    if path.is_dir():
        files = _directory_images(path)
        yield _layout(files, where, lambda name: untrusted.read_bounded(files[name], untrusted.MAX_IMAGE_FILE_BYTES,
                                                                     "data.path"))
        return
    with untrusted.open_tar(path, "data.path", f"{where} is neither a directory nor a readable tar archive "
                                            f"(.tar, .tar.gz, .tar.bz2, .tar.xz)") as tar:
        yield _tar_layout(tar, where)


def _directory_images(path: Path) -> dict[str, Path]:
    """Image files at <root>/<split>/<class>/<file>, where the root is `path` or a folder directly in it.

    Only those two levels are searched, so `data.path: /` answers at once instead of walking the disk.
    """
    def entries(d: str) -> list[os.DirEntry]:
        try:
            with os.scandir(d) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise DataError(f"data.path: {d}: cannot read ({exc.strerror or first_line(exc)})") from None

    def holds_splits(d: str) -> bool:
        return any(os.path.isdir(os.path.join(d, s)) for s in SPLITS)

    roots = [str(path)] if holds_splits(str(path)) else []
    roots += [e.path for e in entries(str(path)) if e.is_dir() and holds_splits(e.path)]
    files = {}
    for root in roots:
        for split in SPLITS:
            if not os.path.isdir(os.path.join(root, split)):
                continue
            for cls in entries(os.path.join(root, split)):
                if cls.is_dir():
                    for f in entries(cls.path):
                        if f.name.lower().endswith(IMAGE_EXTENSIONS):
                            files[os.path.relpath(f.path, path)] = Path(f.path)
    return files


def _tar_layout(tar: tarfile.TarFile, where: str) -> Listing:
    """The layout of an archive; images stored as hard links are read through their targets."""
    members = untrusted.tar_members(tar, where)
    regular: dict[str, tarfile.TarInfo] = {}
    source: dict[str, tarfile.TarInfo] = {}  # layout name -> the member that holds its bytes
    for m in members:
        name = PurePosixPath(m.name).as_posix()  # ./a/b and a//b are one file once extracted
        if m.isreg():
            regular[name] = m
        if not _in_layout(name) or m.isdir():
            continue
        if name in source:
            raise DataError(f"{where} holds {name} twice (as {source[name].name} and {m.name}): an extract keeps one")
        if m.isreg():
            source[name] = m
        elif m.islnk():
            target = PurePosixPath(m.linkname).as_posix()
            if target not in regular:
                raise DataError(f"{where}:{m.name} is a hard link to {m.linkname}, which the archive does not hold before it")
            source[name] = regular[target]
        else:
            raise DataError(f"{where}:{m.name} is a {'symbolic link' if m.issym() else 'special'} member, not an "
                            f"image file (store the file itself)")
    return _layout(source, where, lambda name: untrusted.read_member(tar, source[name], where,
                                                                  untrusted.MAX_IMAGE_FILE_BYTES),
                   order=lambda name: source[name].offset_data)


def _in_layout(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return len(parts) >= 3 and parts[-3] in SPLITS and name.lower().endswith(IMAGE_EXTENSIONS)


def _layout(files: dict, where: str, read: Callable[[str], bytes], order: Callable[[str], int] | None = None) -> Listing:
    """A listing of `files` (names relative to data.path) laid out as [<root>/]<split>/<class>/<file>.

    One root only: two (a folder holding two copies of the dataset) would merge them with duplicates.
    """
    found: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}
    roots = set()
    for name in files:
        if _in_layout(name):
            parts = PurePosixPath(name).parts
            roots.add("/".join(parts[:-3]))
            found[parts[-3]].setdefault(parts[-2], []).append(name)
    if len(roots) > 1:
        shown = ", ".join(f"{r}/" if r else "./" for r in sorted(roots))
        raise DataError(f"{where} holds the dataset more than once ({shown}): point data.path at one of them")
    for split in SPLITS:
        if not found[split]:
            raise DataError(f"{where} has no {split}/<class>/*.jpg|png images")
    classes = sorted(set(found["train"]) | set(found["test"]))
    names = {s: [(n, c) for c, cls in enumerate(classes) for n in sorted(found[s].get(cls, []))] for s in SPLITS}
    position = order or {n: i for i, n in enumerate(files)}.__getitem__

    def decode(split: str, idx: np.ndarray) -> np.ndarray:
        # Read in archive order (a compressed tar then only ever seeks forward), each stored file once
        # (hard links to one member sort together), then decode them all at once, in parallel.
        order = sorted(range(len(idx)), key=lambda i: position(names[split][idx[i]][0]))
        files: list[tuple[bytes, str]] = []
        which = np.empty(len(idx), dtype=np.int64)  # image i is files[which[i]]
        last = None
        for i in order:
            name = names[split][idx[i]][0]
            if last != position(name):
                last = position(name)
                files.append((read(name), f"{where.removeprefix('data.path: ')}:{name}"))
            which[i] = len(files) - 1
        return untrusted.decode_images(files)[which] if files else np.empty((0, *IMAGE_SHAPE), dtype=np.uint8)

    return Listing(where, classes, {s: np.array([c for _, c in names[s]], dtype=np.int64) for s in SPLITS}, decode)


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
