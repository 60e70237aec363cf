"""Resumable training: the state after every complete epoch, kept outside DVC's outputs.

`dvc repro` deletes nothing here, so a run that was interrupted (Ctrl-C, SIGTERM, a killed
process, a power cut) continues from its last complete epoch when the stage runs again with the
same parameters and data, and ends with the same metrics as a run that was never interrupted.
A state whose fingerprint (params + data + code) differs is ignored, and replaced at the next epoch end.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from cifar_study.core.flow import FlowSnapshot
from cifar_study.core.history import EpochRecord
from cifar_study.core.training import TrainResult, TrainState
from cifar_study.pipeline.checkpoint import model_payload
from cifar_study.pipeline.errors import DataError, first_line
from cifar_study.pipeline.outputs import write_bytes


def _generators(loader: Any) -> list[torch.Generator]:
    """The loader's data-order and augmentation streams: one, or one per replica (ReplicaLoader)."""
    return getattr(loader, "generators", None) or [loader.generator]


def rng_state(state: TrainState, loader: Any) -> dict[str, Any]:
    """Every random stream training draws from: dropout (torch), data order and augmentation (loader)."""
    return {"torch": torch.get_rng_state(), "loader": [g.get_state() for g in _generators(loader)],
            "cuda": torch.cuda.get_rng_state_all() if state.device.type == "cuda" else []}


def set_rng_state(loader: Any, rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    for generator, saved in zip(_generators(loader), rng["loader"], strict=True):
        generator.set_state(saved)
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])


@dataclass
class ResumeStore:
    """The resume state file. Saved after every epoch from a host copy, on a background thread, so that
    serialising and writing 53 MB does not hold up the next epoch; one write is in flight at most."""
    path: Path
    key: str  # fingerprint of what the run depends on
    saved_epoch: int = field(default=0, init=False)  # complete epochs in the state (loaded or last saved)
    _writer: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "resume"), init=False, repr=False)
    _pending: Future | None = field(default=None, init=False, repr=False)

    def restore(self, state: TrainState, loader: Any) -> TrainResult | None:
        """Load a matching saved state into `state` and `loader`; return what it had produced, or None."""
        self.wait()
        saved = self._load()
        if saved is None:
            return None
        try:
            result = TrainResult([EpochRecord.from_row(r) for r in saved["history"]],
                                 [FlowSnapshot(**f) for f in saved["flow"]],
                                 [[EpochRecord.from_row(r) for r in history] for history in saved["replicas"]])
            state.model.load_state_dict(saved["model_state"])
            state.optimizer.load_state_dict(saved["optimizer_state"])
            state.scaler.load_state_dict(saved["scaler_state"])
            set_rng_state(loader, saved["rng"])
            step, epoch = saved["step"], saved["epoch"]
            if type(step) is not int or type(epoch) is not int or not 0 < epoch == len(result.history) <= state.p.epochs:
                raise ValueError(f"step {step!r}, epoch {epoch!r} after {len(result.history)} epochs of history")
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
            # This run's key but not what this code writes: the model may be half loaded, so no starting over here.
            raise DataError(f"{self.path}: not a complete resume state ({type(exc).__name__}: {first_line(exc)}); "
                            f"remove it to start from epoch 1") from None
        state.step, self.saved_epoch = step, epoch
        print(f"resuming: {self.progress(state.p.epochs)}; continuing with epoch {epoch + 1}", flush=True)
        return result

    def saver(self, state: TrainState, loader: Any) -> Callable[[TrainResult], None]:
        """A callback for `train(on_epoch_end=...)` that saves everything needed to continue."""
        def save(result: TrainResult) -> None:
            self.wait()  # the previous epoch's write: its error, if any, stops training here
            payload = _host_copy({
                **model_payload(state.model.state_dict(), result.history),
                "optimizer_state": state.optimizer.state_dict(), "step": state.step, "scaler_state": state.scaler.state_dict(),
                "flow": [dataclasses.asdict(f) for f in result.flow], "rng": rng_state(state, loader),
                "replicas": [[r.row() for r in history] for history in result.replicas], "key": self.key})
            self._pending = self._writer.submit(self._write, payload, len(result.history))
        return save

    def _write(self, payload: dict[str, Any], epochs: int) -> None:
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        write_bytes(self.path, buffer.getbuffer(), now=True)  # at once: it must survive a crash of this run
        self.saved_epoch = epochs

    def wait(self) -> None:
        """Until the write in flight, if any, is done; raises its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def progress(self, epochs: int) -> str:
        """'3 of 30 epochs saved in .train_state/train.pt': what an interrupted run keeps."""
        if self._pending is not None:
            futures.wait([self._pending])  # the count is of epochs on disk; a failed write has not raised it
        return f"{self.saved_epoch} of {epochs} epochs saved in {self.path}"

    def clear(self) -> None:
        """Remove the state once the outputs are in place (a failed last write no longer matters then)."""
        with contextlib.suppress(Exception):
            self.wait()
        self.path.unlink(missing_ok=True)

    def _load(self) -> dict[str, Any] | None:
        """The saved state for this key, or None (no state, another run's state, or an unreadable file)."""
        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a state file is a convenience: a bad one means starting over, loudly
            saved = None  # not PyTorch's message: it suggests weights_only=False, i.e. running code from the file
        if not isinstance(saved, dict):
            print(f"warning: ignoring {self.path}: not a resume state of this project (not tensors and plain "
                  f"data only); starting from epoch 1", flush=True)
            return None
        if saved.get("key") != self.key:
            print(f"note: {self.path} is from other params, data or code; starting from epoch 1", flush=True)
            return None
        return saved


def _host_copy(obj: Any) -> Any:
    """`obj` with every tensor copied to the host: training goes on changing the originals in place."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_copy(v) for v in obj)
    return obj
