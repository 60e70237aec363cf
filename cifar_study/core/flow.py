"""Gradient flow and weight flow: per-layer mean and max |grad| and |W| during training, and the step's size.

Taken after backward and before the optimizer step, for every parameter that is not a bias
(conv, BatchNorm and linear weights), the way the original study's flow charts show them; the
update ratio |ΔW| / |W| of that same optimizer step is added once the step is taken.
A frozen parameter (requires_grad=False) is watched too: it shows as zero gradient and zero update.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

STATS = ("grad_mean", "grad_max", "weight_mean", "weight_max", "update_ratio")
COLUMNS = ("step", "epoch", "layer", *STATS)  # flow.csv: one row per layer per snapshot


@dataclass
class FlowSnapshot:
    step: int  # global batch index, from 0
    epoch: int
    layers: list[str]
    values: list[list[float]]  # per layer: the STATS

    def rows(self) -> list[dict]:
        return [dict(zip(COLUMNS, (self.step, self.epoch, layer, *v))) for layer, v in zip(self.layers, self.values)]

    def stat(self, name: str) -> list[float]:
        i = STATS.index(name)
        return [v[i] for v in self.values]


def flow_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(layer name, weight) for every non-bias parameter, in model order."""
    return [(name.removesuffix(".weight"), p) for name, p in model.named_parameters() if not name.endswith("bias")]


@torch.no_grad()
def flow_snapshot(params: list[tuple[str, nn.Parameter]], step: int, epoch: int) -> tuple[FlowSnapshot, list[torch.Tensor]]:
    """The statistics before the optimizer step, and a copy of the weights for `add_update_ratio` after it."""
    def layer_stats(p: nn.Parameter) -> torch.Tensor:
        grad = p.grad if p.grad is not None else torch.zeros_like(p)  # frozen: no gradient at all
        return torch.stack([grad.abs().mean(), grad.abs().amax(), p.abs().mean(), p.abs().amax()]).float()

    # Stack on the device and copy to the host once: one sync per snapshot, not per layer.
    stats = torch.stack([layer_stats(p) for _, p in params])
    snapshot = FlowSnapshot(step, epoch, [name for name, _ in params], [row + [0.0] for row in stats.cpu().tolist()])
    return snapshot, [p.detach().clone() for _, p in params]


@torch.no_grad()
def add_update_ratio(snapshot: FlowSnapshot, params: list[tuple[str, nn.Parameter]], before: list[torch.Tensor]) -> None:
    """|ΔW| / |W| (Frobenius norms) of the optimizer step just taken, per layer (0 for an all-zero weight)."""
    ratios = torch.stack([(p.detach() - w).float().norm() / w.float().norm().clamp_min(torch.finfo(torch.float32).tiny)
                          for (_, p), w in zip(params, before)]).cpu().tolist()
    for row, ratio in zip(snapshot.values, ratios):
        row[-1] = ratio


def snapshots_from_rows(rows: list[dict]) -> list[FlowSnapshot]:
    """Rebuild snapshots from flow.csv rows (as written by `FlowSnapshot.rows`)."""
    by_step: dict[int, FlowSnapshot] = {}
    for r in rows:
        snap = by_step.setdefault(int(r["step"]), FlowSnapshot(int(r["step"]), int(r["epoch"]), [], []))
        snap.layers.append(r["layer"])
        snap.values.append([float(r[s]) for s in STATS])
    return [by_step[s] for s in sorted(by_step)]
