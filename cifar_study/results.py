"""The README's Results, Findings and Spread sections, generated from the committed metrics/, plots/, reports/ and dvc.lock.

    python -m cifar_study.results           # rewrite the sections in README.md
    python -m cifar_study.results --check   # exit 1 if README.md is out of date
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import yaml

from cifar_study.analysis.figures import FIGURES
from cifar_study.core.history import EpochRecord
from cifar_study.pipeline import paths

# The original study's published numbers (official CIFAR-10 archive).
ORIGINAL = {"test_acc": 0.8454, "epoch1_heldout_acc": 0.4723, "gflops": 0.1612, "loss_first": 1.787,
            "loss_last": 0.519}
# A plain implementation of the same protocol (torchvision + PIL per image, fp32, CPU) on the JPEG copy
# of CIFAR-10 this project's baseline uses: final test accuracy, one run, as recorded with that copy.
JPEG_REFERENCE = 0.8162
# Written by cifar_study.spread (not a stage: it aggregates several experiments).
SPREAD_RUNS, SPREAD, SPREAD_FIGURE = "reports/spread/runs.json", "reports/spread/spread.json", "reports/spread/spread.png"


def _fetch_params(root: Path) -> dict:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return lock["stages"]["fetch_data"]["params"]["params.yaml"]


def render(root: Path = Path(".")) -> str:
    if not (root / paths.EVAL_METRICS).is_file():
        return "No baseline run is committed yet: `make repro` produces one."
    history = [EpochRecord.from_row(r) for r in csv.DictReader(open(root / paths.HISTORY))]
    train = json.loads((root / paths.TRAIN_METRICS).read_text())
    evaluation = json.loads((root / paths.EVAL_METRICS).read_text())
    flops = json.loads((root / paths.FLOPS_METRICS).read_text())
    data = json.loads((root / paths.DATA_METRICS).read_text())
    per_class = list(csv.DictReader(open(root / paths.CLASS_ACCURACY)))
    fetch = _fetch_params(root)
    split = train["heldout_split"]
    hours = sum(r.seconds for r in history) / 3600
    source = f"`{fetch['data.source']}`" + (f" from `{fetch['data.path']}`" if fetch["data.source"] == "folder" else "")
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
    lines += [f"| {r['class']} | {float(r['accuracy']):.2%} |" for r in per_class]
    lines.append("")
    lines += [f"![{name}]({paths.FIGURES}/{name}.png)" for name in FIGURES]
    return "\n".join(lines)


def render_findings(root: Path = Path(".")) -> str:
    """The original study's claims, the number behind each in this run, and whether it holds."""
    if not (root / paths.FINDINGS).is_file():
        return "No findings are committed yet: `make repro` produces them."
    findings = json.loads((root / paths.FINDINGS).read_text())
    health = findings["flow_health"]
    flagged = [f"{h['layer']} ({', '.join(h['flags'])})" for h in health["layers"] if h["flags"]]
    lines = [
        f"Generated from `{paths.FINDINGS}` and `{paths.FINDINGS_METRICS}` (the `findings` stage) of the run above. "
        f"Gradient flow: **{'healthy' if health['healthy'] else 'flagged'}**"
        f" ({'; '.join(flagged) if flagged else 'no layer flagged'}, {health['snapshots']} snapshots).",
        "",
        "| the original study's claim | measured in this run | |",
        "|---|---|---|",
    ]
    lines += [f"| {_cell(c['claim'])} | {_cell(c['measured'])} | {'holds' if c['holds'] else '**does not hold**'} |"
              for c in findings["claims"]]
    lines += ["", "| layer | mean \\|grad\\| range | max/mean | update ratio | trend (decades) | flags |",
              "|---|---|---:|---:|---:|---|"]
    lines += [f"| {h['layer']} | {_num(h['grad_mean_min'], '.2g')} – {_num(h['grad_mean_max'], '.2g')} | "
              f"{_num(h['max_to_mean'], '.1f')} | {_num(h['update_ratio'], '.2g')} | {_num(h['trend_decades'], '+.2f')} | "
              f"{', '.join(h['flags']) or '–'} |" for h in health["layers"]]
    return "\n".join(lines)


def render_spread(root: Path = Path(".")) -> str:
    """The run-to-run spread over seeds, and where the published single runs fall in it."""
    if not (root / SPREAD).is_file():
        return "No spread is committed yet: see the commands above."
    spread = json.loads((root / SPREAD).read_text())
    final, level = spread["final_test_acc"], f"{spread['confidence']:.0%}"
    options = ", ".join(f"`{k}={v}`" for k, v in spread["changed_params"].items()) or "the defaults"
    device = f", on {spread['device']}" if spread.get("device") else ""
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
    lines += [f"| {r['name']} | {r['seed']} | {r['test_acc']:.2%} | {r['seconds'] / 60:.1f} min |" for r in spread["runs"]]
    check = spread["baseline_check"]
    if check:
        differs = "; ".join(f"`{k}={b}` where the spread has `{r}`" for k, (b, r) in check["differs_in"].items())
        lines += ["", f"Same seed ({check['seed']}), the {check['baseline']} run ({differs or 'the same options'}) "
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
    lines += ["", f"![spread]({SPREAD_FIGURE})"]
    return "\n".join(lines)


def _where(value: float, low: float, high: float) -> str:
    if value < low:
        return f"below, by {(low - value) * 100:.2f} points"
    if value > high:
        return f"above, by {(value - high) * 100:.2f} points"
    return "inside"


def _cell(text: str) -> str:
    """Text for a Markdown table cell: a bare | (as in |grad|) would end the cell."""
    return text.replace("|", "\\|")


def _num(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


SECTIONS = {"results": render, "findings": render_findings, "spread": render_spread}  # README markers <!-- NAME:start --> ... <!-- NAME:end -->


def update(readme: Path, root: Path = Path(".")) -> str:
    text = readme.read_text()
    for name, draw in SECTIONS.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        if start not in text or end not in text:
            raise SystemExit(f"{readme}: missing the {start} ... {end} markers")
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{draw(root)}\n{end}{tail}"
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = ap.parse_args()
    readme = Path("README.md")
    new = update(readme)
    if args.check:
        if new != readme.read_text():
            sys.exit("README.md's Results, Findings or Spread section is out of date: run python -m cifar_study.results")
        return
    readme.write_text(new)


if __name__ == "__main__":
    main()
