"""Seconds per SimpleCNN train step (batch 128) on this CPU: fp32 and bf16 autocast, with and without
channels_last, three steps each, as measured for notes/2026-11-28-cpu-bf16.md.

    python notes/cpu-bf16/step_time.py
"""
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cifar_study.core.model import SimpleCNN  # noqa: E402

print("cpu capability:", torch.backends.cpu.get_cpu_capability(),
      "avx512_bf16:", torch.cpu._is_avx512_bf16_supported(), "amx:", torch.cpu._is_amx_tile_supported())
for channels_last in (False, True):
    for bf16 in (False, True):
        model = SimpleCNN()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters())
        seconds = []
        for _ in range(3):
            x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            seconds.append(round(time.perf_counter() - started, 2))
        print(f"channels_last={channels_last} bf16={bf16}: {seconds} s per step")
