"""reports/RESULTS.md, the study's results, generated whole from the committed metrics/, plots/, reports/ and dvc.lock.

    python -m cifar_study.results           # write reports/RESULTS.md
    python -m cifar_study.results --check   # exit 1 if reports/RESULTS.md is out of date

A re-run of the baseline changes that file, never the README. Missing, unreadable or non-UTF-8 inputs, and a
target that is a symbolic link or not a regular file, are one line and exit 2.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable


from cifar_study.analysis.stats import CONFIDENCE, bounds, interval
from cifar_study.core.history import EpochRecord, history_of, written_number
from cifar_study.pipeline import paths
from cifar_study.pipeline.cli import Parser, emit, error_line, printable, run_command
from cifar_study.pipeline.dataset import CLASS_NAME, HELDOUT_NAMES
from cifar_study.pipeline.errors import UserError, first_line
from cifar_study.pipeline.outputs import MAX_READ_BYTES, atomic_path, read_text, refuse_links, remove_stale_temporaries
from cifar_study.pipeline.untrusted import finite_number, fraction, json_numbers, nonnegative, parse_yaml, read_bounded

# The original study's published numbers (official CIFAR-10 archive).
ORIGINAL = {"test_acc": 0.8454, "epoch1_heldout_acc": 0.4723, "gflops": 0.1612, "loss_first": 1.787,
            "loss_last": 0.519}
# A plain implementation of the same protocol (torchvision + PIL per image, fp32, CPU) on the JPEG copy
# of CIFAR-10 this project's baseline uses: final test accuracy, one run, as recorded with that copy.
JPEG_REFERENCE = 0.8162
# Written by cifar_study.spread (not a stage: it aggregates several experiments).
SPREAD_RUNS, SPREAD, SPREAD_FIGURE = "reports/spread/runs.json", "reports/spread/spread.json", "reports/spread/spread.png"
RESULTS = "reports/RESULTS.md"  # this module's one output; links in it are relative to its folder


class ResultsError(UserError):
    """An input that cannot be read, or a target that must not be written; the message is one line."""


def _link(path: str) -> str:
    """`path` (from the project root) as a link from RESULTS.md's folder."""
    return Path(os.path.relpath(path, Path(RESULTS).parent)).as_posix()


def _present(root: Path, name: str) -> bool:
    """Whether `name` is there at all: a FIFO or folder in its place is there (and refused when read)."""
    return os.path.lexists(root / name)


def _text(root: Path, name: str) -> str:
    try:
        return read_text(root / name)
    except FileNotFoundError:
        raise ResultsError(f"{name}: not found (restore it: git checkout -- {name}, or re-run dvc repro)") from None
    except UnicodeDecodeError as exc:
        raise ResultsError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _json(root: Path, name: str, checks: dict[str, Callable[[Any], bool]] | None = None) -> dict:
    """A JSON object, its `checks` keys present and valid; NaN and Infinity refused (no result is made of them)."""
    try:
        data = json_numbers(_text(root, name))
    except ValueError as exc:
        raise ResultsError(f"{name}: not a JSON document of finite numbers ({exc})") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{name}: expected a JSON object, not {type(data).__name__}")
    for key, ok in (checks or {}).items():
        if key not in data or not ok(data[key]):
            raise ResultsError(f"{name}: {key} is {data.get(key, 'missing')!r}, not what the pipeline writes")
    return data


def _csv(root: Path, name: str) -> list[dict[str, str]]:
    try:
        rows = list(csv.DictReader(io.StringIO(_text(root, name), newline="")))
    except csv.Error as exc:  # a field past csv's limit, a NUL byte
        raise ResultsError(f"{name}: not a CSV file the pipeline writes ({exc})") from None
    if not rows or any(None in r or None in r.values() for r in rows):
        raise ResultsError(f"{name}: no rows, or a row with the wrong number of fields")
    return rows


def _count(v: Any) -> bool:
    return type(v) is int and v > 0


def _history(root: Path) -> list[EpochRecord]:
    try:
        return history_of(_csv(root, paths.HISTORY))
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultsError(f"{paths.HISTORY}: not a per-epoch history ({type(exc).__name__}: {exc})") from None


def _class_accuracy(root: Path) -> list[tuple[str, float]]:
    out = []
    for r in _csv(root, paths.CLASS_ACCURACY):
        try:
            accuracy = written_number(r["accuracy"])
        except (KeyError, ValueError):
            accuracy = math.nan
        if not CLASS_NAME.fullmatch(r.get("class") or "") or not fraction(accuracy) or r["class"] in dict(out):
            raise ResultsError(f"{paths.CLASS_ACCURACY}: row {r!r} is not a class name (once) and an accuracy in 0..1")
        out.append((r["class"], accuracy))
    return out


def _fetch_params(root: Path) -> dict:
    try:
        lock = parse_yaml(_text(root, "dvc.lock"), "dvc.lock")
        return lock["stages"]["fetch_data"]["params"]["params.yaml"]
    except (KeyError, TypeError) as exc:
        raise ResultsError(f"dvc.lock: no fetch_data params ({type(exc).__name__}: {first_line(exc)})") from None


def render(root: Path = Path(".")) -> str:
    if not _present(root, paths.EVAL_METRICS):
        return "No baseline run is committed yet: `make repro` produces one."
    history = _history(root)
    train = _json(root, paths.TRAIN_METRICS, {"heldout_split": lambda v: v in HELDOUT_NAMES})
    evaluation = _json(root, paths.EVAL_METRICS, {"test_acc": fraction, "test_loss": nonnegative})
    flops = _json(root, paths.FLOPS_METRICS, {"flops": _count, "gflops": nonnegative})
    if abs(flops["gflops"] - flops["flops"] / 1e9) > 1e-4:  # flops.json holds one count, in two units
        raise ResultsError(f"{paths.FLOPS_METRICS}: gflops {flops['gflops']!r} is not flops / 1e9")
    data = _json(root, paths.DATA_METRICS, {"train_count": _count, "test_count": _count})
    per_class = _class_accuracy(root)
    fetch = _fetch_params(root)
    split = train["heldout_split"]
    hours = sum(r.seconds for r in history) / 3600
    # The archive by its name: where it lay is one machine's business (reports/data.json and dvc.lock identify it).
    source = _code(fetch['data.source']) + (f", the archive {_code(Path(str(fetch['data.path'])).name)}"
                                                   if fetch["data.source"] == "folder" else "")
    lines = [
        f"Made by `dvc repro` of the default study: {len(history)} epochs, data.source {source} "
        f"({data['train_count']:,} training / {data['test_count']:,} test images); the {len(history)} epochs took "
        f"{hours:.2f} h, training plus the per-epoch held-out evaluation (sum of the per-epoch times in "
        f"`{paths.HISTORY}`). Held-out set: the {split} split.",
        "",
        "| | this run | the original study (official archive) |",
        "|---|---|---|",
        f"| final test accuracy | **{evaluation['test_acc']:.2%}** | {ORIGINAL['test_acc']:.2%} |",
        f"| epoch-1 held-out accuracy | {history[0].heldout_acc:.2%} | {ORIGINAL['epoch1_heldout_acc']:.2%} |",
        f"| train loss, first → last epoch | {history[0].train_loss:.3f} → "
        f"{history[-1].train_loss:.3f} | {ORIGINAL['loss_first']:.3f} → {ORIGINAL['loss_last']:.3f} |",
        f"| GFLOPs per image | {flops['gflops']} ({flops['flops']:,} FLOPs) | {ORIGINAL['gflops']} |",
        f"| test loss | {evaluation['test_loss']:.4f} | |",
        "",
        f"| epoch | train loss | train acc | {split} loss | {split} acc | seconds |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in history:
        lines.append(f"| {r.epoch} | {r.train_loss:.4f} | {r.train_acc:.2%} | "
                     f"{r.heldout_loss:.4f} | {r.heldout_acc:.2%} | {r.seconds:.0f} |")
    lines += ["", "| class | test accuracy |", "|---|---:|"]
    lines += [f"| {_cell(name)} | {accuracy:.2%} |" for name, accuracy in per_class]
    lines.append("")
    from cifar_study.analysis.figures import FIGURES  # here: matplotlib's import would slow every refusal by ~1 s

    lines += [f"![{name}]({_link(f'{paths.FIGURES}/{name}.png')})" for name in FIGURES]
    return "\n".join(lines)


def _verdict(verdict: str) -> str:
    return _cell(verdict) if verdict == "holds" else f"**{_cell(verdict)}**"


def render_findings(root: Path = Path(".")) -> str:
    """The original study's claims, the number behind each in this run, and whether it holds."""
    if not _present(root, paths.FINDINGS):
        return "No findings are committed yet: `make repro` produces them."
    findings = _json(root, paths.FINDINGS)
    health = findings["flow_health"]
    if type(health["snapshots"]) is not int or not all(isinstance(h["flags"], list) and all(isinstance(f, str) for f in
                                                         h["flags"]) for h in health["layers"]):
        raise ValueError("snapshots is not a count, or a layer's flags are not a list of names")
    flagged = [f"{_cell(h['layer'])} ({_cell(', '.join(h['flags']))})" for h in health["layers"] if h["flags"]]
    lines = [
        f"Generated from `{paths.FINDINGS}` and `{paths.FINDINGS_METRICS}` (the `findings` stage) of the run above. "
        f"Gradient flow: **{_cell(health['verdict'])}**"
        f" ({_cell(health['missing']) or '; '.join(flagged) or 'no layer flagged'}, {int(health['snapshots'])} snapshots).",
        "",
        "| the original study's claim | measured in this run | |",
        "|---|---|---|",
    ]
    lines += [f"| {_cell(c['claim'])} | {_cell(c['measured'])} | {_verdict(c['verdict'])} |" for c in findings["claims"]]
    lines += ["", "| layer | mean \\|grad\\| range | max/mean | update ratio | trend (decades) | flags |",
              "|---|---|---:|---:|---:|---|"]
    lines += [f"| {_cell(h['layer'])} | {_num(h['grad_mean_min'], '.2g')} – {_num(h['grad_mean_max'], '.2g')} | "
              f"{_num(h['max_to_mean'], '.1f')} | {_num(h['update_ratio'], '.2g')} | {_num(h['trend_decades'], '+.2f')} | "
              f"{_cell(', '.join(h['flags'])) or '–'} |" for h in health["layers"]]
    return "\n".join(lines)


def render_spread(root: Path = Path(".")) -> str:
    """The run-to-run spread over seeds, and where the published single runs fall in it."""
    if not _present(root, SPREAD):
        return "No spread is committed yet: `python -m cifar_study.spread` makes one."
    spread = _json(root, SPREAD)
    _check_spread(spread)
    final, level = spread["final_test_acc"], f"{spread['confidence']:.0%}"
    options = ", ".join(_code(f"{k}={v}") for k, v in spread["changed_params"].items()) or "the defaults"
    device = f", on {_cell(spread['device'])}" if spread.get("device") else ""
    lines = [
        f"{final['n']} runs of the study that differ only in `train.seed` ({', '.join(str(r['seed']) for r in spread['runs'])}), "
        f"with {options}{device}. Final test accuracy: mean **{final['mean']:.2%}**, standard deviation {final['sd']:.2%}, "
        f"range {final['min']:.2%}–{final['max']:.2%}; {level} confidence interval of the mean "
        f"{final['ci_low']:.2%}–{final['ci_high']:.2%}; {level} prediction interval for one more run "
        f"{final['pi_low']:.2%}–{final['pi_high']:.2%} (Student's t, {final['n'] - 1} degrees of freedom, t = {final['t']:.2f}).",
        "",
        "| run | train.seed | final test accuracy | wall time (epochs) |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {_cell(r['name'])} | {int(r['seed'])} | {r['test_acc']:.2%} | {r['seconds'] / 60:.1f} min |" for r in spread["runs"]]
    check = spread["baseline_check"]
    if check:
        differs = "; ".join(f"{_code(f'{k}={b}')} where the spread has {_code(r)}"
                            for k, (b, r) in check["differs_in"].items())
        lines += ["", f"Same seed ({int(check['seed'])}), the {_cell(check['baseline'])} run ({differs or 'the same options'}) "
                  f"against the spread's run: "
                  f"{check['baseline_test_acc']:.2%} vs {check['spread_run_test_acc']:.2%}, a difference of "
                  f"{check['difference'] * 100:+.2f} points; the baseline is "
                  f"{'inside' if check['within_prediction_interval'] else '**outside**'} the {level} prediction interval."]
    lines += ["", f"| single published run | final test accuracy | vs the {level} CI of the mean | vs the {level} prediction interval |",
              "|---|---:|---|---|"]
    for name, value in (("the original study (official archive)", ORIGINAL["test_acc"]),
                        ("plain implementation on the JPEG copy", JPEG_REFERENCE)):
        lines.append(f"| {name} | {value:.2%} | {_where(value, final['ci_low'], final['ci_high'])} | "
                     f"{_where(value, final['pi_low'], final['pi_high'])} |")
    lines += ["", "| epoch | mean held-out accuracy | sd | " + f"{level} CI of the mean |", "|---:|---:|---:|---|"]
    lines += [f"| {r['epoch']} | {r['mean']:.2%} | {r['sd']:.2%} | {r['ci_low']:.2%}–{r['ci_high']:.2%} |"
              for r in spread["heldout_acc_per_epoch"]]
    lines += ["", f"![spread]({_link(SPREAD_FIGURE)})"]
    return "\n".join(lines)


def _check_spread(spread: dict) -> None:
    """ValueError unless spread.json's numbers are what cifar_study.spread writes: accuracies in 0..1, whole seeds,
    each once, epochs 1, 2, ... in order, wall times not negative, and every interval, count and difference what
    the runs' numbers give (analysis.stats.interval), so no edited bound or verdict reaches the page."""
    final, per_epoch, runs, check = (spread["final_test_acc"], spread["heldout_acc_per_epoch"], spread["runs"],
                                     spread["baseline_check"])
    seeds = [r["seed"] for r in runs]
    if spread["confidence"] != CONFIDENCE or not all(type(s) is int for s in seeds) or len(set(seeds)) != len(seeds) \
            or not all(fraction(r["test_acc"]) and nonnegative(r["seconds"]) for r in runs) \
            or [r["epoch"] for r in per_epoch] != list(range(1, len(per_epoch) + 1)):
        raise ValueError("a confidence, seed, accuracy, time or epoch other than cifar_study.spread writes")
    for row in [final, *per_epoch]:
        if not (fraction(row["mean"]) and fraction(row["sd"]) and type(row["n"]) is int and row["n"] == len(runs) >= 2):
            raise ValueError("a mean, sd or run count other than cifar_study.spread writes")
        # The mean of equal values may land a rounding error outside them (fmean([0.1] * 3) > 0.1)
        inside = fraction(row["min"]) and fraction(row["max"]) and row["min"] - 1e-12 <= row["mean"] <= row["max"] + 1e-12
        if not inside or not all(_same(row[k], v) for k, v in bounds(row["mean"], row["sd"], row["n"]).items()):
            raise ValueError("an interval other than the one its mean, sd and count give")
    if not all(_same(final[k], v) for k, v in interval([r["test_acc"] for r in runs]).items()):
        raise ValueError("final_test_acc is not what the runs' test accuracies give")
    if check is not None:
        run = next((r for r in runs if r["seed"] == check["seed"] and type(check["seed"]) is int), None)
        base = check["baseline_test_acc"]
        if run is None or not fraction(base) or not _same(check["spread_run_test_acc"], run["test_acc"]) \
                or not _same(check["difference"], base - run["test_acc"]) \
                or check["within_prediction_interval"] is not (final["pi_low"] <= base <= final["pi_high"]):
            raise ValueError("a baseline check other than its seed's run and the prediction interval give")


def _same(value: Any, expected: float) -> bool:
    return finite_number(value) and math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12)


def _where(value: float, low: float, high: float) -> str:
    if value < low:
        return f"below, by {(low - value) * 100:.2f} points"
    if value > high:
        return f"above, by {(value - high) * 100:.2f} points"
    return "inside"


# What could start markup in Markdown text: a code span, emphasis, a link or image ([...]), HTML, an entity,
# GitHub's math and strikethrough, a table cell's end; and the backslash that escapes them.
MARKUP = re.compile(r"([\\`*_\[\]<>|~&$])")


def _one_line(text: Any) -> str:
    return printable(" ".join(str(text).split()))


def _cell(text: Any) -> str:
    """Text from a results file as Markdown text, shown as written: every character that could start markup
    backslash-escaped; one line, control characters as their escapes."""
    return MARKUP.sub(r"\\\1", _one_line(text))


def _code(text: Any) -> str:
    """Text from a results file as a code span, shown as written (no markup works inside one): its fence is
    longer than any run of backticks in it. Not inside a table, where a | would end the cell."""
    text = _one_line(text)
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _num(value: float | None, spec: str) -> str:
    if value is not None and not finite_number(value):
        raise ValueError(f"{value!r} is not a finite number")
    return "–" if value is None else format(value, spec)


SECTIONS = {  # RESULTS.md's sections: heading, how it is drawn, from which files
    "The baseline run": (render, (paths.HISTORY, paths.TRAIN_METRICS, paths.EVAL_METRICS, paths.FLOPS_METRICS,
                                  paths.DATA_METRICS, paths.CLASS_ACCURACY, "dvc.lock")),
    "Findings: the original study's claims, measured": (render_findings, (paths.FINDINGS,)),
    "Run-to-run spread": (render_spread, (SPREAD,)),
}


def document(root: Path = Path(".")) -> str:
    """The whole of reports/RESULTS.md."""
    parts = ["# Results", "",
             "Generated by `python -m cifar_study.results` from the committed `metrics/`, `plots/data/`, `reports/` "
             "and `dvc.lock`; do not edit it by hand (`tests/test_report.py` checks that it matches them). "
             f"How the committed runs were made, and what they mean: [the dated notes]({_link('notes/README.md')})."]
    for heading, (draw, sources) in SECTIONS.items():
        try:
            parts += ["", f"## {heading}", "", draw(root)]
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:  # a field of the wrong shape
            raise ResultsError(f"{' or '.join(sources)}: not as the pipeline writes it ({type(exc).__name__}: "
                               f"{first_line(exc)})") from None
    return "\n".join(parts) + "\n"


def main() -> None:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help=f"only check that {RESULTS} is up to date")
    args = ap.parse_args()
    target = Path(RESULTS)
    try:
        refuse_links(target)
        new = document()
        if args.check:
            if not target.is_file() or read_bounded(target, MAX_READ_BYTES) != new.encode():  # bytes: UTF-8 or not
                sys.exit(f"{RESULTS} is out of date: run python -m cifar_study.results")
            return
        try:
            remove_stale_temporaries([RESULTS])  # a killed run's, beside the committed file
            with atomic_path(target) as tmp:
                tmp.write_text(new, encoding="utf-8")
        except OSError as exc:  # a full disk: the previous file stays, named in the error
            raise ResultsError(f"{RESULTS}: cannot write ({exc.strerror or exc})") from None
        emit(f"wrote {RESULTS}")
    except (UserError, OSError) as exc:
        sys.exit(error_line(str(exc)))


if __name__ == "__main__":
    run_command(main)
