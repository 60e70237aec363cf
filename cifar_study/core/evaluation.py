"""Held-out evaluation: one pass of a model over a loader, shared by the training loop and the evaluate stage."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from cifar_study.pipeline.cli import check_stop
from cifar_study.pipeline.errors import ParamError


@dataclass
class Evaluation:
    loss: float
    acc: float
    logits: torch.Tensor  # (N, classes), on the evaluation device
    labels: torch.Tensor  # (N,), on the evaluation device

    def predictions(self) -> torch.Tensor:
        """(N,) predicted class, on the CPU."""
        return self.logits.argmax(1).cpu()

    def confidence(self) -> torch.Tensor:
        """(N,) softmax probability of the predicted class, on the CPU."""
        return self.logits.softmax(1).cpu().max(dim=1).values


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ParamError(f"train.amp: 'fp16' needs a CUDA device (training on {device.type}); use bf16 or none")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def prepare_input(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def evaluate_replicas(model: nn.Module, loader: Iterable, device: torch.device, amp: str = "none",
                      channels_last: bool = False) -> list[Evaluation]:
    """One pass over `loader`: one Evaluation for a model, one per replica for stacked replicas."""
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        check_stop()  # a stop during training's held-out pass (cli.stops_deferred) waits a batch, not the pass
        with autocast(device, amp):
            # A copy even in fp32: a CUDA-graph replay (compile_mode reduce-overhead) overwrites its outputs.
            logits.append(model(prepare_input(x, device, channels_last)).to(torch.float32, copy=True))
        labels.append(y.to(device))
    logits_t, labels_t = torch.cat(logits, dim=-2), torch.cat(labels)  # replicas' logits are (k, N, classes)
    return [_scored(each, labels_t) for each in (logits_t if logits_t.dim() == 3 else [logits_t])]


def evaluate(model: nn.Module, loader: Iterable, device: torch.device, amp: str = "none",
             channels_last: bool = False) -> Evaluation:
    return evaluate_replicas(model, loader, device, amp, channels_last)[0]


def _scored(logits: torch.Tensor, labels: torch.Tensor) -> Evaluation:
    loss = F.cross_entropy(logits, labels).item()
    return Evaluation(loss, (logits.argmax(1) == labels).float().mean().item(), logits, labels)
