"""Gradient flow and weight flow: per-layer mean and max |grad| and |W| during training.

Taken after backward and before the optimizer step, for every parameter that is not a bias
(conv, BatchNorm and linear weights), the way the original study's flow charts show them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

STATS = ("grad_mean", "grad_max", "weight_mean", "weight_max")
COLUMNS = ("step", "epoch", "layer", *STATS)  # flow.csv: one row per layer per snapshot


@dataclass
class FlowSnapshot:
    step: int  # global batch index, from 0
    epoch: int
    layers: list[str]
    values: list[list[float]]  # per layer: the four STATS

    def rows(self) -> list[dict]:
        return [dict(zip(COLUMNS, (self.step, self.epoch, layer, *v))) for layer, v in zip(self.layers, self.values)]

    def stat(self, name: str) -> list[float]:
        i = STATS.index(name)
        return [v[i] for v in self.values]


def flow_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(layer name, weight) for every trainable non-bias parameter, in model order."""
    return [(name.removesuffix(".weight"), p) for name, p in model.named_parameters()
            if p.requires_grad and not name.endswith("bias")]


@torch.no_grad()
def flow_snapshot(params: list[tuple[str, nn.Parameter]], step: int, epoch: int) -> FlowSnapshot:
    # Stack on the device and copy to the host once: one sync per snapshot, not per layer.
    stats = torch.stack([
        torch.stack([p.grad.abs().mean(), p.grad.abs().amax(), p.abs().mean(), p.abs().amax()]).float()
        for _, p in params])
    return FlowSnapshot(step, epoch, [name for name, _ in params], stats.cpu().tolist())


def snapshots_from_rows(rows: list[dict]) -> list[FlowSnapshot]:
    """Rebuild snapshots from flow.csv rows (as written by `FlowSnapshot.rows`)."""
    by_step: dict[int, FlowSnapshot] = {}
    for r in rows:
        snap = by_step.setdefault(int(r["step"]), FlowSnapshot(int(r["step"]), int(r["epoch"]), [], []))
        snap.layers.append(r["layer"])
        snap.values.append([float(r[s]) for s in STATS])
    return [by_step[s] for s in sorted(by_step)]
