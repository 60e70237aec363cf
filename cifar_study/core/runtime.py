"""Choosing the device and making runs repeatable."""
from __future__ import annotations

import random

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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
