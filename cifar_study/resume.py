"""Resumable training: the state after every complete epoch, kept outside DVC's outputs.

`dvc repro` deletes nothing here, so a run that was interrupted (Ctrl-C, SIGTERM, a killed
process, a power cut) continues from its last complete epoch when the stage runs again with the
same parameters and data, and ends with the same metrics as a run that was never interrupted.
A state whose fingerprint (params + data) differs is ignored, and replaced at the next epoch end.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cifar_study.io import write_bytes


def fingerprint(*parts: Any, files: tuple[str | Path, ...] = ()) -> str:
    """A hash of JSON-able `parts` and of the contents of `files`."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass
class ResumeStore:
    path: Path
    key: str  # fingerprint of what the run depends on

    def load(self) -> dict[str, Any] | None:
        """The saved state for this key, or None (no state, another run's state, or an unreadable file)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a state file is a convenience: a bad one means starting over, loudly
            print(f"warning: ignoring unreadable resume state {self.path} ({str(exc).splitlines()[0]})", flush=True)
            return None
        if state.get("key") != self.key:
            print(f"note: {self.path} is from other params or data; starting from epoch 1", flush=True)
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save({**state, "key": self.key}, buffer)
        write_bytes(self.path, buffer.getbuffer(), now=True)  # at once: it must survive a crash of this run

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
