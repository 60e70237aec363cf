"""Training dynamics from the per-epoch history: how fast, how far and how steadily the run learned."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from cifar_study.core.history import EpochRecord
from cifar_study.pipeline.outputs import finite_or_none

LAST_EPOCHS = 5  # the window for "the last epochs": stability and the held-out loss trend
# Overfitting: the held-out loss of the last epoch more than 5% above its best, and still rising
# over the last LAST_EPOCHS epochs. Epoch-to-epoch noise of the held-out loss in the default run
# is about 2%.
OVERFIT_LOSS_RISE = 0.05
REACHED = (0.90, 0.95, 0.99)  # fractions of the final held-out accuracy


@dataclass
class Dynamics:
    epochs: int
    final_acc: float  # held-out accuracy of the last epoch
    best_acc: float
    best_epoch: int
    gap_acc: float  # train − held-out accuracy at the end (train accuracy is on augmented images)
    gap_loss: float  # held-out − train loss at the end
    loss_rise: float  # last held-out loss over its best, − 1 (infinite after a best of 0)
    loss_trend: float  # least-squares slope of held-out loss per epoch over the last epochs
    overfitting: bool
    epoch_90: int  # first epoch at which 90% of the final held-out accuracy was reached
    epoch_95: int
    epoch_99: int
    last_spread: float  # max − min held-out accuracy over the last epochs
    last_std: float

    def metrics(self) -> dict[str, float | int]:
        """The few numbers `dvc metrics diff` compares."""
        return {"best_epoch": self.best_epoch, "epoch_95": self.epoch_95, "overfitting": int(self.overfitting)}

    def detail(self) -> dict:
        return finite_or_none({**asdict(self), "thresholds": {"LAST_EPOCHS": LAST_EPOCHS,
                                                              "OVERFIT_LOSS_RISE": OVERFIT_LOSS_RISE}})


def analyse(history: list[EpochRecord]) -> Dynamics:
    acc = np.array([r.heldout_acc for r in history])
    loss = np.array([r.heldout_loss for r in history])
    last = slice(-min(LAST_EPOCHS, len(history)), None)
    reached = {f: int(np.argmax(acc >= f * acc[-1])) + 1 for f in REACHED}
    trend = float(np.polyfit(np.arange(len(loss[last])), loss[last], 1)[0]) if len(loss[last]) >= 2 else 0.0
    # A best held-out loss of 0 (every image certain and right) leaves no ratio: any loss after it is a rise.
    loss_rise = float(loss[-1] / loss.min() - 1) if loss.min() > 0 else 0.0 if loss[-1] == 0 else math.inf
    end = history[-1]
    return Dynamics(
        epochs=len(history), final_acc=round(float(acc[-1]), 6), best_acc=round(float(acc.max()), 6),
        best_epoch=int(np.argmax(acc)) + 1, gap_acc=round(end.train_acc - end.heldout_acc, 6),
        gap_loss=round(end.heldout_loss - end.train_loss, 6), loss_rise=round(loss_rise, 6),
        loss_trend=round(trend, 6), overfitting=bool(loss_rise > OVERFIT_LOSS_RISE and trend > 0),
        epoch_90=reached[0.90], epoch_95=reached[0.95], epoch_99=reached[0.99],
        last_spread=round(float(np.ptp(acc[last])), 6), last_std=round(float(acc[last].std()), 6))
