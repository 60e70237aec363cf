"""A stage's inputs from earlier stages: present, readable, and belonging together.

Run by DVC, a stage sees the outputs its upstream stages have just written. Run directly
(`python -m stages.evaluate`), or after files were copied in from elsewhere, it may not: a missing
or truncated file, a checkpoint trained on other data, predictions for another test split. Each
stops the stage with one line naming the files and the `dvc repro` that makes them fit again.
"""
from __future__ import annotations

import contextlib
import csv
import math
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from cifar_study.core.flow import COLUMNS as FLOW_COLUMNS
from cifar_study.core.flow import STATS, FlowSnapshot, snapshots_from_rows
from cifar_study.core.history import written_number
from cifar_study.pipeline import paths
from cifar_study.pipeline.errors import UserError, first_line
from cifar_study.pipeline.outputs import read_csv
from cifar_study.pipeline.untrusted import md5_file

PRODUCERS = {out: stage for stage, (_, outs) in paths.STAGE_FILES.items() for out in outs}  # which stage writes what


class UpstreamError(UserError):
    """An input from an earlier stage is missing, unreadable, or made from other inputs."""


def rerun(path: str | Path) -> str:
    return f"run dvc repro {PRODUCERS[str(path)]}"


@contextlib.contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Read and parse `path` inside the block: any failure there is one line naming it and its stage."""
    try:
        yield
    except UserError:
        raise
    except FileNotFoundError:
        raise UpstreamError(f"{path}: not found: {rerun(path)}") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError, csv.Error, zipfile.BadZipFile) as exc:
        raise UpstreamError(f"{path}: unreadable or not written by this pipeline ({type(exc).__name__}: "
                            f"{first_line(exc)}): {rerun(path)}") from None


def read_table(path: str, numeric: Sequence[str], finite: bool = True) -> list[dict[str, str]]:
    """The rows of a CSV an earlier stage wrote: at least one, each complete, `numeric` columns numbers
    (finite ones unless `finite` is False: flow statistics record a NaN gradient as it was)."""
    with reading(path):
        rows = read_csv(path)
        if not rows:
            raise ValueError("no rows")
        for line, r in enumerate(rows, start=2):
            if None in r.values() or None in r:  # a short or long row: the file was cut or mixed
                raise ValueError(f"line {line} has the wrong number of fields")
            for key in numeric:
                if not math.isfinite(written_number(r[key])) and finite:
                    raise ValueError(f"line {line}: {key} is {r[key]}, not a finite number")
        return rows


LAYER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,99}")  # a module path, as named_parameters() gives it


def read_flow(path: str) -> list[FlowSnapshot]:
    """flow.csv's snapshots, checked as train writes them: whole numbers for step and epoch, module names
    for layers, statistics that are not negative (NaN and infinity stay: an exploding gradient is
    evidence), the same layers at every step, steps and epochs in order."""
    rows = read_table(path, [c for c in FLOW_COLUMNS if c != "layer"], finite=False)
    with reading(path):
        for line, r in enumerate(rows, start=2):
            if not LAYER_NAME.fullmatch(r["layer"]):
                raise ValueError(f"line {line}: layer {r['layer'][:40]!r} is not a module name")
            if any(float(r[s]) < 0 for s in STATS):
                raise ValueError(f"line {line}: a negative statistic (all are sizes: |grad|, |W|, |ΔW| / |W|)")
        steps = [int(r["step"]) for r in rows]
        if steps != sorted(steps):  # rows in the order train writes them
            raise ValueError("steps are not in order from 0 or more")
        snapshots = snapshots_from_rows(rows)
        check_snapshots(snapshots)
        return snapshots


def check_snapshots(snapshots: list[FlowSnapshot]) -> None:
    """Flow snapshots as train takes them, ValueError otherwise: steps in order from 0, epochs from 1 and never
    back, the same module names at every step, each once, and per layer its statistics, none negative (NaN and
    infinity stay: an exploding gradient is evidence). flow.csv's rows and the resume state's flow alike."""
    for snap, before in zip(snapshots, [None, *snapshots]):
        if type(snap.step) is not int or type(snap.epoch) is not int or (before is None and snap.step < 0) or \
                (before is not None and snap.step < before.step):
            raise ValueError("steps are not in order from 0 or more")
        if before is not None and (snap.epoch < before.epoch or snap.layers != snapshots[0].layers):
            raise ValueError(f"step {snap.step}: its epoch goes back, or its layers are not step "
                             f"{snapshots[0].step}'s")
        if not all(isinstance(layer, str) and LAYER_NAME.fullmatch(layer) for layer in snap.layers) or \
                len(snap.values) != len(snap.layers) or \
                not all(len(v) == len(STATS) and all(isinstance(x, float) and not x < 0 for x in v) for v in snap.values):
            raise ValueError(f"step {snap.step}: a layer that is not a module name, or statistics that are not "
                             f"{len(STATS)} sizes")
    if snapshots and (len(set(snapshots[0].layers)) != len(snapshots[0].layers) or snapshots[0].epoch < 1):
        raise ValueError(f"step {snapshots[0].step}: a layer named twice, or an epoch below 1")


def check_flow_history(flow: list[FlowSnapshot], epochs: int) -> None:
    """flow.csv and history.csv come from one run: no snapshot after its last epoch."""
    if flow and flow[-1].epoch > epochs:
        raise mismatch(paths.FLOW, paths.HISTORY, f"a snapshot at epoch {flow[-1].epoch}; the history has {epochs}")


def mismatch(made: str, used: str, why: str) -> UpstreamError:
    """`made` was produced from another version of `used`."""
    return UpstreamError(f"{made} does not belong with {used} ({why}): {rerun(made)}")


def check_checkpoint_data(state: dict[str, Any], classes: list[str]) -> None:
    """The checkpoint was trained on the canonical data that is here now."""
    if list(state["classes"]) != list(classes):
        raise mismatch(paths.CHECKPOINT, paths.DATA, f"trained on classes {', '.join(state['classes'])}; "
                                                     f"the data has {', '.join(classes)}")
    if "data_md5" in state and state["data_md5"] != md5_file(paths.DATA):
        raise mismatch(paths.CHECKPOINT, paths.DATA, "trained on another version of the data")


def check_predictions_data(actual: np.ndarray, test_labels: np.ndarray) -> None:
    """Predictions were made on the test split that is here now (same images, same labels, in order)."""
    if len(actual) != len(test_labels) or not np.array_equal(actual, test_labels):
        raise mismatch(paths.PREDICTIONS, paths.DATA, f"{len(actual)} predictions for {len(test_labels)} test "
                                                      f"images, or their labels differ")
