"""Taking the flow statistics during training, on the device, without waiting for it.

A snapshot is taken after backward and before the optimizer step; the update ratio |ΔW| / |W| of
that same step is added once the step is taken. Both stay on the device until `read_snapshots`
copies a whole epoch's worth to the host at once: a GPU never waits on the host inside an epoch.
A frozen parameter (requires_grad=False) is watched too: it shows as zero gradient and zero update.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cifar_study.core.flow import FlowSnapshot


@dataclass
class PendingSnapshot:
    step: int
    epoch: int
    layers: list[str]
    stats: torch.Tensor  # (layers, len(STATS)) on the device
    before: list[torch.Tensor]  # the weights before the step, until add_update_ratio has used them


def flow_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(layer name, weight) for every non-bias parameter, in model order."""
    return [(name.removesuffix(".weight"), p) for name, p in model.named_parameters() if not name.endswith("bias")]


@torch.no_grad()
def take_snapshot(params: list[tuple[str, nn.Parameter]], step: int, epoch: int) -> PendingSnapshot:
    """The statistics before the optimizer step, and a copy of the weights for `add_update_ratio` after it."""
    def layer_stats(p: nn.Parameter) -> torch.Tensor:
        grad = p.grad if p.grad is not None else torch.zeros_like(p)  # frozen: no gradient at all
        return torch.stack([grad.abs().mean(), grad.abs().amax(), p.abs().mean(), p.abs().amax(),
                            torch.zeros((), device=p.device)]).float()

    return PendingSnapshot(step, epoch, [name for name, _ in params], torch.stack([layer_stats(p) for _, p in params]),
                           [p.detach().clone() for _, p in params])


@torch.no_grad()
def add_update_ratio(snapshot: PendingSnapshot, params: list[tuple[str, nn.Parameter]]) -> None:
    """|ΔW| / |W| (Frobenius norms) of the optimizer step just taken, per layer (0 for an all-zero weight)."""
    snapshot.stats[:, -1] = torch.stack([
        (p.detach() - w).float().norm() / w.float().norm().clamp_min(torch.finfo(torch.float32).tiny)
        for (_, p), w in zip(params, snapshot.before)])
    snapshot.before = []


def read_snapshots(pending: list[PendingSnapshot]) -> list[FlowSnapshot]:
    """The snapshots as host records, with one device-to-host copy for all of them."""
    if not pending:
        return []
    values = torch.stack([s.stats for s in pending]).cpu().tolist()
    return [FlowSnapshot(s.step, s.epoch, s.layers, v) for s, v in zip(pending, values)]
