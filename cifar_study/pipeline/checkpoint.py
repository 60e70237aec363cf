"""Checkpoints: weights, optimizer, epoch, params and class names in one file.

With `train.replicas` > 1 the top-level weights are replica 0's (the study's seed), so everything
that reads one model reads that one; the `replicas` list adds every replica's seed, weights and
history for the evaluate stage.

Loaded with `weights_only=True`, so a checkpoint file can hold tensors and plain data only,
never code.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifar_study.core.history import EpochRecord
from cifar_study.core.model import build_model
from cifar_study.core.replicas import Replicas
from cifar_study.pipeline.errors import CheckpointError, ParamError, first_line
from cifar_study.pipeline.outputs import write_bytes
from cifar_study.pipeline.params import ModelParams, parse_section

REQUIRED = ("model_state", "model", "classes", "mean", "std", "epoch")


def training_payload(model: nn.Module, optimizer: torch.optim.Optimizer, history: list[EpochRecord]) -> dict[str, Any]:
    """What a checkpoint and the resume state both hold: weights, optimizer state, epochs done and their history."""
    return {"model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(), "epoch": len(history),
            "history": [r.row() for r in history]}


def save_checkpoint(path: str | Path, **state: Any) -> None:
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise ValueError(f"checkpoint is missing {missing}")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(path, buffer.getbuffer())


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found (run the train stage: dvc repro train)")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, refused globals: all mean "not ours"
        raise CheckpointError(f"{path}: not a loadable checkpoint ({first_line(exc)}): run dvc repro train") from None
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint of this project (missing {', '.join(missing)})")
    return state


def model_from_checkpoint(state: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    try:  # the same validation as params.yaml: a checkpoint is input too
        model_params: ModelParams = parse_section("model", state["model"])
    except ParamError as exc:
        raise CheckpointError(f"checkpoint's model params: {exc}") from None
    model = build_model(model_params, num_classes=len(state["classes"]))
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as exc:
        # load_state_dict's first line only says "Error(s) in loading state_dict"; the second says which tensor.
        lines = str(exc).splitlines()
        raise CheckpointError(f"checkpoint does not fit {model_params.name} with {len(state['classes'])} classes: "
                              f"{lines[1].strip() if len(lines) > 1 else first_line(exc)}") from None
    return model.to(device).eval()


def replica_payload(model: Replicas, seeds: list[int], histories: list[list[EpochRecord]]) -> list[dict[str, Any]]:
    """The checkpoint's `replicas` list: per replica its seed, weights (single-model names) and history."""
    return [{"seed": seed, "model_state": model.replica_state(j), "history": [r.row() for r in history]}
            for j, (seed, history) in enumerate(zip(seeds, histories, strict=True))]


def history_of(raw: Any, where: str) -> list[EpochRecord]:
    """A checkpoint's per-epoch history, checked: a list of EpochRecord rows with finite numbers."""
    try:
        records = [EpochRecord.from_row(r) for r in raw]
    except (TypeError, KeyError, ValueError, IndexError, OverflowError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint's {where}: not a list of epoch records ({first_line(exc)})") from None
    if not all(math.isfinite(v) for r in records for v in r.row().values()):
        raise CheckpointError(f"checkpoint's {where}: holds a value that is not a finite number")
    return records


def trained_replicas(state: dict[str, Any], device: torch.device | str, batched: bool
                     ) -> tuple[list[int], nn.Module, list[list[EpochRecord]]]:
    """Seeds, the model to evaluate (one model, or every replica stacked) and each replica's history."""
    records = state.get("replicas")
    if records is None:  # one run: its seed is a label only, so an older or odd train section is no reason to stop
        train = state.get("train")
        seed = train.get("seed") if isinstance(train, dict) and type(train.get("seed")) is int else None
        return [seed], model_from_checkpoint(state, device), [history_of(state.get("history"), "history")]
    if not isinstance(records, list) or len(records) < 2 or not all(
            isinstance(r, dict) and type(r.get("seed")) is int and isinstance(r.get("model_state"), dict) for r in records):
        raise CheckpointError("checkpoint's replicas: expected a list of at least 2 {seed, model_state, history} "
                              "records (run dvc repro train)")
    models = [model_from_checkpoint({**state, "model_state": r["model_state"]}, device) for r in records]
    histories = [history_of(r.get("history"), f"replica {j} history") for j, r in enumerate(records)]
    if len({tuple(r.epoch for r in h) for h in histories}) != 1 or len({r["seed"] for r in records}) != len(records):
        raise CheckpointError("checkpoint's replicas: their histories cover different epochs or their seeds repeat")
    return [r["seed"] for r in records], Replicas(models, batched).to(device), histories
