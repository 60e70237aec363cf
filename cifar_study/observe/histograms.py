"""Gradient and parameter histograms of every layer, binned as `wandb.watch` bins them.

`wandb.watch` takes them in hooks and attaches them to whatever W&B step is pending, which in this
project's loop (W&B logs on a background thread, at explicit steps) is a different, racy step each
run; its gradient hooks also see fp16-scaled gradients and, under DDP, one rank's gradients before the
all-reduce. Taken here instead, after backward, the all-reduce and the unscale, they show the true
gradients and go to the global batch index they were taken at. Same keys (`gradients/<parameter>`,
`parameters/<parameter>`), same binning: 64 equal bins between the smallest and largest finite value.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

BINS = 64  # wandb.watch's bin count
KINDS = {"all": ("gradients", "parameters"), "gradients": ("gradients",), "parameters": ("parameters",), "none": ()}

Histogram = tuple[list[float], list[float]]  # (counts, bin edges): numpy.histogram's form, as wandb.Histogram takes it


def tensor_histogram(t: torch.Tensor) -> Histogram | None:
    """Counts of the finite values of `t` in BINS equal bins over their range; None if none is finite."""
    flat = t.detach().reshape(-1).float()
    lo, hi = _range(flat)
    if not (math.isfinite(lo) and math.isfinite(hi)):  # a NaN or an infinity: bin the finite values alone
        flat = flat[torch.isfinite(flat)]
        lo, hi = _range(flat)
        if flat.numel() == 0:
            return None
    if lo == hi:  # one value: one bin, as wandb.watch does
        return [float(flat.numel())], [lo, hi]
    return torch.histc(flat, BINS, lo, hi).tolist(), np.linspace(lo, hi, BINS + 1).tolist()


def _range(flat: torch.Tensor) -> tuple[float, float]:
    """(min, max) in one pass; NaN or infinite when such a value is there, or when `flat` is empty."""
    if flat.numel() == 0:
        return math.nan, math.nan
    lo, hi = torch.aminmax(flat)
    return lo.item(), hi.item()


def model_histograms(model: nn.Module, watch: str) -> dict[str, Histogram]:
    """`wandb.watch`'s histograms of `model` now: `watch` is all | gradients | parameters | none.

    Reads, never writes: parameters and gradients are left exactly as they are.
    """
    found = {}
    for name, p in model.named_parameters():
        for kind in KINDS[watch]:
            tensor = p if kind == "parameters" else p.grad
            histogram = tensor_histogram(tensor) if tensor is not None else None
            if histogram is not None:
                found[f"{kind}/{name}"] = histogram
    return found
