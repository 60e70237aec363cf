"""Flow health and training dynamics: each flag fires on its sick configuration and stays silent on a healthy run."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from bench.flow_health_check import CONFIGS, check
from cifar_study.analysis import flow_health
from cifar_study.analysis import claims
from cifar_study.analysis.claims import check_claims
from cifar_study.analysis.dynamics import analyse
from cifar_study.core.flow import FlowSnapshot
from cifar_study.core.history import EpochRecord
from cifar_study.pipeline.dataset import fetch
from cifar_study.pipeline.params import DataParams, TrainParams

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def health():
    """Flow health of each configuration of bench/flow_health_check.py, trained briefly on synthetic images."""
    ds = fetch(DataParams(source="synthetic", train_limit=300, test_limit=100))
    return {name: check(make_model, TrainParams(epochs=1, batch_size=32, flow_every=1, **options), ds, CPU)
            for name, (make_model, options) in CONFIGS.items()}


def flagged(h) -> dict[str, list[str]]:
    return {layer.layer: layer.flags for layer in h.flagged}


def test_default_run_is_healthy(health):
    assert health["default"].healthy, flagged(health["default"])
    assert health["default"].metrics()["flagged_layers"] == 0


def test_frozen_layer_is_dead_and_stalled_and_no_other(health):
    assert flagged(health["block2.conv frozen"]) == {"block2.conv": ["dead", "stalled"]}


def test_vanishing_model_flags_the_input_side_layers(health):
    flags = flagged(health["vanishing model"])
    assert "vanishing" in flags["block1.conv"] and "vanishing" in flags["block2.conv"]
    assert "fc2" not in flags  # the output layer gets the full gradient


def test_learning_rate_far_too_high_is_unstable(health):
    flags = flagged(health["lr 0.1"])
    assert any("unstable" in f for f in flags.values()), flags
    assert health["lr 0.1"].metrics()["update_ratio"] > 10 * health["default"].metrics()["update_ratio"]


def snapshots(grad_means: list[float], update: float = 1e-3, weights: list[float] | None = None) -> list[FlowSnapshot]:
    weights = weights or [0.1] * len(grad_means)
    return [FlowSnapshot(i, 1, ["a", "out"], [[g, 10 * g, w, 2 * w, update], [1e-2, 0.1, 0.1, 0.2, update]])
            for i, (g, w) in enumerate(zip(grad_means, weights))]


def test_each_flag_on_constructed_snapshots():
    assert not flow_health.assess(snapshots([1e-2, 2e-2, 1e-2])).flagged
    assert flow_health.assess(snapshots([1e-2, math.nan, 1e-2])).layers[0].flags == ["exploding"]
    assert flow_health.assess(snapshots([1e-2] * 4 + [100.0])).layers[0].flags == ["exploding"]  # a 4-decade spike
    assert flow_health.assess(snapshots([1e-2] * 3, weights=[0.1, 0.5, 2.0])).layers[0].flags == ["unstable"]
    assert flow_health.assess(snapshots([1e-7, 1e-7, 1e-7])).layers[0].flags == ["vanishing"]
    assert flow_health.assess(snapshots([0.0, 0.0, 1e-2])).layers[0].flags == ["dead"]
    assert [h.flags for h in flow_health.assess(snapshots([1e-2] * 3, update=1e-6)).layers] == [["stalled"]] * 2
    assert [h.flags for h in flow_health.assess(snapshots([1e-2] * 3, update=0.5)).layers] == [["unstable"]] * 2


def test_thresholds_are_the_documented_constants():
    assert flow_health.thresholds() == {"VANISHING_RATIO": 1e-4, "VANISHING_FRACTION": 0.25, "VANISHING_ABS": 1e-8,
                                        "EXPLODING_SPIKE": 1e3, "DEAD_FRACTION": 0.5, "STALLED_UPDATE": 1e-5,
                                        "UNSTABLE_UPDATE": 1e-1, "RUNAWAY_WEIGHTS": 10.0}
    assert flow_health.assess(snapshots([1e-2] * 2)).detail()["thresholds"] == flow_health.thresholds()


def history(heldout_acc: list[float], heldout_loss: list[float]) -> list[EpochRecord]:
    return [EpochRecord(i + 1, 1.0, 0.5, loss, acc, 1e-3, 1.0)
            for i, (acc, loss) in enumerate(zip(heldout_acc, heldout_loss))]


def test_dynamics_reads_speed_gap_and_overfitting():
    steady = analyse(history([0.5, 0.7, 0.76, 0.79, 0.8, 0.8, 0.8], [1.4, 1.0, 0.8, 0.7, 0.65, 0.64, 0.63]))
    assert (steady.epoch_90, steady.epoch_95, steady.epoch_99, steady.best_epoch) == (3, 3, 5, 5)
    assert not steady.overfitting and steady.gap_acc == pytest.approx(0.5 - 0.8)
    rising = analyse(history([0.5, 0.7, 0.8, 0.8, 0.8, 0.79, 0.79], [1.4, 1.0, 0.6, 0.65, 0.7, 0.75, 0.8]))
    assert rising.overfitting and rising.loss_rise == pytest.approx(0.8 / 0.6 - 1, abs=1e-6)
    assert rising.metrics() == {"best_epoch": 3, "epoch_95": 3, "overfitting": 1}
    assert rising.gap_acc == pytest.approx(0.5 - 0.79)


def test_claims_hold_on_a_healthy_run_and_fail_on_a_sick_one(health):
    acc = [0.5, 0.7, 0.76, 0.79] + [0.8] * 22  # 26 epochs: long enough for every claim
    steady = analyse(history(acc, [1.4, 1.0, 0.8, 0.7] + [0.65] * 22))
    assert health["default"].snapshots >= claims.MIN_SNAPSHOTS
    sick = check_claims(health["vanishing model"], steady, flow_every=1)
    assert sick[0].verdict == "does not hold" and "block1.conv" in sick[0].measured
    verdicts = [c.verdict for c in check_claims(health["default"], steady, flow_every=1)]
    assert verdicts[0] == verdicts[3] == verdicts[4] == "holds", verdicts


def test_too_little_evidence_is_insufficient_data_naming_the_setting():
    one_snapshot = flow_health.assess(snapshots([1e-2]))
    short = analyse(history([0.5, 0.6, 0.7], [1.4, 1.2, 1.0]))
    judged = check_claims(one_snapshot, short, flow_every=200)
    assert [c.verdict for c in judged] == ["insufficient data"] * 5
    assert "1 flow snapshot, at least 10 needed: lower train.flow_every (now 200)" in judged[0].measured
    assert judged[3].measured == "3 epochs, at least 10 needed: raise train.epochs"
    assert judged[4].measured == "3 epochs, at least 25 needed: raise train.epochs"
    # Enough snapshots but a run too short for "most gain by epoch 20": only that claim waits.
    ten = flow_health.assess(snapshots([1e-2] * 10))
    twelve = analyse(history([0.5 + 0.02 * i for i in range(12)], [1.0] * 12))
    assert [c.verdict == "insufficient data" for c in check_claims(ten, twelve, flow_every=5)] == [False] * 4 + [True]


def test_the_median_layer_ratio_is_numpys_median():
    # The committed baseline's ten per-layer max/mean ratios: an even count, so the median is the mean
    # of the two middle values (8.5x), not the upper one (10.3x).
    ratios = [3.6, 3.8, 3.9, 4.1, 6.7, 10.3, 12.9, 13.9, 97.9, 247.5]
    health = flow_health.assess(snapshots([1e-2] * 10))
    health.layers = [dataclasses.replace(health.layers[0], layer=f"l{i}", max_to_mean=r) for i, r in enumerate(ratios)]
    claim = check_claims(health, analyse(history([0.8] * 30, [0.6] * 30)), flow_every=1)[1]
    assert f"median layer max/mean |grad| {np.median(ratios):.1f}x" in claim.measured and np.median(ratios) == 8.5
    assert claim.verdict == "does not hold"




def test_a_best_loss_of_zero_or_a_weight_of_zero_gives_no_number_that_is_not_finite():
    """A held-out loss of 0 and a mean |W| of 0 at the start leave no ratio: findings.json stays JSON (no
    Infinity) and the weights claim is insufficient data, not judged from NaN."""
    zero_then_up = analyse(history([0.5, 0.7, 0.8, 0.8, 0.8, 0.8], [0.0] * 5 + [0.5]))
    assert zero_then_up.overfitting and zero_then_up.loss_rise == math.inf
    json.dumps(zero_then_up.detail(), allow_nan=False)
    assert zero_then_up.detail()["loss_rise"] is None
    assert analyse(history([0.5, 0.7], [0.0, 0.0])).loss_rise == 0.0
    zero_start = flow_health.assess(snapshots([1e-2] * 10, weights=[0.0] + [0.1] * 9))
    judged = check_claims(zero_start, analyse(history([0.5] * 3, [1.0] * 3)), flow_every=1)
    assert judged[2].verdict == "insufficient data" and judged[2].measured == \
        "mean |W| was 0 at the start for a: no end/start ratio"
    # Weights that end as NaN have a ratio, and it is no stable one: judged, not missing
    diverged = flow_health.assess(snapshots([1e-2] * 10, weights=[0.1] * 9 + [math.nan]))
    assert check_claims(diverged, analyse(history([0.5] * 3, [1.0] * 3)), flow_every=1)[2].verdict == "does not hold"
