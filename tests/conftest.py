"""Shared fixtures: tiny synthetic data and helpers to write fake CIFAR-10 sources."""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar_study.data import Dataset, Split, synthetic

ROOT = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


@pytest.fixture(scope="session")
def tiny() -> Dataset:
    """200 training and 50 test images of the synthetic set (balanced over 10 classes)."""
    ds = synthetic(seed=0)
    train_idx = np.concatenate([np.flatnonzero(ds.train.labels == c)[:20] for c in range(10)])
    test_idx = np.concatenate([np.flatnonzero(ds.test.labels == c)[:5] for c in range(10)])
    return Dataset(Split(ds.train.images[train_idx], ds.train.labels[train_idx]),
                   Split(ds.test.images[test_idx], ds.test.labels[test_idx]), ds.classes)


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def image_folder_files(ds: Dataset, fmt: str = "PNG") -> dict[str, bytes]:
    """{'train/<class>/<n>.png': bytes, ...} for every image of `ds` (lossless by default)."""
    ext = fmt.lower()
    return {f"{name}/{ds.classes[label]}/{i:04d}.{ext}": encode(image, fmt)
            for name, split in ds.splits() for i, (image, label) in enumerate(zip(split.images, split.labels))}


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def write_tar(path: Path, files: dict[str, bytes], prefix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def python_archive(ds: Dataset, path: Path) -> Path:
    """A cifar-10-python.tar.gz in the official layout (pickled batches) holding `ds`."""
    def batch(split: Split) -> bytes:
        data = split.images.transpose(0, 3, 1, 2).reshape(len(split.labels), -1)
        return pickle.dumps({"data": data, "labels": split.labels.tolist()})

    half = len(ds.train.labels) // 2
    files = {
        "cifar-10-batches-py/data_batch_1": batch(Split(ds.train.images[:half], ds.train.labels[:half])),
        "cifar-10-batches-py/data_batch_2": batch(Split(ds.train.images[half:], ds.train.labels[half:])),
        "cifar-10-batches-py/test_batch": batch(ds.test),
        "cifar-10-batches-py/batches.meta": pickle.dumps({"label_names": ds.classes}),
    }
    return write_tar(path, files)
