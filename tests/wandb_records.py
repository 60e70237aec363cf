"""Reads an offline W&B run's transaction log (run-<id>.wandb) so tests can check what was logged.

The file is a LevelDB-style log (a 7-byte header, then 32 KiB blocks of records, each with a
7-byte header: crc32, length, type) of protobuf `Record`s; W&B no longer ships a reader for it.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B", f"{path}: not a W&B transaction log"
    out, pos, parts = [], HEADER, []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the rest of a block too small for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        parts.append(chunk)
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            out.append(record)
            parts = []
    return out


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _items(items) -> dict:
    return {_key(i): json.loads(i.value_json) for i in items}


def history(path: Path) -> list[dict]:
    """One dict per logged step: key -> decoded JSON value (images appear as their metadata)."""
    return [_items(r.history.item) for r in records(path) if r.WhichOneof("record_type") == "history"]


def _updates(path: Path, updates_of: dict) -> dict:
    """Merge, in log order, the key/value updates of the record types in `updates_of` (type -> getter)."""
    values: dict = {}
    for r in records(path):
        getter = updates_of.get(r.WhichOneof("record_type"))
        if getter:
            values.update(_items(getter(r)))
    return values


def config(path: Path) -> dict:
    return _updates(path, {"config": lambda r: r.config.update, "run": lambda r: r.run.config.update})


def summary(path: Path) -> dict:
    return _updates(path, {"summary": lambda r: r.summary.update})


def run_info(path: Path) -> dict:
    for r in records(path):
        if r.WhichOneof("record_type") == "run":
            return {"group": r.run.run_group, "job_type": r.run.job_type, "name": r.run.display_name,
                    "project": r.run.project, "run_id": r.run.run_id}
    return {}


def artifacts(path: Path) -> list[dict]:
    """Every artifact the run logged: name, type, description, metadata and its files (path -> base64 md5)."""
    return [{"name": r.artifact.name, "type": r.artifact.type, "description": r.artifact.description,
             "metadata": json.loads(r.artifact.metadata or "{}"),
             "files": {e.path: e.digest for e in r.artifact.manifest.contents}}
            for r in records(path) if r.WhichOneof("record_type") == "artifact"]
