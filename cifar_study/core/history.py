"""The per-epoch record: one definition for history.csv, the checkpoint, W&B, the figures and reports/RESULTS.md."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

from cifar_study.pipeline.untrusted import fraction

# An int or float as Python writes it (str, csv): what this pipeline's CSVs hold. float() and int() also take
# "1_5", " 3" and other scripts' digits ("٢"); in a results file those are damage, not numbers.
WRITTEN_NUMBER = re.compile(r"[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?|[-+]?(nan|inf)")


def written_number(text: str) -> float:
    """A CSV cell's number; ValueError for text that Python would not have written for one."""
    if not WRITTEN_NUMBER.fullmatch(text):
        raise ValueError(f"{text[:20]!r} is not a number as Python writes one")
    return float(text)


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float  # mean over the epoch's (augmented) training batches
    train_acc: float
    heldout_loss: float  # on the held-out split: test (the original study's protocol) or val
    heldout_acc: float
    lr: float
    seconds: float  # wall time of the epoch: training plus the held-out evaluation

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """history.csv's columns, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "EpochRecord":
        """From a history.csv row (strings) or a saved dict."""
        return cls(**{f.name: (int if f.type in (int, "int") else float)(row[f.name]) for f in dataclasses.fields(cls)})

    def row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def final_metrics(self) -> dict[str, float]:
        """metrics/train.json's numbers for this (last) epoch, rounded to 6 places."""
        return {name: round(getattr(self, name), 6) for name in ("train_loss", "train_acc", "heldout_loss", "heldout_acc")}

    def logged(self, heldout_name: str) -> dict[str, float]:
        """The W&B keys: `train/loss`, `<held-out split>/acc`, ..., `lr`, `epoch_seconds`."""
        return {"epoch": self.epoch, "train/loss": self.train_loss, "train/acc": self.train_acc,
                f"{heldout_name}/loss": self.heldout_loss, f"{heldout_name}/acc": self.heldout_acc,
                "lr": self.lr, "epoch_seconds": self.seconds}


# Training computes in float32 at most: a value past its range was not written by the train stage, and a
# figure's axis over it, or a sum of epoch times, would overflow to inf.
FLOAT32_MAX = 3.4028234663852886e38


def history_of(rows: Iterable[dict[str, Any]]) -> list[EpochRecord]:
    """Epoch records from history.csv rows or saved dicts, checked as the train stage writes them: epochs
    1, 2, ... in order; every value a finite number (not true/false); losses, lr and seconds not negative;
    accuracies in 0..1. ValueError, naming the row, otherwise."""
    records = []
    for i, row in enumerate(rows, 1):
        if any(isinstance(row.get(name), bool) for name in EpochRecord.columns()):
            raise ValueError(f"history row {i}: true/false where a number goes")
        for name in EpochRecord.columns():
            if isinstance(row.get(name), str):
                written_number(row[name])
        r = EpochRecord.from_row(row)
        if r.epoch != i:
            raise ValueError(f"history row {i} is epoch {r.epoch}: epochs run 1, 2, ... in order")
        if not all(math.isfinite(v) and abs(v) <= FLOAT32_MAX for v in r.row().values()) \
                or min(r.train_loss, r.heldout_loss, r.lr, r.seconds) < 0 or not (fraction(r.train_acc) and fraction(r.heldout_acc)):
            raise ValueError(f"history epoch {i}: a value that is not a finite number (or past float32's range), a "
                             "negative loss, lr or time, or an accuracy outside 0..1")
        records.append(r)
    return records


@dataclass(frozen=True)
class ReplicaScore:
    """One seed replica in reports/replicas.json: its seed, test accuracy and loss, and per-epoch history."""
    seed: int
    test_acc: float
    test_loss: float
    history: list[dict[str, Any]]  # EpochRecord rows

    def record(self) -> dict[str, Any]:
        return {"seed": self.seed, "test_acc": round(self.test_acc, 6), "test_loss": round(self.test_loss, 6),
                "history": self.history}
