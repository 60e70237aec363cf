"""The study's figures, each a function from plain data to a matplotlib Figure."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import matplotlib
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure  # used without pyplot: no GUI backend, no global figure state
from matplotlib.ticker import MaxNLocator

from cifar_study.core.flow import FlowSnapshot
from cifar_study.core.history import EpochRecord
from cifar_study.core.scores import class_accuracy
from cifar_study.pipeline.outputs import atomic_path

# Text from data (class names, a split's name, findings' flags, param values) is drawn as written: with math
# on, a "$...$" in it is typeset, or stops the figure with a parse error. No label here uses math.
matplotlib.rcParams["text.parse_math"] = False

CORRECT, WRONG = "#1a7f37", "#cf222e"
MARK = {True: "\u2713", False: "\u2717"}  # ✓ / ✗: right and wrong are told apart without colour too


def save_figure(fig: Figure, path: str | Path, dpi: int) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def learning_curves(history: list[EpochRecord], heldout_name: str, replicas: list[list[EpochRecord]] = ()) -> Figure:
    """Replica 0's curves (the study's seed); with several replicas, their held-out mean and a ±sd band."""
    epochs = [r.epoch for r in history]
    fig = Figure(figsize=(11, 4.3), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric, title in ((axes[0], "loss", "Cross-entropy loss"), (axes[1], "acc", "Accuracy")):
        scale = 100 if metric == "acc" else 1
        train = [getattr(r, f"train_{metric}") * scale for r in history]
        heldout = [getattr(r, f"heldout_{metric}") * scale for r in history]
        which = ", replica 0" if len(replicas) > 1 else ""  # the study's seed
        ax.plot(epochs, train, "o-", label=f"train (augmented{which})")
        ax.plot(epochs, heldout, "s-", label=f"{heldout_name} (held-out{which})")
        if len(replicas) > 1:
            values = np.array([[getattr(r, f"heldout_{metric}") * scale for r in h] for h in replicas])
            mean, sd = values.mean(0), values.std(0, ddof=1)
            ax.plot(epochs, mean, "--", color="C2", label=f"{heldout_name}, mean of {len(replicas)} seed replicas")
            ax.fill_between(epochs, mean - sd, mean + sd, color="C2", alpha=0.2, label="± 1 sd across replicas")
            heldout = heldout + list(mean + sd)
        # Fixed, meaningful ranges: accuracy 0-100%, loss from 0; whole epochs with half an epoch of margin,
        # so a one-epoch run shows two points on a readable scale, not on a 0.96-1.04 axis.
        top = 100 if metric == "acc" else max(train + heldout) * 1.1
        ax.set(title=f"{title} per epoch", xlabel="epoch", ylabel="accuracy (%)" if metric == "acc" else "loss",
               xlim=(min(epochs) - 0.5, max(epochs) + 0.5), ylim=(0, top))
        if len(epochs) <= 10:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4))  # below the axes: never over a point
    one = " (one epoch: one point per curve)" if len(epochs) == 1 else ""
    fig.suptitle(f"Training curves{one}")
    return fig


def confusion_figure(confusion: np.ndarray, classes: list[str]) -> Figure:
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(image, ax=ax, label="images")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    threshold = confusion.max() / 2
    for i in ticks:
        for j in ticks:
            ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if confusion[i, j] > threshold else "black")
    acc = np.trace(confusion) / max(confusion.sum(), 1)
    ax.set(title=f"Confusion matrix on the test split (accuracy {acc:.2%})", xlabel="predicted class",
           ylabel="actual class")
    return fig


def class_accuracy_figure(accuracy: np.ndarray, classes: list[str]) -> Figure:
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    bars = ax.barh(classes, accuracy * 100, color="#4c72b0")
    ax.bar_label(bars, labels=[f"{a:.1%}" for a in accuracy], padding=3, fontsize=8)
    ax.invert_yaxis()
    # The axis ends at 100%; the labels of the longest bars sit in the margin beyond it.
    ax.set(title="Accuracy per class on the test split", xlabel="accuracy (%)", ylabel="class", xlim=(0, 100))
    ax.grid(axis="x", alpha=0.3)
    return fig


def prediction_grid(images: np.ndarray, actual: list[str], predicted: list[str]) -> Figure:
    cols = min(8, len(images))
    rows = (len(images) + cols - 1) // cols
    # A regular grid needs no layout engine: constrained layout's pass over 32 titled axes made this figure
    # 2.05 s of the visualize stage's 8 (0.94 s with these fixed margins). Each cell: a two-line title, an image.
    width, height = cols * 1.6, rows * 1.9 + 0.45
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(rows, cols, squeeze=False, gridspec_kw={
        "left": 0.05 / width, "right": 1 - 0.05 / width, "bottom": 0.1 / height, "top": 1 - 0.75 / height,
        "wspace": 0.1, "hspace": 0.32})
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, a, p in zip(axes.flat, images, actual, predicted):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(f"{MARK[a == p]} pred: {p}\ntrue: {a}", fontsize=8, color=CORRECT if a == p else WRONG)
    right = sum(a == p for a, p in zip(actual, predicted))
    fig.suptitle(f"Sample test predictions: {right}/{len(actual)} correct "
                 f"({MARK[True]} green correct, {MARK[False]} red wrong)")
    return fig


def _loggable(values: np.ndarray) -> np.ndarray:
    """`values` with what a log scale cannot show (0, and a gradient that was NaN or infinite) left blank."""
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def _log_norm(values: np.ndarray) -> LogNorm | None:
    shown = values[np.isfinite(values)]
    return LogNorm(vmin=shown.min(), vmax=shown.max()) if shown.size else None


def flow_bars(snapshots: list[FlowSnapshot], quantity: str) -> Figure:
    """Mean and max |grad| or |W| per layer, at the first, middle and last snapshot (log scale)."""
    label = {"grad": "|gradient|", "weight": "|weight|"}[quantity]
    picks = sorted({0, len(snapshots) // 2, len(snapshots) - 1})
    layers = snapshots[0].layers
    x = np.arange(len(layers))
    width = 0.8 / len(picks)
    fig = Figure(figsize=(13, 5), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, stat in zip(axes, ("mean", "max")):
        for k, i in enumerate(picks):
            snap = snapshots[i]
            ax.bar(x + (k - (len(picks) - 1) / 2) * width, _loggable(np.array(snap.stat(f"{quantity}_{stat}"))), width,
                   label=f"step {snap.step} (epoch {snap.epoch})")
        ax.set_yscale("log")
        ax.set_xticks(x, layers, rotation=45, ha="right")
        ax.set(title=f"{stat.capitalize()} {label} per layer", xlabel="layer (non-bias parameters)",
               ylabel=f"{stat} {label} (log scale)")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(picks), title="snapshot")  # covers no bar
    fig.suptitle(f"{'Gradient' if quantity == 'grad' else 'Weight'} flow")
    return fig


def flow_heatmap(snapshots: list[FlowSnapshot]) -> Figure:
    """Mean |gradient| of every layer at every snapshot: the whole run in one picture."""
    values = _loggable(np.array([snap.stat("grad_mean") for snap in snapshots]).T)  # (layers, steps)
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(values, aspect="auto", cmap="viridis", norm=_log_norm(values), interpolation="nearest")
    fig.colorbar(image, ax=ax, label="mean |gradient| (log scale)")
    steps = [snap.step for snap in snapshots]
    tick_idx = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 10)).round().astype(int))
    ax.set_xticks(tick_idx, [str(steps[i]) for i in tick_idx])
    ax.set_yticks(np.arange(len(snapshots[0].layers)), snapshots[0].layers)
    title = "Gradient flow over the whole run" if len(snapshots) > 1 else \
        f"Gradient flow: a single snapshot (step {steps[0]}), so a single column"
    ax.set(title=title, xlabel="training step (batch)", ylabel="layer")
    return fig


def flow_health_figure(snapshots: list[FlowSnapshot], flags: dict[str, list[str]]) -> Figure:
    """The whole run's gradient picture with flagged layers marked, and each layer's update ratio over the run."""
    layers, steps = snapshots[0].layers, [snap.step for snap in snapshots]
    fig = Figure(figsize=(14, 4.8), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(1.1, 1))
    values = _loggable(np.array([snap.stat("grad_mean") for snap in snapshots]).T)
    image = left.imshow(values, aspect="auto", cmap="viridis", norm=_log_norm(values), interpolation="nearest")
    fig.colorbar(image, ax=left, label="mean |gradient| (log scale)")
    left.set_yticks(np.arange(len(layers)), [f"{name}  ⚠ {', '.join(flags[name])}" if flags.get(name) else name
                                             for name in layers])
    for tick, name in zip(left.get_yticklabels(), layers):
        if flags.get(name):
            tick.set_color(WRONG)
    tick_idx = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 8)).round().astype(int))
    left.set_xticks(tick_idx, [str(steps[i]) for i in tick_idx])
    verdict = f"{sum(bool(f) for f in flags.values())} layer(s) flagged" if any(flags.values()) else "no layer flagged"
    left.set(title=f"Gradient flow over the run: {verdict}", xlabel="training step (batch)", ylabel="layer")
    ratios = np.array([snap.stat("update_ratio") for snap in snapshots]).T
    for name, row in zip(layers, ratios):
        right.plot(steps, _loggable(row), marker="." if len(steps) < 30 else None,
                   linestyle="--" if flags.get(name) else "-", label=name + (" ⚠" if flags.get(name) else ""))
    right.axhline(1e-3, color="black", linewidth=1, linestyle=":", label="rule of thumb 1e-3")
    right.set_yscale("log")
    right.set(title="Update ratio |ΔW| / |W| per layer", xlabel="training step (batch)",
              ylabel="|ΔW| / |W| of the step (log scale)")
    right.grid(alpha=0.3)
    right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("Gradient-flow health")
    return fig


@dataclass
class StudyData:
    """Everything the study's figures are drawn from (the visualize stage reads it from the pipeline's files)."""
    history: list[EpochRecord]
    heldout_name: str
    flow: list[FlowSnapshot]
    classes: list[str]
    confusion: np.ndarray  # (classes, classes) counts on the test split
    sample_images: np.ndarray  # (N, 32, 32, 3) uint8 test images for the prediction grid
    sample_actual: list[str]
    sample_predicted: list[str]
    flow_flags: dict[str, list[str]]  # layer -> flow-health flags (reports/findings.json)
    replicas: list[list[EpochRecord]] = field(default_factory=list)  # each seed replica's history (reports/replicas.json)


# The study's figures in reading order: plots/figures/<name>.png. reports/RESULTS.md and the tests read the names here.
_DRAW: dict[str, Callable[[StudyData], Figure]] = {
    "learning_curves": lambda d: learning_curves(d.history, d.heldout_name, d.replicas),
    "confusion_matrix": lambda d: confusion_figure(d.confusion, d.classes),
    "class_accuracy": lambda d: class_accuracy_figure(class_accuracy(d.confusion), d.classes),
    "sample_predictions": lambda d: prediction_grid(d.sample_images, d.sample_actual, d.sample_predicted),
    "gradient_flow": lambda d: flow_bars(d.flow, "grad"),
    "weight_flow": lambda d: flow_bars(d.flow, "weight"),
    "gradient_flow_heatmap": lambda d: flow_heatmap(d.flow),
    "flow_health": lambda d: flow_health_figure(d.flow, d.flow_flags),
}
FIGURES = tuple(_DRAW)


def study_figures(data: StudyData) -> dict[str, Figure]:
    """Every figure of the study, by name."""
    return {name: draw(data) for name, draw in _DRAW.items()}
