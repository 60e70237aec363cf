"""Checkpoints: weights, optimizer, epoch, params and class names in one file.

Loaded with `weights_only=True`, so a checkpoint file can hold tensors and plain data only,
never code.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifar_study.errors import CheckpointError
from cifar_study.io import write_bytes
from cifar_study.model import MODELS, build_model
from cifar_study.params import ModelParams

REQUIRED = ("model_state", "model", "classes", "mean", "std", "epoch")


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
        raise CheckpointError(f"{path}: not a loadable checkpoint ({str(exc).splitlines()[0]}): "
                              f"run dvc repro train") from None
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint of this project (missing {', '.join(missing)})")
    return state


def model_from_checkpoint(state: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    model_params = ModelParams(**state["model"])
    if model_params.name not in MODELS:
        raise CheckpointError(f"checkpoint holds unknown model {model_params.name!r}")
    model = build_model(model_params, num_classes=len(state["classes"]))
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint does not fit {model_params.name} with {len(state['classes'])} classes: "
                              f"{str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}") from None
    return model.to(device).eval()
