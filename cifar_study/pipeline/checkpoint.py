"""Checkpoints: what a user needs to use the model (weights, class names, normalisation, params, run key).

The optimizer state is training state, not the model: it lives in the resume state only
(pipeline/resume.py), so `models/model.pt` is the size of the weights.

With `train.replicas` > 1 the top-level weights are replica 0's (the study's seed), so everything
that reads one model reads that one; the `replicas` list adds every replica's seed, weights and
history for the evaluate stage.

Loaded with `weights_only=True`, so a checkpoint file can hold tensors and plain data only,
never code. Each set of weights carries its SHA-256 (`weights_sha256`), checked before it is used:
PyTorch loads a file with a changed byte in a tensor without a word (a damaged copy on a remote or a
disk, a hand edit), and its predictions would then be wrong with exit 0.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifar_study.core.cifar10 import CHANNELS
from cifar_study.core.history import EpochRecord, history_of
from cifar_study.core.model import build_model
from cifar_study.core.replicas import Replicas
from cifar_study.pipeline.dataset import check_class_names
from cifar_study.pipeline.errors import CheckpointError, DataError, ParamError, first_line
from cifar_study.pipeline.outputs import write_bytes
from cifar_study.pipeline.params import ModelParams, parse_section
from cifar_study.pipeline.untrusted import finite_number, read_bounded

REQUIRED = ("model_state", "model", "classes", "mean", "std", "epoch")
MAX_CHECKPOINT_BYTES = 4 << 30  # SimpleCNN's weights are 18 MB; 64 replicas of them about 1.2 GB


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_payload(model_state: dict[str, torch.Tensor], history: list[EpochRecord]) -> dict[str, Any]:
    """What a checkpoint and the resume state both hold: weights, epochs done and their history."""
    return {"model_state": model_state, "epoch": len(history), "history": [r.row() for r in history]}


def save_checkpoint(path: str | Path, **state: Any) -> None:
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise ValueError(f"checkpoint is missing {missing}")
    weights = state["model_state"]
    if isinstance(weights, dict) and all(isinstance(t, torch.Tensor) for t in weights.values()):
        state = {**state, "weights_sha256": weights_digest(weights)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(path, buffer.getbuffer())


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint written by this project, its fields checked (a checkpoint is input too: it may come from elsewhere)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found (run the train stage: dvc repro train)")
    data = read_bounded(path, MAX_CHECKPOINT_BYTES, "checkpoint", error=CheckpointError)  # no FIFO, no device
    try:
        with warnings.catch_warnings():  # PyTorch's notes on what the file holds (deprecated dtypes): checked below
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception:  # pickle errors, zip errors, refused globals: all mean "not ours"
        # PyTorch's message suggests weights_only=False, i.e. running the file's code: not advice to pass on.
        raise CheckpointError(f"{path}: not a loadable checkpoint (not a file of tensors and plain data only): "
                              f"run dvc repro train") from None
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint of this project (missing {', '.join(missing)})")
    if not isinstance(state["classes"], list) or len(state["classes"]) < 2:
        raise CheckpointError(f"{path}: classes: expected a list of at least 2 class names")
    try:
        check_class_names(state["classes"], f"{path}: classes")
    except DataError as exc:
        raise CheckpointError(str(exc)) from None
    if len(set(state["classes"])) != len(state["classes"]):
        raise CheckpointError(f"{path}: classes: a class name repeats ({', '.join(state['classes'])})")
    for key in ("mean", "std"):
        values = state[key]
        if not (isinstance(values, (list, tuple)) and len(values) == CHANNELS
                and all(finite_number(v) and (key == "mean" or v > 0) for v in values)):
            raise CheckpointError(f"{path}: {key}: expected {CHANNELS} finite numbers{' above 0' if key == 'std' else ''}")
    if type(state["epoch"]) is not int or not isinstance(state["model_state"], dict):
        raise CheckpointError(f"{path}: epoch or model_state has the wrong type: run dvc repro train")
    return state


def model_from_checkpoint(state: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    try:  # the same validation as params.yaml: a checkpoint is input too
        model_params: ModelParams = parse_section("model", state["model"])
    except ParamError as exc:
        raise CheckpointError(f"checkpoint's model params: {exc}") from None
    model = build_model(model_params, num_classes=len(state["classes"]))
    weights = state["model_state"]
    if not all(isinstance(k, str) and isinstance(t, torch.Tensor) and t.layout == torch.strided for k, t in weights.items()):
        raise CheckpointError("checkpoint's model_state: holds something other than named dense tensors: "
                              "run dvc repro train")
    expected = model.state_dict()
    # load_state_dict casts: complex weights would lose their imaginary part with a warning, not an error
    odd = next((k for k, t in weights.items() if k in expected and (t.is_complex() or t.is_quantized or
                                                                    t.is_floating_point() != expected[k].is_floating_point())), None)
    if odd is not None:
        raise CheckpointError(f"checkpoint's model_state: {odd} is {weights[odd].dtype}, not {expected[odd].dtype}: "
                              "run dvc repro train")
    if state.get("weights_sha256") != weights_digest(weights):
        raise CheckpointError("checkpoint's model_state: not the weights it was saved with (their SHA-256 differs "
                              "from the recorded one, or none was recorded): a damaged or altered file; get it "
                              "again, or run dvc repro train")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        # load_state_dict's first line only says "Error(s) in loading state_dict"; the second says which tensor.
        lines = str(exc).splitlines()
        raise CheckpointError(f"checkpoint does not fit {model_params.name} with {len(state['classes'])} classes: "
                              f"{lines[1].strip() if len(lines) > 1 else first_line(exc)}") from None
    bad = next((name for name, t in model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()), None)
    if bad is not None:  # a model with NaN weights predicts nothing; its scores would be NaN written as results
        raise CheckpointError(f"checkpoint's {bad}: holds values that are not finite numbers: run dvc repro train")
    return model.to(device).eval()


def replica_payload(model: Replicas, seeds: list[int], histories: list[list[EpochRecord]]) -> list[dict[str, Any]]:
    """The checkpoint's `replicas` list: per replica its seed, weights (single-model names) and history."""
    states = [model.replica_state(j) for j in range(len(seeds))]
    return [{"seed": seed, "model_state": state, "weights_sha256": weights_digest(state),
             "history": [r.row() for r in history]}
            for seed, state, history in zip(seeds, states, histories, strict=True)]


def checkpoint_history(raw: Any, where: str) -> list[EpochRecord]:
    """A checkpoint's per-epoch history, checked as every reader of a history checks it (core.history)."""
    try:
        return history_of(raw)
    except (TypeError, KeyError, ValueError, IndexError, OverflowError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint's {where}: not a list of epoch records ({first_line(exc)}): "
                              "run dvc repro train") from None


def trained_replicas(state: dict[str, Any], device: torch.device | str, batched: bool
                     ) -> tuple[list[int], nn.Module, list[list[EpochRecord]]]:
    """Seeds, the model to evaluate (one model, or every replica stacked) and each replica's history."""
    records = state.get("replicas")
    if records is None:  # one run: its seed is a label only, so an older or odd train section is no reason to stop
        train = state.get("train")
        seed = train.get("seed") if isinstance(train, dict) and type(train.get("seed")) is int else None
        return [seed], model_from_checkpoint(state, device), [checkpoint_history(state.get("history"), "history")]
    if not isinstance(records, list) or len(records) < 2 or not all(
            isinstance(r, dict) and type(r.get("seed")) is int and isinstance(r.get("model_state"), dict) for r in records):
        raise CheckpointError("checkpoint's replicas: expected a list of at least 2 {seed, model_state, history} "
                              "records (run dvc repro train)")
    models = [model_from_checkpoint({**state, "model_state": r["model_state"], "weights_sha256": r.get("weights_sha256")},
                                    device) for r in records]
    histories = [checkpoint_history(r.get("history"), f"replica {j} history") for j, r in enumerate(records)]
    if len({tuple(r.epoch for r in h) for h in histories}) != 1 or len({r["seed"] for r in records}) != len(records):
        raise CheckpointError("checkpoint's replicas: their histories cover different epochs or their seeds repeat")
    return [r["seed"] for r in records], Replicas(models, batched).to(device), histories
