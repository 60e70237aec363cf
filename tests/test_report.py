"""reports/RESULTS.md is generated from the committed files, never typed; the results command refuses bad input in one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cifar_study.results import RESULTS, document, render
from tests.conftest import ROOT, workspace_or_committed

# What reports/RESULTS.md is rendered from, and the file itself.
SOURCES = [RESULTS, "dvc.lock", "metrics", "plots/data", "reports"]


def results_mismatch(root: Path) -> str | None:
    if not (root / RESULTS).is_file():
        return f"{root}: {RESULTS} is missing (run: python -m cifar_study.results)"
    if (root / RESULTS).read_text() != document(root):
        return f"{root}: {RESULTS} differs from the files it is made from (run: python -m cifar_study.results)"
    return None


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60).stdout


def results_commit(tmp: Path) -> list[Path]:
    """The files at the commit that last wrote RESULTS.md, when params.yaml changed since: a user's own
    experiment committed on top (git commit params.yaml dvc.lock) leaves the shipped results as they were."""
    try:
        commit = git("log", "-1", "--format=%H", "--", RESULTS).strip()
        if not commit or git("diff", "--name-only", commit, "HEAD", "--", "params.yaml").strip() == "":
            return []
        for name in git("ls-tree", "-r", "-z", "--name-only", commit, "--", *SOURCES).split("\0"):
            if name:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(subprocess.run(["git", "show", f"{commit}:{name}"], cwd=ROOT,
                                                        capture_output=True, check=True).stdout)
    except (OSError, subprocess.CalledProcessError):  # no git, or no history: the workspace and HEAD decide
        return []
    return [tmp]


def test_the_results_file_matches_the_committed_files(tmp_path):
    # A user's experiments rewrite metrics/ and plots/ in the workspace: then HEAD's copies are checked,
    # and once they commit their own params, the files of the commit that generated RESULTS.md.
    roots = workspace_or_committed(SOURCES, tmp_path / "head") + results_commit(tmp_path / "results")
    problems = [results_mismatch(root) for root in roots]
    assert None in problems, problems


def test_the_readme_holds_no_generated_section():
    readme = (ROOT / "README.md").read_text()
    assert "<!--" not in readme and RESULTS in readme  # it links to the results instead


def baseline(root: Path) -> Path:
    for rel in ("metrics", "plots/data"):
        (root / rel).mkdir(parents=True, exist_ok=True)
    (root / "plots/data/history.csv").write_text(
        "epoch,train_loss,train_acc,heldout_loss,heldout_acc,lr,seconds\n"
        "1,1.8,0.35,1.4,0.49,0.001,200\n2,1.5,0.45,1.2,0.57,0.001,210\n")
    (root / "metrics/train.json").write_text('{"heldout_split": "test"}')
    (root / "metrics/eval.json").write_text('{"test_acc": 0.57, "test_loss": 1.2}')
    (root / "plots/data/class_accuracy.csv").write_text("class,accuracy\ncat,0.4\ndog,0.6\n")
    (root / "metrics/flops.json").write_text('{"flops": 161163264, "gflops": 0.1612}')
    (root / "metrics/data.json").write_text('{"train_count": 50000, "test_count": 10000}')
    (root / "dvc.lock").write_text(
        "stages:\n  fetch_data:\n    params:\n      params.yaml:\n        data.source: folder\n"
        "        data.path: data/raw/cifar10-jpg.tar.gz\n")
    return root


def test_render_reports_every_epoch_and_names_the_archive_not_its_path(tmp_path):
    text = render(baseline(tmp_path))
    assert "| 2 | 1.5000 | 45.00% | 1.2000 | 57.00% | 210 |" in text
    assert "**57.00%** | 84.54%" in text and "49.00% | 47.23%" in text
    assert "the archive `cifar10-jpg.tar.gz`" in text and "data/raw" not in text and "0.11 h" in text
    assert "| dog | 60.00% |" in text
    assert "![learning_curves](../plots/figures/learning_curves.png)" in text  # relative to reports/


def results(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cifar_study.results", *args], cwd=root, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_full_disk_for_stdout_is_one_line_and_exit_2(tmp_path):
    baseline(tmp_path)
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "cifar_study.results"], cwd=tmp_path, stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and done.stderr == "error: standard output: cannot write (No space left on device)\n"


def test_the_command_writes_the_file_and_checks_it(tmp_path):
    baseline(tmp_path)
    assert results(tmp_path, "--check").returncode == 1  # not written yet
    done = results(tmp_path)
    assert done.returncode == 0 and done.stdout == f"wrote {RESULTS}\n", done.stderr
    assert (tmp_path / RESULTS).read_text() == document(tmp_path)
    assert results(tmp_path, "--check").returncode == 0
    (tmp_path / "metrics/eval.json").write_text('{"test_acc": 0.58, "test_loss": 1.2}')
    stale = results(tmp_path, "--check")
    assert stale.returncode == 1 and stale.stderr.strip() == f"{RESULTS} is out of date: run python -m cifar_study.results"


def spoil_findings(root: Path, verdict: str) -> None:
    (root / "reports").mkdir(exist_ok=True)
    (root / "reports/findings.json").write_text(json.dumps({
        "flow_health": {"verdict": "healthy", "missing": "", "snapshots": 12, "layers": []},
        "claims": [{"claim": "c", "measured": "m", "verdict": verdict}]}))


def test_text_from_a_results_file_is_escaped_in_the_markdown(tmp_path):
    baseline(tmp_path)
    spoil_findings(tmp_path, "<script>alert(1)</script> | x")
    text = document(tmp_path)
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt; \\| x" in text


# By class: silent-wrong (a value no run can produce), misleading (a special file as "nothing committed"),
# hang (a FIFO), traceback (a field of the wrong shape), breach (writes through links).
@pytest.mark.parametrize("spoil, message", [
    (lambda root: (root / "plots/data/history.csv").unlink(), "plots/data/history.csv: not found"),
    (lambda root: (root / "metrics/train.json").write_bytes(b'{"heldout_split": "t\xe9st"}'),
     "metrics/train.json: not UTF-8"),
    (lambda root: (root / "metrics/flops.json").write_text("{"), "metrics/flops.json: not a JSON document"),
    (lambda root: (root / "metrics/eval.json").write_text('{"test_acc": NaN, "test_loss": 1}'),
     "metrics/eval.json: not a JSON document of finite numbers (NaN is not a finite number)"),
    (lambda root: (root / "metrics/eval.json").write_text('{"test_acc": 1e309, "test_loss": 1}'),
     "metrics/eval.json: not a JSON document of finite numbers (1e309 is not a finite number)"),
    (lambda root: (root / "metrics/eval.json").write_text("[" * 100000 + "]" * 100000),
     "metrics/eval.json: not a JSON document of finite numbers (nested deeper than any file the pipeline writes)"),
    (lambda root: (root / "plots/data/history.csv").write_text(
        "epoch,train_loss,train_acc,heldout_loss,heldout_acc,lr,seconds\n1,1.8,0.35,1.4,0.49,0.001," + "9" * 200000 + "\n"),
     "plots/data/history.csv: not a CSV file the pipeline writes (field larger than field limit"),
    (lambda root: (root / "metrics/eval.json").write_text('{"test_acc": 5.0, "test_loss": 1}'),
     "metrics/eval.json: test_acc is 5.0, not what the pipeline writes"),
    (lambda root: (root / "plots/data/history.csv").write_text(
        "epoch,train_loss,train_acc,heldout_loss,heldout_acc,lr,seconds\n1,1.8,0.35,inf,0.49,0.001,200\n"),
     "plots/data/history.csv: epoch 1 holds a value that is not a finite number"),
    (lambda root: ((root / "metrics/eval.json").unlink(), (root / "metrics/eval.json").mkdir()),
     "metrics/eval.json is a directory, not a regular file"),
    (lambda root: ((root / "metrics/eval.json").unlink(), os.mkfifo(root / "metrics/eval.json")),
     "metrics/eval.json is a FIFO (named pipe), not a regular file"),
    (lambda root: ((root / "metrics/data.json").unlink(), os.mkfifo(root / "metrics/data.json")),
     "metrics/data.json is a FIFO (named pipe), not a regular file"),
    (lambda root: spoil_findings(root, 3) or (root / "reports/findings.json").write_text('{"flow_health": 3}'),
     "reports/findings.json: not as the pipeline writes it (TypeError"),
    (lambda root: (root / "plots/data/class_accuracy.csv").write_text("class,accuracy\n<b>cat</b>,0.4\n"),
     "plots/data/class_accuracy.csv: row"),
    (lambda root: (root / "reports").symlink_to(root / "elsewhere", target_is_directory=True), "symbolic link"),
    (lambda root: ((root / "reports").mkdir(), (root / RESULTS).symlink_to(root / "victim.md")), "symbolic link"),
    (lambda root: ((root / "reports").mkdir(), os.mkfifo(root / RESULTS)), "not a regular file"),
])
def test_bad_input_or_target_is_one_line_and_exit_2(tmp_path, spoil, message):
    baseline(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "victim.md").write_text("untouched\n")
    spoil(tmp_path)
    proc = results(tmp_path)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert (tmp_path / "victim.md").read_text() == "untouched\n" and not any((tmp_path / "elsewhere").iterdir())
