"""End to end: `dvc repro` in a temporary git repository on a tiny synthetic configuration."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cifar_study.analysis.figures import FIGURES
from tests.conftest import ROOT, default_params
from tests.wandb_records import config, run_info

pytestmark = pytest.mark.slow

TINY = {
    "data": {"source": "synthetic", "train_limit": 200, "test_limit": 100},
    "train": {"epochs": 2, "batch_size": 32, "flow_every": 3, "device": "cpu"},
    "plots": {"samples": 8, "dpi": 50},
    "wandb": {"mode": "disabled"},
}
STAGES = tuple(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


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


def make_repo(repo: Path, changes: dict = {}) -> Path:
    """A git repository holding the working tree's project at the tiny configuration (plus `changes`)."""
    for f in project_files():
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, repo / f)
    for stale in ("dvc.lock", "metrics", "plots"):  # a committed baseline must not satisfy the tiny run
        path = repo / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    (repo / "params.yaml").write_text(yaml.safe_dump(default_params(), sort_keys=False))  # not the user's values
    set_params(repo, TINY)
    set_params(repo, changes)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "tiny")
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return make_repo(tmp_path_factory.mktemp("clone"))


def env(**changes: str | None) -> dict[str, str]:
    """The environment for git and dvc; `changes` set variables, or remove them where None."""
    base = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1", "WANDB_MODE": "disabled", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", **changes}
    return {k: v for k, v in base.items() if v is not None}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, env=env(), check=True, capture_output=True, text=True).stdout


def dvc(repo: Path, *args: str, **env_changes: str | None) -> str:
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=repo, env=env(**env_changes),
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
    assert figures == sorted(f"{name}.png" for name in FIGURES)
    assert json.loads((repo / "reports/flops.json").read_text())["flops"] == 161_163_264
    evaluation = json.loads((repo / "metrics/eval.json").read_text())
    assert 0 <= evaluation["test_acc"] <= 1
    assert len((repo / "plots/data/class_accuracy.csv").read_text().splitlines()) == 1 + 10
    assert len((repo / "plots/data/history.csv").read_text().splitlines()) == 1 + 2
    checkpoint = torch.load(repo / "models/model.pt", weights_only=True)
    assert "optimizer_state" not in checkpoint and (repo / "models/model.pt").stat().st_size <= 25 << 20
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "tiny results")


def test_metrics_table_fits_a_wide_terminal(repo):
    # DVC prints one column per metric: the handful a person compares, details in reports/ and plots/.
    table = dvc(repo, "metrics", "show")
    assert "test_acc" in table and "flagged_layers" in table
    assert max(len(line) for line in table.splitlines()) <= 300, table


def test_second_repro_runs_nothing(repo):
    assert ran(dvc(repo, "repro")) == set()
    assert "up to date" in dvc(repo, "status")


def test_train_param_change_reruns_only_downstream_and_shows_in_metrics_diff(repo):
    set_params(repo, {"train": {"lr": 0.003}})
    assert ran(dvc(repo, "repro")) == {"check_params", "train", "evaluate", "findings", "visualize"}
    diff = json.loads(dvc(repo, "metrics", "diff", "--json"))
    assert "metrics/train.json" in diff and "train_loss" in diff["metrics/train.json"]
    assert "params.yaml" in json.loads(dvc(repo, "params", "diff", "--json"))


def test_plot_option_change_reruns_only_visualize(repo):
    set_params(repo, {"plots": {"dpi": 60}})
    assert ran(dvc(repo, "repro")) == {"check_params", "visualize"}


def test_wandb_settings_rerun_only_the_params_check(repo):
    set_params(repo, {"wandb": {"project": "elsewhere"}})
    assert ran(dvc(repo, "repro")) == {"check_params"}


def test_wandb_typo_is_refused_even_when_every_stage_is_cached(repo):
    set_params(repo, {"wandb": {"mode": "ofline"}})
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro"], cwd=repo, env=env(),
                          capture_output=True, text=True)
    set_params(repo, {"wandb": {"mode": "disabled"}})
    assert proc.returncode != 0 and ran(proc.stdout) == {"check_params"}
    assert "error: wandb.mode: 'ofline' is not one of offline, online, disabled" in proc.stdout + proc.stderr


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
    assert len(list((repo / "dvc_plots/static").glob("*.png"))) == len(FIGURES)


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
    # A user's model: the registry's file classifies images as the evaluate stage did.
    assert predicted_classes(repo, tmp_path / "registry_model.pt", tmp_path) == evaluated_classes(repo)
    dvc(clone, "pull")
    assert (clone / "models/model.pt").is_file() and (clone / "data/cifar10.npz").is_file()
    assert "up to date" in dvc(clone, "status")
    assert ran(dvc(clone, "repro")) == set()


def evaluated_classes(repo: Path, n: int = 5) -> list[str]:
    return [line.split(",")[2] for line in (repo / "plots/data/predictions.csv").read_text().splitlines()[1:n + 1]]


def predicted_classes(repo: Path, model: Path, tmp: Path, n: int = 5) -> list[str]:
    """`python -m cifar_study.predict` on the first `n` test images, saved as PNG files."""
    images = np.load(repo / "data/cifar10.npz")["x_test"][:n]
    files = [tmp / f"test{i}.png" for i in range(n)]
    for image, file in zip(images, files):
        Image.fromarray(image).save(file)
    proc = subprocess.run([sys.executable, "-m", "cifar_study.predict", *map(str, files), "--model", str(model)],
                          cwd=repo, capture_output=True, text=True, env=env())
    assert proc.returncode == 0, proc.stderr
    return [line.split(": ")[1].split()[0] for line in proc.stdout.splitlines()]


def test_queued_experiments_run_are_listed_and_keep_their_wandb_runs(repo):
    """A sweep runs in temporary copies of the repository; its W&B runs must land in the project's wandb/.
    One queued experiment shows it as well as several (each adds a minute of W&B and PyTorch start-up here)."""
    # Up to evaluate: two stages' W&B runs show where a temporary copy puts them, and findings and visualize add
    # time, not coverage (tests/test_wandb.py checks every stage's run).
    dvc(repo, "exp", "run", "--queue", "-S", "train.lr=0.002", "-S", "train.epochs=1", "-S", "wandb.mode=offline",
        "evaluate")
    out = dvc(repo, "exp", "run", "--run-all", WANDB_MODE=None, WANDB_DIR=None)
    runs = {}
    for log in (repo / "wandb").glob("offline-run-*/run-*.wandb"):
        info = run_info(log)
        lr = config(log)["train"]["lr"]
        runs[info["job_type"], lr] = log.parent
        assert f"{info['job_type']}: W&B offline run in {log.parent}; upload it with: wandb sync {log.parent}" in out
    assert set(runs) == {("train", 0.002), ("evaluate", 0.002)}, out
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
    assert 0.002 in found and "test_acc" in found[0.002], table
    # make show: every row in 120 columns, the changed params among the columns.
    proc = subprocess.run([sys.executable, "-m", "cifar_study.show"], cwd=repo, env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(map(len, lines)) <= 120 and "train.lr" in lines[0] and "test_acc" in lines[0], proc.stdout
    assert sum(" 0.002 " in line for line in lines) == 1, proc.stdout


def stage_processes(repo: Path, name: str) -> list[int]:
    """Pids of `python -m stages.<name>` processes running in `repo` (Linux /proc)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if f"stages.{name}".encode() in (proc / "cmdline").read_bytes() and (proc / "cwd").resolve() == repo:
                found.append(int(proc.name))
        except OSError:  # exited meanwhile, or not ours to read
            pass
    return found


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])  # dash keeps a shell between dvc and the stage; bash not
def test_sigterm_to_dvc_stops_the_training_stage_and_writes_nothing(tmp_path, shell):
    repo = make_repo(tmp_path / "repo", {"train": {"epochs": 1000}})  # far more epochs than it will live
    state = repo / ".train_state/train.pt"
    with open(tmp_path / "dvc.log", "w") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "dvc"), "repro", "train"], cwd=repo,
                                env=env(SHELL=shell), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while not state.exists() and proc.poll() is None and time.time() < deadline:  # the first epoch is saved
            time.sleep(0.1)
        assert proc.poll() is None and state.exists(), (tmp_path / "dvc.log").read_text()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        deadline = time.time() + 10
        while stage_processes(repo, "train") and time.time() < deadline:
            time.sleep(0.2)
        assert stage_processes(repo, "train") == []
    finally:
        for pid in stage_processes(repo, "train"):  # a failed run must not leave a trainer behind
            os.kill(pid, signal.SIGKILL)
    text = (tmp_path / "dvc.log").read_text()
    assert "stopping: the process that started this stage" in text and "train: interrupted;" in text, text
    for out in ("models/model.pt", "metrics/train.json", "plots/data/history.csv", "plots/data/flow.csv"):
        assert not (repo / out).exists(), out
    assert state.exists()  # what it trained is kept for `dvc repro` to resume
