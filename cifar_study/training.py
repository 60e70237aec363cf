"""The training loop: Adam, cross-entropy, per-epoch train and held-out metrics, flow snapshots.

A plain loop in the nanoGPT manner. Loss and accuracy are summed on the device and read back
only at progress-bar updates and at the end of an epoch, so a GPU never waits on the host.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cifar_study.distributed import Dist, all_reduce_sum
from cifar_study.errors import ParamError, UserError
from cifar_study.flow import FlowSnapshot, flow_parameters, flow_snapshot
from cifar_study.params import TrainParams
from cifar_study.resume import ResumeStore

SYNC_EVERY = 20  # batches between host reads (progress bar, non-finite-loss check)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


class TrainLogger(Protocol):
    """Receives what training produces as it happens (W&B implements this)."""

    def log_epoch(self, record: dict, step: int, heldout_name: str) -> None: ...

    def log_flow(self, snapshot: FlowSnapshot) -> None: ...


class NullLogger:
    def log_epoch(self, record: dict, step: int, heldout_name: str) -> None:
        pass

    def log_flow(self, snapshot: FlowSnapshot) -> None:
        pass


@dataclass
class Evaluation:
    loss: float
    acc: float
    predictions: torch.Tensor  # (N,) predicted class, on the CPU
    probabilities: torch.Tensor  # (N, classes) softmax, on the CPU
    labels: torch.Tensor  # (N,)


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one record per epoch
    flow: list[FlowSnapshot] = field(default_factory=list)
    optimizer_state: dict = field(default_factory=dict)  # at the end, for the checkpoint


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ParamError(f"train.amp: 'fp16' needs a CUDA device (training on {device.type}); use bf16 or none")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def prepare_input(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, amp: str = "none",
             channels_last: bool = False) -> Evaluation:
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        with autocast(device, amp):
            logits.append(model(prepare_input(x, device, channels_last)).float())
        labels.append(y.to(device))
    logits_t, labels_t = torch.cat(logits), torch.cat(labels)
    loss = F.cross_entropy(logits_t, labels_t).item()
    predictions = logits_t.argmax(1)
    return Evaluation(loss, (predictions == labels_t).float().mean().item(), predictions.cpu(),
                      logits_t.softmax(1).cpu(), labels_t.cpu())


@dataclass
class Run:
    """What the training loop carries between batches and epochs."""
    model: nn.Module  # the module that owns the parameters (saved in checkpoints)
    forward: nn.Module  # what is called on batches: the model, or its torch.compile'd wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    watched: list  # (layer name, parameter) pairs for the flow statistics
    p: TrainParams
    device: torch.device
    dist: Dist = Dist()
    step: int = 0  # global batch index


def setup(model: nn.Module, p: TrainParams, device: torch.device, d: Dist = Dist()) -> Run:
    model.to(device)
    if p.channels_last:
        model.to(memory_format=torch.channels_last)
    autocast(device, p.amp)  # refuses an unusable amp setting before any work
    forward = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if d.active else model
    return Run(model, torch.compile(forward) if p.compile else forward, torch.optim.Adam(model.parameters(), lr=p.lr),
               torch.amp.GradScaler(device.type, enabled=p.amp == "fp16"), flow_parameters(model), p, device, d)


def train_epoch(run: Run, loader: Iterable, epoch: int, logger: TrainLogger, flow: list[FlowSnapshot]) -> tuple[float, float]:
    """One pass over `loader`; returns the epoch's mean train loss and accuracy."""
    p, device = run.p, run.device
    run.forward.train()
    if hasattr(getattr(loader, "sampler", None), "set_epoch"):
        loader.sampler.set_epoch(epoch)  # DistributedSampler: a new shuffle every epoch
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)  # first batch with a non-finite loss
    seen = 0
    bar = tqdm(loader, desc=f"epoch {epoch}/{p.epochs}", unit="batch", leave=True, dynamic_ncols=True,
               disable=None if run.dist.main else True)  # None: shown on a terminal, not in log files
    for batch, (x, y) in enumerate(bar):
        x, y = prepare_input(x, device, p.channels_last), y.to(device, non_blocking=True)
        with autocast(device, p.amp):
            logits = run.forward(x)
            loss = F.cross_entropy(logits.float(), y)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if run.step % p.flow_every == 0 and run.dist.main:  # gradients are already all-reduced: rank 0 suffices
            run.scaler.unscale_(run.optimizer)  # flow statistics must see the true gradients
            snapshot = flow_snapshot(run.watched, run.step, epoch)
            flow.append(snapshot)
            logger.log_flow(snapshot)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        loss = loss.detach()
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), batch, first_bad)
        loss_sum += loss * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        run.step += 1
        if batch % SYNC_EVERY == SYNC_EVERY - 1 or batch == len(bar) - 1:
            if first_bad.item() >= 0:
                raise TrainingDiverged(f"loss became non-finite at epoch {epoch}, batch {first_bad.item() + 1}: "
                                       f"lower train.lr (now {p.lr}) or check the data")
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")
    bar.close()
    totals = all_reduce_sum(torch.stack([loss_sum, correct.to(loss_sum.dtype),
                                         torch.tensor(float(seen), device=device)]), run.dist)
    return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()


def rng_state(run: Run, loader: Any) -> dict[str, Any]:
    """Every random stream training draws from: dropout (torch), data order and augmentation (loader)."""
    return {"torch": torch.get_rng_state(), "loader": loader.generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if run.device.type == "cuda" else []}


def set_rng_state(run: Run, loader: Any, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    loader.generator.set_state(state["loader"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def train(model: nn.Module, train_loader: Any, heldout_loader: Iterable, p: TrainParams,
          device: torch.device, heldout_name: str, logger: TrainLogger | None = None,
          resume: ResumeStore | None = None, d: Dist = Dist()) -> TrainResult:
    """Train `model` in place for `p.epochs` epochs; return per-epoch history and flow snapshots.

    With `resume`, the state after each epoch is saved there, and a matching saved state is
    continued from instead of starting at epoch 1.
    """
    logger = logger or NullLogger()
    run, result = setup(model, p, device, d), TrainResult()
    saved = resume.load() if resume else None
    if saved:
        model.load_state_dict(saved["model_state"])
        run.optimizer.load_state_dict(saved["optimizer_state"])
        run.scaler.load_state_dict(saved["scaler_state"])
        run.step = saved["step"]
        result.history = saved["history"]
        result.flow = [FlowSnapshot(**f) for f in saved["flow"]]
        set_rng_state(run, train_loader, saved["rng"])
        print(f"resuming: {resume.progress(p.epochs)}; continuing with epoch {saved['epoch'] + 1}", flush=True)
    for epoch in range(len(result.history) + 1, p.epochs + 1):
        started = time.perf_counter()
        try:
            train_loss, train_acc = train_epoch(run, train_loader, epoch, logger, result.flow)
        except torch.OutOfMemoryError:
            raise UserError(f"out of {device.type} memory at train.batch_size={p.batch_size}: "
                            f"lower train.batch_size (or use train.amp: bf16)") from None
        # Every rank evaluates the whole held-out set with the same weights: no collectives needed.
        heldout = evaluate(run.model if run.dist.active else run.forward, heldout_loader, device, p.amp,
                           p.channels_last)
        record = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                  "heldout_loss": heldout.loss, "heldout_acc": heldout.acc,
                  "lr": run.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
        result.history.append(record)
        if resume and d.main:
            resume.save({"epoch": epoch, "step": run.step, "model_state": model.state_dict(),
                         "optimizer_state": run.optimizer.state_dict(), "scaler_state": run.scaler.state_dict(),
                         "history": result.history, "flow": [dataclasses.asdict(f) for f in result.flow],
                         "rng": rng_state(run, train_loader)})
        logger.log_epoch(record, run.step, heldout_name)
        if d.main:
            print(f"epoch {epoch}/{p.epochs}: train loss {train_loss:.4f} acc {train_acc:.4f} | "
                  f"{heldout_name} loss {heldout.loss:.4f} acc {heldout.acc:.4f} | {record['seconds']:.1f}s", flush=True)
    result.optimizer_state = run.optimizer.state_dict()
    return result
