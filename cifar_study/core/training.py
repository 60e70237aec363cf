"""The training loop: Adam, cross-entropy, per-epoch train and held-out metrics, flow snapshots.

A plain loop in the nanoGPT manner. Loss and accuracy are summed on the device and read back
only at progress-bar updates and at the end of an epoch, so a GPU never waits on the host.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cifar_study.core.distributed import Dist, all_reduce_sum
from cifar_study.core.evaluation import autocast, evaluate, prepare_input
from cifar_study.core.flow import FlowSnapshot, add_update_ratio, flow_parameters, flow_snapshot
from cifar_study.core.history import EpochRecord
from cifar_study.pipeline.errors import UserError
from cifar_study.pipeline.params import TrainParams

SYNC_EVERY = 20  # batches between host reads (progress bar, non-finite-loss check)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


class TrainLogger(Protocol):
    """Receives what training produces as it happens (W&B implements this)."""

    def log_epoch(self, record: EpochRecord, step: int, heldout_name: str) -> None: ...

    def log_flow(self, snapshot: FlowSnapshot) -> None: ...

    def histograms_due(self, step: int) -> bool: ...

    def log_histograms(self, model: nn.Module, step: int) -> None:
        """Called after backward when `histograms_due(step)`: the gradients are complete and unscaled."""


class NullLogger:
    def log_epoch(self, record: EpochRecord, step: int, heldout_name: str) -> None:
        pass

    def log_flow(self, snapshot: FlowSnapshot) -> None:
        pass

    def histograms_due(self, step: int) -> bool:
        return False

    def log_histograms(self, model: nn.Module, step: int) -> None:
        pass


@dataclass
class TrainResult:
    """What training has produced so far; a resumed run starts from a saved one."""
    history: list[EpochRecord] = field(default_factory=list)  # one record per completed epoch
    flow: list[FlowSnapshot] = field(default_factory=list)


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


def setup(model: nn.Module, p: TrainParams, device: torch.device, d: Dist = Dist()) -> TrainState:
    model.to(device)
    if p.channels_last:
        model.to(memory_format=torch.channels_last)
    autocast(device, p.amp)  # refuses an unusable amp setting before any work
    forward = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if d.active else model
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr, fused=True if p.fused_adam else None)
    return TrainState(model, torch.compile(forward, mode=p.compile_mode) if p.compile else forward, optimizer,
                      torch.amp.GradScaler(device.type, enabled=p.amp == "fp16"), flow_parameters(model), p, device, d)


def train_epoch(state: TrainState, loader: Iterable, epoch: int, logger: TrainLogger,
                flow: list[FlowSnapshot]) -> tuple[float, float]:
    """One pass over `loader`; returns the epoch's mean train loss and accuracy."""
    p, device = state.p, state.device
    state.forward.train()
    if hasattr(getattr(loader, "sampler", None), "set_epoch"):
        loader.sampler.set_epoch(epoch)  # DistributedSampler: a new shuffle every epoch
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)  # first batch with a non-finite loss
    seen = 0
    bar = tqdm(loader, desc=f"epoch {epoch}/{p.epochs}", unit="batch", leave=True, dynamic_ncols=True,
               disable=None if state.dist.main else True)  # None: shown on a terminal, not in log files
    for batch, (x, y) in enumerate(bar):
        x, y = prepare_input(x, device, p.channels_last), y.to(device, non_blocking=True)
        with autocast(device, p.amp):
            logits = state.forward(x)
            loss = F.cross_entropy(logits.float(), y)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        flow_due = state.step % p.flow_every == 0 and state.dist.main  # gradients are all-reduced: rank 0 suffices
        histograms_due = logger.histograms_due(state.step)  # False on ranks other than 0 (no W&B there)
        if flow_due or histograms_due:
            # Both must see the true gradients. Unscaling here rather than in scaler.step does the same
            # arithmetic on the same gradients, so the update is identical (and a no-op without fp16).
            state.scaler.unscale_(state.optimizer)
        if flow_due:
            snapshot, weights_before = flow_snapshot(state.watched, state.step, epoch)
        if histograms_due:
            logger.log_histograms(state.model, state.step)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        if flow_due:
            add_update_ratio(snapshot, state.watched, weights_before)
            flow.append(snapshot)
            logger.log_flow(snapshot)
        loss = loss.detach()
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), batch, first_bad)
        loss_sum += loss * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        state.step += 1
        if batch % SYNC_EVERY == SYNC_EVERY - 1 or batch == len(bar) - 1:
            if first_bad.item() >= 0:
                raise TrainingDiverged(f"loss became non-finite at epoch {epoch}, batch {first_bad.item() + 1}: "
                                       f"lower train.lr (now {p.lr}) or check the data")
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")
    bar.close()
    totals = all_reduce_sum(torch.stack([loss_sum, correct.to(loss_sum.dtype),
                                         torch.tensor(float(seen), device=device)]), state.dist)
    return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()


def train(state: TrainState, train_loader: Any, heldout_loader: Iterable, heldout_name: str,
          logger: TrainLogger | None = None, result: TrainResult | None = None,
          on_epoch_end: Callable[[TrainResult], None] | None = None) -> TrainResult:
    """Train for the epochs `result` does not hold yet (all of `state.p.epochs` for a fresh run).

    `on_epoch_end` is called after each epoch with everything produced so far (the train stage
    saves its resume state there).
    """
    p, device = state.p, state.device
    logger, result = logger or NullLogger(), result or TrainResult()
    for epoch in range(len(result.history) + 1, p.epochs + 1):
        started = time.perf_counter()
        try:
            train_loss, train_acc = train_epoch(state, train_loader, epoch, logger, result.flow)
        except torch.OutOfMemoryError:
            raise UserError(f"out of {device.type} memory at train.batch_size={p.batch_size}: "
                            f"lower train.batch_size (or use train.amp: bf16)") from None
        # Every rank evaluates the whole held-out set with the same weights: no collectives needed.
        heldout = evaluate(state.model if state.dist.active else state.forward, heldout_loader, device, p.amp,
                           p.channels_last)
        record = EpochRecord(epoch, train_loss, train_acc, heldout.loss, heldout.acc,
                             state.optimizer.param_groups[0]["lr"], time.perf_counter() - started)
        result.history.append(record)
        if on_epoch_end:
            on_epoch_end(result)
        logger.log_epoch(record, state.step, heldout_name)
        if state.dist.main:
            print(f"epoch {epoch}/{p.epochs}: train loss {train_loss:.4f} acc {train_acc:.4f} | "
                  f"{heldout_name} loss {heldout.loss:.4f} acc {heldout.acc:.4f} | {record.seconds:.1f}s", flush=True)
    return result
