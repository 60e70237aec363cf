"""Live progress (cifar_study/observe/live.py): DVCLive files after every epoch, kept when a run stops, gone when it ends."""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cifar_study.core.history import EpochRecord
from cifar_study.core.training import NullLogger
from cifar_study.observe.live import HELDOUT_NAMES, FanOut, LiveLogger, check_leftover, live_dvcyaml
from tests.conftest import ROOT, project, run_stage, stage


def record(epoch: int) -> EpochRecord:
    return EpochRecord(epoch, 2.0 / epoch, 0.3 * epoch, 1.5 / epoch, 0.25 * epoch, 0.001, 10.0 + epoch)


def curve(live: Path, split: str, stat: str) -> list[tuple[int, float]]:
    with open(live / f"plots/metrics/{split}/{stat}.tsv", newline="") as f:
        return [(int(row["step"]), float(row[stat])) for row in csv.DictReader(f, delimiter="\t")]


def test_each_epoch_adds_a_row_to_every_curve_and_updates_the_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DVCLive looks for a DVC project from here: not this one
    live = tmp_path / "dvclive"
    logger = LiveLogger(live)
    for epoch in (1, 2):
        logger.log_epoch(record(epoch), step=epoch * 10, heldout_name="val")
    assert curve(live, "train", "loss") == [(1, 2.0), (2, 1.0)]
    assert curve(live, "val", "acc") == [(1, 0.25), (2, 0.5)]
    assert json.loads((live / "metrics.json").read_text()) == {
        "train": {"loss": 1.0, "acc": 0.6}, "val": {"loss": 0.75, "acc": 0.5}, "lr": 0.001, "epoch_seconds": 12.0, "step": 2}
    assert not (live / "plots/metrics/lr.tsv").exists()  # latest value only, no curve
    spec = yaml.safe_load((live / "dvc.yaml").read_text())
    assert spec["metrics"] == ["metrics.json"]
    for plot in spec["plots"]:
        (title, definition), = plot.items()
        assert title.startswith("Live: ") and definition["x"] == "step" and definition["x_label"] == "epoch"
        assert all((live / path).is_file() for path in definition["y"]), definition["y"]


def test_a_resumed_run_continues_the_curves_and_a_new_run_starts_them_afresh(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DVCLive looks for a DVC project from here: not this one
    live = tmp_path / "dvclive"
    first = LiveLogger(live)
    for epoch in (1, 2):
        first.log_epoch(record(epoch), step=0, heldout_name="test")
    LiveLogger(live).log_epoch(record(3), step=0, heldout_name="test")  # resumed: epochs 1-2 are done
    assert [step for step, _ in curve(live, "test", "loss")] == [1, 2, 3]
    assert json.loads((live / "metrics.json").read_text())["step"] == 3
    LiveLogger(live).log_epoch(record(1), step=0, heldout_name="test")  # a new run
    assert [step for step, _ in curve(live, "test", "loss")] == [1]


def test_finish_removes_the_live_files_and_only_the_enabled_rank_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DVCLive looks for a DVC project from here: not this one
    live = tmp_path / "dvclive"
    other_rank = LiveLogger(live, enabled=False)
    other_rank.log_epoch(record(1), step=0, heldout_name="test")
    other_rank.finish()
    assert not live.exists()
    logger = LiveLogger(live)
    logger.log_epoch(record(1), step=0, heldout_name="test")
    assert (live / "metrics.json").is_file()
    logger.finish()
    assert not live.exists()


def test_a_live_failure_warns_once_and_training_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # DVCLive looks for a DVC project from here: not this one
    blocker = tmp_path / "dvclive"
    blocker.write_text("a file where the live directory should be")
    logger = FanOut(NullLogger(), LiveLogger(blocker))
    for epoch in (1, 2):
        logger.log_epoch(record(epoch), step=0, heldout_name="test")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: live progress ({blocker}/) failed ("), err
    assert err[0].endswith("continuing without it")


@pytest.mark.parametrize("plant", ["symlinked-folder", "fifo-inside", "symlink-inside"])
def test_a_planted_link_or_fifo_is_never_followed_or_read(tmp_path, monkeypatch, capsys, plant):
    monkeypatch.chdir(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "metrics.json").write_text("the user's file")
    live = tmp_path / "dvclive"
    if plant == "symlinked-folder":
        live.symlink_to(outside)
    else:
        live.mkdir()
        os.mkfifo(live / "metrics.json") if plant == "fifo-inside" else (live / "metrics.json").symlink_to(outside / "metrics.json")
    logger = LiveLogger(live)
    started = time.monotonic()
    logger.log_epoch(record(1), step=0, heldout_name="test")
    logger.finish()
    assert time.monotonic() - started < 10
    assert (outside / "metrics.json").read_text() == "the user's file"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "symlink" in err[0] and err[0].endswith("continuing without it"), err


def test_a_progress_file_too_large_to_be_one_is_not_read(tmp_path, monkeypatch, capsys):
    """Probe 6: a resumed run's Live read a 3 GB dvclive/metrics.json whole (7 GB of memory), then warned."""
    monkeypatch.chdir(tmp_path)
    live = tmp_path / "dvclive"
    live.mkdir()
    with open(live / "metrics.json", "wb") as f:
        f.truncate((16 << 20) + 1)  # sparse: no disk used
    logger = LiveLogger(live)
    logger.log_epoch(record(3), step=0, heldout_name="test")  # a resumed run's first epoch
    assert (live / "metrics.json").stat().st_size == (16 << 20) + 1 and sorted(live.iterdir()) == [live / "metrics.json"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics.json is 16,777,217 bytes, more than live progress files hold (16 MiB); not read" in err[0]
    LiveLogger(live).log_epoch(record(1), step=0, heldout_name="test")  # a new run clears the folder, reading nothing
    assert (live / "metrics.json").stat().st_size < 1000 and not capsys.readouterr().err


EPOCH_LINE = re.compile(r"epoch 1/3: train loss ([\d.]+) acc ([\d.]+) \| test loss ([\d.]+) acc ([\d.]+)")


@pytest.mark.slow
def test_live_files_after_the_first_epoch_of_a_stopped_run(tmp_path):
    """Train for 3 epochs, stop it (Ctrl-C) once epoch 1's live files appear, check them, then resume."""
    repo = project(tmp_path, train={"epochs": 3, "batch_size": 32}, data={"train_limit": 200, "test_limit": 100})
    code, _, err = run_stage(repo, "fetch_data")
    assert code == 0, err
    live = repo / "dvclive"
    proc = stage(repo, "train", start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (live / "metrics.json").is_file() and json.loads((live / "metrics.json").read_text() or "{}").get("step"):
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"training ended before epoch 1's live files were seen:\n{proc.communicate()[1]}"
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err

    printed = [float(v) for v in EPOCH_LINE.search(out).groups()]  # the stage's own epoch-1 line (4 decimals)
    metrics = json.loads((live / "metrics.json").read_text())
    assert metrics["step"] == 1 and metrics["lr"] == 0.001 and metrics["epoch_seconds"] > 0
    live_values = [metrics["train"]["loss"], metrics["train"]["acc"], metrics["test"]["loss"], metrics["test"]["acc"]]
    assert live_values == pytest.approx(printed, abs=5e-5)
    for split, stat, value in (("train", "loss", live_values[0]), ("test", "acc", live_values[3])):
        assert curve(live, split, stat) == [(1, value)]
    spec = yaml.safe_load((live / "dvc.yaml").read_text())
    assert all((live / path).is_file() for plot in spec["plots"] for d in plot.values() for path in d["y"])
    assert check_leftover(live) is None  # `make repro`'s check passes the file an interrupted run leaves
    # the final outputs are written only when the run completes
    assert not (repo / "metrics/train.json").exists() and not (repo / "plots/data/history.csv").exists()

    # Resumed, the curves continue from epoch 2; when the run completes its live files go.
    proc = stage(repo, "train")
    deadline = time.time() + 240
    steps: list[int] = []
    while time.time() < deadline and proc.poll() is None and len(steps) < 2:
        try:
            steps = [step for step, _ in curve(live, "train", "loss")]
        except (OSError, KeyError, TypeError, ValueError):  # not there yet, or read while a row was written
            pass
        time.sleep(0.05)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert "resuming: 1 of 3 epochs saved" in out
    assert steps[:2] == [1, 2], steps
    assert not live.exists()
    history = (repo / "plots/data/history.csv").read_text().splitlines()
    assert len(history) == 1 + 3
    assert [float(v) for v in history[1].split(",")[1:5]] == pytest.approx(live_values, abs=1e-6)


@pytest.mark.parametrize("leftover", ["garbage", "another-dvc-yaml", "symlink", "fifo", "directory"])
def test_a_leftover_live_dvc_yaml_that_dvc_would_stop_on_is_explained(tmp_path, leftover):
    """DVC reads every dvc.yaml in the project: a damaged dvclive/dvc.yaml stops `dvc repro` naming the file
    and nothing else. `make repro` checks it first: one line saying what it is and what to do, exit 2."""
    repo = tmp_path / "proj"
    live = repo / "dvclive"
    live.mkdir(parents=True)
    target = live / "dvc.yaml"
    if leftover == "garbage":
        target.write_text("stages: [\n  {{{ garbage\n")
    elif leftover == "another-dvc-yaml":
        target.write_text("plots:\n  - 42: {x: 1}\nfoo: bar\n")
    elif leftover == "symlink":
        (tmp_path / "elsewhere.yaml").write_text(yaml.safe_dump(live_dvcyaml("test"), sort_keys=False))
        target.symlink_to(tmp_path / "elsewhere.yaml")
    elif leftover == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    proc = subprocess.run([sys.executable, "-m", "cifar_study.observe.live"], cwd=repo, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "error: dvclive/dvc.yaml is not the live-progress file a train run writes (DVC would refuse to run with it): "
        "remove dvclive/ (progress files only: results are in metrics/ and plots/), then run again"], proc.stderr
    target.unlink() if not target.is_dir() or target.is_symlink() else target.rmdir()
    for name in HELDOUT_NAMES:  # what train writes passes, and so does no file at all
        assert check_leftover(live) is None
        target.write_text(yaml.safe_dump(live_dvcyaml(name), sort_keys=False))
        assert check_leftover(live) is None
        target.unlink()
