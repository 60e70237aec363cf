"""`python -m cifar_study.compare`: a noise-aware verdict on the revisions `dvc metrics diff` takes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cifar_study.analysis.stats import Sample, replicas_needed, t_quantile, welch
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

SPREAD = {"final_test_acc": {"sd": 0.0096}}


def eval_json(acc: float, sd: float | None = None, n: int = 1) -> dict:
    return {"test_acc": acc} if n == 1 else {"test_acc": acc, "replicas": n, "test_acc_mean": acc, "test_acc_sd": sd}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A DVC repository whose HEAD holds 3 replicas at 0.50 ± 0.01 (train.lr 0.001)."""
    repo = tmp_path_factory.mktemp("compare")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    (repo / "dvc.yaml").write_text("metrics:\n  - metrics/eval.json\n")
    (repo / "metrics").mkdir()
    (repo / "reports/spread").mkdir(parents=True)
    (repo / "reports/spread/spread.json").write_text(json.dumps(SPREAD))
    write(repo, eval_json(0.50, 0.01, 3), lr=0.001, replicas=3)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"], cwd=repo, check=True)
    return repo


def write(repo: Path, metrics: dict | str, lr: float = 0.001, replicas: int = 1, seed: int = 42) -> None:
    (repo / "params.yaml").write_text(f"train:\n  lr: {lr}\n  seed: {seed}\n  replicas: {replicas}\n")
    (repo / "metrics/eval.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))


def compare(repo: Path, *revs: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "cifar_study.compare", *revs], cwd=repo, capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.mark.parametrize("workspace, params, code, expected", [
    (eval_json(0.60, 0.01, 3), {"lr": 0.1, "replicas": 3}, 0, "beyond noise"),
    (eval_json(0.505, 0.01, 3), {"seed": 142, "replicas": 3}, 0, "within noise"),
    (eval_json(0.52), {"lr": 0.1}, 0, "cannot be judged (a single run on workspace); given the committed spread "
                                      "(sd 0.96% for one run), about 4 replicas per side"),
    (eval_json(0.60, 0.01, 3), {"replicas": 1}, 2, "error: workspace: metrics/eval.json comes from 3 replica(s) "
                                                   "but its params.yaml says train.replicas: 1"),
    ('{"test_acc": NaN}', {}, 2, "error: metrics/eval.json at workspace: test_acc is nan, not a finite number"),
    ('{"test_acc": 5.0}', {}, 2, "error: metrics/eval.json at workspace: test accuracy 5.0 is not a fraction"),
    (eval_json(0.6, -0.1, 3), {"replicas": 3}, 2, "error: metrics/eval.json at workspace: test_acc_sd -0.1 is not an sd of accuracies (0..1)"),
    (eval_json(0.6, 0.01, 3), {"replicas": 3, "lr": 0.1, "seed": 7}, 2,
     "error: HEAD and workspace differ in 2 params (train.lr, train.seed): a verdict is about one change"),
], ids=["lr-beyond", "seed-within", "single-run", "stale-replicas", "nan", "percentage", "negative-sd", "two-changes"])
def test_verdicts_and_refusals(repo, workspace, params, code, expected):
    write(repo, workspace, **params)
    done = compare(repo)
    assert done.returncode == code, done.stderr
    out = (done.stdout if code == 0 else done.stderr)
    assert expected in out, out
    if code:
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_unknown_revision_and_missing_side_are_one_line(repo):
    write(repo, eval_json(0.6, 0.01, 3), replicas=3)
    done = compare(repo, "no-such-rev")
    assert done.returncode == 2 and done.stderr == "error: dvc metrics diff: unknown Git revision 'no-such-rev'\n"
    (repo / "metrics/eval.json").unlink()
    done = compare(repo)
    assert done.returncode == 2 and done.stderr.startswith("error: workspace: no test accuracy in metrics/eval.json"), done.stderr
    done = compare(repo, "a", "b", "c")
    assert done.returncode == 2 and done.stderr.count("\n") == 1


def test_welch_matches_a_hand_computation():
    a, b = Sample(0.50, 0.01, 3), Sample(0.53, 0.02, 4)
    va, vb = 0.01 ** 2 / 3, 0.02 ** 2 / 4
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    d = welch(a, b)
    assert d.df == pytest.approx(df)
    assert d.high - d.diff == pytest.approx(t_quantile(0.975, df) * (va + vb) ** 0.5)
    assert d.diff == pytest.approx(0.03) and not d.beyond_noise  # the interval holds 0 (-0.05% to +6.05%)
    assert welch(a, Sample(0.56, 0.02, 4)).beyond_noise
    assert t_quantile(0.975, 4) == pytest.approx(2.776, abs=1e-3)  # the table value


def test_replicas_needed_shrinks_with_the_difference():
    assert replicas_needed(0.0, 0.01) is None
    assert replicas_needed(1e-200, 0.01) is None and replicas_needed(5e-324, 0.01) is None  # no overflow: past any limit
    assert replicas_needed(0.05, 0.01) == 2
    many = replicas_needed(0.01, 0.0096)
    assert many is not None and many > replicas_needed(0.03, 0.0096)


def test_several_changes_are_judged_together_when_asked(repo):
    write(repo, eval_json(0.6, 0.01, 3), replicas=3, lr=0.1, seed=7)
    done = compare(repo, "--several")
    assert done.returncode == 0 and done.stdout.endswith(": beyond noise\n"), done.stderr
