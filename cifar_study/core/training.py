"""The training loop: Adam, cross-entropy, per-epoch train and held-out metrics, flow snapshots.

A plain loop in the nanoGPT manner. Loss, accuracy, flow statistics and histograms stay on the
device and are read back at the end of an epoch (and at progress-bar updates, when a bar is shown on
a terminal), so a GPU never waits on the host inside an epoch.
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cifar_study.core.distributed import Dist, all_reduce_sum
from cifar_study.core.evaluation import autocast, evaluate_replicas, prepare_input
from cifar_study.core.flow import FlowSnapshot
from cifar_study.core.flow_stats import add_update_ratio, flow_parameters, read_snapshots, take_snapshot
from cifar_study.core.history import EpochRecord
from cifar_study.core.replicas import Replicas, replica_losses
from cifar_study.core.runtime import slow_bf16
from cifar_study.pipeline.cli import check_stop, stops_deferred
from cifar_study.pipeline.errors import UserError
from cifar_study.pipeline.params import TrainParams

SYNC_EVERY = 20  # batches between progress-bar updates (host reads), when a bar is shown


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


class TrainLogger(Protocol):
    """Receives what training produces as it happens (W&B implements this)."""

    def log_epoch(self, record: EpochRecord, step: int, heldout_name: str) -> None: ...

    def log_flow(self, snapshot: FlowSnapshot) -> None:
        """Called at the end of the epoch the snapshot was taken in, before `log_epoch`, in step order."""

    def histograms_due(self, step: int) -> bool: ...

    def take_histograms(self, model: nn.Module, step: int) -> None:
        """Called after backward when `histograms_due(step)`: the gradients are complete and unscaled.
        Must not read from the device: the histograms are logged with the epoch (`log_epoch`)."""


class NullLogger:
    def log_epoch(self, record: EpochRecord, step: int, heldout_name: str) -> None:
        pass

    def log_flow(self, snapshot: FlowSnapshot) -> None:
        pass

    def histograms_due(self, step: int) -> bool:
        return False

    def take_histograms(self, model: nn.Module, step: int) -> None:
        pass


@dataclass
class TrainResult:
    """What training has produced so far; a resumed run starts from a saved one."""
    history: list[EpochRecord] = field(default_factory=list)  # one record per completed epoch (replica 0's)
    flow: list[FlowSnapshot] = field(default_factory=list)  # replica 0's
    replicas: list[list[EpochRecord]] = field(default_factory=list)  # train.replicas > 1: each replica's history


@dataclass
class TrainState:
    """What the training loop carries between batches and epochs."""
    model: nn.Module  # the module that owns the parameters (saved in checkpoints)
    forward: nn.Module  # what is called on batches: the model, or its DDP / torch.compile wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    watched: list  # (layer name, parameter) pairs for the flow statistics
    p: TrainParams
    device: torch.device
    dist: Dist = Dist()
    step: int = 0  # global batch index

    @property
    def replicas(self) -> int:
        return self.model.k if isinstance(self.model, Replicas) else 1

    def flow_watched(self) -> list:
        """What the flow statistics and histograms read: the model, or replica 0 of stacked replicas."""
        return flow_parameters(self.model.replica(0)) if isinstance(self.model, Replicas) else self.watched

    def histogram_source(self) -> Any:
        return self.model.replica(0) if isinstance(self.model, Replicas) else self.model


def setup(model: nn.Module, p: TrainParams, device: torch.device, d: Dist = Dist()) -> TrainState:
    model.to(device)
    if p.channels_last:
        model.to(memory_format=torch.channels_last)
    autocast(device, p.amp)  # refuses an unusable amp setting before any work
    if p.amp == "bf16" and slow_bf16(device) and d.main:
        print("warning: train.amp: bf16 on this CPU is emulated (no AVX512-BF16 or AMX): expect it to be many "
              "times slower than train.amp: none, not faster", file=sys.stderr, flush=True)
    forward = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if d.active else model
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr, fused=True if p.fused_adam else None)
    return TrainState(model, torch.compile(forward, mode=p.compile_mode) if p.compile else forward, optimizer,
                      torch.amp.GradScaler(device.type, enabled=p.amp == "fp16"), flow_parameters(model), p, device, d)


def train_epoch(state: TrainState, loader: Iterable, epoch: int, logger: TrainLogger,
                flow: list[FlowSnapshot]) -> tuple[list[float], list[float]]:
    """One pass over `loader`; returns the epoch's mean train loss and accuracy, one per replica."""
    p, device = state.p, state.device
    state.forward.train()
    if hasattr(getattr(loader, "sampler", None), "set_epoch"):
        loader.sampler.set_epoch(epoch)  # DistributedSampler: a new shuffle every epoch
    shape = (state.replicas,) if state.replicas > 1 else ()
    loss_sum = torch.zeros(shape, device=device)
    correct = torch.zeros(shape, device=device, dtype=torch.long)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)  # first batch with a non-finite loss
    seen = 0
    pending: list = []  # this epoch's flow snapshots, on the device until the epoch ends
    bar = tqdm(loader, desc=f"epoch {epoch}/{p.epochs}", unit="batch", leave=True, dynamic_ncols=True,
               disable=None if state.dist.main else True)  # None: shown on a terminal, not in log files
    for batch, (x, y) in enumerate(bar):
        check_stop()
        x, y = prepare_input(x, device, p.channels_last), y.to(device, non_blocking=True)
        with autocast(device, p.amp):
            logits = state.forward(x)
            # Stacked replicas: the sum of their mean losses, so each replica's gradient is its own.
            losses = replica_losses(logits, y) if logits.dim() == 3 else F.cross_entropy(logits.float(), y)
            loss = losses.sum() if losses.dim() else losses
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        flow_due = state.step % p.flow_every == 0 and state.dist.main  # gradients are all-reduced: rank 0 suffices
        histograms_due = logger.histograms_due(state.step)  # False on ranks other than 0 (no W&B there)
        if flow_due or histograms_due:
            # Both must see the true gradients. Unscaling here rather than in scaler.step does the same
            # arithmetic on the same gradients, so the update is identical (and a no-op without fp16).
            state.scaler.unscale_(state.optimizer)
        if flow_due:
            watched = state.flow_watched()
            pending.append(take_snapshot(watched, state.step, epoch))
        if histograms_due:
            logger.take_histograms(state.histogram_source(), state.step)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        if flow_due:
            add_update_ratio(pending[-1], watched)
        loss = loss.detach()
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), batch, first_bad)
        loss_sum += losses.detach() * y.shape[-1]
        correct += (logits.argmax(-1) == y).sum(-1)
        seen += y.shape[-1]
        state.step += 1
        if not bar.disable and (batch % SYNC_EVERY == SYNC_EVERY - 1 or batch == len(bar) - 1):
            check_finite(first_bad, epoch, p.lr)
            bar.set_postfix(loss=f"{loss_sum.mean().item() / seen:.4f}", acc=f"{correct.float().mean().item() / seen:.4f}")
    bar.close()
    check_finite(first_bad, epoch, p.lr)
    for snapshot in read_snapshots(pending):
        flow.append(snapshot)
        logger.log_flow(snapshot)
    if state.replicas > 1:  # one process (replicas with nproc > 1 are refused): nothing to reduce
        return (loss_sum / seen).tolist(), (correct / seen).tolist()
    totals = all_reduce_sum(torch.stack([loss_sum, correct.to(loss_sum.dtype),
                                         torch.tensor(float(seen), device=device)]), state.dist)
    return [(totals[0] / totals[2]).item()], [(totals[1] / totals[2]).item()]


def check_finite(first_bad: torch.Tensor, epoch: int, lr: float) -> None:
    """Stop, naming the first batch whose loss was not finite (a host read: at the epoch's end or a bar update)."""
    bad = first_bad.item()
    if bad >= 0:
        raise TrainingDiverged(f"loss became non-finite at epoch {epoch}, batch {bad + 1}: "
                               f"lower train.lr (now {lr}) or check the data")


def train(state: TrainState, train_loader: Any, heldout_loader: Iterable, heldout_name: str,
          logger: TrainLogger | None = None, result: TrainResult | None = None,
          on_epoch_end: Callable[[TrainResult], None] | None = None) -> TrainResult:
    """Train for the epochs `result` does not hold yet (all of `state.p.epochs` for a fresh run).

    `on_epoch_end` is called after each epoch with everything produced so far (the train stage
    saves its resume state there).
    """
    p, device = state.p, state.device
    logger, result = logger or NullLogger(), result or TrainResult()
    with stops_deferred():  # Ctrl-C and SIGTERM stop the epochs between batches (cli.stops_deferred)
        for epoch in range(len(result.history) + 1, p.epochs + 1):
            started = time.perf_counter()
            try:
                train_loss, train_acc = train_epoch(state, train_loader, epoch, logger, result.flow)
            except torch.OutOfMemoryError:
                raise UserError(f"out of {device.type} memory at train.batch_size={p.batch_size}: "
                                f"lower train.batch_size (or use train.amp: bf16)") from None
            # Every rank evaluates the whole held-out set with the same weights: no collectives needed.
            heldout = evaluate_replicas(state.model if state.dist.active else state.forward, heldout_loader, device,
                                        p.amp, p.channels_last)
            seconds = time.perf_counter() - started
            records = [EpochRecord(epoch, loss, acc, h.loss, h.acc, state.optimizer.param_groups[0]["lr"], seconds)
                       for loss, acc, h in zip(train_loss, train_acc, heldout)]
            record = records[0]
            result.history.append(record)
            if state.replicas > 1:
                result.replicas = result.replicas or [[] for _ in records]
                for history, r in zip(result.replicas, records):
                    history.append(r)
            if on_epoch_end:
                on_epoch_end(result)
            if state.dist.main:  # the terminal's line first: what the live files and W&B show was printed
                spread = (f" | {len(records)} replicas: {heldout_name} acc mean "
                          f"{statistics.fmean(r.heldout_acc for r in records):.4f}") if len(records) > 1 else ""
                print(f"epoch {epoch}/{p.epochs}: train loss {record.train_loss:.4f} acc {record.train_acc:.4f} | "
                      f"{heldout_name} loss {record.heldout_loss:.4f} acc {record.heldout_acc:.4f} | "
                      f"{seconds:.1f}s{spread}", flush=True)
            logger.log_epoch(record, state.step, heldout_name)
            check_stop()
    return result
