"""reports/RESULTS.md is generated from the committed files, never typed; the results command refuses bad input in one line."""
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from typing import Callable

import pytest

from cifar_study.results import RESULTS, SPREAD, document, render
from tests.conftest import ROOT, workspace_or_committed
from tests.hostile import Row, command, every_class_twice, run_row, special, write

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


def spoil_findings(root: Path, measured: str) -> None:
    (root / "reports").mkdir(exist_ok=True)
    (root / "reports/findings.json").write_text(json.dumps({
        "flow_health": {"verdict": "healthy", "missing": "", "snapshots": 12, "layers": []},
        "claims": [{"claim": "c", "measured": measured, "verdict": "holds"}]}))


def rendered(root: Path) -> str:
    """reports/RESULTS.md as a page shows it: CommonMark with GitHub's tables and strikethrough."""
    from markdown_it import MarkdownIt  # installed with DVC (rich renders Markdown with it)

    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(document(root))


@pytest.mark.parametrize("text", [
    "<script>alert(1)</script> | x",
    "![t](https://evil.example/t.png) [click](javascript:alert(1)) <https://evil.example>",
    "*em* __strong__ ~~del~~ &lt; a\\b $x$",
    "``` a `code` span",
], ids=["html-and-a-cell-end", "image-link-autolink", "emphasis-entity-backslash-math", "backticks"])
def test_text_from_a_results_file_shows_as_written_and_makes_no_element(tmp_path, text):
    """In a table cell (a findings measurement) and in a code span (the recorded data source), rendered: the
    page has the same elements as with plain text there, and shows the text as it is written."""
    def tags(page: str) -> list[str]:
        return sorted(re.findall(r"<(\w+)", page))

    def shown(page: str) -> str:
        return html.unescape(re.sub(r"<[^>]+>", "", page))

    def page_with(root: Path, value: str) -> str:
        spoil_findings(baseline(root), value)
        write(root, {"dvc.lock": "stages:\n  fetch_data:\n    params:\n      params.yaml:\n        data.source: "
                                 + json.dumps(value) + "\n"})
        return rendered(root)

    plain, page = page_with(tmp_path / "plain", "plain text"), page_with(tmp_path / "spoiled", text)
    assert tags(page) == tags(plain) and shown(page).count(text) == 2, page


def test_a_class_name_with_markup_shows_as_written(tmp_path):
    """A class name may hold _ + - . and spaces (dataset.CLASS_NAME): as Markdown, `_x_` and `__x__` are emphasis."""
    def page_with(root: Path, name: str) -> str:
        baseline(root)
        (root / "plots/data/class_accuracy.csv").write_text(f"class,accuracy\n{name},0.4\ndog,0.6\n")
        return rendered(root)

    name = "cat _really_ __bad__ +-1."
    plain, page = page_with(tmp_path / "plain", "cat"), page_with(tmp_path / "spoiled", name)
    assert sorted(re.findall(r"<(\w+)", page)) == sorted(re.findall(r"<(\w+)", plain)) and f"<td>{name}</td>" in page


# --- hostile input, by class (issue 27; the classes and the runner: tests/hostile.py) ----------------------------

@pytest.fixture
def results_project(tmp_path) -> Path:
    """The baseline's files, and beside the project a folder and a file that no write may reach."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "victim.md").write_text("untouched\n")
    return baseline(tmp_path / "project")


def untouched_outside(root: Path) -> None:
    assert (root.parent / "victim.md").read_text() == "untouched\n" and not any((root.parent / "elsewhere").iterdir())


def spoil(**files: str | bytes) -> Callable[[Path], list[str]]:
    """A setup that writes `files` (names with / as __: plots__data__history_csv) into the project."""
    def setup(root: Path) -> list[str]:
        write(root, {name.replace("__", "/").replace("_json", ".json").replace("_csv", ".csv"): content
                     for name, content in files.items()})
        return []
    return setup


def linked(name: str, target: str) -> Callable[[Path], list[str]]:
    """A setup that puts a symbolic link at `name`, to `target` beside the project."""
    def setup(root: Path) -> list[str]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(root.parent / target)
        return []
    return setup


HISTORY_HEAD = "epoch,train_loss,train_acc,heldout_loss,heldout_acc,lr,seconds\n"
FINDINGS_OF = '{"flow_health": {"verdict": "healthy", "missing": "", "snapshots": 12, "layers": []}, ' \
              '"claims": [{"claim": "c", "measured": "m", "verdict": %s}]}'
WROTE = r"^wrote reports/RESULTS.md$"


def spread_json(change: Callable[[dict], None]) -> Callable[[Path], list[str]]:
    """A setup that writes the committed spread.json, changed by `change`."""
    def setup(root: Path) -> list[str]:
        spread = json.loads((ROOT / SPREAD).read_text())
        change(spread)
        write(root, {SPREAD: json.dumps(spread)})
        return []
    return setup


def results_file_holds(*texts: str) -> Callable[[Path], None]:
    def check(root: Path) -> None:
        written = (root / RESULTS).read_text()
        assert all(text in written for text in texts) and "<script>" not in written, written
        untouched_outside(root)
    return check


RESULTS_ROWS = [
    Row("breach", "reports-folder-is-a-link-out-of-the-project", linked("reports", "elsewhere"),
        expect=r"^error: reports is a symbolic link: not written through", check=untouched_outside),
    Row("breach", "results-file-is-a-link-out-of-the-project",
        lambda r: ((r / "reports").mkdir(), linked(RESULTS, "victim.md")(r))[1],
        expect=r"^error: reports/RESULTS.md is a symbolic link: not written through", check=untouched_outside),
    Row("breach", "markup-in-a-findings-verdict", spoil(reports__findings_json=FINDINGS_OF % '"<script>x</script> | y"'),
        code=0, expect=WROTE, writes=(RESULTS,),
        check=results_file_holds("\\<script\\>x\\</script\\> \\| y")),
    Row("breach", "markup-as-a-class-name", spoil(plots__data__class_accuracy_csv="class,accuracy\n<b>cat</b>,0.4\n"),
        expect=r"^error: plots/data/class_accuracy.csv: row"),
    Row("breach", "markup-and-escapes-in-the-recorded-data-source",
        lambda r: write(r, {"dvc.lock": "stages:\n  fetch_data:\n    params:\n      params.yaml:\n        data.source: "
                                        "\"<img src=x>` | x\\n\\n# owned \\e]2;t\\a\"\n"}) or [],
        code=0, expect=WROTE, writes=(RESULTS,), check=results_file_holds("``<img src=x>` | x # owned \\x1b]2;t\\x07``")),
    Row("silent-wrong", "nan-accuracy", spoil(metrics__eval_json='{"test_acc": NaN, "test_loss": 1}'),
        expect=r"^error: metrics/eval.json: not a JSON document of finite numbers \(NaN is not a finite number\)$"),
    Row("silent-wrong", "epoch-times-that-sum-past-a-float", spoil(plots__data__history_csv=(
        "epoch,train_loss,train_acc,heldout_loss,heldout_acc,lr,seconds\n1,1.8,0.35,1.4,0.49,0.001,1e308\n"
        "2,1.5,0.45,1.2,0.57,0.001,1e308\n")),
        expect=r"^error: plots/data/history.csv: .*history epoch 1: a value that is not a finite number \(or past float32's "
               r"range\)"),
    Row("silent-wrong", "accuracy-past-a-float", spoil(metrics__eval_json='{"test_acc": 1e309, "test_loss": 1}'),
        expect=r"^error: metrics/eval.json: not a JSON document of finite numbers \(1e309 is not a finite number\)$"),
    Row("silent-wrong", "accuracy-in-percent", spoil(metrics__eval_json='{"test_acc": 5.0, "test_loss": 1}'),
        expect=r"^error: metrics/eval.json: test_acc is 5.0, not what the pipeline writes"),
    Row("silent-wrong", "a-key-twice-the-last-would-win", spoil(metrics__eval_json='{"test_acc": 0.1, "test_loss": 1, "test_acc": 0.99}'),
        expect=r"^error: metrics/eval.json: not a JSON document of finite numbers \(the key 'test_acc' appears twice"),
    Row("silent-wrong", "history-epochs-out-of-order",
        spoil(plots__data__history_csv=HISTORY_HEAD + "2,1.5,0.45,1.2,0.57,0.001,210\n1,1.8,0.35,1.4,0.49,0.001,200\n"),
        expect=r"^error: plots/data/history.csv: not a per-epoch history \(ValueError: history row 1 is epoch 2"),
    Row("silent-wrong", "spread-accuracy-in-percent", spread_json(lambda s: s["runs"][0].update(test_acc=81.5)),
        expect=r"^error: reports/spread/spread.json: not as the pipeline writes it \(ValueError: a confidence, seed, accuracy"),
    Row("silent-wrong", "spread-interval-edited", spread_json(lambda s: s["final_test_acc"].update(ci_low=-3)),
        expect=r"^error: reports/spread/spread.json: not as the pipeline writes it \(ValueError: an interval other than"),
    Row("silent-wrong", "spread-baseline-verdict-flipped",
        spread_json(lambda s: s["baseline_check"].update(within_prediction_interval=not s["baseline_check"]
                                                         ["within_prediction_interval"])),
        expect=r"^error: reports/spread/spread.json: not as the pipeline writes it \(ValueError: a baseline check other"),
    Row("silent-wrong", "spread-seed-not-whole", spread_json(lambda s: s["runs"][0].update(seed=42.9)),
        expect=r"^error: reports/spread/spread.json: not as the pipeline writes it \(ValueError: a confidence, seed,"),
    Row("silent-wrong", "history-number-with-an-underscore",
        spoil(plots__data__history_csv=HISTORY_HEAD + "1,1_5,0.35,1.4,0.49,0.001,200\n"),
        expect=r"^error: plots/data/history.csv: not a per-epoch history \(ValueError: '1_5' is not a number as Python"),
    Row("silent-wrong", "infinite-loss-in-the-history",
        spoil(plots__data__history_csv=HISTORY_HEAD + "1,1.8,0.35,inf,0.49,0.001,200\n"),
        expect=r"^error: plots/data/history.csv: not a per-epoch history \(ValueError: history epoch 1: a value that is not a finite"),
    Row("hang", "eval-json-is-a-fifo", special("metrics/eval.json", "fifo"),
        expect=r"^error: metrics/eval.json is a FIFO \(named pipe\), not a regular file"),
    Row("hang", "flops-json-is-dev-zero", special("metrics/flops.json", "dev-zero"),
        expect=r"^error: metrics/flops.json is a device, not a regular file"),
    Row("hang", "results-file-is-a-fifo", lambda r: ((r / "reports").mkdir(), special(RESULTS, "fifo")(r))[1],
        expect=r"^error: reports/RESULTS.md is not a regular file: not overwritten$"),
    Row("traceback", "train-json-not-utf8", spoil(metrics__train_json=b'{"heldout_split": "t\xe9st"}'),
        expect=r"^error: metrics/train.json: not UTF-8"),
    Row("traceback", "flops-json-cut-short", spoil(metrics__flops_json="{"),
        expect=r"^error: metrics/flops.json: not a JSON document"),
    Row("traceback", "eval-json-nested-past-the-parser", spoil(metrics__eval_json="[" * 100000 + "]" * 100000),
        expect=r"^error: metrics/eval.json: not a JSON document of finite numbers \(nested deeper than any file"),
    Row("traceback", "history-field-past-the-csv-limit",
        spoil(plots__data__history_csv=HISTORY_HEAD + "1,1.8,0.35,1.4,0.49,0.001," + "9" * 200000 + "\n"),
        expect=r"^error: plots/data/history.csv: not a CSV file the pipeline writes \(field larger than field limit"),
    Row("traceback", "dvc-lock-nested-past-the-parser", lambda r: write(r, {"dvc.lock": "[" * 50000 + "]" * 50000}) or [],
        expect=r"^error: dvc.lock: nested deeper than any file the pipeline reads$"),
    Row("traceback", "check-of-a-results-file-not-utf8", lambda r: write(r, {RESULTS: b"\xff\xfe"}) or ["--check"],
        code=1, expect=r"^reports/RESULTS.md is out of date: run python -m cifar_study.results$"),
    Row("traceback", "findings-of-the-wrong-shape", spoil(reports__findings_json='{"flow_health": 3}'),
        expect=r"^error: reports/findings.json: not as the pipeline writes it \(TypeError"),
    Row("misleading", "history-missing", lambda r: (r / "plots/data/history.csv").unlink() or [],
        expect=r"^error: plots/data/history.csv: not found"),
    Row("misleading", "eval-json-is-a-directory", special("metrics/eval.json", "directory"),
        expect=r"^error: metrics/eval.json is a directory, not a regular file"),
    Row("lost-work", "stdout-on-a-full-disk", spoil(), stdout="/dev/full", writes=(RESULTS,),
        expect=r"^error: standard output: cannot write \(No space left on device\)$"),
    Row("lost-work", "results-file-past-the-file-size-limit", lambda r: write(r, {RESULTS: "the previous results\n"}) or [],
        fsize=1000, expect=r"^error: reports/RESULTS.md: cannot write \(File too large\)$"),
]


@pytest.mark.parametrize("row", RESULTS_ROWS, ids=str)
def test_results(row, results_project):
    run_row(command("results"), row, results_project)


def test_every_class_has_two_rows():
    every_class_twice(RESULTS_ROWS)
