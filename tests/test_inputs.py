"""Every input of a stage fails cleanly, tested by class (issues 10 and 27; the classes: tests/hostile.py).

Each row of ROWS is a real file or a real server and a real stage process: it must exit with
status 2, print exactly one line (no traceback), and leave every previous output byte-identical.
Rows run `fetch_data` where that stage can show the class (it starts in a fraction of a second);
the stages that load PyTorch are used where only they read the input.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import math
import os
import pickle
import pty
import re
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_study.core.history import EpochRecord
from cifar_study.core.model import SimpleCNN
from cifar_study.pipeline import untrusted
from cifar_study.pipeline.checkpoint import save_checkpoint
from cifar_study.pipeline.dataset import ARCHIVE_NAME, Split, fetch, from_download, from_folder, read_python_archive
from cifar_study.pipeline.errors import OutputError, ParamError
from cifar_study.pipeline.params import DataParams, load_params
from tests.conftest import image_folder_files, project, python_archive, snapshot, write_files, write_tar
from tests.hostile import ESC, every_class_twice

ROW_TIMEOUT_S = 90  # a row that takes longer has hung: the test fails instead of waiting
CAT, DOG = "train/cat/0060.png", "test/dog/0025.png"  # one image of each in the tiny set (names count per split)


class Payload:
    """Unpickling this runs `touch <path>`: the file exists afterwards only if foreign code ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


@dataclass
class Ctx:
    repo: Path  # the project, after a good fetch_data
    tmp: Path  # this row's scratch folder (outside the project)
    tiny: object  # the session's tiny synthetic dataset
    stack: contextlib.ExitStack
    kept: dict = field(default_factory=dict)  # what a setup keeps for its row's `after` check


@dataclass
class Row:
    cls: str
    name: str
    stage: str
    message: str  # a regular expression the one line must match
    setup: Callable[[Ctx], dict] = lambda ctx: {}  # makes the real files; returns params changes
    limits: dict = field(default_factory=dict)  # inputs.* constants set in the stage process
    fsize: int | None = None  # RLIMIT_FSIZE for the stage process (a full disk, for one process)
    unprivileged: bool = False  # as root, drop the capabilities that override file permissions
    max_seconds: float | None = None
    after: Callable[[Ctx], None] = lambda ctx: None  # extra checks

    def __str__(self) -> str:
        return f"{self.cls}-{self.name}"


def run_process(repo: Path, stage: str, env: dict | None = None, limits: dict | None = None,
                fsize: int | None = None, unprivileged: bool = False, umask: int | None = None):
    if limits:
        sets = "; ".join(f"untrusted.{k} = {v!r}" for k, v in limits.items())
        cmd = [sys.executable, "-c", f"import runpy; from cifar_study.pipeline import untrusted; {sets}; "
                                     f"runpy.run_module('stages.{stage}', run_name='__main__')"]
    else:
        cmd = [sys.executable, "-m", f"stages.{stage}"]
    if unprivileged and os.geteuid() == 0:  # root reads anything: take that power away, as for any user
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]

    def limit() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if umask is not None:
            os.umask(umask)

    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **(env or {})}
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=repo, env=full_env, capture_output=True, text=True, timeout=ROW_TIMEOUT_S,
                          preexec_fn=limit)
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started


# --- real files and servers the rows use ----------------------------------------------------------

def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def download_of(archive: Path) -> dict:
    return {"data": {"source": "download", "url": archive.as_uri(), "md5": md5(archive)}}


def official_batches(ds, **replace) -> dict[str, bytes]:
    """The files of cifar-10-python.tar.gz for `ds` (pickled as the official ones), some replaced."""
    def batch(split: Split) -> bytes:
        return pickle.dumps({"batch_label": "batch", "data": split.images.transpose(0, 3, 1, 2).reshape(len(split.labels), -1),
                             "labels": split.labels.tolist(), "filenames": [b"x.png"] * len(split.labels)}, protocol=2)
    files = {"cifar-10-batches-py/data_batch_1": batch(ds.train), "cifar-10-batches-py/test_batch": batch(ds.test),
             "cifar-10-batches-py/batches.meta": pickle.dumps({"label_names": ds.classes, "num_vis": 3072}, protocol=2)}
    return {**files, **{f"cifar-10-batches-py/{k}": v for k, v in replace.items()}}


def folder_of(ctx: Ctx, files: dict[str, bytes], name: str = "imgs") -> Path:
    return write_files(ctx.tmp / name, files)


def folder(path: Path, **data) -> dict:
    return {"data": {"source": "folder", "path": str(path), "train_limit": 0, "test_limit": 0, **data}}


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def png_declaring(width: int, height: int, pixels: bool = True) -> bytes:
    """A PNG of `width` x `height` black pixels, compressed: a small file that decodes to a huge image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    idat = b""
    if pixels:
        z, row = zlib.compressobj(9), b"\0" * (1 + 3 * width)
        idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def serve(ctx: Ctx, respond: Callable[[http.server.BaseHTTPRequestHandler], None]) -> str:
    """A local HTTP server on 127.0.0.1 for this row; `respond` writes the response."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            with contextlib.suppress(OSError):  # the client hung up: what the row expects
                respond(self)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads, server.block_on_close = True, False
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ctx.stack.callback(server.server_close)
    ctx.stack.callback(server.shutdown)
    return f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz"


def stream(handler, length: int | None, chunk: bytes, pause: float = 0.0, seconds: float = 60) -> None:
    handler.send_response(200)
    if length is not None:
        handler.send_header("Content-Length", str(length))
    handler.end_headers()
    end = time.monotonic() + seconds  # the server thread ends even if the client never hangs up
    while time.monotonic() < end:
        handler.wfile.write(chunk)
        time.sleep(pause)


def hard_linked_tar(path: Path, files: dict[str, bytes], link: Callable[[str], str | None]) -> Path:
    """A tar.gz where each name for which `link` gives a target is stored as a hard link to it."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            target = link(name)
            if target:
                info.type, info.linkname = tarfile.LNKTYPE, target
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def damage_header(archive: Path, member_index: int) -> Path:
    """Overwrite the header of the n-th member of an uncompressed tar with garbage."""
    with tarfile.open(archive) as tar:
        offset = tar.getmembers()[member_index].offset
    data = bytearray(archive.read_bytes())
    data[offset:offset + 512] = b"\x7f" * 512
    archive.write_bytes(bytes(data))
    return archive


def tar_of(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def params_text_with(ctx: Ctx, section: str, line: str) -> dict:
    """Add `line` at the top of `section` in params.yaml as text (what a hand edit does)."""
    params = ctx.repo / "params.yaml"
    params.write_text(params.read_text().replace(f"{section}:\n", f"{section}:\n  {line}\n", 1))
    return {}


def params_line(ctx: Ctx, key: str, value: str) -> dict:
    """Set `key`'s line in params.yaml to `value` as text: YAML that yaml.safe_dump would not write."""
    params = ctx.repo / "params.yaml"
    params.write_text(re.sub(rf"^  {key}: .*$", f"  {key}: {value}", params.read_text(), count=1, flags=re.M))
    return {}


def _payload_archive(ctx: Ctx, member: str) -> Path:
    """An archive in the official layout whose `member` runs `touch PWNED` when unpickled."""
    evil = pickle.dumps({"data": Payload(ctx.tmp / "PWNED"), "labels": [], "label_names": []}, protocol=2)
    return write_tar(ctx.tmp / "evil.tar.gz", official_batches(ctx.tiny, **{member: evil}))


def _no_payload_ran(ctx: Ctx) -> None:
    assert not (ctx.tmp / "PWNED").exists(), "foreign code ran"


def _served(ctx: Ctx, archive: Path) -> dict:
    """`archive` from a local HTTP server, its md5 written in upper case."""
    data = archive.read_bytes()

    def respond(h):
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    return {"data": {"source": "download", "url": serve(ctx, respond), "md5": md5(archive).upper()}}


def _duplicate_section(ctx: Ctx) -> dict:
    params = ctx.repo / "params.yaml"
    params.write_text(params.read_text() + "data:\n  seed: 3\n")
    return {}


def no_download_left(ctx: Ctx) -> None:
    assert not (ctx.repo / "data/raw").exists(), list((ctx.repo / "data/raw").rglob("*"))


def visualize_inputs(ctx: Ctx, predictions: str) -> None:
    """What train and evaluate write, small and by hand, for a visualize row."""
    write_files(ctx.repo, {
        "plots/data/history.csv": b"epoch,train_loss,train_acc,heldout_loss,heldout_acc,lr,seconds\n1,2.0,0.2,2.1,0.2,0.001,1.0\n",
        "plots/data/flow.csv": b"step,epoch,layer,grad_mean,grad_max,weight_mean,weight_max,update_ratio\n"
                               b"0,1,fc1,0.1,0.2,0.3,0.4,0.001\n",
        "metrics/train.json": b'{"heldout_split": "test"}\n',
        "reports/findings.json": b'{"flow_health": {"layers": [{"layer": "fc1", "flags": []}]}}\n',
        "reports/replicas.json": b'[{"seed": 42, "test_acc": 0.2, "test_loss": 2.0, "history": [{"epoch": 1, '
                                 b'"train_loss": 2.0, "train_acc": 0.2, "heldout_loss": 2.1, "heldout_acc": 0.2, '
                                 b'"lr": 0.001, "seconds": 1.0}]}]\n',
        "plots/data/predictions.csv": predictions.encode()})


FLOW_HEADER = "step,epoch,layer,grad_mean,grad_max,weight_mean,weight_max,update_ratio\n"


def flow_of(ctx: Ctx, rows: str) -> dict:
    """visualize's inputs with flow.csv holding `rows` (findings reads the same file first)."""
    visualize_inputs(ctx, "index,actual,predicted,confidence\n")
    (ctx.repo / "plots/data/flow.csv").write_text(FLOW_HEADER + rows)
    return {}


def flow_refused(why: str) -> str:
    return rf"^error: plots/data/flow.csv: unreadable or not written by this pipeline \(ValueError: {why}\): run dvc repro train$"


def replaced_by_fifo(ctx: Ctx, path: str) -> dict:
    """A FIFO where an earlier stage's output should be: opening it would wait for a writer forever."""
    visualize_inputs(ctx, "index,actual,predicted,confidence\n")
    (ctx.repo / path).unlink()
    fifo(ctx.repo / path)
    ctx.stack.callback((ctx.repo / path).unlink)
    return {}


def checkpoint(ctx: Ctx, classes: list[str], data_md5: str | None = None, nan_weight: bool = False, **fields) -> dict:
    torch.manual_seed(0)
    model = SimpleCNN(num_classes=len(classes))
    if nan_weight:
        with torch.no_grad():
            model.fc1.bias[3] = float("nan")
    state = dict(model_state=model.state_dict(), model={"name": "simple_cnn", "dropout": 0.5}, train={},
                 classes=classes, mean=[0.5] * 3, std=[0.25] * 3, epoch=1, history=[],
                 **({"data_md5": data_md5} if data_md5 else {}))
    save_checkpoint(ctx.repo / "models/model.pt", **{**state, **fields})
    return {}


def npz_replaced(ctx: Ctx, write: Callable[[Path], None]) -> dict:
    write(ctx.repo / "data/cifar10.npz")
    return {}


def declaring_gigabytes(path: Path) -> None:
    """The npz as fetch_data wrote it, its zip directory declaring 2 GiB for each of its 4 arrays (np.load would
    allocate what a member declares: a few MB of zeros can hold that much)."""
    data = bytearray(path.read_bytes())
    entry = data.find(b"PK\x01\x02")
    for _ in range(4):  # x_train, y_train, x_test, y_test: the uncompressed size is at byte 24 of an entry
        data[entry + 24:entry + 28] = struct.pack("<I", (2 << 30) - 1)
        entry = data.find(b"PK\x01\x02", entry + 4)
    path.write_bytes(bytes(data))


def read_only(ctx: Ctx, path: str) -> dict:
    os.chmod(ctx.repo / path, 0o555)
    ctx.stack.callback(os.chmod, ctx.repo / path, 0o755)
    return {"data": {"seed": 1}}


def unreadable(ctx: Ctx, path: Path) -> Path:
    os.chmod(path, 0)
    ctx.stack.callback(os.chmod, path, 0o755)
    return path


def file_in_place_of(ctx: Ctx, path: str, directory: bool) -> dict:
    target = ctx.repo / path
    saved = ctx.tmp / "saved"
    shutil.move(target, saved)
    target.mkdir() if directory else target.write_text("not a folder")
    ctx.stack.callback(lambda: (shutil.rmtree(target) if target.is_dir() else target.unlink(), shutil.move(saved, target)))
    return {"data": {"seed": 1}}


def linked_folder(ctx: Ctx, path: str) -> dict:
    """The folder `path` moved outside the project, a symbolic link to it in its place (a planted link)."""
    target, outside = ctx.repo / path, ctx.tmp / "outside"
    shutil.move(target, outside)
    target.symlink_to(outside, target_is_directory=True)
    ctx.kept["outside"] = {f.name: f.read_bytes() for f in outside.iterdir()}
    ctx.stack.callback(lambda: (target.unlink(), shutil.move(outside, target)))
    return {"data": {"seed": 1}}


def outside_unchanged(ctx: Ctx) -> None:
    assert {f.name: f.read_bytes() for f in (ctx.tmp / "outside").iterdir()} == ctx.kept["outside"]


def tiny_files(ctx: Ctx, fmt: str = "PNG") -> dict[str, bytes]:
    return image_folder_files(ctx.tiny, fmt)


def image_bytes(fmt: str, frames: int = 1, **save) -> bytes:
    """A 32x32 RGB image file in `fmt`, of `frames` different frames."""
    pictures = [Image.new("RGB", (32, 32), (40 * i, 0, 0)) for i in range(frames)]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format=fmt, save_all=frames > 1, append_images=pictures[1:], **save)
    return buffer.getvalue()


def respelled(files: dict[str, bytes], spell: Callable[[str], str]) -> dict[str, bytes]:
    """`files` and, once more, its first training image under `spell(name)`: the same path once extracted."""
    first = next(name for name in files if name.startswith("train/"))
    return {**files, spell(first): files[first]}


def without(files: dict[str, bytes], *prefixes: str) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if not k.startswith(prefixes)}


ROWS = [
    # --- untrusted archives run no code ---
    Row("breach", "reduce-in-a-batch-with-its-own-md5", "fetch_data",
        r"data_batch_1: not a CIFAR-10 batch \(refused to load (posix|os)\.system: a CIFAR-10 batch holds only",
        lambda c: download_of(_payload_archive(c, "data_batch_1")), after=lambda c: (_no_payload_ran(c), no_download_left(c))),
    Row("breach", "reduce-in-batches-meta-over-http", "fetch_data",
        r"batches.meta: not a CIFAR-10 batch \(refused to load (posix|os)\.system",
        lambda c: _served(c, _payload_archive(c, "batches.meta")), after=lambda c: (_no_payload_ran(c), no_download_left(c))),
    Row("breach", "npz-with-a-pickled-object", "train",
        r"^error: data/cifar10.npz: not canonical data written by fetch_data \(Object arrays cannot be loaded "
        r"when allow_pickle=False\): run dvc repro fetch_data$",
        lambda c: npz_replaced(c, lambda p: np.savez(p, x_train=np.array([Payload(c.tmp / "PWNED")], dtype=object))),
        after=lambda c: _no_payload_ran(c)),

    # --- nothing hangs ---
    Row("hang", "npz-that-unpacks-to-gigabytes", "visualize",
        r"^error: data/cifar10.npz: unpacks to 8,192 MiB, more than the 1,024 MiB of any canonical data: run dvc repro "
        r"fetch_data$", lambda c: npz_replaced(c, declaring_gigabytes)),
    Row("hang", "url-dev-zero", "fetch_data", r"^error: data.url: /dev/zero is a device, not a regular file$",
        lambda c: {"data": {"source": "download", "url": "file:///dev/zero"}}, max_seconds=10, after=no_download_left),
    Row("hang", "url-fifo", "fetch_data", r"data.url: .*/pipe is a FIFO \(named pipe\), not a regular file",
        lambda c: {"data": {"source": "download", "url": fifo(c.tmp / "pipe").as_uri()}}, max_seconds=10,
        after=no_download_left),
    Row("hang", "path-dev-zero", "fetch_data", r"^error: data.path: /dev/zero is a device, not a regular file$",
        lambda c: folder(Path("/dev/zero")), max_seconds=10),
    Row("hang", "path-fifo", "fetch_data", r"data.path: .*/pipe.tar is a FIFO",
        lambda c: folder(fifo(c.tmp / "pipe.tar")), max_seconds=10),
    Row("hang", "findings-flow-csv-fifo", "findings",
        r"^error: plots/data/flow.csv is a FIFO \(named pipe\), not a regular file$",
        lambda c: replaced_by_fifo(c, "plots/data/flow.csv"), max_seconds=30),
    Row("hang", "visualize-train-metrics-fifo", "visualize",
        r"^error: metrics/train.json is a FIFO \(named pipe\), not a regular file$",
        lambda c: replaced_by_fifo(c, "metrics/train.json"), max_seconds=30),
    # flow.csv as train writes it, or refused: text that matplotlib would parse, sizes below 0, ragged steps
    Row("breach", "flow-layer-mathtext", "visualize", flow_refused(r"line 2: layer '\$\\\\foo\{\$' is not a module name"),
        lambda c: flow_of(c, "0,1,$\\foo{$,0.1,0.2,0.3,0.4,0.001\n")),
    Row("breach", "flow-layer-html", "findings", flow_refused(r"line 3: layer '<img src=x>' is not a module name"),
        lambda c: flow_of(c, "0,1,fc1,0.1,0.2,0.3,0.4,0.001\n0,1,<img src=x>,0.1,0.2,0.3,0.4,0.001\n")),
    Row("silent-wrong", "flow-negative-size", "findings", flow_refused(r"line 2: a negative statistic .*"),
        lambda c: flow_of(c, "0,1,fc1,-0.1,0.2,0.3,0.4,0.001\n")),
    Row("silent-wrong", "flow-minus-infinity", "visualize", flow_refused(r"line 2: a negative statistic .*"),
        lambda c: flow_of(c, "0,1,fc1,0.1,-inf,0.3,0.4,0.001\n")),
    Row("traceback", "flow-ragged-layers", "visualize", flow_refused(r"step 5: its epoch goes back, or its layers are not step 0's"),
        lambda c: flow_of(c, "0,1,fc1,0.1,0.2,0.3,0.4,0.001\n5,1,fc2,0.1,0.2,0.3,0.4,0.001\n")),
    Row("silent-wrong", "flow-steps-back", "findings", flow_refused(r"steps are not in order from 0 or more"),
        lambda c: flow_of(c, "5,1,fc1,0.1,0.2,0.3,0.4,0.001\n3,2,fc1,0.1,0.2,0.3,0.4,0.001\n")),
    Row("silent-wrong", "flow-of-another-run-past-the-history", "findings",
        r"^error: plots/data/flow.csv does not belong with plots/data/history.csv \(a snapshot at epoch 900; the "
        r"history has 1\): run dvc repro train$", lambda c: flow_of(c, "0,900,fc1,0.1,0.2,0.3,0.4,0.001\n")),
    Row("silent-wrong", "flow-past-the-history-drawn", "visualize",
        r"^error: plots/data/flow.csv does not belong with plots/data/history.csv \(a snapshot at epoch 2; the "
        r"history has 1\)", lambda c: flow_of(c, "0,1,fc1,0.1,0.2,0.3,0.4,0.001\n7,2,fc1,0.1,0.2,0.3,0.4,0.001\n")),
    Row("silent-wrong", "flow-layer-twice", "visualize", flow_refused(r"step 0: a layer named twice, or an epoch below 1"),
        lambda c: flow_of(c, "0,1,fc1,0.1,0.2,0.3,0.4,0.001\n0,1,fc1,0.1,0.2,0.3,0.4,0.001\n")),
    Row("traceback", "flags-not-a-list-of-text", "visualize",
        r"^error: reports/findings.json: unreadable or not written by this pipeline \(TypeError: a layer's flags are not "
        r"a list of text\)", lambda c: visualize_inputs(c, "index,actual,predicted,confidence\n") or write_files(c.repo, {
            "reports/findings.json": b'{"flow_health": {"layers": [{"layer": "fc1", "flags": "abc"}]}}\n'}) and {}),
    Row("traceback", "held-out-split-not-text", "visualize",
        r"^error: metrics/train.json: unreadable or not written by this pipeline \(ValueError: heldout_split is not one "
        r"of test, val\)", lambda c: visualize_inputs(c, "index,actual,predicted,confidence\n") or write_files(c.repo, {
            "metrics/train.json": b'{"heldout_split": 5}\n'}) and {}),
    Row("breach", "held-out-split-with-a-terminal-escape-drawn-in-titles", "visualize",
        r"^error: metrics/train.json: unreadable or not written by this pipeline \(ValueError: heldout_split is not one "
        r"of test, val\)", lambda c: visualize_inputs(c, "index,actual,predicted,confidence\n") or write_files(c.repo, {
            "metrics/train.json": json.dumps({"heldout_split": "val\u202e" + ESC}).encode()}) and {}),
    Row("traceback", "replicas-nested-past-the-parser", "visualize",
        r"^error: reports/replicas.json: unreadable or not written by this pipeline \(ValueError: nested deeper than any "
        r"file the pipeline writes\)", lambda c: visualize_inputs(c, "index,actual,predicted,confidence\n") or write_files(
            c.repo, {"reports/replicas.json": b"[" * 200_000 + b"]" * 200_000}) and {}),
    Row("silent-wrong", "findings-json-with-nan", "visualize",
        r"^error: reports/findings.json: unreadable or not written by this pipeline \(ValueError: NaN is not a finite",
        lambda c: visualize_inputs(c, "index,actual,predicted,confidence\n") or write_files(c.repo, {
            "reports/findings.json": b'{"flow_health": {"layers": [{"layer": "fc1", "flags": [], "x": NaN}]}}\n'}) and {}),
    Row("traceback", "loss-past-float32", "visualize",
        r"^error: plots/data/history.csv: unreadable or not written by this pipeline \(ValueError: history epoch 1: a "
        r"value that is not a finite number \(or past float32's range\)",
        lambda c: visualize_inputs(c, "index,actual,predicted,confidence\n") or write_files(c.repo, {"plots/data/history.csv": (
            b"epoch,train_loss,train_acc,heldout_loss,heldout_acc,lr,seconds\n1,1.7e308,0.2,2.1,0.2,0.001,1.0\n")}) and {}),
    Row("silent-wrong", "findings-nan-accuracy", "findings",
        r"^error: plots/data/history.csv: unreadable or not written by this pipeline \(ValueError: line 2: "
        r"heldout_acc is nan, not a finite number\): run dvc repro train$",
        lambda c: visualize_inputs(c, "") or write_files(c.repo, {"plots/data/history.csv": (
            b"epoch,train_loss,train_acc,heldout_loss,heldout_acc,lr,seconds\n1,2.0,0.2,2.1,nan,0.001,1.0\n")}) and {}),
    Row("hang", "server-declares-a-terabyte", "fetch_data",
        r"the server declares 953,674 MiB, more than the 1,024 MiB any copy of CIFAR-10 needs",
        lambda c: {"data": {"source": "download", "url": serve(c, lambda h: stream(h, 10**12, b"\0" * 65536, 0.01))}},
        max_seconds=10, after=no_download_left),
    Row("hang", "server-streams-forever", "fetch_data", r"more than 8 MiB and still sending; no copy of CIFAR-10",
        lambda c: {"data": {"source": "download", "url": serve(c, lambda h: stream(h, None, b"\0" * 65536))}},
        limits={"MAX_INPUT_BYTES": 8 << 20}, max_seconds=20, after=no_download_left),
    Row("hang", "server-drips-forever", "fetch_data", r"not complete after 2 s \(0 MiB received\), the time limit",
        lambda c: {"data": {"source": "download", "url": serve(c, lambda h: stream(h, None, b"\0", 0.1))}},
        limits={"DOWNLOAD_TIME_LIMIT_S": 2}, max_seconds=2 + 2 + 8, after=no_download_left),

    # --- numbers as DVC reads them ---
    Row("traceback", "duplicate-key-fetch_data", "fetch_data",
        r'^error: params.yaml: line \d+: found duplicate key "lr" with value "0.001" \(original value: "0.5"\) '
        r"\(DVC refuses duplicate keys too: keep one\)$", lambda c: params_text_with(c, "train", "lr: 0.5")),
    Row("traceback", "keys-of-mixed-types", "fetch_data", r"^error: train\.1: unknown key \(allowed in train: epochs, ",
        lambda c: params_text_with(c, "train", "1: a\n  ~: b\n  2020-01-01: c")),
    Row("silent-wrong", "params-yaml-false-is-not-the-defaults", "fetch_data",
        r"^error: params.yaml: expected a mapping of keys, got False$",
        lambda c: ((c.repo / "params.yaml").write_text("false\n"), {})[1]),
    Row("traceback", "duplicate-section", "fetch_data", r'params.yaml: line \d+: found duplicate key "data"',
        lambda c: _duplicate_section(c)),
    Row("silent-wrong", "lr-nan", "fetch_data", r"^error: train.lr: nan is not a finite number$",
        lambda c: {"train": {"lr": float("nan")}}),
    Row("traceback", "lr-past-what-a-float32-holds", "fetch_data",  # Adam's traceback, after check_params (probe 6)
        r"^error: train.lr: 1e\+300 must be <= 10.0 \(a bound on typos: Adam moves every weight by about lr each step\)$",
        lambda c: {"train": {"lr": 1e300}}),
    Row("silent-wrong", "dropout-inf", "fetch_data", r"^error: model.dropout: inf is not a finite number$",
        lambda c: {"model": {"dropout": float("inf")}}),
    Row("traceback", "seed-negative", "fetch_data",
        r"^error: train.seed: -1 must be >= 0 \(a seed is in 0..4294967295, the range the random-number generators accept\)$",
        lambda c: {"train": {"seed": -1}}),
    Row("traceback", "seed-too-large", "fetch_data", r"^error: data.seed: 4294967296 must be <= 4294967295 \(a seed is in 0..4294967295",
        lambda c: {"data": {"seed": 2**32}}),
    Row("traceback", "date-that-does-not-exist", "fetch_data",
        r"^error: params.yaml: not valid YAML \(day is out of range for month\)$",
        lambda c: params_text_with(c, "train", "started: 2001-02-30")),
    Row("traceback", "int-tag-on-text", "fetch_data",
        r"^error: params.yaml: not valid YAML \(invalid literal for int\(\) with base 10: 'x'\)$",
        lambda c: params_text_with(c, "train", "started: !!int x")),
    Row("traceback", "lr-of-400-digits", "fetch_data", r"^error: train.lr: an integer of 401 digits is not a finite number$",
        lambda c: {"train": {"lr": 10**400}}),
    Row("hang", "epochs-of-400-digits", "fetch_data",
        r"^error: train.epochs: an integer of 401 digits is larger than any count the study uses \(at most 2\*\*53\)$",
        lambda c: {"train": {"epochs": 10**400}}),
    # YAML's hex and octal integers pass Python's 4300-digit limit on str(): the message must not need str()
    Row("traceback", "lr-of-4000-hex-digits", "fetch_data",
        r"^error: model.dropout: an integer of more than 4,000 digits is not a finite number$",
        lambda c: params_line(c, "dropout", "0x" + "f" * 4000)),
    Row("traceback", "a-list-holding-5000-octal-digits", "fetch_data",
        r"^error: train.epochs: expected int \(a number of epochs\), got a list holding an integer of more than 4,000 digits$",
        lambda c: params_line(c, "epochs", "[0o" + "7" * 5000 + "]")),
    Row("hang", "a-thousand-loader-processes", "fetch_data",
        r"^error: train.num_workers: 1000 must be <= 256 \(a bound on typos: more processes than one machine has",
        lambda c: {"train": {"num_workers": 1000}}),
    Row("misleading", "url-with-an-unclosed-ipv6-address", "fetch_data",
        r"^error: data.url: 'http://\[::1' is not a URL \(Invalid IPv6 URL\)$", lambda c: {"data": {"url": "http://[::1"}}),
    Row("traceback", "md5-not-hex", "fetch_data", r"^error: data.md5: 'c58f-not-an-md5' is not an md5 \(32 hexadecimal digits\)$",
        lambda c: {"data": {"md5": "c58f-not-an-md5"}}),
    Row("traceback", "url-scheme", "fetch_data", r"^error: data.url: 'ftp://example.org/c.tar.gz' is not an http://, https:// or file:// URL$",
        lambda c: {"data": {"url": "ftp://example.org/c.tar.gz"}}),

    # --- data that silently shrinks or merges ---
    Row("silent-wrong", "damaged-header-late-in-tar", "fetch_data",
        r"data.path: .*/damaged.tar is corrupt after test/\w+/\d{4}.png \(a damaged header; the members after it cannot be read\)$",
        lambda c: folder(damage_header(tar_of(c.tmp / "damaged.tar", tiny_files(c)), -40))),
    Row("silent-wrong", "second-archive-appended", "fetch_data", r"data.path: .*/two.tar is corrupt after test/truck/0049.png",
        lambda c: folder(_appended_tars(c))),
    Row("silent-wrong", "two-copies-in-a-folder", "fetch_data",
        r"data.path: .*/imgs holds the dataset more than once \(./, copy/\): point data.path at one of them$",
        lambda c: folder(write_files(folder_of(c, tiny_files(c)), {f"copy/{k}": v for k, v in tiny_files(c).items()}))),
    Row("silent-wrong", "two-copies-in-a-tar", "fetch_data", r"holds the dataset more than once \(a/, b/\)",
        lambda c: folder(write_tar(c.tmp / "two.tar.gz", {**{f"a/{k}": v for k, v in tiny_files(c).items()},
                                                          **{f"b/{k}": v for k, v in tiny_files(c).items()}}))),
    Row("silent-wrong", "one-image-under-two-spellings-in-a-tar", "fetch_data",
        r"holds (train/\w+/\d+\.png) twice \(as \1 and \./\1\): an extract keeps one$",
        lambda c: folder(write_tar(c.tmp / "twice.tar.gz", respelled(tiny_files(c), lambda n: "./" + n)))),
    Row("silent-wrong", "one-image-with-a-doubled-slash-in-a-tar", "fetch_data",
        r"holds (train/\w+/\d+\.png) twice \(as \1 and train//",
        lambda c: folder(write_tar(c.tmp / "twice.tar.gz", respelled(tiny_files(c), lambda n: n.replace("/", "//", 1))))),
    Row("silent-wrong", "one-class", "fetch_data", r"only 1 class \(cat\); a classifier needs at least 2",
        lambda c: folder(folder_of(c, {k: v for k, v in tiny_files(c).items() if "/cat/" in k}))),
    Row("silent-wrong", "classes-differ-both-ways", "fetch_data",
        r"train and test have different classes \(only in train: cat; only in test: dog\)$",
        lambda c: folder(folder_of(c, without(tiny_files(c), "test/cat/", "train/dog/")))),
    Row("silent-wrong", "official-test-lacks-a-class", "fetch_data", r"train and test have different classes \(only in train: truck\)",
        lambda c: download_of(write_tar(c.tmp / "c.tar.gz", official_batches(type(c.tiny)(
            c.tiny.train, Split(c.tiny.test.images[c.tiny.test.labels < 9], c.tiny.test.labels[c.tiny.test.labels < 9]),
            c.tiny.classes))))),
    # Class names end up in plots, the `dvc plots` page (inside a <script> block), Markdown and W&B tables:
    # a name that could close a tag or a cell is refused where the data comes in.
    Row("breach", "class-folder-named-like-html", "fetch_data",
        r"class name '<img src=x onerror=alert\(1\)>' is not allowed \(letters, digits, space and _ \. \+ -",
        lambda c: folder(folder_of(c, {k.replace("/cat/", "/<img src=x onerror=alert(1)>/"): v
                                       for k, v in tiny_files(c).items()}))),
    Row("breach", "official-label-closes-a-script", "fetch_data",
        r"class name '</script><script>alert\(1\)</script>' is not allowed",
        lambda c: download_of(write_tar(c.tmp / "c.tar.gz", official_batches(type(c.tiny)(
            c.tiny.train, c.tiny.test, ["</script><script>alert(1)</script>", *c.tiny.classes[1:]]))))),
    Row("silent-wrong", "test-limit-below-class-count", "fetch_data",
        r"^error: data.test_limit: 5 is fewer than the 10 classes \(every class needs an image\)$",
        lambda c: folder(folder_of(c, tiny_files(c)), test_limit=5)),
    Row("silent-wrong", "hard-link-to-nothing", "fetch_data", r"train/cat/0060.png is a hard link to elsewhere.png, which the archive",
        lambda c: folder(hard_linked_tar(c.tmp / "l.tar.gz", tiny_files(c), lambda n: "elsewhere.png" if n == CAT else None))),
    Row("silent-wrong", "symlink-member", "fetch_data", r"train/cat/0060.png is a symbolic link member, not an image file",
        lambda c: folder(_symlink_tar(c))),

    # --- unreadable or hostile images and paths ---
    Row("hang", "decompression-bomb-png", "fetch_data",
        r"train/cat/0060.png: expected a 32x32 RGB image, got 6000x6000 RGB$",
        lambda c: folder(folder_of(c, {**tiny_files(c), CAT: png_declaring(6000, 6000)})), max_seconds=15),
    Row("hang", "png-declaring-10-gigapixels", "fetch_data",
        r"train/cat/0060.png: expected a 32x32 RGB image, refused unread \(Image size \(10000000000 pixels\) exceeds limit",
        lambda c: folder(write_tar(c.tmp / "b.tar.gz", {**tiny_files(c), CAT: png_declaring(100000, 100000, False)})),
        max_seconds=15),
    # the formats and pictures predict takes: one opaque PNG or JPEG picture per file
    Row("silent-wrong", "animated-png-would-be-its-first-frame", "fetch_data",
        r"train/cat/0060.png: 3 frames \(an animated or multi-picture PNG\); give one picture per file$",
        lambda c: folder(folder_of(c, {**tiny_files(c), CAT: image_bytes("PNG", frames=3)}))),
    Row("silent-wrong", "tiff-named-png", "fetch_data", r"train/cat/0060.png: not a PNG or JPEG image$",
        lambda c: folder(write_tar(c.tmp / "t.tar.gz", {**tiny_files(c), CAT: image_bytes("TIFF")}))),
    Row("silent-wrong", "png-with-a-transparent-colour", "fetch_data",
        r"train/cat/0060.png: has a transparent colour; give an opaque RGB image$",
        lambda c: folder(folder_of(c, {**tiny_files(c), CAT: image_bytes("PNG", transparency=(0, 0, 0))}))),
    Row("misleading", "path-is-the-root", "fetch_data", r"^error: data.path: / has no train/<class>/\*.jpg\|png images$",
        lambda c: folder(Path("/")), max_seconds=10),
    Row("misleading", "unreadable-class-folder", "fetch_data", r"data.path: .*/imgs/train/cat: cannot read \(Permission denied\)$",
        lambda c: folder(unreadable(c, folder_of(c, tiny_files(c)) / "train/cat").parents[1]), unprivileged=True),
    Row("misleading", "unreadable-image", "fetch_data", r"data.path: .*/imgs/test/dog/0025.png: cannot read \(Permission denied\)$",
        lambda c: folder(unreadable(c, folder_of(c, tiny_files(c)) / DOG).parents[2]), unprivileged=True),
    Row("hang", "image-is-a-fifo", "fetch_data", r"data.path: .*/imgs/train/cat/0060.png is a FIFO \(named pipe\), not a regular file$",
        lambda c: folder(_fifo_image(c)), max_seconds=10),
    Row("hang", "image-of-two-mib", "fetch_data", r"imgs/train/cat/0060.png is 2 MiB, more than the 1 MiB it may be$",
        lambda c: folder(folder_of(c, {**tiny_files(c), CAT: b"\x89PNG" + bytes(2 << 20)}))),

    # --- outputs that cannot be written leave a consistent set ---
    Row("lost-work", "full-disk-rlimit", "fetch_data",
        r"^error: data/cifar10.npz: cannot write \(File too large\); no output was changed$",
        lambda c: {"data": {"seed": 1}}, fsize=64 << 10),
    Row("lost-work", "read-only-metrics-folder", "fetch_data",
        r"^error: metrics/data.json: cannot write \(Permission denied\); no output was changed$",
        lambda c: read_only(c, "metrics"), unprivileged=True),
    Row("breach", "output-folder-is-a-link-out-of-the-project", "fetch_data",
        r"^error: metrics is a symbolic link: not written through \(replace it with a regular folder\)$",
        lambda c: linked_folder(c, "metrics"), after=outside_unchanged),
    Row("lost-work", "metrics-is-a-file", "fetch_data",
        r"^error: metrics/data.json: cannot create its folder metrics \(File exists\)$",
        lambda c: file_in_place_of(c, "metrics", directory=False)),
    Row("lost-work", "directory-in-the-way", "fetch_data",
        r"^error: metrics/data.json: cannot write \(a directory is in the way\); no output was changed$",
        lambda c: file_in_place_of(c, "metrics/data.json", directory=True)),

    # --- inputs that don't belong together ---
    Row("traceback", "truncated-npz", "train",
        r"^error: data/cifar10.npz: not canonical data written by fetch_data \(.*\): run dvc repro fetch_data$",
        lambda c: npz_replaced(c, lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]))),
    Row("silent-wrong", "checkpoint-of-other-classes", "evaluate",
        r"^error: models/model.pt does not belong with data/cifar10.npz \(trained on classes c0, c1, .*, c9; the data has "
        r"airplane, automobile, .*\): run dvc repro train$", lambda c: checkpoint(c, [f"c{i}" for i in range(10)])),
    Row("silent-wrong", "checkpoint-of-other-data", "evaluate",
        r"^error: models/model.pt does not belong with data/cifar10.npz \(trained on another version of the data\): "
        r"run dvc repro train$", lambda c: checkpoint(c, c.tiny.classes, data_md5="0" * 32)),
    # --- a checkpoint is input too: every field checked before it is used ---
    Row("silent-wrong", "nan-weight", "evaluate",
        r"^error: checkpoint's fc1.bias: holds values that are not finite numbers: run dvc repro train$",
        lambda c: checkpoint(c, c.tiny.classes, nan_weight=True)),
    Row("silent-wrong", "history-epochs-reversed", "evaluate",
        r"^error: checkpoint's history: not a list of epoch records \(history row 1 is epoch 2: epochs run 1, 2, \.\.\. "
        r"in order\): run dvc repro train$",
        lambda c: checkpoint(c, c.tiny.classes, epoch=2, history=[EpochRecord(e, 1.0, 0.5, 1.0, 0.5, 0.001, 1.0).row()
                                                                  for e in (2, 1)])),
    Row("silent-wrong", "zero-std", "evaluate", r"^error: models/model.pt: std: expected 3 finite numbers above 0$",
        lambda c: checkpoint(c, c.tiny.classes, std=[0.25, 0.0, 0.25])),
    Row("traceback", "mean-too-short", "evaluate", r"^error: models/model.pt: mean: expected 3 finite numbers$",
        lambda c: checkpoint(c, c.tiny.classes, mean=[0.5, 0.5])),
    Row("traceback", "classes-not-a-list", "evaluate",
        r"^error: models/model.pt: classes: expected a list of at least 2 class names$",
        lambda c: checkpoint(c, "airplane")),
    Row("breach", "class-name-with-markup", "evaluate",
        r"^error: models/model.pt: classes: class name '</script>' is not allowed \(.*\)$",
        lambda c: checkpoint(c, ["</script>", *c.tiny.classes[1:]])),
    Row("traceback", "weights-not-tensors", "evaluate",
        r"^error: checkpoint's model_state: holds something other than named dense tensors: run dvc repro train$",
        lambda c: checkpoint(c, c.tiny.classes, model_state={"fc1.weight": [1.0]})),
    Row("hang", "checkpoint-is-a-fifo", "evaluate",
        r"^error: checkpoint: models/model.pt is a FIFO \(named pipe\), not a regular file$",
        lambda c: _fifo_checkpoint(c), max_seconds=30),
    Row("traceback", "truncated-predictions", "visualize",
        r"^error: plots/data/predictions.csv: unreadable or not written by this pipeline \(ValueError: line 3 has the "
        r"wrong number of fields\): run dvc repro evaluate$",
        lambda c: visualize_inputs(c, "index,actual,predicted,confidence\n0,airplane,cat,0.5\n1,airpl") or {}),

    # --- other entry points fail the same way ---
    Row("misleading", "nproc-2-bad-val-size", "train",
        r"^error: data.val_size: 400 must be smaller than the 400 training images$",
        lambda c: {"train": {"nproc": 2}, "data": {"val_size": 400}}),
    # Either rank may stop first on a loaded machine: what matters is one line, once.
    Row("misleading", "rank-errors-reported-once", "rank_error", r"^error: train.lr: refused by rank [01] of 2$",
        lambda c: _rank_error_stage(c)),
]


def _fifo_checkpoint(ctx: Ctx) -> dict:
    path = ctx.repo / "models/model.pt"
    path.unlink(missing_ok=True)
    fifo(path)
    ctx.stack.callback(path.unlink)
    return {}


def _symlink_tar(ctx: Ctx) -> Path:
    """An image stored as a symbolic link (to a file outside the archive)."""
    with tarfile.open(ctx.tmp / "sym.tar.gz", "w:gz") as tar:
        for name, data in tiny_files(ctx).items():
            info = tarfile.TarInfo(name)
            if name == CAT:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return ctx.tmp / "sym.tar.gz"


def _appended_tars(ctx: Ctx) -> Path:
    """Two tar archives in one file (cat a.tar b.tar): Python's tarfile alone stops at the first's end."""
    first, second = tar_of(ctx.tmp / "two.tar", tiny_files(ctx)), tar_of(ctx.tmp / "b.tar", {"test/cat/extra.png": b"x"})
    with open(first, "ab") as f:
        f.write(second.read_bytes())
    return first


def _fifo_image(ctx: Ctx) -> Path:
    root = folder_of(ctx, without(tiny_files(ctx), CAT))
    fifo(root / CAT)
    return root


def _rank_error_stage(ctx: Ctx) -> dict:
    """A stage whose every rank stops on a user error, launched by the real launcher: the line comes once.
    It imports no PyTorch in the ranks, so the row takes seconds, not the minute of a real training launch."""
    (ctx.repo / "stages/rank_error.py").write_text(
        "import os, sys\n"
        "from cifar_study.pipeline.stage import run_stage\n"
        "from cifar_study.pipeline.errors import ParamError\n\n"
        "def main():\n"
        "    if 'RANK' in os.environ:\n"
        "        raise ParamError(f\"train.lr: refused by rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}\")\n"
        "    from cifar_study.core import distributed\n"
        "    sys.exit(distributed.launch(2, 'stages.rank_error'))\n\n"
        "run_stage(main)\n")
    ctx.stack.callback((ctx.repo / "stages/rank_error.py").unlink)
    return {}


@pytest.fixture(scope="module")
def fetched(tmp_path_factory) -> Path:
    """A tiny project after a good fetch_data: the previous outputs every row must leave as they are."""
    repo = project(tmp_path_factory.mktemp("inputs"))
    code, _, err, _ = run_process(repo, "fetch_data")
    assert code == 0, err
    return repo


def restore(repo: Path, outputs: dict[str, bytes], params: bytes) -> None:
    """The project as the fixture left it, for the next row."""
    for name, data in snapshot(repo).items():
        if name not in outputs:
            (repo / name).unlink()
    for name, data in outputs.items():
        (repo / name).write_bytes(data)
    (repo / "params.yaml").write_bytes(params)


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(row, fetched, tiny, tmp_path):
    repo = fetched
    with contextlib.ExitStack() as stack:
        stack.callback(restore, repo, snapshot(repo), (repo / "params.yaml").read_bytes())
        ctx = Ctx(repo, tmp_path, tiny, stack)
        changes = row.setup(ctx)
        if changes:
            project(repo.parent, **changes)
        before = snapshot(repo)
        code, out, err, seconds = run_process(repo, row.stage, limits=row.limits, fsize=row.fsize,
                                              unprivileged=row.unprivileged)
        lines = err.strip().splitlines()
        assert code == 2, err
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert "Traceback" not in err
        assert re.search(row.message, lines[0]), lines[0]
        assert snapshot(repo) == before
        assert not list(repo.rglob("*.tmp")) and not list(repo.rglob("*.part"))
        if row.max_seconds:
            assert seconds < row.max_seconds, seconds
        row.after(ctx)


def test_every_class_has_at_least_two_rows():
    every_class_twice(ROWS)


# --- what must work: the same inputs, read right ------------------------------------------------------

def test_official_batch_formats_unpickle_without_running_code(tiny, tmp_path):
    """Protocol 2 (as the official archive, bytes file names), NumPy 1's module names, and protocol 5."""
    batch = {"batch_label": "training batch 1 of 5", "labels": tiny.train.labels.tolist(), "filenames": [b"a.png"] * 200,
             "data": tiny.train.images.transpose(0, 3, 1, 2).reshape(200, -1)}
    for data in (pickle.dumps(batch, protocol=2), pickle.dumps(batch, protocol=2).replace(b"numpy._core", b"numpy.core"),
                 pickle.dumps(batch, protocol=5)):
        loaded = untrusted.unpickle_batch(data, "batch")
        assert loaded["labels"] == batch["labels"] and loaded["filenames"] == batch["filenames"]
        np.testing.assert_array_equal(loaded["data"], batch["data"])
        assert loaded["data"].dtype == np.uint8
    listing = read_python_archive(python_archive(tiny, tmp_path / "c.tar.gz"))
    np.testing.assert_array_equal(listing.decode("train", np.arange(200)), tiny.train.images)


def test_a_download_replaces_a_link_at_its_temporary_name_instead_of_writing_through_it(tiny, tmp_path):
    archive = python_archive(tiny, tmp_path / "c.tar.gz")
    victim, raw = tmp_path / "victim", tmp_path / "raw"
    victim.write_text("precious")
    raw.mkdir()
    (raw / f"{ARCHIVE_NAME}.part").symlink_to(victim)  # a killed run's staging name, planted as a link
    listing = from_download(archive.as_uri(), hashlib.md5(archive.read_bytes()).hexdigest(), raw)
    assert len(listing.labels["train"]) == 200 and victim.read_text() == "precious"
    assert [p.name for p in raw.iterdir()] == [ARCHIVE_NAME] and not (raw / ARCHIVE_NAME).is_symlink()


def test_a_folder_where_the_archive_is_kept_is_refused_before_downloading(tmp_path):
    (tmp_path / ARCHIVE_NAME).mkdir()
    with pytest.raises(OutputError) as info:
        from_download("http://127.0.0.1:9/never-asked", "0" * 32, tmp_path)  # nothing listens on port 9
    assert str(info.value) == (f"{tmp_path / ARCHIVE_NAME} is a directory, not a regular file: the downloaded archive "
                               f"is kept under that name (move it away)")


def test_a_linked_download_folder_is_refused_before_downloading(tmp_path, monkeypatch):
    """data/raw as a link out of the project: the download would be written where the link points."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "project/data").mkdir(parents=True)
    (tmp_path / "project/data/raw").symlink_to(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path / "project")
    with pytest.raises(OutputError) as info:
        from_download("http://127.0.0.1:9/never-asked", "0" * 32, Path("data/raw"))  # nothing listens on port 9
    assert str(info.value) == "data/raw is a symbolic link: not written through (replace it with a regular folder)"
    assert not any((tmp_path / "elsewhere").iterdir())


def test_hard_linked_images_are_read_through_their_targets(tiny, tmp_path):
    """Every training image after the first of its class stored as a hard link to it (a deduplicating tar)."""
    files = image_folder_files(tiny)
    first: dict[str, str] = {}  # folder -> its first image
    for name in files:
        first.setdefault(name.rsplit("/", 1)[0], name)
    source = {name: first[name.rsplit("/", 1)[0]] for name in files}
    same = {name: files[source[name]] for name in files}  # every image of a class: the first one
    ds = from_folder(hard_linked_tar(tmp_path / "linked.tar.gz", same, lambda n: source[n] if n != source[n] else None))
    plain = from_folder(write_tar(tmp_path / "plain.tar.gz", same))
    assert len(ds.train.labels) == 200 and len(ds.test.labels) == 50
    np.testing.assert_array_equal(ds.train.images, plain.train.images)
    np.testing.assert_array_equal(ds.train.labels, plain.train.labels)


def test_md5_in_upper_case_is_the_same_md5(tiny, tmp_path):
    archive = python_archive(tiny, tmp_path / "c.tar.gz")
    ds = fetch(DataParams(source="download", url=archive.as_uri(), md5=md5(archive).upper()), raw_dir=tmp_path / "raw")
    assert len(ds.train.labels) == 200 and (tmp_path / "raw/cifar-10-python.tar.gz").is_file()


YAML_CASES = ["lr: 1e-4", "lr: 1.0E-4", "lr: .5", "lr: 2.", "n: 0x10", "n: 0o17", "n: 017", "n: 1_000", "x: yes",
              "x: on", "x: ~", "x: 1e400", "x: .nan", "x: -.inf", "x: 12:30", "a: 1\na: 2", "x: !!python/object:os.system x",
              "x: &a 1\ny: *a", "x: [unclosed"]


@pytest.mark.parametrize("text", YAML_CASES)
def test_params_yaml_reads_as_dvc_reads_it(text, tmp_path):
    from dvc.utils.serialize import YAMLFileCorruptedError, load_yaml

    path = tmp_path / "params.yaml"
    path.write_text(text + "\n")
    try:
        theirs = load_yaml(str(path))
    except YAMLFileCorruptedError:
        with pytest.raises(ParamError):
            untrusted.load_yaml(path)
        return
    ours = untrusted.load_yaml(path)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert type(ours[key]) is type(theirs[key])
        assert ours[key] == theirs[key] or (math.isnan(ours[key]) and math.isnan(theirs[key]))


def test_outputs_get_the_users_umask(fetched):
    project(fetched.parent, data={"seed": 2})
    try:
        code, _, err, _ = run_process(fetched, "fetch_data", umask=0o027)
    finally:
        project(fetched.parent)
    assert code == 0, err
    assert {oct(os.stat(fetched / p).st_mode & 0o777) for p in ("data/cifar10.npz", "metrics/data.json")} == {"0o640"}


def test_wandb_online_without_a_key_on_a_terminal_trains_a_hand_written_lr(tmp_path):
    """On a pty (where wandb.init would ask for a key and wait), with `lr: 1e-4` typed by hand."""
    repo = project(tmp_path, train={"epochs": 1}, data={"train_limit": 100, "test_limit": 20})
    params = repo / "params.yaml"
    params.write_text(re.sub(r"\n  lr: .*\n", "\n  lr: 1e-4\n", params.read_text()).replace("mode: disabled", "mode: online"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "NETRC"))}
    env.update(HOME=str(tmp_path / "home"), WANDB_DIR=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
               PYTHONUNBUFFERED="1")
    (tmp_path / "home").mkdir()
    assert run_process(repo, "fetch_data")[0] == 0
    main, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=repo, env=env, stdin=terminal, stdout=terminal,
                            stderr=terminal, start_new_session=True)
    os.close(terminal)
    output, deadline = b"", time.monotonic() + ROW_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if select.select([main], [], [], 1)[0]:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # the terminal closed: the stage has exited
                    break
                if not chunk:
                    break
                output += chunk
        else:
            pytest.fail(f"the stage waited: {output.decode(errors='replace')[-2000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        os.close(main)
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text
    assert text.count("warning: W&B") == 1 and "no W&B API key is set; continuing without W&B" in text
    assert "wandb login" in text and "WANDB_API_KEY" in text
    assert load_params(params).train.lr == 1e-4
    assert torch.load(repo / "models/model.pt", weights_only=True)["train"]["lr"] == 1e-4
    assert (repo / "metrics/train.json").is_file()
