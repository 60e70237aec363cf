"""Data-parallel training with PyTorch's own engine: torch.distributed + DistributedDataParallel.

`torchrun` starts the processes (ranks) and sets RANK, WORLD_SIZE and LOCAL_RANK; the train stage
runs unchanged as a single process when they are absent. NCCL on CUDA, gloo on the CPU.

Rules: `train.batch_size` is the global batch; each of N ranks takes batch_size / N images of every
global batch, so the learning rate needs no rescaling and N ranks see the same batches as one
process. Only rank 0 writes outputs, logs to W&B and shows a progress bar.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from cifar_study import RANK_ERRORS_ENV
from cifar_study.pipeline.cli import hangup_ignored, printable, whole_number
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
    """True inside a process that a launcher started (torchrun's variables are checked by `init`)."""
    return "WORLD_SIZE" in os.environ


def _whole(name: str, low: int, high: int) -> int:
    value = os.environ.get(name)
    if value is None:
        raise UserError(f"environment: {name} is not set (torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR "
                        f"and MASTER_PORT for every process it starts)")
    try:
        number = whole_number(value)  # the command line's rule for counts: digits 0-9, never thousands of them
    except argparse.ArgumentTypeError:
        number = None
    if number is None or not low <= number <= high:
        raise UserError(f"environment: {name}={printable(value[:80])} is not a whole number from {low} to {high}")
    return number


def _torchrun_rank() -> Dist:
    """This process's rank, as torchrun set it. Variables left in a shell, or half of them, would otherwise train one
    process where several were asked for, or wait without end (and deaf to Ctrl-C) for ranks that never start."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        raise UserError(f"environment: WORLD_SIZE={printable(os.environ['WORLD_SIZE'][:80])} is set, but torchrun did "
                        f"not start this process (no TORCHELASTIC_RUN_ID); unset WORLD_SIZE, RANK, LOCAL_RANK, "
                        f"MASTER_ADDR and MASTER_PORT (for several processes set train.nproc, or see docs/scaling.md)")
    world = _whole("WORLD_SIZE", 1, 2**16)
    d = Dist(_whole("RANK", 0, world - 1), world, _whole("LOCAL_RANK", 0, world - 1))
    if d.active:
        _whole("MASTER_PORT", 1, 65535)
        if not os.environ.get("MASTER_ADDR"):
            raise UserError("environment: MASTER_ADDR is not set (torchrun sets it for every process it starts)")
    return d


def init(device: torch.device, batch_size: int) -> tuple[Dist, torch.device]:
    """Join the process group if torchrun started us; returns the rank info and this rank's device."""
    d = _torchrun_rank() if launched() else Dist()
    if not d.active:
        return d, device
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
