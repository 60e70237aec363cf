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
from cifar_study.core.history import history_of
from cifar_study.core.training import TrainResult, TrainState
from cifar_study.pipeline.checkpoint import model_payload
from cifar_study.pipeline.errors import DataError, first_line
from cifar_study.pipeline.outputs import write_bytes
from cifar_study.pipeline.stage_inputs import check_snapshots


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
            # What this code writes and nothing else: the history, flow and weights become the run's results
            result = TrainResult(history_of(saved["history"]), [FlowSnapshot(**f) for f in saved["flow"]],
                                 [history_of(history) for history in saved["replicas"]])
            check_snapshots(result.flow)
            step, epoch = saved["step"], saved["epoch"]
            if type(step) is not int or type(epoch) is not int or not 0 < epoch == len(result.history) <= state.p.epochs \
                    or step != epoch * len(loader) or (result.flow and not result.flow[-1].step < step):
                raise ValueError(f"step {step!r}, epoch {epoch!r} after {len(result.history)} epochs of history")
            _same_kind("model_state", saved["model_state"], state.model.state_dict())
            _same_optimizer(saved["optimizer_state"], state.optimizer)
            state.model.load_state_dict(saved["model_state"])
            state.optimizer.load_state_dict(saved["optimizer_state"])
            state.scaler.load_state_dict(saved["scaler_state"])
            set_rng_state(loader, saved["rng"])
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


def _same_kind(name: str, saved: Any, current: dict[str, torch.Tensor]) -> None:
    """`saved` holds exactly `current`'s tensors (names, shapes, dtypes), every float finite: load_state_dict
    would cast another dtype silently, and a NaN weight trains on as NaN losses."""
    if not isinstance(saved, dict) or saved.keys() != current.keys():
        raise ValueError(f"{name}: not this model's tensors")
    for key, tensor in saved.items():
        ref = current[key]
        if not isinstance(tensor, torch.Tensor) or tensor.dtype != ref.dtype or tensor.shape != ref.shape:
            raise ValueError(f"{name}: {key} is not a {ref.dtype} tensor of shape {tuple(ref.shape)}")
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise ValueError(f"{name}: {key} holds values that are not finite numbers")


def _same_optimizer(saved: Any, optimizer: torch.optim.Optimizer) -> None:
    """Adam's saved state as this run's optimizer would hold it: the same settings (lr, betas, ...), and per
    parameter its step and moments, finite, of the parameter's shape and dtype."""
    def settings(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in g.items() if k != "params"} for g in groups]

    if not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), list) or \
            settings(saved["param_groups"]) != settings(optimizer.param_groups):
        raise ValueError("optimizer_state: not this run's optimizer settings")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = saved.get("state")
    if not isinstance(state, dict) or set(state) != set(range(len(params))):
        raise ValueError("optimizer_state: not a state for each of this model's parameters")
    for i, param in enumerate(params):
        _same_kind(f"optimizer_state[{i}]", {k: v for k, v in state[i].items() if k != "step"},
                   {"exp_avg": param, "exp_avg_sq": param})
        step = state[i].get("step")
        if not isinstance(step, torch.Tensor) or step.numel() != 1 or not 0 <= float(step) < 2 ** 53:
            raise ValueError(f"optimizer_state[{i}]: step is not a count")


def _host_copy(obj: Any) -> Any:
    """`obj` with every tensor copied to the host: training goes on changing the originals in place."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_copy(v) for v in obj)
    return obj
