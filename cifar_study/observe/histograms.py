"""Gradient and parameter histograms of every layer, binned as `wandb.watch` bins them.

`wandb.watch` takes them in hooks and attaches them to whatever W&B step is pending, which in this
project's loop (W&B logs on a background thread, at explicit steps) is a different, racy step each
run; its gradient hooks also see fp16-scaled gradients and, under DDP, one rank's gradients before the
all-reduce. Taken here instead, after backward, the all-reduce and the unscale, they show the true
gradients and go to the global batch index they were taken at. Same keys (`gradients/<parameter>`,
`parameters/<parameter>`), same binning: 64 equal bins between the smallest and largest finite value.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

BINS = 64  # wandb.watch's bin count
KINDS = {"all": ("gradients", "parameters"), "gradients": ("gradients",), "parameters": ("parameters",), "none": ()}

Histogram = tuple[list[float], list[float]]  # (counts, bin edges): numpy.histogram's form, as wandb.Histogram takes it


@dataclass
class PendingHistograms:
    """Histograms taken at `step`, still on the device: row i is `names[i]`'s BINS counts, then its finite
    minimum, maximum and count. Read with `read_histograms`, at the epoch's end."""
    step: int
    names: list[str]
    rows: torch.Tensor | None  # (len(names), BINS + 3) float64; None when no tensor was taken


@torch.no_grad()
def _device_histogram(t: torch.Tensor) -> torch.Tensor:
    """BINS counts of the finite values of `t` over their range, then (min, max, count), computed without
    reading anything back to the host (torch.histc would: it takes its range as Python numbers)."""
    flat = t.detach().reshape(-1).float()
    finite = torch.isfinite(flat)
    lo = torch.where(finite, flat, torch.inf).amin()
    hi = torch.where(finite, flat, -torch.inf).amax()
    # histc's arithmetic, bin = floor((x - lo) * BINS / (hi - lo)), the maximum in the last (closed) bin
    bins = torch.nan_to_num((flat - lo) * BINS / (hi - lo), nan=0.0, posinf=BINS - 1, neginf=0.0)
    bins = bins.floor().clamp(0, BINS - 1).long()
    counts = torch.zeros(BINS, dtype=torch.float64, device=flat.device).scatter_add_(0, bins, finite.double())
    return torch.cat([counts, torch.stack([lo.double(), hi.double(), finite.sum().double()])])


def take_histograms(model: nn.Module, watch: str, step: int) -> PendingHistograms:
    """`wandb.watch`'s histograms of `model` now (`watch` is all | gradients | parameters | none), kept on the
    device. Reads, never writes: parameters and gradients are left exactly as they are."""
    names, rows = [], []
    for name, p in model.named_parameters():
        for kind in KINDS[watch]:
            tensor = p if kind == "parameters" else p.grad
            if tensor is not None and tensor.numel():
                names.append(f"{kind}/{name}")
                rows.append(_device_histogram(tensor))
    return PendingHistograms(step, names, torch.stack(rows) if rows else None)


def read_histograms(pending: PendingHistograms) -> dict[str, Histogram]:
    """The histograms as (counts, edges), one copy from the device; a tensor with no finite value is left out,
    one with a single value is one bin, as wandb.watch does."""
    if pending.rows is None:
        return {}
    found = {}
    for name, row in zip(pending.names, pending.rows.cpu().tolist()):
        counts, (lo, hi, n) = row[:BINS], row[BINS:]
        if n == 0:
            continue
        found[name] = ([n], [lo, hi]) if lo == hi else (counts, np.linspace(lo, hi, BINS + 1).tolist())
    return found


def model_histograms(model: nn.Module, watch: str) -> dict[str, Histogram]:
    """`take_histograms` read at once."""
    return read_histograms(take_histograms(model, watch, 0))


def tensor_histogram(t: torch.Tensor) -> Histogram | None:
    """One tensor's histogram (None if it has no finite value)."""
    return read_histograms(PendingHistograms(0, ["t"], _device_histogram(t)[None])).get("t") if t.numel() else None
