"""Gradient-flow health: the original study's reading of its flow charts, as numbers and flags per layer.

From the flow snapshots (mean/max |grad|, mean |W| and the update ratio |ΔW|/|W| of the step at each
snapshot), every layer gets statistics over the run and flags; the run is healthy when no layer is
flagged. Each threshold below is a named constant with the reason for its value.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from cifar_study.core.flow import FlowSnapshot
from cifar_study.pipeline.outputs import finite_or_none

# Vanishing: a layer's mean |grad| more than 4 decades below the output layer's at the same snapshot,
# in more than a quarter of the snapshots. Layers differ by fan-in: in the default run the smallest
# (fc1) sits 2.2 decades below the output layer, so 4 decades leaves room for that and still catches
# gradients that die on their way back; a quarter of the run catches them while Adam, which rescales
# tiny gradients, slowly revives the layer.
VANISHING_RATIO = 1e-4
VANISHING_FRACTION = 0.25
# ...or a typical mean |grad| below Adam's eps (1e-8): there Adam's update itself shrinks toward zero.
VANISHING_ABS = 1e-8
# Exploding: any non-finite gradient, or a spike of mean |grad| more than 3 decades above the layer's
# typical (median) value. The default run's largest is 1.6 decades (fc1's first step).
EXPLODING_SPIKE = 1e3
# Dead: the gradient is exactly zero (all elements) in more than half of the snapshots; a frozen
# layer or a layer behind dead ReLUs.
DEAD_FRACTION = 0.5
# Stalled / unstable: the typical update ratio |ΔW|/|W| of a step. The widely used rule of thumb is
# about 1e-3; two decades either side means the layer barely moves (stalled) or each step rewrites a
# large part of the weights (unstable).
STALLED_UPDATE = 1e-5
UNSTABLE_UPDATE = 1e-1
# Unstable too: weights that run away, their mean |W| growing or shrinking more than 10x over the run.
# Conv weights ahead of BatchNorm grow in healthy training (it makes the output independent of their
# scale): 5.9x at most in the 30 epochs of the default run; train.lr 0.1 grows fc1's 94x in 2 epochs.
RUNAWAY_WEIGHTS = 10.0
FLAGS = ("vanishing", "exploding", "dead", "stalled", "unstable")


@dataclass
class LayerHealth:
    layer: str
    grad_mean_min: float  # range of mean |grad| over the run
    grad_mean_max: float
    grad_mean_median: float
    max_to_mean: float  # median over snapshots of max |grad| / mean |grad|
    zero_fraction: float  # snapshots whose gradient is all zero
    nonfinite_fraction: float  # snapshots with a NaN or infinite gradient statistic
    spike: float  # largest mean |grad| over the median one
    vanishing_fraction: float  # snapshots where mean |grad| is VANISHING_RATIO below the output layer's
    trend_decades: float  # least-squares slope of log10 mean |grad| from the run's start to its end
    update_ratio: float  # median |ΔW| / |W| of the steps at the snapshots after the first (NaN: none)
    weight_mean_change: float | None  # last / first mean |W|; None where the first is 0 (no ratio)
    flags: list[str] = field(default_factory=list)


@dataclass
class FlowHealth:
    layers: list[LayerHealth]
    snapshots: int

    @property
    def flagged(self) -> list[LayerHealth]:
        return [h for h in self.layers if h.flags]

    @property
    def healthy(self) -> bool:
        return not self.flagged

    def metrics(self) -> dict[str, float | int]:
        """The few numbers `dvc metrics diff` compares."""
        return finite_or_none({"flagged_layers": len(self.flagged),
                                "update_ratio": _round(float(np.median([h.update_ratio for h in self.layers])))})

    def detail(self) -> dict:
        return finite_or_none({"healthy": self.healthy, "snapshots": self.snapshots,
                                "thresholds": thresholds(), "layers": [asdict(h) for h in self.layers]})


def thresholds() -> dict[str, float]:
    return {"VANISHING_RATIO": VANISHING_RATIO, "VANISHING_FRACTION": VANISHING_FRACTION,
            "VANISHING_ABS": VANISHING_ABS, "EXPLODING_SPIKE": EXPLODING_SPIKE, "DEAD_FRACTION": DEAD_FRACTION,
            "STALLED_UPDATE": STALLED_UPDATE, "UNSTABLE_UPDATE": UNSTABLE_UPDATE, "RUNAWAY_WEIGHTS": RUNAWAY_WEIGHTS}


def _round(x: float) -> float:
    return float(f"{x:.4g}") if math.isfinite(x) else x


def assess(snapshots: list[FlowSnapshot]) -> FlowHealth:
    """Statistics and flags for every layer over all snapshots of a run."""
    layers = snapshots[0].layers
    stats = {name: np.array([s.stat(name) for s in snapshots], dtype=np.float64)  # (snapshots, layers)
             for name in ("grad_mean", "grad_max", "weight_mean", "update_ratio")}
    finite = np.isfinite(stats["grad_mean"]) & np.isfinite(stats["grad_max"])
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero or non-finite output gradient: not below
        relative = stats["grad_mean"] / stats["grad_mean"][:, -1:]  # each layer against the output layer
    progress = np.linspace(0.0, 1.0, len(snapshots))
    # Adam's first step moves every weight by exactly lr whatever its gradient, so it says nothing
    # about the run's step sizes (for fc1 it is 0.15 of |W|): update ratios count from step 1 on.
    updates = stats["update_ratio"][[s.step > 0 for s in snapshots]]
    result = []
    for i, layer in enumerate(layers):
        ok = finite[:, i]
        mean, peak = stats["grad_mean"][ok, i], stats["grad_max"][ok, i]
        nonzero = mean > 0
        median = _median(mean)
        h = LayerHealth(
            layer=layer,
            grad_mean_min=_round(float(mean.min())) if mean.size else math.nan,
            grad_mean_max=_round(float(mean.max())) if mean.size else math.nan,
            grad_mean_median=_round(median),
            max_to_mean=_round(_median(peak[nonzero] / mean[nonzero])),
            zero_fraction=_round(float((peak == 0).sum() / len(snapshots))),
            nonfinite_fraction=_round(float((~ok).sum() / len(snapshots))),
            spike=_round(float(mean.max() / median)) if median > 0 else math.nan,
            vanishing_fraction=_round(float((relative[:, i] < VANISHING_RATIO).sum() / len(snapshots))),
            trend_decades=_round(_slope(progress[ok][nonzero], np.log10(mean[nonzero]))),
            update_ratio=_round(_median(updates[:, i][np.isfinite(updates[:, i])])),
            weight_mean_change=_round(float(stats["weight_mean"][-1, i] / stats["weight_mean"][0, i]))
            if stats["weight_mean"][0, i] > 0 else None)
        h.flags = _flags(h)
        result.append(h)
    return FlowHealth(result, len(snapshots))


def _flags(h: LayerHealth) -> list[str]:
    flags = []
    if h.zero_fraction <= DEAD_FRACTION and (h.grad_mean_median < VANISHING_ABS or
                                             h.vanishing_fraction > VANISHING_FRACTION):
        flags.append("vanishing")
    if h.nonfinite_fraction > 0 or h.spike > EXPLODING_SPIKE:  # NaN compares False
        flags.append("exploding")
    if h.zero_fraction > DEAD_FRACTION:
        flags.append("dead")
    if h.update_ratio < STALLED_UPDATE:  # NaN (no step after the first) compares False: no flag
        flags.append("stalled")
    runaway = h.weight_mean_change is not None and math.isfinite(h.weight_mean_change) and not 1 / RUNAWAY_WEIGHTS <= h.weight_mean_change <= RUNAWAY_WEIGHTS
    if h.update_ratio > UNSTABLE_UPDATE or runaway:
        flags.append("unstable")
    return flags


def _median(x: np.ndarray) -> float:
    return float(np.median(x)) if x.size else math.nan


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y over x (decades per run for log10 y over run progress)."""
    return float(np.polyfit(x, y, 1)[0]) if x.size >= 2 and np.ptp(x) > 0 else math.nan
