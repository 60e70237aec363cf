"""dvc.yaml's code deps and output paths cannot drift from what the stages import and write."""
from __future__ import annotations

import shutil
import subprocess
import sys

import yaml

from cifar_study.pipeline import paths
from cifar_study.pipeline.code_deps import code_deps
from cifar_study.pipeline.params import Params
from cifar_study.pipeline.run_key import run_key
from tests.conftest import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def declared(stage: str, kind: str) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in STAGES[stage].get(kind, [])]


def test_every_stage_declares_exactly_the_code_it_runs():
    for stage in STAGES:
        want = code_deps(f"stages/{stage}.py", ROOT)
        have = sorted(d for d in declared(stage, "deps") if d.endswith(".py"))
        assert have == want, f"dvc.yaml, stage {stage}: code deps must be\n" + "\n".join(f"      - {f}" for f in want)


def test_every_stage_declares_exactly_its_paths():
    for stage, (deps, outs) in paths.STAGE_FILES.items():
        assert sorted(d for d in declared(stage, "deps") if not d.endswith(".py")) == sorted(deps), stage
        assert sorted(declared(stage, "outs") + declared(stage, "metrics")) == sorted(outs), stage
    assert set(paths.STAGE_FILES) == set(STAGES)


def test_the_resume_key_changes_with_the_train_stage_code_only(tmp_path, monkeypatch):
    for f in [*code_deps("stages/train.py", ROOT), "cifar_study/observe/wandb_run.py", "cifar_study/analysis/figures.py"]:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / f, tmp_path / f)
    (tmp_path / paths.DATA).parent.mkdir(parents=True)
    (tmp_path / paths.DATA).write_bytes(b"data")
    monkeypatch.chdir(tmp_path)
    params = Params()
    before = run_key(params)
    with open("cifar_study/observe/wandb_run.py", "a") as f:  # an observer: no new run
        f.write("# logging changed\n")
    assert run_key(params) == before
    with open("cifar_study/core/evaluation.py", "a") as f:  # imported by training.py: a new run
        f.write("# evaluation changed\n")
    assert run_key(params) != before


def test_imports_are_followed_through_packages_and_from_imports(tmp_path):
    (tmp_path / "stages").mkdir()
    (tmp_path / "cifar_study").mkdir()
    (tmp_path / "stages/s.py").write_text("from cifar_study import a\nimport numpy\n")
    (tmp_path / "cifar_study/observe").mkdir()
    (tmp_path / "cifar_study/__init__.py").write_text('"""Only a docstring."""\n')
    (tmp_path / "cifar_study/a.py").write_text("def f():\n    from cifar_study.b import g\n")
    (tmp_path / "cifar_study/b.py").write_text("from cifar_study.observe.wandb_run import T\n")
    (tmp_path / "cifar_study/observe/wandb_run.py").write_text("from cifar_study.c import x\n")
    (tmp_path / "cifar_study/c.py").write_text("")
    assert code_deps("stages/s.py", tmp_path) == ["cifar_study/a.py", "cifar_study/b.py", "stages/s.py"]


def test_stages_that_only_read_tables_start_without_pytorch():
    """findings and visualize compute with numpy and matplotlib: importing PyTorch (a second or more) is waste.
    findings' W&B run loads it only to read the checkpoint's run key."""
    code = "import sys, stages.findings, stages.visualize; print(sorted({'torch', 'torchvision'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
