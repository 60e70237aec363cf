"""Data-parallel training with PyTorch's own engine: torch.distributed + DistributedDataParallel.

`torchrun` starts the processes (ranks) and sets RANK, WORLD_SIZE and LOCAL_RANK; the train stage
runs unchanged as a single process when they are absent. NCCL on CUDA, gloo on the CPU.

Rules: `train.batch_size` is the global batch; each of N ranks takes batch_size / N images of every
global batch, so the learning rate needs no rescaling and N ranks see the same batches as one
process. Only rank 0 writes outputs, logs to W&B and shows a progress bar.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cifar_study.errors import ParamError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def launched() -> bool:
    """True inside a process that torchrun started."""
    return "WORLD_SIZE" in os.environ


def init(device: torch.device, batch_size: int) -> tuple[Dist, torch.device]:
    """Join the process group if torchrun started us; returns the rank info and this rank's device."""
    if not launched() or int(os.environ["WORLD_SIZE"]) == 1:
        return Dist(), device
    d = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    if batch_size % d.world:
        raise ParamError(f"train.batch_size: {batch_size} must be divisible by the {d.world} processes "
                         f"(it is the global batch, split evenly across ranks)")
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.active:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def shutdown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()


def launch(nproc: int, module: str) -> int:
    """Re-run `python -m module` as `nproc` ranks on this machine under torchrun; returns its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", module]
    print(f"launching {nproc} processes: {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.Popen(cmd)
    # torchrun forwards SIGTERM/SIGINT to its workers; pass ours on instead of dying first.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: proc.send_signal(signum))
    return proc.wait()
