"""W&B: what an offline run holds, and that W&B failures never change or stop a run."""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifar_study.core.model import SimpleCNN
from tests.conftest import ROOT, project, run_stage, snapshot
from tests.wandb_records import artifacts, config, history, run_info, summary

# 200 images / batch 16 = 13 batches an epoch (the last of 8), 26 steps, a snapshot every 7: steps 0, 7,
# 14, 21 (both epochs); histograms every 10: steps 0, 10, 20.
TINY = {"data": {"train_limit": 200}, "train": {"epochs": 2, "flow_every": 7}, "wandb": {"watch_every": 10}}
SNAPSHOT_STEPS = [0, 7, 14, 21]
HISTOGRAM_STEPS = [0, 10, 20]


def without_seconds(outputs: dict[str, bytes]) -> dict[str, object]:
    """Outputs that must not depend on W&B (the per-epoch wall time and the checkpoint's copy of it aside)."""
    kept = {k: v for k, v in outputs.items() if k != "models/model.pt" and "figures" not in k}
    rows = list(csv.DictReader(io.StringIO(kept.pop("plots/data/history.csv").decode())))
    return {**kept, "history": [{k: v for k, v in r.items() if k != "seconds"} for r in rows]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny pipeline run twice: W&B disabled, then offline."""
    repo = project(tmp_path_factory.mktemp("wb"), **TINY)
    wandb_dir = repo.parent / "wandb-out"
    wandb_dir.mkdir()
    outputs, logs = {}, {}
    for mode in ("disabled", "offline"):
        # WANDB_DATA_DIR: W&B stages artifact files there (default: under the home directory)
        env = {"WANDB_MODE": mode, "WANDB_DIR": str(wandb_dir), "WANDB_DATA_DIR": str(wandb_dir / "data")}
        for name in ("fetch_data", "train", "evaluate", "findings"):
            code, out, err = run_stage(repo, name, env)
            assert code == 0, err
            logs[mode, name] = err
        outputs[mode] = snapshot(repo)
    return repo, wandb_dir, outputs, logs


def offline_runs(wandb_dir: Path) -> dict[str, Path]:
    found = {}
    for log in wandb_dir.glob("wandb/offline-run-*/run-*.wandb"):
        found[run_info(log)["job_type"]] = log
    return found


def test_offline_train_run_holds_flow_images_config_and_summary(runs):
    repo, wandb_dir, _, _ = runs
    log = offline_runs(wandb_dir)["train"]
    rows = history(log)
    image_steps = [int(r["_step"]) for r in rows if r.get("gradients/_type") == "image-file"]
    assert image_steps == SNAPSHOT_STEPS
    assert [int(r["_step"]) for r in rows if r.get("weights/_type") == "image-file"] == SNAPSHOT_STEPS
    assert all("flow/grad_mean/fc1" in r and "flow/weight_max/block1.conv" in r
               for r in rows if "gradients/_type" in r)
    epochs = [r for r in rows if "train/loss" in r]
    assert [r["epoch"] for r in epochs] == [1, 2] and all("test/acc" in r and "lr" in r for r in epochs)
    cfg = config(log)
    assert cfg["train"]["lr"] == 0.001 and cfg["train"]["flow_every"] == 7 and cfg["model"]["name"] == "simple_cnn"
    assert set(cfg["git"]) == {"commit", "dirty"}
    metrics = json.loads((repo / "metrics/train.json").read_text())
    s = summary(log)
    assert s["gflops_per_sample"] == 0.1612 and s["params"] == 4_441_482
    assert s["train_loss"] == metrics["train_loss"] and s["heldout_acc"] == metrics["heldout_acc"]


def test_offline_train_run_holds_histograms_of_every_layer_at_the_interval(runs):
    _, wandb_dir, _, _ = runs
    rows = history(offline_runs(wandb_dir)["train"])
    names = [name for name, _ in SimpleCNN().named_parameters()]
    sizes = dict((name, p.numel()) for name, p in SimpleCNN().named_parameters())
    for kind in ("gradients", "parameters"):
        for name in names:
            steps = [int(r["_step"]) for r in rows if r.get(f"{kind}/{name}/_type") == "histogram"]
            assert steps == HISTOGRAM_STEPS, (kind, name)
    for r in rows:
        if int(r["_step"]) in HISTOGRAM_STEPS:
            counts, bins = r["parameters/fc1.weight/values"], r["parameters/fc1.weight/bins"]
            assert len(counts) == 64 and len(bins) == 65 and sum(counts) == sizes["fc1.weight"]
            assert bins == sorted(bins) and bins[0] < 0 < bins[-1]
    assert [r["GFLOPs"] for r in rows if "GFLOPs" in r] == [0.1612] and rows[0]["_step"] == 0 and "GFLOPs" in rows[0]


def test_offline_evaluate_run_holds_the_model_artifact_and_test_accuracy(runs):
    repo, wandb_dir, _, _ = runs
    log = offline_runs(wandb_dir)["evaluate"]
    metrics = json.loads((repo / "metrics/eval.json").read_text())
    assert [r["test_accuracy"] for r in history(log) if "test_accuracy" in r] == [metrics["test_acc"]]
    (artifact,) = [a for a in artifacts(log) if a["type"] == "model"]  # W&B stores tables as artifacts too
    assert artifact["name"] == "model"
    checkpoint = torch.load(repo / "models/model.pt", weights_only=True)
    md5 = hashlib.md5((repo / "models/model.pt").read_bytes()).digest()
    assert artifact["files"] == {"model.pt": base64.b64encode(md5).decode()}  # the checkpoint, byte for byte
    meta = artifact["metadata"]
    assert meta["test_accuracy"] == metrics["test_acc"] and meta["test_loss"] == metrics["test_loss"]
    assert (meta["flops"], meta["gflops"], meta["params"]) == (161_163_264, 0.1612, 4_441_482)
    assert meta["run_key"] == checkpoint["run_key"] and meta["epochs"] == 2
    assert meta["dvc_path"] == "models/model.pt" and meta["dvc_md5"] == md5.hex()
    assert meta["normalize"] == "original" and meta["mean"] == checkpoint["mean"]
    assert set(meta) >= {"git_commit", "git_dirty"}


def test_offline_evaluate_run_holds_charts_in_the_same_group(runs):
    repo, wandb_dir, _, _ = runs
    found = offline_runs(wandb_dir)
    train_info, eval_info = run_info(found["train"]), run_info(found["evaluate"])
    assert eval_info["group"] == train_info["group"] and train_info["group"].startswith("run-")
    # findings joins the group from the run key of its own params, data and code: no checkpoint, no PyTorch
    assert run_info(found["findings"])["group"] == train_info["group"]
    assert summary(found["findings"])["findings/flow"] in ("healthy", "flagged", "insufficient data")
    assert (train_info["job_type"], eval_info["job_type"]) == ("train", "evaluate")
    logged = {k for r in history(found["evaluate"]) for k in r}
    for key in ("confusion_matrix_table/_type", "class_accuracy_table/_type", "predictions/_type",
                "prediction_grid/_type"):
        assert key in logged
    metrics = json.loads((repo / "metrics/eval.json").read_text())
    assert summary(found["evaluate"])["test_acc"] == metrics["test_acc"]


def test_outputs_are_identical_with_and_without_wandb(runs):
    _, _, outputs, _ = runs
    assert without_seconds(outputs["offline"]) == without_seconds(outputs["disabled"])


@pytest.mark.parametrize("broken", ["init", "log"])
def test_failing_wandb_warns_once_and_changes_nothing(runs, broken, monkeypatch, capsys, tmp_path):
    """wandb.init or wandb.log raising: training completes, one warning, the same outputs."""
    import wandb

    repo, _, outputs, _ = runs
    monkeypatch.chdir(repo)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    if broken == "init":
        monkeypatch.setattr(wandb, "init", lambda **kw: (_ for _ in ()).throw(ConnectionError("no network")))
    else:
        monkeypatch.setattr(wandb.Run, "log", lambda *a, **kw: (_ for _ in ()).throw(OSError("No space left")))
    from stages import train

    train.main()
    err = capsys.readouterr().err
    assert err.count("warning: W&B") == 1 and f"W&B {broken} failed" in err
    assert "continuing without W&B" in err
    assert without_seconds(snapshot(repo)) == without_seconds(outputs["disabled"])


def test_wandb_mode_param_and_env(monkeypatch):
    from cifar_study.observe.wandb_run import Tracker, wandb_mode
    from cifar_study.pipeline.params import WandbParams

    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode(WandbParams(mode="offline")) == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(WandbParams(mode="online")) == "disabled"
    tracker = Tracker(WandbParams(mode="online"), "train", "run-x", {})
    assert not tracker.active  # disabled: W&B is not even imported for the run


def test_an_interrupted_stage_resumes_its_wandb_run(monkeypatch, tmp_path, capsys):
    """Interrupted (exit 130), the next run of the same stage and group continues the same W&B run id;
    a completed one does not, so a sweep's dashboard shows one run per stage and experiment."""
    import wandb

    from cifar_study.observe.wandb_run import Tracker, resume_id_file
    from cifar_study.pipeline.params import WandbParams

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    offline = WandbParams(mode="offline")
    with pytest.raises(KeyboardInterrupt):
        with Tracker(offline, "train", "run-x", {}) as tracker:
            first = tracker.run_id
            raise KeyboardInterrupt
    # A stage's exit closes W&B's service, which writes out the run's log; run.finish() only asks it to. Here the runs
    # share one process and one run id, so without this the resumed run's stream could meet the unclosed one (CI, once).
    wandb.teardown()
    assert resume_id_file("train", "run-x").read_text().strip() == first
    with Tracker(offline, "evaluate", "run-x", {}) as other:  # another stage: its own run
        assert other.run_id != first
    with Tracker(offline, "train", "run-x", {}) as tracker:
        assert tracker.run_id == first
    wandb.teardown()
    out = capsys.readouterr().out
    assert f"(resuming the interrupted W&B run {first}); upload it with: wandb sync " in out
    assert f"offline-run-*-{first}*" in out
    assert not resume_id_file("train", "run-x").exists()  # completed
    logs = sorted(tmp_path.glob(f"wandb/offline-run-*-{first}*/run-{first}.wandb"))
    assert len(logs) == 2 and {run_info(log)["run_id"] for log in logs} == {first}
    with Tracker(offline, "train", "run-x", {}) as tracker:
        assert tracker.run_id != first


def test_a_log_still_running_when_ctrl_c_closes_the_run_fails_quietly(monkeypatch, tmp_path, capsys):
    """Ctrl-C: queued logs get INTERRUPT_WAIT_S, then the run is closed under the one still running (a flow
    image being drawn). That one's failure is no news: one warning (logs dropped), not a second."""
    import threading

    from cifar_study.observe import wandb_run
    from cifar_study.pipeline.params import WandbParams

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setattr(wandb_run, "INTERRUPT_WAIT_S", 0.05)
    release = threading.Event()

    def slow_log() -> None:  # logs after the run is closed, like a flow image drawn across the interrupt
        release.wait(10)
        tracker.run.log({"x": 1})

    with pytest.raises(KeyboardInterrupt):
        with wandb_run.Tracker(WandbParams(mode="offline"), "train", "run-q", {}) as tracker:
            tracker._submit("log", slow_log)
            raise KeyboardInterrupt
    release.set()
    tracker._worker.shutdown(wait=True)  # the logging thread, done with slow_log and its guard
    warnings = [line for line in capsys.readouterr().err.splitlines() if "W&B" in line]
    assert warnings == ["warning: W&B: logs still queued when the stage stopped were dropped"]


def test_a_run_id_from_elsewhere_is_not_called_a_resumed_run(monkeypatch, tmp_path, capsys):
    """An id file copied in (or left by a run whose folder was deleted) names no earlier run here."""
    from cifar_study.observe.wandb_run import Tracker, resume_id_file
    from cifar_study.pipeline.params import WandbParams

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    planted = resume_id_file("train", "run-x")
    planted.parent.mkdir(parents=True)
    planted.write_text("abc123elsewhere\n")
    with Tracker(WandbParams(mode="offline"), "train", "run-x", {}) as tracker:
        assert tracker.run_id == "abc123elsewhere"
    out = capsys.readouterr().out
    assert "resuming" not in out and "(a new W&B run with the id abc123elsewhere found in " in out


def test_a_run_id_with_control_characters_is_printed_escaped(tmp_path):
    """WANDB_RUN_ID names the offline run's folder, which the stage prints (probe 4). In a process of its own: W&B
    reads WANDB_RUN_ID once per process."""
    script = ("from cifar_study.observe.wandb_run import Tracker\nfrom cifar_study.pipeline.params import WandbParams\n"
              "with Tracker(WandbParams(mode='offline'), 'train', 'run-x', {}) as tracker:\n    assert tracker.active\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "WANDB_DIR": str(tmp_path),
                               "WANDB_RUN_ID": "ab\x1b[31mRED\nX"})
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "ab\\x1b[31mRED\\nX" in proc.stdout and len(proc.stdout.splitlines()) == 1


def test_a_wandb_dir_that_is_a_file_is_one_warning_and_no_wandb(monkeypatch, tmp_path, capsys):
    """W&B itself warns three times, then writes its run into /tmp, outside the project and WANDB_DIR."""
    from cifar_study.observe.wandb_run import Tracker
    from cifar_study.pipeline.params import WandbParams

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "a-file"))
    with Tracker(WandbParams(mode="offline"), "train", "run-x", {}) as tracker:
        assert not tracker.active
    assert capsys.readouterr().err.splitlines() == [
        f"warning: W&B's folder {tmp_path / 'a-file'} (WANDB_DIR) is not a folder; continuing without W&B"]


def test_a_run_id_that_cannot_be_resumed_is_dropped(monkeypatch, tmp_path, capsys):
    """wandb.init failing on a kept id (a run deleted online, say): one warning, and the next run starts afresh."""
    import wandb

    from cifar_study.observe.wandb_run import Tracker, resume_id_file
    from cifar_study.pipeline.params import WandbParams

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    kept = resume_id_file("train", "run-y")
    kept.parent.mkdir(parents=True)
    kept.write_text("gone123\n")
    monkeypatch.setattr(wandb, "init", lambda **kw: (_ for _ in ()).throw(ValueError(f"no run {kw['id']}")))
    with Tracker(WandbParams(mode="offline"), "train", "run-y", {}) as tracker:
        assert not tracker.active
    assert "warning: W&B init failed (ValueError: no run gone123)" in capsys.readouterr().err
    assert not kept.exists()


def test_a_planted_run_id_fifo_is_not_read_and_is_replaced_not_followed(tmp_path):
    import os

    from cifar_study.observe.wandb_run import unfinished_id
    fifo = tmp_path / "train-g.id"
    os.mkfifo(fifo)
    assert unfinished_id(fifo) is None  # returns at once: a FIFO is never opened
    (tmp_path / "big.id").write_text("a" * 5000)
    assert unfinished_id(tmp_path / "big.id") is None
    (tmp_path / "ok.id").write_text("abc123\n")
    assert unfinished_id(tmp_path / "ok.id") == "abc123"
