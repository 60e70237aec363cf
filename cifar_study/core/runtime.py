"""Choosing the device, making runs repeatable, and saying where a stage's time went."""
from __future__ import annotations

import json
import platform
import random
import time

import numpy as np
import torch

from cifar_study.pipeline.errors import ParamError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU; an explicit device must exist."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cuda" and not cuda:
        raise ParamError("train.device: 'cuda' asked for, but PyTorch sees no CUDA device here (use auto or cpu)")
    if name == "mps" and not mps:
        raise ParamError("train.device: 'mps' asked for, but Apple MPS is not available here (use auto or cpu)")
    return torch.device(name)


def slow_bf16(device: torch.device) -> bool:
    """Whether bf16 on `device` is emulated: an x86 CPU without AVX512-BF16 or AMX. Measured on a 2-core
    AVX2 CPU: a bf16 step 12x slower than fp32 (notes/2026-11-28-cpu-bf16.md)."""
    if device.type != "cpu" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    native = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return not any(check() for check in native if check is not None)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


class Phases:
    """Wall time of a stage's phases since the last one ended, printed as one line (bench/gpu_check.py
    reads it; the process's start-up is its wall time less these)."""

    def __init__(self, stage: str):
        self.stage, self.last, self.seconds = stage, time.perf_counter(), {}

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.last, 3)
        self.last = now

    def line(self) -> str:
        return f"{self.stage}: phases (s) {json.dumps(self.seconds)}"
