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

import argparse
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Any

from cifar_study.pipeline.errors import UserError, first_line

DVC_TIMEOUT_S = 300
# Headline metrics after the changed params, most telling first: dropped from the end when too wide.
METRICS = ("test_loss", "best_heldout_acc", "flagged_layers", "epoch_95", "overfitting", "gflops")
NOT_COMPARED = ("wandb.",)  # W&B settings change no result
PENDING = "…"  # a metric a queued or running experiment has not produced yet


class ShowError(UserError):
    """`dvc exp show` failed or printed something other than its JSON."""


@dataclass
class Row:
    name: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    state: str = ""  # the executor's: queued, running, success, failed ('' for the workspace and commits)
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
    for entry in (section or {}).values():
        if isinstance(entry, dict) and isinstance(entry.get("data"), dict):
            out.update(flatten(entry["data"]))
    return out


def rows_of(report: Any) -> list[Row]:
    """Rows from `dvc exp show --json`: each baseline (the workspace, commits), then its experiments."""
    if not isinstance(report, list):
        raise ShowError("dvc exp show --json printed something other than a list of revisions")
    rows = []

    def add(entry: dict[str, Any], name: str, state: str = "") -> None:
        data = entry.get("data") or {}
        rows.append(Row(name, _files(data.get("params")), _files(data.get("metrics")), state))

    for base in report:
        if not isinstance(base, dict):
            continue
        rev = str(base.get("rev", "?"))
        add(base, rev if rev == "workspace" else base.get("name") or rev[:7])
        for exp in base.get("experiments") or []:
            state = str((exp.get("executor") or {}).get("state", "")) if isinstance(exp, dict) else ""
            for rev_entry in (exp.get("revs") or []) if isinstance(exp, dict) else []:
                add(rev_entry, f"  {rev_entry.get('name') or str(rev_entry.get('rev', '?'))[:7]}", state)
    return rows


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(rows: list[Row], width: int) -> tuple[list[str], list[str]]:
    """The table's lines and the columns left out to fit `width`."""
    changed = sorted(k for k in {k for r in rows for k in r.params} if not k.startswith(NOT_COMPARED)
                     and len({json.dumps(r.params.get(k), sort_keys=True) for r in rows}) > 1)
    for r in rows:
        live = r.state in ("queued", "running")
        acc = r.metrics.get("test_acc_mean", r.metrics.get("test_acc"))
        sd = r.metrics.get("test_acc_sd")
        epoch = r.metrics.get("step")  # dvclive/metrics.json's: the last epoch a running experiment finished
        r.cells = {"experiment": r.name + (f" ({r.state}{f', epoch {epoch}' if epoch is not None else ''})" if live else ""),
                   "test_acc": PENDING if live else fmt(acc) + (f" ± {sd:.2g}" if isinstance(sd, float) else ""),
                   **{k: fmt(r.params.get(k)) for k in changed},
                   **{k: PENDING if live else fmt(r.metrics.get(k)) for k in METRICS}}
    columns = ["experiment", "test_acc", *changed, *(k for k in METRICS if any(k in r.metrics for r in rows))]
    widths = {c: max(len(c), *(len(r.cells[c]) for r in rows)) for c in columns}
    kept = []
    for c in columns:
        if sum(widths[k] + 2 for k in kept) + widths[c] <= width or not kept:
            kept.append(c)
    lines = ["  ".join(c.ljust(widths[c]) for c in kept).rstrip()]
    lines += ["  ".join(r.cells[c].ljust(widths[c]) for c in kept).rstrip() for r in rows]
    return lines, [c for c in columns if c not in kept]


def exp_show() -> Any:
    try:
        proc = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True,
                              timeout=DVC_TIMEOUT_S, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    except FileNotFoundError:
        raise ShowError("dvc not found: activate the project's environment (source .venv/bin/activate)") from None
    except subprocess.TimeoutExpired:
        raise ShowError(f"dvc exp show did not answer within {DVC_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise ShowError(f"dvc exp show failed: {first_line(RuntimeError(proc.stderr.strip() or proc.stdout.strip()))}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise ShowError(f"dvc exp show --json printed something other than JSON ({first_line(exc)})") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cifar_study.show", description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=120, help="the terminal's columns (default 120)")
    args = ap.parse_args(argv)
    try:
        if args.width < 40:
            raise ShowError(f"--width: {args.width} is too narrow; at least 40")
        lines, left_out = table(rows_of(exp_show()), args.width)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    if left_out:
        print(textwrap.fill(f"(left out to fit {args.width} columns: {', '.join(left_out)}; all of them: dvc exp show)",
                            args.width))
    return 0


if __name__ == "__main__":
    sys.exit(main())
