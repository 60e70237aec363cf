"""Run-to-run spread (cifar_study/spread.py): the seed replicas of one experiment, aggregated, and committed."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import yaml

from cifar_study import spread
from cifar_study.analysis import stats
from cifar_study.core.history import EpochRecord
from cifar_study.pipeline.cli import exit_status
from cifar_study.results import SPREAD, SPREAD_FIGURE, SPREAD_RUNS, render_spread
from tests.conftest import ROOT
from tests.hostile import ESC, Row, command, every_class_twice, run_row, special, write
from tests.test_commands import ALIAS_BOMB

BASE_PARAMS = {"data": {"source": "download", "path": ""}, "train": {"seed": 42, "epochs": 3, "amp": "none",
               "channels_last": False, "lr": 0.001}, "wandb": {"mode": "offline"}}
FINALS = {42: 0.81, 43: 0.83, 44: 0.80}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def write_run(repo: Path, params: dict, final: float) -> None:
    (repo / "plots/data").mkdir(parents=True, exist_ok=True)
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    rows = [EpochRecord(e, 1.0, 0.5, 1.0, final - 0.1 * (3 - e), 0.001, 60.0 + e).row() for e in (1, 2, 3)]
    lines = [",".join(EpochRecord.columns())] + [",".join(str(r[c]) for c in EpochRecord.columns()) for r in rows]
    (repo / "plots/data/history.csv").write_text("\n".join(lines) + "\n")
    (repo / "metrics/eval.json").write_text(json.dumps({"test_acc": final, "test_loss": 0.5}))


def replicas_run(repo: Path, finals: dict[int, float], **train) -> None:
    """What `dvc exp run -S train.replicas=N` leaves in the workspace: params.yaml and reports/replicas.json."""
    params = yaml.safe_load(yaml.safe_dump(BASE_PARAMS))
    params["train"].update({"seed": min(finals), "amp": "bf16", "channels_last": True, "replicas": len(finals), **train})
    params["data"].update(source="folder", path="cifar10-jpg.tar.gz")
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / "reports").mkdir(exist_ok=True)
    replicas = [{"seed": seed, "test_acc": final, "test_loss": 0.5,
                 "history": [EpochRecord(e, 1.0, 0.5, 1.0, final - 0.1 * (3 - e), 0.001, 60.0 + e).row() for e in (1, 2, 3)]}
                for seed, final in finals.items()]
    (repo / "reports/replicas.json").write_text(json.dumps(replicas))


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "t@t")
    git(repo, "config", "user.name", "t")
    write_run(repo, BASE_PARAMS, 0.82)  # the committed fp32 baseline: seed 42
    (repo / "dvc.lock").write_text(yaml.safe_dump({"stages": {  # the baseline was made from the JPEG folder, in fp32
        "fetch_data": {"params": {"params.yaml": {"data.source": "folder", "data.path": "cifar10-jpg.tar.gz"}}},
        # as DVC writes it: a whole section (train) as a mapping, single keys dotted
        "train": {"params": {"params.yaml": {"train": {"seed": 42, "amp": "none", "channels_last": False, "lr": 0.001,
                                                       "epochs": 3}}}}}}))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "baseline")
    replicas_run(repo, FINALS)
    return repo


def test_t_quantiles_match_the_tables():
    for df, value in ((1, 12.706), (2, 4.303), (4, 2.776), (30, 2.042)):
        assert stats.t_quantile(0.975, df) == pytest.approx(value, abs=1e-3)


def test_collects_the_seed_replicas_and_aggregates_them(repo):
    collected = spread.collect_replicas(repo)
    assert [r["seed"] for r in collected["runs"]] == [42, 43, 44]
    assert collected["changed_params"] == {"data.source": "folder", "data.path": "cifar10-jpg.tar.gz",
                                           "train.amp": "bf16", "train.channels_last": True, "train.replicas": 3}
    # A third of the stacked run's 186 s: each replica's share of the time.
    assert collected["runs"][0]["seconds"] == 62.0 and collected["baseline"]["test_acc"] == 0.82
    result = spread.write(repo, collected)
    final, values = result["final_test_acc"], list(FINALS.values())
    assert final["mean"] == pytest.approx(statistics.fmean(values))
    assert final["sd"] == pytest.approx(statistics.stdev(values))
    half = 4.3027 * statistics.stdev(values) / math.sqrt(3)
    assert (final["ci_low"], final["ci_high"]) == pytest.approx((final["mean"] - half, final["mean"] + half), abs=1e-4)
    assert final["pi_high"] - final["pi_low"] == pytest.approx(2 * half * math.sqrt(4), abs=1e-4)
    assert [r["epoch"] for r in result["heldout_acc_per_epoch"]] == [1, 2, 3]
    assert result["heldout_acc_per_epoch"][0]["mean"] == pytest.approx(statistics.fmean(values) - 0.2)
    check = result["baseline_check"]
    assert check["seed"] == 42 and check["difference"] == pytest.approx(0.01) and check["within_prediction_interval"]
    assert check["differs_in"] == {"train.replicas": [1, 3], "train.amp": ["none", "bf16"],
                                   "train.channels_last": [False, True]}
    assert check["baseline"].startswith("baseline at ")
    for rel in (SPREAD_RUNS, SPREAD, SPREAD_FIGURE):
        assert (repo / rel).is_file()
    text = render_spread(repo)
    assert "3 runs of the study that differ only in `train.seed` (42, 43, 44)" in text
    assert "`train.amp=bf16`" in text and "| replica-0 | 42 | 81.00% | 1.0 min |" in text
    assert "| the original study (official archive) | 84.54% | inside | inside |" in text
    assert "| plain implementation on the JPEG copy | 81.62% | inside | inside |" in text


@pytest.mark.parametrize("change, message", [
    (lambda repo: replicas_run(repo, {42: 0.8}), "reports/replicas.json: 1 replica(s); the spread needs at least 2"),
    (lambda repo: replicas_run(repo, FINALS, replicas=5), "reports/replicas.json holds 3 replicas but params.yaml "
                                                          "says train.replicas: 5 (stale: run dvc repro)"),
    (lambda repo: (repo / "reports/replicas.json").write_text(json.dumps(
        [{"seed": 42, "test_acc": 0.8, "history": []}] * 3)), "two runs share a train.seed"),
])
def test_too_few_stale_or_duplicated_replicas_are_refused(repo, change, message):
    change(repo)
    with pytest.raises(spread.SpreadError, match=re.escape(message)):
        spread.summarize(spread.collect_replicas(repo))  # the seeds are checked where every source meets


def test_command_line_collects_then_resummarises_the_same(repo):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cifar_study.spread", *args], cwd=repo, capture_output=True,
                              text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"})

    first = run()
    assert first.returncode == 0 and first.stdout.startswith("spread: 3 runs, final test accuracy 81.33%"), first.stderr
    written = (repo / SPREAD).read_bytes()
    again = run("--from-runs")
    assert again.returncode == 0 and (repo / SPREAD).read_bytes() == written
    (repo / "reports/replicas.json").write_text('[{"seed": 42}, {"seed": 43}, {"seed": 44}]')
    bad = run()
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: reports/replicas.json: not what a study run writes (KeyError: 'history')"]



def test_a_baseline_of_another_protocol_is_not_compared(repo):
    """The same-seed check compares precision options only: a baseline with other params is left out."""
    collected = spread.collect_replicas(repo)
    collected["baseline"]["params"]["train.lr"] = 0.01
    assert spread.summarize(collected)["baseline_check"] is None
    with pytest.raises(spread.SpreadError, match="the spread needs at least 2"):
        spread.summarize({**collected, "runs": collected["runs"][:1]})


def test_the_committed_spread_is_what_its_runs_give():
    """reports/spread/spread.json is the summary of the committed runs.json (reports/RESULTS.md, which shows it,
    is checked in tests/test_report.py)."""
    collected = json.loads((ROOT / SPREAD_RUNS).read_text())
    assert spread.summarize(collected) == json.loads((ROOT / SPREAD).read_text())
    assert len(collected["runs"]) >= 3 and (ROOT / SPREAD_FIGURE).is_file()


def gpu_summary(md5: str) -> dict:
    """What bench/gpu_check.py writes: the default study (seed 42) and the spread's seeds, with their params."""
    def study(seed: int, final: float) -> dict:
        params = yaml.safe_load(yaml.safe_dump(BASE_PARAMS))
        params["data"].update(source="folder", path="/elsewhere/cifar10-jpg.tar.gz")
        params["train"].update(seed=seed, device="cuda")
        params["train"].pop("replicas", None)  # the committed GPU runs predate the key: the code's default, 1
        history = [{"epoch": e, "heldout_acc": final - 0.1 * (3 - e)} for e in (1, 2, 3)]
        return {"params": params, "test_acc": final, "history": history, "training_seconds": 9.04}

    return {"data_md5": md5, "environment": {"device": "NVIDIA H200"}, "studies": {"default": study(42, 0.80)},
            "spread": {"43": study(43, 0.82), "44": study(44, 0.81), "45": {"params": {}}}}  # 45 did not finish


def test_a_gpu_checks_seeds_are_a_spread_compared_with_the_cpu_baseline(repo, tmp_path):
    (repo / "cifar10-jpg.tar.gz").write_bytes(b"the archive")
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps(gpu_summary(hashlib.md5(b"the archive").hexdigest())))
    collected = spread.collect_gpu_check(repo, summary)
    assert [(r["name"], r["seed"]) for r in collected["runs"]] == [("gpu-default", 42), ("gpu-seed-43", 43),
                                                                   ("gpu-seed-44", 44)]
    assert collected["changed_params"] == {"data.source": "folder", "data.path": "/elsewhere/cifar10-jpg.tar.gz",
                                           "train.device": "cuda"}
    result = spread.write(repo, collected)
    assert result["device"] == "NVIDIA H200" and result["final_test_acc"]["mean"] == pytest.approx(0.81)
    check = result["baseline_check"]  # the same bytes under another path, on another device: the same protocol
    assert check["differs_in"] == {"train.device": ["auto", "cuda"]} and check["difference"] == pytest.approx(0.02)
    assert "on NVIDIA H200" in render_spread(repo)

    summary.write_text(json.dumps(gpu_summary("0" * 32)))  # another archive: no comparison
    assert spread.summarize(spread.collect_gpu_check(repo, summary))["baseline_check"] is None
    summary.write_text(json.dumps({"studies": {}, "spread": {}}))
    with pytest.raises(spread.SpreadError, match="0 finished run"):
        spread.collect_gpu_check(repo, summary)


@pytest.mark.parametrize("break_it, message", [
    (lambda s: [s], "not a bench/gpu_check.py summary.json"),
    (lambda s: {**s, "data_md5": ["x"]}, "not a bench/gpu_check.py summary.json"),
    (lambda s: {**s, "studies": []}, "not what a study run writes (AttributeError"),
    (lambda s: s["spread"]["43"].update(test_acc=float("nan")), "not what a study run writes (ValueError: NaN is not a finite number)"),
    (lambda s: s["spread"]["43"].update(test_acc=81.69), "run gpu-seed-43: test_acc 81.69 is not an accuracy"),
    (lambda s: s["spread"]["43"].update(test_acc=True), "run gpu-seed-43: test_acc True is not an accuracy"),
    (lambda s: s["spread"]["43"]["params"]["train"].update(seed=42.7), "train.seed 42.7 is not an integer"),
])
def test_a_malformed_gpu_summary_is_one_line_and_exit_2(repo, tmp_path, break_it, message, monkeypatch, capsys):
    summary = gpu_summary("0" * 32)
    summary = break_it(summary) or summary  # a lambda that edits in place returns None
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    monkeypatch.chdir(repo)  # the command line in-process: the same main(), without a process start per row
    monkeypatch.setattr(sys, "argv", ["spread", "--from-gpu-check", str(path)])
    code = exit_status(spread.main)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (repo / SPREAD).exists()


@pytest.mark.parametrize("option, content", [
    ("--from-gpu-check", b""),  # empty
    ("--from-gpu-check", b"\xff\xfe{"),  # not UTF-8
    ("--from-gpu-check", b"[" * 200_000 + b"]" * 200_000),  # deeper than Python's parser goes
    ("--from-runs", b"{" + b'"a":{' * 200_000 + b"}" * 200_001),
])
def test_a_record_that_is_no_json_of_runs_is_one_line_and_exit_2(repo, tmp_path, option, content, monkeypatch,
                                                                  capsys):
    path = tmp_path / "summary.json" if option == "--from-gpu-check" else repo / SPREAD_RUNS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    monkeypatch.chdir(repo)
    monkeypatch.setattr(sys, "argv", ["spread", option] + ([str(path)] if option == "--from-gpu-check" else []))
    code = exit_status(spread.main)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "not what a study run writes" in lines[0], lines
    assert not (repo / SPREAD).exists()


@pytest.mark.parametrize("special, kind", [("/dev/zero", "device"), ("fifo", "FIFO (named pipe)"), ("directory", "directory")])
def test_a_summary_that_is_no_regular_file_is_refused_without_reading_it(repo, tmp_path, special, kind, monkeypatch,
                                                                          capsys):
    """/dev/zero never ends and a FIFO waits for a writer: both would hang a plain read."""
    path = {"/dev/zero": Path("/dev/zero"), "fifo": tmp_path / "fifo", "directory": tmp_path}[special]
    if special == "fifo":
        os.mkfifo(path)
    monkeypatch.chdir(repo)
    monkeypatch.setattr(sys, "argv", ["spread", "--from-gpu-check", str(path)])
    code = exit_status(spread.main)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines == [f"error: {path} is a {kind}, not a regular file"]


def test_a_spread_of_thousands_of_epochs_takes_seconds_not_hours():
    import time

    from cifar_study.analysis.stats import interval
    started = time.monotonic()
    for epoch in range(5000):  # each epoch's interval over 3 runs, as summarize computes them
        interval([0.5, 0.6, 0.55 + epoch * 1e-6])
    assert time.monotonic() - started < 10


# --- hostile input, by class (issue 27; the classes and the runner: tests/hostile.py) ----------------------------

def summary_of(change: Callable[[dict], object] | None = None, raw: bytes | None = None) -> Callable[[Path], list[str]]:
    """A setup that writes a GPU check's summary.json into the project (the default, changed, or `raw` bytes)."""
    def setup(root: Path) -> list[str]:
        summary = gpu_summary("0" * 32)
        if change:
            summary = change(summary) or summary  # a lambda that edits in place returns None
        write(root, {"summary.json": raw if raw is not None else json.dumps(summary)})
        return ["--from-gpu-check", "summary.json"]
    return setup


def replicas_of(**train) -> Callable[[Path], list[str]]:
    """A setup that rewrites the workspace's replicas run with `train` changed."""
    def setup(root: Path) -> list[str]:
        replicas_run(root, FINALS, **train)
        return []
    return setup


def baseline_lock_of(text: str) -> Callable[[Path], list[str]]:
    """A setup that commits `text` as the baseline's dvc.lock (the spread reads it from git)."""
    def setup(root: Path) -> list[str]:
        write(root, {"dvc.lock": text})
        git(root, "commit", "-qam", "another dvc.lock")
        return []
    return setup


def replicas_json(content: str | bytes) -> Callable[[Path], list[str]]:
    return lambda root: write(root, {"reports/replicas.json": content}) or []


def spread_written_before(root: Path) -> list[str]:
    """The spread of the replicas, written once: a later failed run must keep it."""
    assert subprocess.run(command("spread"), cwd=root, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=120).returncode == 0
    return []


def runs_of(root: Path, change: Callable[[list], list]) -> None:
    """Rewrite the runs the spread keeps in reports/spread/runs.json (what --from-runs reads)."""
    collected = json.loads((root / SPREAD_RUNS).read_text())
    write(root, {SPREAD_RUNS: json.dumps({**collected, "runs": change(collected["runs"])})})


def baseline_of(root: Path, **changes: object) -> None:
    """Change the committed baseline kept in reports/spread/runs.json."""
    collected = json.loads((root / SPREAD_RUNS).read_text())
    write(root, {SPREAD_RUNS: json.dumps({**collected, "baseline": {**collected["baseline"], **changes}})})


def spread_folder_linked_out(root: Path) -> list[str]:
    (root.parent / "elsewhere").mkdir()
    (root / "reports/spread").symlink_to(root.parent / "elsewhere")
    return []


def outside_untouched(root: Path) -> None:
    assert not any((root.parent / "elsewhere").iterdir())


NOT_A_RUN = r"^error: summary.json: not what a study run writes \("
KILLED_TEMPORARY = "reports/spread/.runs.json.99999999999999999999.k1ll3d.tmp"  # no process has that pid
SPREAD_ROWS = [
    Row("breach", "spread-folder-is-a-link-out-of-the-project", spread_folder_linked_out,
        expect=r"^error: reports/spread is a symbolic link: not written through \(replace it with a regular folder\)$",
        check=outside_untouched),
    Row("breach", "param-value-with-a-terminal-escape", replicas_of(note=f"x{ESC}"), code=0,
        expect=r"^spread: 3 runs", writes=(SPREAD, SPREAD_RUNS, SPREAD_FIGURE)),
    Row("breach", "param-value-with-mathtext-that-matplotlib-cannot-parse", replicas_of(note="$\\frac{"), code=0,
        expect=r"^spread: 3 runs", writes=(SPREAD, SPREAD_RUNS, SPREAD_FIGURE)),
    Row("breach", "run-name-with-a-terminal-escape-for-the-legend", lambda r: (
        spread_written_before(r), runs_of(r, lambda runs: [{**runs[0], "name": f"x{ESC}"}, *runs[1:]]), ["--from-runs"])[2],
        expect=r"^error: reports/spread/runs.json: not what a study run writes \(ValueError: run name 'x\\x1b\]2;owned"),
    Row("silent-wrong", "baseline-name-that-matplotlib-hides", lambda r: (spread_written_before(r), baseline_of(
        r, name="_baseline"), ["--from-runs"])[2], expect=r"run name '_baseline' is not one this study writes"),
    Row("lost-work", "temporaries-of-a-killed-run-are-removed", lambda r: (replicas_of()(r), write(r, {
        KILLED_TEMPORARY: "partial"}))[0], code=0, expect=r"^spread: 3 runs",
        writes=(SPREAD, SPREAD_RUNS, SPREAD_FIGURE, KILLED_TEMPORARY), check=lambda r: not (r / KILLED_TEMPORARY).exists()
        or pytest.fail("a killed run's temporary was left in reports/spread/ (probe 7)")),
    Row("silent-wrong", "nan-accuracy-of-a-seed", summary_of(lambda s: s["spread"]["43"].update(test_acc=float("nan"))),
        expect=NOT_A_RUN + r"ValueError: NaN is not a finite number\)$"),
    Row("silent-wrong", "accuracy-in-percent", summary_of(lambda s: s["spread"]["43"].update(test_acc=81.69)),
        expect=r"run gpu-seed-43: test_acc 81.69 is not an accuracy"),
    Row("silent-wrong", "history-accuracy-true", replicas_json(json.dumps(
        [{"seed": s, "test_acc": 0.8, "test_loss": 0.5, "history": [{"epoch": 1, "train_loss": 1, "train_acc": 0.5,
          "heldout_loss": 1, "heldout_acc": True, "lr": 0.001, "seconds": 60}]} for s in (42, 43, 44)])),
        expect=r"^error: reports/replicas.json: not what a study run writes \(ValueError: history row 1: true/false"),
    Row("silent-wrong", "seed-not-an-integer",
        summary_of(lambda s: s["spread"]["43"]["params"]["train"].update(seed=42.7)),
        expect=r"train.seed 42.7 is not an integer"),
    Row("silent-wrong", "one-run-listed-three-times", lambda r: (spread_written_before(r), runs_of(r, lambda runs: [runs[0]] * 3),
                                                                 ["--from-runs"])[2],
        expect=r"^error: two runs share a train.seed \(42, 42, 42\): each seed is one run$"),
    Row("hang", "summary-is-a-fifo", special("summary.json", "fifo", ["--from-gpu-check", "summary.json"]),
        expect=r"^error: summary.json is a FIFO \(named pipe\), not a regular file$"),
    Row("hang", "summary-is-dev-zero", special("summary.json", "dev-zero", ["--from-gpu-check", "summary.json"]),
        expect=r"^error: summary.json is a device, not a regular file$"),
    Row("hang", "baseline-dvc-lock-an-alias-bomb", baseline_lock_of(ALIAS_BOMB),
        expect=r"^error: dvc.lock at \w{7} expands to more than 100,000 values \(nested YAML aliases\)"),
    Row("hang", "replicas-json-is-a-fifo", special("reports/replicas.json", "fifo"),
        expect=r"^error: reports/replicas.json is a FIFO \(named pipe\), not a regular file$"),
    Row("traceback", "summary-empty", summary_of(raw=b""), expect=NOT_A_RUN),
    Row("traceback", "summary-not-utf8", summary_of(raw=b"\xff\xfe{"), expect=NOT_A_RUN),
    Row("traceback", "summary-nested-past-the-parser", summary_of(raw=b"[" * 200_000 + b"]" * 200_000), expect=NOT_A_RUN),
    Row("traceback", "studies-a-list", summary_of(lambda s: {**s, "studies": []}), expect=NOT_A_RUN + "AttributeError"),
    Row("traceback", "replica-without-a-history", replicas_json('[{"seed": 42}, {"seed": 43}, {"seed": 44}]'),
        expect=r"^error: reports/replicas.json: not what a study run writes \(KeyError: 'history'\)$"),
    Row("misleading", "summary-is-a-directory", special("summary.json", "directory", ["--from-gpu-check", "summary.json"]),
        expect=r"^error: summary.json is a directory, not a regular file$"),
    Row("misleading", "replicas-stale-against-params", replicas_of(replicas=5),
        expect=r"^error: reports/replicas.json holds 3 replicas but params.yaml says train.replicas: 5 \(stale"),
    Row("misleading", "spread-folder-is-a-file", lambda r: write(r, {"reports/spread": "x"}) or [],
        expect=r"^error: reports/spread/runs.json: cannot write \(a file is in the way of its folder\)$"),
    Row("misleading", "one-replica", lambda r: replicas_run(r, {42: 0.8}) or [],
        expect=r"^error: reports/replicas.json: 1 replica\(s\); the spread needs at least 2 \(dvc exp run -S"),
    Row("lost-work", "stdout-on-a-full-disk", lambda r: [], stdout="/dev/full", writes=(SPREAD, SPREAD_RUNS, SPREAD_FIGURE),
        expect=r"^error: standard output: cannot write \(No space left on device\)$"),
    Row("lost-work", "outputs-past-the-file-size-limit-keep-the-last-spread",
        lambda r: (spread_written_before(r), replicas_run(r, {42: 0.7, 43: 0.75, 44: 0.72}))[0], fsize=20_000,
        expect=r"^error: reports/spread/\S+: cannot write \(File too large\); no output was changed$"),
]


@pytest.mark.parametrize("row", SPREAD_ROWS, ids=str)
def test_spread(row, repo):
    run_row(command("spread"), row, repo)


def test_every_class_has_two_rows():
    every_class_twice(SPREAD_ROWS)
