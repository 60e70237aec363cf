"""End to end: `dvc repro` in a temporary git repository on a tiny synthetic configuration."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

TINY = {
    "data": {"source": "synthetic", "train_limit": 200, "test_limit": 100},
    "train": {"epochs": 2, "batch_size": 32, "flow_every": 3, "device": "cpu"},
    "plots": {"samples": 8, "dpi": 50},
    "wandb": {"mode": "disabled"},
}
STAGES = ("fetch_data", "flops", "train", "evaluate", "visualize")


def project_files() -> list[str]:
    """Tracked and new (not ignored) files: what a clone of the working tree would hold."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def set_params(repo: Path, changes: dict) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in changes.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("clone")
    for f in project_files():
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, repo / f)
    for stale in ("dvc.lock", "metrics", "plots"):  # a committed baseline must not satisfy the tiny run
        path = repo / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    set_params(repo, TINY)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "tiny")
    return repo


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1", "WANDB_MODE": "disabled", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, env=env(), check=True, capture_output=True, text=True).stdout


def dvc(repo: Path, *args: str) -> str:
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=repo, env=env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def ran(output: str) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in output}


def declared_outputs(repo: Path) -> list[str]:
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())
    outs = []
    for stage in spec["stages"].values():
        for entry in stage.get("outs", []) + stage.get("metrics", []):
            outs.append(entry if isinstance(entry, str) else next(iter(entry)))
    return outs


def test_repro_builds_every_declared_output(repo):
    assert ran(dvc(repo, "repro")) == set(STAGES)
    for out in declared_outputs(repo):
        assert (repo / out).exists(), out
    figures = sorted(p.name for p in (repo / "plots/figures").iterdir())
    assert figures == sorted(["learning_curves.png", "confusion_matrix.png", "class_accuracy.png",
                              "sample_predictions.png", "gradient_flow.png", "weight_flow.png",
                              "gradient_flow_heatmap.png"])
    assert json.loads((repo / "metrics/flops.json").read_text())["flops"] == 161_163_264
    evaluation = json.loads((repo / "metrics/eval.json").read_text())
    assert 0 <= evaluation["test_acc"] <= 1 and len(evaluation["per_class_acc"]) == 10
    assert len((repo / "plots/data/history.csv").read_text().splitlines()) == 1 + 2
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "tiny results")


def test_second_repro_runs_nothing(repo):
    assert ran(dvc(repo, "repro")) == set()
    assert "up to date" in dvc(repo, "status")


def test_train_param_change_reruns_only_downstream_and_shows_in_metrics_diff(repo):
    set_params(repo, {"train": {"lr": 0.003}})
    assert ran(dvc(repo, "repro")) == {"train", "evaluate", "visualize"}
    diff = json.loads(dvc(repo, "metrics", "diff", "--json"))
    assert "metrics/train.json" in diff and "train_loss" in diff["metrics/train.json"]
    assert "params.yaml" in json.loads(dvc(repo, "params", "diff", "--json"))


def test_plot_option_change_reruns_only_visualize(repo):
    set_params(repo, {"plots": {"dpi": 60}})
    assert ran(dvc(repo, "repro")) == {"visualize"}


def test_wandb_settings_rerun_nothing(repo):
    set_params(repo, {"wandb": {"project": "elsewhere"}})
    assert ran(dvc(repo, "repro")) == set()


def test_bad_param_under_dvc_repro_fails_and_keeps_every_output(repo):
    outputs = {p: p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file() and ".dvc" not in p.parts
               and ".git" not in p.parts and p.parts[-2] != "dvc_plots"}
    set_params(repo, {"train": {"epochs": 0}})
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro"], cwd=repo, env=env(),
                          capture_output=True, text=True)
    set_params(repo, {"train": {"epochs": 2}})
    assert proc.returncode != 0
    assert "error: train.epochs: 0 must be > 0" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    for path, data in outputs.items():
        if path.name != "params.yaml":
            assert path.read_bytes() == data, path


def test_plots_show_renders_every_plot(repo):
    dvc(repo, "plots", "show", "-o", "dvc_plots")
    html = (repo / "dvc_plots/index.html").read_text()
    for title in ("Loss per epoch", "Accuracy per epoch", "Confusion matrix", "Accuracy per class"):
        assert title in html
    assert len(list((repo / "dvc_plots/static").glob("*.png"))) == 7


def test_remote_push_then_fresh_clone_pull_reruns_nothing_and_gets_the_registry_model(repo, tmp_path):
    dvc(repo, "remote", "add", "-d", "store", str(tmp_path / "remote"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "remote and current results")
    dvc(repo, "repro")  # make sure the workspace matches dvc.lock before pushing
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "lock", "--allow-empty")
    dvc(repo, "push")
    # A registry version of dvc.yaml's `model` artifact: the git tag model@v0.0.1.
    proc = subprocess.run([str(Path(sys.executable).parent / "gto"), "register", "model"], cwd=repo, env=env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "model@v0.0.1" in git(repo, "tag"), proc.stdout + proc.stderr
    clone = tmp_path / "teammate"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True, env=env())
    # The clone has no DVC cache: the registry's model comes from the remote, byte for byte.
    dvc(tmp_path, "artifacts", "get", str(clone), "model", "-o", str(tmp_path / "registry_model.pt"))
    assert (tmp_path / "registry_model.pt").read_bytes() == (repo / "models/model.pt").read_bytes()
    dvc(clone, "pull")
    assert (clone / "models/model.pt").is_file() and (clone / "data/cifar10.npz").is_file()
    assert "up to date" in dvc(clone, "status")
    assert ran(dvc(clone, "repro")) == set()


def test_queued_experiments_run_and_are_listed(repo):
    for lr in ("0.002", "0.004"):
        dvc(repo, "exp", "run", "--queue", "-S", f"train.lr={lr}", "-S", "train.epochs=1")
    dvc(repo, "exp", "run", "--run-all")
    table = json.loads(dvc(repo, "exp", "show", "--json"))
    found = {}
    for rev in table:
        for exp in (rev.get("experiments") or []):
            for run in exp.get("revs", []):
                data = run.get("data") or {}
                lr = data.get("params", {}).get("params.yaml", {}).get("data", {}).get("train", {}).get("lr")
                metrics = data.get("metrics", {}).get("metrics/eval.json", {}).get("data", {})
                if lr is not None:
                    found[lr] = metrics
    assert {0.002, 0.004} <= set(found), table
    assert all("test_acc" in found[lr] for lr in (0.002, 0.004))
