"""Shared fixtures: tiny synthetic data and helpers to write fake CIFAR-10 sources."""
from __future__ import annotations

import dataclasses
import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cifar_study.pipeline.dataset import Dataset, Split, synthetic
from cifar_study.pipeline.params import Params

ROOT = Path(__file__).resolve().parents[1]
# The real CIFAR-10 JPEG archive for the tests that need it: $CIFAR10_JPG, else the conventional local copy
# in the git-ignored data/raw/; those tests skip, saying where they looked, when it is absent.
REAL_ARCHIVE = Path(os.environ.get("CIFAR10_JPG") or ROOT / "data/raw/cifar10-jpg.tar.gz").expanduser()


def workspace_or_committed(paths: list[str], tmp: Path) -> list[Path]:
    """Project roots holding `paths` to check a shipped-file invariant on: the workspace first, then, where
    the workspace's copies differ from git HEAD (a user's `dvc exp run` rewrote params.yaml, metrics/,
    plots/, dvc.lock), HEAD's copies extracted under `tmp`. A check passes if it holds in one of them:
    a developer's uncommitted, consistent edit passes on the workspace; a user's experiment on HEAD."""
    roots = [ROOT]
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=ROOT, capture_output=True,
                                text=True, timeout=60)
    except OSError:  # no git: a source tree as shipped, nothing to compare with
        return roots
    if status.returncode == 0 and status.stdout.strip():
        def git(*args: str) -> bytes:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=True, timeout=60).stdout

        for name in git("ls-tree", "-r", "-z", "--name-only", "HEAD", "--", *paths).decode().split("\0"):
            if name:
                write_files(tmp, {name: git("show", f"HEAD:{name}")})
        roots.append(tmp)
    return roots


def pytest_configure(config) -> None:
    """Under pytest-xdist, each worker's processes get their share of the cores: PyTorch's default (a thread
    per core in every process) oversubscribes them, and two tiny trainings side by side on two cores took
    2.8x as long as with one thread each (84 s against 30 s)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:  # a user's own setting wins
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // workers))


def default_params() -> dict:
    """Every parameter at its code default: tests never read the workspace's params.yaml, which a user edits."""
    return dataclasses.asdict(Params())


@pytest.fixture(autouse=True)
def no_wandb_settings_from_the_shell(monkeypatch):
    """The suite sets W&B's mode and folder where a test needs them: a user's WANDB_MODE=disabled (or
    WANDB_DIR) in their shell must not change what a test sees."""
    for name in ("WANDB_MODE", "WANDB_DIR", "WANDB_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)


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


# --- a minimal project directory for running stage scripts ------------------------------------

def project(tmp: Path, **changes) -> Path:
    """A minimal project directory (package, stages, params) with a tiny synthetic config."""
    repo = tmp / "proj"
    if not repo.exists():
        shutil.copytree(ROOT / "cifar_study", repo / "cifar_study", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "stages", repo / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    params = default_params()
    base = {"data": {"source": "synthetic", "train_limit": 400, "test_limit": 100},
            "train": {"epochs": 4, "batch_size": 16, "flow_every": 10, "device": "cpu"},
            "wandb": {"mode": "disabled"}}
    for changed in (base, changes):
        for section, values in changed.items():
            params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    return repo


def stage(repo: Path, name: str, env: dict | None = None, **popen) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", f"stages.{name}"], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def run_stage(repo: Path, name: str, env: dict | None = None) -> tuple[int, str, str]:
    proc = stage(repo, name, env)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def snapshot(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for d in ("data", "models", "metrics", "plots") if (repo / d).exists()
            for p in sorted((repo / d).rglob("*")) if p.is_file()}


