"""Gradient flow and weight flow records: per-layer mean and max |grad| and |W|, and the step's size.

Taken during training by `flow_stats` for every parameter that is not a bias (conv, BatchNorm and
linear weights), the way the original study's flow charts show them. This module is the record
alone, without PyTorch, so that the stages that only read flow.csv (findings, visualize) start fast.
"""
from __future__ import annotations

from dataclasses import dataclass

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


def snapshots_from_rows(rows: list[dict]) -> list[FlowSnapshot]:
    """Rebuild snapshots from flow.csv rows (as written by `FlowSnapshot.rows`)."""
    by_step: dict[int, FlowSnapshot] = {}
    for r in rows:
        snap = by_step.setdefault(int(r["step"]), FlowSnapshot(int(r["step"]), int(r["epoch"]), [], []))
        snap.layers.append(r["layer"])
        snap.values.append([float(r[s]) for s in STATS])
    return [by_step[s] for s in sorted(by_step)]
