"""Data-parallel training with PyTorch's own engine: torch.distributed + DistributedDataParallel.

`torchrun` starts the processes (ranks) and sets RANK, WORLD_SIZE and LOCAL_RANK; the train stage
runs unchanged as a single process when they are absent. NCCL on CUDA, gloo on the CPU.

Rules: `train.batch_size` is the global batch; each of N ranks takes batch_size / N images of every
global batch, so the learning rate needs no rescaling and N ranks see the same batches as one
process. Only rank 0 writes outputs, logs to W&B and shows a progress bar.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from cifar_study import RANK_ERRORS_ENV
from cifar_study.pipeline.cli import hangup_ignored
from cifar_study.pipeline.errors import ParamError, UserError


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
    """Re-run `python -m module` as `nproc` ranks on this machine (torchrun's engine, in this process).

    Returns 0 when every rank succeeded. A rank that stops on a user error leaves its line for
    this process, which raises it once (exit 2 from the stage), instead of N copies of the line and
    torchrun's report of a failed child.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # torchrun's own log lines (thread settings, "failed (exitcode: 2)") would bury the one line that matters.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.run", "torch.distributed.elastic", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    # torchrun handles (and forwards) SIGHUP too, unless this process ignores it: under nohup the ranks must outlive
    # a closed terminal, as one process does
    stops = "SIGTERM,SIGINT,SIGQUIT" + ("" if hangup_ignored() else ",SIGHUP")
    args = ["--standalone", f"--nproc-per-node={nproc}", f"--signals-to-handle={stops}", "-m", module]
    print(f"launching {nproc} processes: torch.distributed.run {' '.join(args)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="rank-errors-") as errors:
        os.environ[RANK_ERRORS_ENV] = errors  # the ranks inherit it
        try:
            run(get_args_parser().parse_args(args))
        except ChildFailedError as exc:
            reports = sorted(Path(errors).iterdir())
            if reports:
                raise UserError(reports[0].read_text()) from None
            rank, failure = min(exc.failures.items())
            print(f"error: training process {rank} of {nproc} failed with exit code {failure.exitcode} "
                  f"(its output above says why)", file=sys.stderr)
            return failure.exitcode if failure.exitcode > 0 else 1
        except SignalException:  # Ctrl-C or SIGTERM: the ranks were stopped and saved their state
            raise KeyboardInterrupt from None
        finally:
            del os.environ[RANK_ERRORS_ENV]
    return 0
