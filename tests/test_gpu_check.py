"""bench/gpu_check.sh: refuses cleanly without CUDA, and its whole orchestration runs (--cpu-smoke)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from bench import gpu_check
from tests.conftest import ROOT, image_folder_files, write_tar
from tests.hostile import ESC, Row, every_class_twice, run_row, special

SCRIPT = ROOT / "bench" / "gpu_check.sh"
RESULTS = ROOT / "bench" / "results"
# Every result in one flat folder.
FILES = {"summary.json", "summary.md", "log.txt", "env.txt", "pytest-cuda.xml", "bench-eager.json"}


def script(*args: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable, **env})


def gpu_results() -> set[str]:
    return {p.name for p in RESULTS.glob("gpu-*")} if RESULTS.is_dir() else set()


def test_without_cuda_it_says_so_in_one_line_and_does_nothing(tmp_path):
    before = gpu_results()
    out = tmp_path / "out"
    for env in ({"OUT": str(out)}, {"OUT": ""}):  # with $OUT, and with the default results folder
        proc = script(env={"CUDA_VISIBLE_DEVICES": "", **env}, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == [f"gpu_check: no CUDA device visible to PyTorch ({sys.executable}) "
                                            "on this machine; nothing done"]
        assert proc.stderr == ""
    assert not out.exists() and gpu_results() == before


# --- hostile input, by class (issue 27; the classes and the runner: tests/hostile.py) ----------------------------
# Each row runs the script as a user does (bash bench/gpu_check.sh --cpu-smoke) with its results folder and
# data in the row's project; a refusal is one line on stdout, "gpu_check: ...; nothing done", exit 2.

def out_is(kind: str) -> Callable[[Path], list[str]]:
    """A setup whose results folder (--out) already exists as `kind`; the row must leave it as it was."""
    def setup(root: Path) -> list[str]:
        out = root / ("out" + (ESC if kind == "escape" else ""))
        if kind in ("non-empty folder", "escape"):
            out.mkdir()
            (out / "log.txt").write_text("a committed log")
        elif kind == "file":
            out.write_text("a file")
        else:
            (root.parent / "elsewhere").mkdir()
            out.symlink_to(root.parent / "elsewhere")
        return ["--cpu-smoke", "--out", str(out)]
    return setup


def fresh_out(data: str | None = None) -> Callable[[Path], list[str]]:
    """A setup with a new results folder (which the row must not create) and, if named, the data at `data`."""
    def setup(root: Path) -> list[str]:
        args = ["--cpu-smoke", "--out", str(root / "out")]
        if data == "huge":
            with open(root / "huge.tar.gz", "wb") as f:
                f.truncate(2 << 30)  # sparse: 2 GiB declared, nothing written
        elif data:
            special("data.tar.gz", data)(root)
        return args + (["--data", str(root / ("huge.tar.gz" if data == "huge" else "data.tar.gz"))] if data else [])
    return setup


def python_without_torch(root: Path) -> list[str]:
    python = root / "python-without-torch"  # runs, but is no Python with PyTorch: `import torch` fails
    python.write_text("#!/bin/sh\nexit 1\n")
    python.chmod(0o755)
    return ["--cpu-smoke", "--out", str(root / "out")]


def broken_torch(root: Path) -> list[str]:
    (root / "block" / "torch").mkdir(parents=True)  # installed, but its import fails (a broken install)
    (root / "block" / "torch" / "__init__.py").write_text("raise ImportError('libcudart.so: cannot open')\n")
    return ["--out", str(root / "out")]


def blocked_ruamel(root: Path) -> list[str]:
    (root / "block" / "ruamel").mkdir(parents=True)
    (root / "block" / "ruamel" / "__init__.py").write_text("raise ImportError('no ruamel here')\n")
    return ["--cpu-smoke", "--out", str(root / "out")]


def elsewhere_untouched(root: Path) -> None:
    assert not any((root.parent / "elsewhere").iterdir())


def budget(value: str) -> dict[str, str]:
    return {"GPU_CHECK_BUDGET_S": value}


NOT_A_BUDGET = r"^gpu_check: GPU_CHECK_BUDGET_S=%s is not a number of seconds from 5 to 86400 \(default 480\); nothing done$"
EXISTS = r"^gpu_check: --out/OUT: \S*%s already exists and is not an empty folder; name a new one; nothing done$"
GPU_CHECK_ROWS = [
    Row("breach", "results-folder-is-a-link-out-of-the-project", out_is("link"), expect=EXISTS % "out",
        check=elsewhere_untouched),
    Row("breach", "results-folder-name-with-a-terminal-escape", out_is("escape"),
        expect=EXISTS % r"out\\x1b\]2;owned\\x07"),
    Row("breach", "python-name-with-a-terminal-escape", fresh_out(), env={"PYTHON": f"python{ESC}"},
        expect=r"^gpu_check: PYTHON=\$'python\\E\]2;owned\\a': not found; nothing done$"),
    Row("silent-wrong", "budget-nan-would-bound-nothing", fresh_out(), env=budget("nan"), expect=NOT_A_BUDGET % "'nan'"),
    Row("silent-wrong", "budget-infinite", fresh_out(), env=budget("inf"), expect=NOT_A_BUDGET % "'inf'"),
    Row("silent-wrong", "budget-negative", fresh_out(), env=budget("-5"), expect=NOT_A_BUDGET % "'-5'"),
    Row("silent-wrong", "budget-too-short-for-any-step", fresh_out(), env=budget("1e-300"), expect=NOT_A_BUDGET % "'1e-300'"),
    Row("silent-wrong", "budget-past-a-day-bounds-nothing", fresh_out(), env=budget("1e300"), expect=NOT_A_BUDGET % "'1e300'"),
    Row("hang", "data-of-two-gib-is-refused-unread", fresh_out("huge"),
        expect=r"^gpu_check: --data: \S*huge.tar.gz is 2,048 MiB, more than the 1,024 MiB it may be; nothing done$"),
    Row("hang", "data-is-a-fifo", fresh_out("fifo"),
        expect=r"^gpu_check: --data: \S*data.tar.gz is a FIFO \(named pipe\), not a regular file; nothing done$"),
    Row("hang", "data-is-dev-zero", fresh_out("dev-zero"),
        expect=r"^gpu_check: --data: \S*data.tar.gz is a device, not a regular file; nothing done$"),
    Row("traceback", "budget-not-a-number", fresh_out(), env=budget("abc"), expect=NOT_A_BUDGET % "'abc'"),
    Row("traceback", "budget-empty", fresh_out(), env=budget(""), expect=NOT_A_BUDGET % "''"),
    Row("traceback", "data-name-too-long", lambda r: fresh_out()(r) + ["--data", f"{r}/{'a' * 300}/x.tar.gz"],
        expect=r"^gpu_check: --data: \S+/a{300}/x.tar.gz: File name too long; nothing done$"),
    Row("traceback", "unknown-option", lambda r: fresh_out()(r) + ["--bogus"],
        expect=r"^gpu_check: unrecognized arguments: --bogus \(see --help\); nothing done$"),
    # Without CUDA, the wrapper says "no CUDA device" unless --cpu-smoke is asked for: anywhere, by its whole name
    Row("misleading", "cpu-smoke-after-another-option-is-still-the-smoke", lambda r: ["--data", "data.tar.gz", "--out",
        str(r / "out"), "--cpu-smoke"], env=budget("1e-300"), expect=NOT_A_BUDGET % "'1e-300'"),
    Row("misleading", "an-option-without-its-value-is-refused-not-no-gpu", lambda r: ["--out", str(r / "out"), "--data"],
        expect=r"^gpu_check: argument --data: expected one argument \(see --help\); nothing done$"),
    Row("misleading", "cpu-smoke-abbreviated-is-refused-not-no-gpu", lambda r: ["--out", str(r / "out"), "--cpu"],
        expect=r"^gpu_check: unrecognized arguments: --cpu \(see --help\); nothing done$"),
    Row("misleading", "python-missing-is-not-no-gpu", fresh_out(), env={"PYTHON": "no-such-python3"},
        expect=r"^gpu_check: PYTHON=no-such-python3: not found; nothing done$"),
    Row("misleading", "python-without-torch-is-not-no-gpu", python_without_torch, env={"PYTHON": "{project}/python-without-torch"},
        expect=r"^gpu_check: \S+/python-without-torch cannot import torch: install the requirements \(make install\); "
               r"nothing done$"),
    Row("misleading", "broken-pytorch-is-not-no-gpu", broken_torch, env={"PYTHONPATH": "{project}/block"},
        expect=r"^gpu_check: \S+ cannot import torch: install the requirements \(make install\); nothing done$"),
    Row("misleading", "a-missing-requirement-is-named-before-any-step", blocked_ruamel, env={"PYTHONPATH": "{project}/block"},
        expect=r"^gpu_check: \S+ lacks ruamel.yaml: install them \(pip install -r requirements.txt\); nothing done$"),
    Row("lost-work", "results-folder-holds-an-earlier-check", out_is("non-empty folder"), expect=EXISTS % "out"),
    Row("lost-work", "results-folder-is-a-file", out_is("file"), expect=EXISTS % "out"),
]


@pytest.mark.parametrize("row", GPU_CHECK_ROWS, ids=str)
def test_gpu_check(row, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    before = gpu_results()
    # {project}: the script runs in the repository's root (it cds there), so a row's own file is named in full
    env = {"PYTHON": sys.executable, **{name: value.format(project=project) for name, value in row.env.items()}}
    run_row(["bash", str(SCRIPT)], dataclasses.replace(row, env=env), project, says="stdout")
    assert gpu_results() == before


def test_every_class_has_two_rows():
    every_class_twice(GPU_CHECK_ROWS)


@pytest.mark.slow
def test_cpu_smoke_runs_every_step_without_wandb_or_dvc(tmp_path, tiny):
    archive = write_tar(tmp_path / "tiny-jpg.tar.gz", image_folder_files(tiny, "JPEG"), prefix="tiny-jpg/")
    # The GPU machine has neither W&B nor DVC: make both unimportable, so any import of them fails the run.
    for name in ("wandb", "dvc"):
        (tmp_path / "block" / name).mkdir(parents=True)
        (tmp_path / "block" / name / "__init__.py").write_text(f"raise ImportError('no {name} here')\n")
    out = tmp_path / "out"
    proc = script("--cpu-smoke", timeout=900, env={
        "OUT": str(out), "GPU_CHECK_DATA": str(archive), "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": str(tmp_path / "block")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == FILES and all(p.is_file() for p in out.iterdir())

    s = json.loads((out / "summary.json").read_text())
    assert s["mode"] == "cpu-smoke"
    status = {step["name"]: step["status"] for step in s["steps"]}
    ran = [f"default:{stage}" for stage in gpu_check.STAGES] + [f"spread:seed-{seed}" for seed in
                                                                gpu_check.SMOKE_SPREAD_SEEDS]
    ran += [f"{study}:{stage}" for study in ("fastest", "replicas") for stage in gpu_check.STAGES
            if stage not in gpu_check.UPSTREAM]
    reused = [f"{study}:{stage}" for study in ("fastest", "replicas")  # no option changes the data or the FLOPs
              for stage in gpu_check.UPSTREAM]
    assert status == {"environment": "ok", "cuda tests": "ok", **{n: "ok" for n in ran},
                      **{n: "reused" for n in reused}, "bench-eager": "ok", "bench-compile": "not run"}
    assert s["data_md5"] == hashlib.md5(archive.read_bytes()).hexdigest()
    # The headline, at the top level: W&B is off here because wandb cannot be imported, and says so.
    studies = s["studies"]
    assert s["wandb"] == "disabled" and s["device"] and len(s["commit"]) == 40 and isinstance(s["tree_clean"], bool)
    assert s["default_train_s"] == studies["default"]["stages"]["train"]["seconds"]
    assert s["fastest_train_s"] == studies["fastest"]["stages"]["train"]["seconds"]
    assert s["replicas2_train_s"] == studies["replicas"]["stages"]["train"]["seconds"]  # SMOKE_REPLICAS
    assert s["replicas2_over_one"] == pytest.approx(s["replicas2_train_s"] / s["default_train_s"], abs=1e-3)
    assert s["repro_s"] == pytest.approx(sum(studies["default"]["stages"][st]["seconds"] for st in
                                             ("flops", "train", "evaluate", "findings", "visualize")), abs=0.02)
    phases = studies["default"]["stages"]["train"]["phases"]
    assert set(phases) == {"data", "setup", "wandb_start", "epochs", "outputs", "wandb_finish"}
    assert sum(phases.values()) < studies["default"]["stages"]["train"]["seconds"]  # the rest is start-up
    assert studies["replicas"]["options"] == {"replicas": gpu_check.SMOKE_REPLICAS} and studies["replicas"]["epochs"] == 2
    tests = s["tests"]
    assert tests["tests"] == tests["skipped"] > 0 and tests["failed"] == []  # no CUDA here: collected, skipped

    for name, options in (("default", {}), ("fastest", gpu_check.SMOKE_FASTEST)):
        study = s["studies"][name]
        assert study["options"] == options
        assert (study["epochs"], study["train_images"], study["test_images"]) == (2, 100, 50)
        assert 0 <= study["test_acc"] <= 1 and len(study["history"]) == 2
        assert study["training_seconds"] == pytest.approx(sum(r["seconds"] for r in study["history"]), abs=0.05)
        assert study["model_tflops_per_s_later_epochs"] > 0
        assert all(st["status"] == "ok" and st["seconds"] > 0 for stage, st in study["stages"].items()
                   if f"{name}:{stage}" in ran)
    default = s["studies"]["default"]
    for seed in gpu_check.SMOKE_SPREAD_SEEDS:  # the default study again, the seed alone changed
        run = s["spread"][str(seed)]
        assert run["params"] == {**default["params"], "train": {**default["params"]["train"], "seed": seed}}
        assert (run["epochs"], run["train_images"], run["test_images"]) == (2, 100, 50)
        assert [r["epoch"] for r in run["history"]] == [1, 2] and 0 <= run["test_acc"] <= 1
    bench = s["benchmarks"]["bench-eager"]
    assert bench["smoke"] and bench["device"] == "cpu" and bench["wandb_flow_log_seconds"] is None

    md = (out / "summary.md").read_text()
    assert "| train |" in md and "| final test accuracy |" in md and "bench-eager" in md
    assert "| 42 (default study) |" in md and "| 43 |" in md
    log = (out / "log.txt").read_text()
    assert "===== fastest:train: ok" in log and "Traceback" not in log
    # The results are meant to be committed: no path of this machine (the archive by its name, its md5 beside it).
    for name in ("summary.json", "summary.md", "log.txt"):
        assert str(ROOT) not in (out / name).read_text() and str(tmp_path) not in (out / name).read_text(), name
    assert s["data"] == "tiny-jpg.tar.gz" and default["params"]["data"]["path"] == "tiny-jpg.tar.gz"


def test_a_step_over_its_time_is_stopped_with_its_children_and_the_rest_are_not_run(tmp_path):
    check = gpu_check.Check(out=tmp_path, smoke=True, budget_s=14, python=sys.executable, data=tmp_path / "none")
    (tmp_path / "log.txt").write_text("")
    pid_file = tmp_path / "child.pid"
    sleeper = ("import subprocess, sys, time; child = subprocess.Popen(['sleep', '120']); "
               f"open({str(pid_file)!r}, 'w').write(str(child.pid)); print('started', flush=True); time.sleep(120)")
    started = time.monotonic()
    slow = check.run("slow", [sys.executable, "-c", sleeper], cap_s=5)
    assert slow.status == "timeout" and slow.rc is None and time.monotonic() - started < 30
    assert "started" in slow.tail
    child = int(pid_file.read_text())
    time.sleep(0.5)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]

    failing = check.run("failing", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], cap_s=60)
    assert (failing.status, failing.rc) == ("failed", 3) and "boom" in failing.tail
    time.sleep(max(0.0, check.left - gpu_check.MIN_STEP_S + 0.1))  # less left than a step may start with
    late = check.run("late", [sys.executable, "-c", "pass"], cap_s=60)
    assert late.status == "not run" and late.note == "time budget spent"

    s = json.loads((tmp_path / "summary.json").read_text())
    assert [(st["name"], st["status"]) for st in s["steps"]] == [("slow", "timeout"), ("failing", "failed"),
                                                                  ("late", "not run")]


def test_a_killed_check_stops_its_running_step_and_leaves_no_process(tmp_path):
    pid_file = tmp_path / "child.pid"
    sleeper = ("import subprocess, time; child = subprocess.Popen(['sleep', '120']); "
               f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(120)")
    driver = (f"import signal, sys; from pathlib import Path; sys.path.insert(0, {str(ROOT)!r})\n"
              "from bench import gpu_check\n"
              "signal.signal(signal.SIGTERM, gpu_check._interrupt)  # as the script's entry point does\n"
              f"out = Path({str(tmp_path)!r}); (out / 'log.txt').write_text('')\n"
              "check = gpu_check.Check(out=out, smoke=True, budget_s=100, python=sys.executable, data=out / 'none')\n"
              "try:\n"
              f"    check.run('slow', [sys.executable, '-c', {sleeper!r}], cap_s=100)\n"
              "except KeyboardInterrupt:\n"
              "    sys.exit(130)\n")
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=ROOT)
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    child = int(pid_file.read_text())
    time.sleep(0.5)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def test_a_missing_archive_fails_the_studies_naming_it(tmp_path):
    check = gpu_check.Check(out=tmp_path, smoke=False, budget_s=60, python=sys.executable, data=tmp_path / "nope.tar.gz")
    (tmp_path / "log.txt").write_text("")
    record = gpu_check.study(check, tmp_path / "default", {})
    assert [st["status"] for st in record["stages"].values()] == ["failed"] * len(gpu_check.STAGES)
    assert all("nope.tar.gz not found" in st.note for st in check.steps)  # its name alone: no machine's path
    assert "test_acc" not in record
