"""The workspace, HEAD and every experiment in one table that fits a terminal: the metrics a person
compares and only the params that differ between rows.

    python -m cifar_study.show [--width 120]      (make show)

`dvc exp show` lists every metric and param (hundreds of columns). This reads its JSON and keeps,
in order, the row's name, the test accuracy (mean ± sd with replicas), the changed params, and the
other headline metrics while they fit `--width` columns; the line below the table names any column
left out. A queued or running experiment shows only what it has measured so far (its epoch from
dvclive): DVC reports the metric files of its copy of the workspace, which until `evaluate` re-runs
still hold the previous run's test accuracy.
"""
from __future__ import annotations

import json
import textwrap
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from cifar_study.pipeline.cli import Parser, emit, printable, run_command, whole_number
from cifar_study.pipeline.dvc_query import check_experiments_of_head, check_workspace, dvc_json
from cifar_study.pipeline.errors import UserError
from cifar_study.pipeline.untrusted import finite_number, fraction, nonnegative

# Headline metrics after the changed params, most telling first: dropped from the end when too wide.
METRICS = ("test_loss", "best_heldout_acc", "flagged_layers", "epoch_95", "overfitting", "gflops")
NOT_COMPARED = ("wandb.",)  # W&B settings change no result
PENDING = "…"  # a metric a queued or running experiment has not produced yet
INVALID = " (!)"  # after a metric that is no finite number, or outside what it can be: explained below the table
INVALID_WIDTH = 24  # such a value is shown cut to this many characters (a 400-digit integer, a long string)
UNREAD = "(not read)"  # after a revision DVC could not read, or one of its files: the error is below the table
FAILED = "failed"  # an experiment's executor state: it produced no metrics


# What each metric shown can be; a value outside is a broken metrics file, not a result
VALID = {"test_acc": fraction, "test_acc_sd": fraction, "best_heldout_acc": fraction, "test_loss": nonnegative,
         "flagged_layers": lambda v: v >= 0 and v == int(v), "epoch_95": lambda v: v >= 1 and v == int(v),
         "overfitting": lambda v: v in (0, 1), "gflops": lambda v: v > 0}


class ShowError(UserError):
    """`dvc exp show` failed or printed something other than its JSON."""


@dataclass
class Row:
    name: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    state: str = ""  # the executor's: queued, running, success, failed ('' for the workspace and commits)
    error: str = ""  # DVC's, when it could not read the revision or one of its files (a params.yaml it cannot parse)
    cells: dict[str, str] = field(default_factory=dict)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _files(section: Any) -> dict[str, Any]:
    """{file: {"data": {...}}} as dvc exp show --json gives params and metrics: one flat dict."""
    out: dict[str, Any] = {}
    for entry in _dict(section).values():
        if isinstance(entry, dict) and isinstance(entry.get("data"), dict):
            out.update(flatten(entry["data"]))
    return out


def _file_errors(*sections: Any) -> str:
    """The files DVC could not read ({file: {"error": {...}}}: cut short, not JSON): their metrics would show as
    missing ones do. A file that is not there is no error: its metrics are missing, `-`."""
    errors = {name: _dict(_dict(entry).get("error")) for section in sections for name, entry in _dict(section).items()}
    return "; ".join(f"{name}: {_error_text(error)}" for name, error in errors.items()
                     if error and error.get("type") != "FileNotFoundError")


def _error_text(error: Any) -> str:
    error = _dict(error)
    return str(error.get("msg") or error.get("type") or "unreadable")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def rows_of(report: Any) -> list[Row]:
    """Rows from `dvc exp show --json`: each baseline (the workspace, commits), then its experiments."""
    if not isinstance(report, list):
        raise ShowError("dvc exp show --json printed something other than a list of revisions")
    rows = []

    def add(entry: dict[str, Any], name: str, state: str = "") -> None:
        data = _dict(entry.get("data"))
        # A failed run's error says only that it failed, and its files are its baseline's; a queued or running one's
        # are being written (DVCLive rewrites metrics.json every epoch)
        error = "" if state in (FAILED, "queued", "running") else _error_text(entry["error"]) if entry.get("error") \
            else _file_errors(data.get("params"), data.get("metrics"))
        rows.append(Row(printable(name), _files(data.get("params")), _files(data.get("metrics")), state,
                        printable(error)))

    for base in filter(lambda b: isinstance(b, dict), report):
        rev = str(base.get("rev", "?"))
        add(base, rev if rev == "workspace" else str(base.get("name") or rev[:7]))
        for exp in filter(lambda e: isinstance(e, dict), base.get("experiments") or []):
            state = str(_dict(exp.get("executor")).get("state", ""))
            for rev_entry in filter(lambda r: isinstance(r, dict), exp.get("revs") or []):
                add(rev_entry, f"  {rev_entry.get('name') or str(rev_entry.get('rev', '?'))[:7]}", state)
    return rows


def fmt(value: Any) -> str:
    """A param's value as a cell: any text from the files is shown as escapes, never sent to the terminal."""
    if value is None:
        return "-"
    return printable(f"{value:.4g}" if isinstance(value, float) else str(value))


def number(value: Any, metric: str) -> str:
    """`metric`'s value as a cell; one that is no finite number (NaN, a string), or not VALID for it (an accuracy
    in percent, a negative loss), is shown with INVALID after it."""
    if value is None:
        return "-"
    if finite_number(value):
        return fmt(value) + ("" if VALID[metric](value) else INVALID)
    text = printable(repr(value))
    return (text if len(text) <= INVALID_WIDTH else text[:INVALID_WIDTH - 1] + "…") + INVALID


def columns_of(text: str) -> int:
    """How many terminal columns `text` takes: two for a wide (CJK) character, none for a combining mark."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def pad(text: str, width: int) -> str:
    return text + " " * (width - columns_of(text))


def table(rows: list[Row], width: int) -> tuple[list[str], list[str]]:
    """The table's lines and the columns left out to fit `width`."""
    changed = sorted(k for k in {k for r in rows for k in r.params} if not k.startswith(NOT_COMPARED)
                     and len({json.dumps(r.params.get(k), sort_keys=True) for r in rows}) > 1)
    for r in rows:
        live = r.state in ("queued", "running")
        if r.state == FAILED:  # DVC gives it the metrics of the commit it started from
            r.metrics = {}
        acc = r.metrics.get("test_acc_mean", r.metrics.get("test_acc"))
        sd = r.metrics.get("test_acc_sd")
        epoch = r.metrics.get("step")  # dvclive/metrics.json's: the last epoch a running experiment finished
        r.cells = {"experiment": r.name + (f" ({r.state}{f', epoch {fmt(epoch)}' if epoch is not None else ''})" if live
                                           else f" {UNREAD}" if r.error else f" ({FAILED})" if r.state == FAILED
                                           else ""),
                   "test_acc": PENDING if live else number(acc, "test_acc") + (f" ± {number(sd, 'test_acc_sd')}"
                                                                            if sd is not None else ""),
                   **{k: fmt(r.params.get(k)) for k in changed},
                   **{k: PENDING if live else number(r.metrics.get(k), k) for k in METRICS}}
    columns = ["experiment", "test_acc", *changed, *(k for k in METRICS if any(k in r.metrics for r in rows))]
    titles = {c: printable(c) for c in columns}  # a param's name is text from params.yaml too
    widths = {c: max(columns_of(titles[c]), *(columns_of(r.cells[c]) for r in rows)) for c in columns}
    kept = []
    for c in columns:
        if sum(widths[k] + 2 for k in kept) + widths[c] <= width or not kept:
            kept.append(c)
    lines = ["  ".join(pad(titles[c], widths[c]) for c in kept).rstrip()]
    lines += ["  ".join(pad(r.cells[c], widths[c]) for c in kept).rstrip() for r in rows]
    return lines, [titles[c] for c in columns if c not in kept]


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m cifar_study.show", description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=whole_number, default=120, help="the terminal's columns (default 120)")
    args = ap.parse_args(argv)
    if args.width < 40:
        raise ShowError(f"--width: {args.width} is too narrow; at least 40")
    check_workspace(ShowError)
    check_experiments_of_head(ShowError)
    rows = rows_of(dvc_json("exp", "show", error=ShowError))
    lines, left_out = table(rows, args.width)
    lines += [textwrap.fill(f"({r.name.strip()} {UNREAD}: {r.error})", args.width) for r in rows if r.error]
    if any(INVALID in line for line in lines):
        lines.append(f"({INVALID.strip()} marks a metric that is not a finite number, or an accuracy outside "
                     "0..1, a negative loss or count, a GFLOPs not above 0: that run's metrics file is broken; "
                     "run it again)")
    if left_out:
        lines.append(textwrap.fill(f"(left out to fit {args.width} columns: {', '.join(left_out)}; all of them: "
                                   "dvc exp show)", args.width))
    emit("\n".join(lines))
    return 0


if __name__ == "__main__":
    run_command(main)
