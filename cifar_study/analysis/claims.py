"""The original study's conclusions, each checked against this run's numbers: holds, does not hold,
or insufficient data when the run is too short or its flow snapshots too few to judge it."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable

from cifar_study.analysis.dynamics import LAST_EPOCHS, Dynamics
from cifar_study.analysis.flow_health import FlowHealth

# "one to two orders of magnitude": the median layer's max/mean |grad| ratio within 10x..100x.
MAX_TO_MEAN_RANGE = (10.0, 100.0)
# "relatively stable weight magnitudes": no layer's mean |W| grows or shrinks by an order of magnitude
# over the run. Conv weights ahead of BatchNorm do grow in healthy training (BatchNorm makes the output
# independent of their scale): up to 5.9x (block4.conv) over the 30 epochs of the committed baseline.
WEIGHT_CHANGE_FACTOR = 10.0
# "stable convergence": held-out accuracy moves by less than 5 points over the last epochs.
STABLE_SPREAD = 0.05
# "most gain in the first 15-20 epochs": 95% of the final held-out accuracy reached by epoch 20.
MOST_GAIN_BY_EPOCH = 20

# The evidence each verdict needs. Flow claims: 10 snapshots (the vanishing flag counts a quarter of
# them, the trend fits a line through them: one or two noisy steps cannot make a pattern) over at
# least 2 layers (each is judged against the output layer). "The last epochs" (LAST_EPOCHS) must end a
# run at least twice as long, and "most gain by epoch 20" needs epochs after 20 to compare against.
MIN_SNAPSHOTS = 10
MIN_LAYERS = 2
MIN_EPOCHS_STABLE = 2 * LAST_EPOCHS
MIN_EPOCHS_GAIN = MOST_GAIN_BY_EPOCH + LAST_EPOCHS

HOLDS, FAILS, INSUFFICIENT = "holds", "does not hold", "insufficient data"


@dataclass
class Claim:
    claim: str  # in the original study's words
    measured: str  # the number behind it in this run, or what evidence is missing
    verdict: str  # HOLDS, FAILS or INSUFFICIENT


def flow_evidence(health: FlowHealth, flow_every: int) -> str:
    """What the flow snapshots lack for a verdict, with the setting that gives it; '' when they suffice."""
    if health.snapshots < MIN_SNAPSHOTS:
        return (f"{health.snapshots} flow snapshot{'s' * (health.snapshots != 1)}, at least {MIN_SNAPSHOTS} needed: "
                f"lower train.flow_every (now {flow_every}) to at most the run's batches / {MIN_SNAPSHOTS}")
    if len(health.layers) < MIN_LAYERS:
        return f"{len(health.layers)} layer in the flow snapshots, at least {MIN_LAYERS} needed"
    return ""


def epoch_evidence(dynamics: Dynamics, needed: int) -> str:
    if dynamics.epochs < needed:
        return f"{dynamics.epochs} epoch{'s' * (dynamics.epochs != 1)}, at least {needed} needed: raise train.epochs"
    return ""


def weight_ratio_missing(health: FlowHealth) -> str:
    """A layer whose mean |W| was 0 at the first snapshot has no end/start ratio to judge by."""
    layers = [h.layer for h in health.layers if h.weight_mean_change is None]
    return f"mean |W| was 0 at the start for {', '.join(layers)}: no end/start ratio" if layers else ""


def _judge(claim: str, missing: str, measured: Callable[[], tuple[str, bool]]) -> Claim:
    if missing:
        return Claim(claim, missing, INSUFFICIENT)
    text, holds = measured()
    return Claim(claim, text, HOLDS if holds else FAILS)


def check_claims(health: FlowHealth, dynamics: Dynamics, flow_every: int) -> list[Claim]:
    flow_missing = flow_evidence(health, flow_every)

    def no_bad_gradients() -> tuple[str, bool]:
        bad = [h.layer for h in health.layers if {"vanishing", "exploding", "dead"} & set(h.flags)]
        return (f"{len(bad)} of {len(health.layers)} layers flagged vanishing, exploding or dead"
                + (f" ({', '.join(bad)})" if bad else ""), not bad)

    def max_to_mean() -> tuple[str, bool]:
        ratios = sorted(h.max_to_mean for h in health.layers)
        median = statistics.median(ratios)  # of an even count: the mean of the two middle layers
        low, high = MAX_TO_MEAN_RANGE
        return f"median layer max/mean |grad| {median:.1f}x (layers {ratios[0]:.1f}x to {ratios[-1]:.1f}x)", \
            low <= median <= high

    def stable_weights() -> tuple[str, bool]:
        changes = [h.weight_mean_change for h in health.layers]
        worst = max(changes, key=lambda c: max(c, 1 / c) if c > 0 else float("inf"))
        return f"mean |W| at the end / at the start: {min(changes):.2f}x to {max(changes):.2f}x", \
            1 / WEIGHT_CHANGE_FACTOR <= worst <= WEIGHT_CHANGE_FACTOR

    def stable_convergence() -> tuple[str, bool]:
        return (f"held-out accuracy spread over the last {LAST_EPOCHS} epochs {dynamics.last_spread:.2%}; last held-out "
                f"loss {dynamics.loss_rise:+.1%} from its best; train−held-out accuracy gap {dynamics.gap_acc:+.2%}",
                dynamics.last_spread < STABLE_SPREAD and not dynamics.overfitting)

    def early_gain() -> tuple[str, bool]:
        return (f"90% / 95% / 99% of the final accuracy first reached at epochs {dynamics.epoch_90} / "
                f"{dynamics.epoch_95} / {dynamics.epoch_99} of {dynamics.epochs}", dynamics.epoch_95 <= MOST_GAIN_BY_EPOCH)

    return [
        _judge("No layer shows consistently zero, vanishing or exploding gradients", flow_missing, no_bad_gradients),
        _judge("Max gradient magnitudes are typically one to two orders of magnitude larger than mean magnitudes",
               flow_missing, max_to_mean),
        _judge("Weight magnitudes are relatively stable across layers", flow_missing or weight_ratio_missing(health),
               stable_weights),
        _judge("Convergence is stable with no severe overfitting", epoch_evidence(dynamics, MIN_EPOCHS_STABLE),
               stable_convergence),
        _judge("Most of the gain occurs in the first 15–20 epochs", epoch_evidence(dynamics, MIN_EPOCHS_GAIN), early_gain),
    ]
