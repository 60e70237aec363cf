"""Is a difference in test accuracy beyond run-to-run noise? A verdict beside `dvc metrics diff`.

    python -m cifar_study.compare [A [B]]

A and B are what `dvc metrics diff` takes: git revisions or experiment names (none: HEAD against
the workspace; one: A against the workspace). With `train.replicas` >= 2 on both sides, it prints the
difference of the mean test accuracies, its 95% interval (Welch's t) and `beyond noise` or
`within noise`. With a single replica on either side the difference cannot be judged: it says how
many replicas per side would resolve a difference of that size, given the committed spread
(reports/spread/spread.json). Exit 0 on a verdict; 2 with one line on bad input.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from cifar_study.analysis.stats import Sample, replicas_needed, welch
from cifar_study.pipeline import paths
from cifar_study.pipeline.cli import Parser, emit, error_line, printable, run_command
from cifar_study.pipeline.dvc_query import check_revision, check_workspace, dvc_json
from cifar_study.pipeline.errors import UserError, first_line
from cifar_study.pipeline.params import REPLICAS_MAX
from cifar_study.pipeline.untrusted import finite_number, fraction, json_numbers, read_bounded

SPREAD = "reports/spread/spread.json"
UNPARSED = "unable to parse"  # what DVC shows in place of every metric of a file it cannot read as metrics
# Params that cannot cause a difference in test accuracy: W&B settings, and the replica count (the noise's sample size).
NOT_CAUSES = ("wandb.", "train.replicas")


class CompareError(UserError):
    """Bad input to the comparison: an unknown revision, a side without metrics, stale metrics."""


@dataclass(frozen=True)
class Side:
    name: str
    test_acc: Sample  # n = 1: a single run (sd 0)


def _section(diff: Any, path: str) -> dict[str, Any]:
    """One file's part of `dvc metrics diff` or `dvc params diff` JSON: {key: {"old": .., "new": ..}}."""
    section = diff.get(path, {}) if isinstance(diff, dict) else None
    if not isinstance(section, dict):
        raise CompareError(f"dvc diff of {path}: printed JSON of another shape than DVC's")
    return section


def _same(a: Any, b: Any) -> bool:
    """Equal params; NaN on both sides is no change (NaN != NaN)."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def _number(values: dict[str, Any], key: str, where: str) -> float:
    value = values.get(key)
    if not finite_number(value):
        raise CompareError(f"{paths.EVAL_METRICS} at {where}: {key} is {value!r}, not a finite number "
                           f"(run dvc repro there)")
    return float(value)


def side(name: str, metrics: dict[str, Any], params: dict[str, Any]) -> Side:
    """One side's test accuracy: the replicas' mean and sd, or a single run's value."""
    if not metrics or all(v is None or v == UNPARSED for v in metrics.values()):
        raise CompareError(f"{name}: no test accuracy in {paths.EVAL_METRICS} (the file is absent, or not what "
                           f"evaluate writes: run dvc repro, or name a revision that has one)")
    if all(v is None for v in params.values()):  # DVC diffs an empty params.yaml as one without any key
        raise CompareError(f"{name}: params.yaml holds no params (empty, or absent there): run dvc repro with the "
                           f"project's params.yaml, or name a revision that has one")
    replicas = 1 if metrics.get("replicas") is None else metrics["replicas"]  # a single run writes no count
    if type(replicas) is not int or not 1 <= replicas <= REPLICAS_MAX:
        raise CompareError(f"{paths.EVAL_METRICS} at {name}: replicas is {str(replicas)[:40]}, not a count of "
                           f"1 to {REPLICAS_MAX} replicas")
    declared = params.get("train.replicas")
    if replicas != (1 if declared is None else declared):  # a revision from before replicas: one run
        says = "has no train.replicas (one run)" if declared is None else f"says train.replicas: {declared}"
        raise CompareError(f"{name}: {paths.EVAL_METRICS} comes from {replicas} replica(s) but its params.yaml "
                           f"{says} (stale metrics: run dvc repro there)")
    if replicas == 1:
        acc = _number(metrics, "test_acc", name)
        sample = Sample(acc, 0.0, 1)
    else:
        sample = Sample(_number(metrics, "test_acc_mean", name), _number(metrics, "test_acc_sd", name), replicas)
        if not fraction(sample.sd):
            raise CompareError(f"{paths.EVAL_METRICS} at {name}: test_acc_sd {sample.sd!r} is not an sd of accuracies (0..1)")
    if not fraction(sample.mean):
        raise CompareError(f"{paths.EVAL_METRICS} at {name}: test accuracy {sample.mean!r} is not a fraction in 0..1")
    return Side(name, sample)


def spread_sd() -> float | None:
    """The committed run-to-run sd of the final test accuracy; None without a spread. A spread that is
    there but broken is an error, not "no spread": its sd sizes the advice."""
    if not os.path.lexists(SPREAD):
        return None
    try:
        sd = json_numbers(read_bounded(SPREAD, 1 << 22, error=CompareError))["final_test_acc"]["sd"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CompareError(f"{SPREAD}: not a spread written by python -m cifar_study.spread ({first_line(exc)})") from None
    if not (finite_number(sd) and 0 < sd <= 1):
        raise CompareError(f"{SPREAD}: final_test_acc.sd is {sd!r}, not an sd of accuracies above 0 (run "
                           f"python -m cifar_study.spread)")
    return float(sd)


def describe(s: Side) -> str:
    t = s.test_acc
    return f"{t.mean:.2%} ± {t.sd:.2%} ({t.n} replicas)" if t.n > 1 else f"{t.mean:.2%} (1 run)"


def compare(revs: list[str], several: bool = False) -> list[str]:
    """The report's lines for `revs` (0, 1 or 2 revisions, as `dvc metrics diff` takes them); `several`:
    judge sides that differ in more than one param (the verdict is then about all the changes together)."""
    names = (revs + ["workspace"])[:2] if revs else ["HEAD", "workspace"]
    if "workspace" in names:  # DVC's name for it, given or implied
        check_workspace(CompareError)
    commits = [check_revision(rev, CompareError) for rev in names if rev != "workspace"]
    if len(commits) == 2 and commits[0] and commits[0] == commits[1]:  # DVC diffs a commit with itself as empty
        raise CompareError(f"{names[0]} and {names[1]} are the same commit ({commits[0][:7]}): nothing to compare")
    metrics = _section(dvc_json("metrics", "diff", "--all", "--targets", paths.EVAL_METRICS, "--", *revs,
                                error=CompareError), paths.EVAL_METRICS)
    params = _section(dvc_json("params", "diff", "--all", "--", *revs, error=CompareError), "params.yaml")
    old = {k: v.get("old") for k, v in metrics.items() if isinstance(v, dict)}
    new = {k: v.get("new") for k, v in metrics.items() if isinstance(v, dict)}
    param_old = {k: v.get("old") for k, v in params.items() if isinstance(v, dict)}
    param_new = {k: v.get("new") for k, v in params.items() if isinstance(v, dict)}
    a, b = side(names[0], old, param_old), side(names[1], new, param_new)
    differ = sorted(k for k in params if not _same(param_old.get(k), param_new.get(k)))
    changed = [f"{k} {param_old[k]!r} -> {param_new[k]!r}" for k in differ]
    causes = [k for k in differ if not k.startswith(NOT_CAUSES)]
    if len(causes) > 1 and not several:
        raise CompareError(f"{a.name} and {b.name} differ in {len(causes)} params ({', '.join(causes)}): a verdict "
                           f"is about one change; compare runs that differ in one, or pass --several")
    lines = [f"changed params: {', '.join(changed) if changed else 'none'}",
             f"test accuracy: {a.name} {describe(a)}; {b.name} {describe(b)}"]
    diff = b.test_acc.mean - a.test_acc.mean
    if a.test_acc.n > 1 and b.test_acc.n > 1:
        d = welch(a.test_acc, b.test_acc)
        lines.append(f"difference {d.diff:+.2%}, 95% interval {d.low:+.2%} to {d.high:+.2%} (Welch): "
                     f"{'beyond noise' if d.beyond_noise else 'within noise'}")
        return lines
    single = " and ".join(s.name for s in (a, b) if s.test_acc.n == 1)
    sd = spread_sd()
    need = replicas_needed(diff, sd) if sd else None
    size = (f"given the committed spread (sd {sd:.2%} for one run), about {need} replicas per side would resolve a "
            f"difference of {abs(diff):.2%}: dvc exp run -S train.replicas={need}" if need else
            f"more than 1000 replicas per side would be needed to resolve a difference of {abs(diff):.2%} given "
            f"the committed spread (sd {sd:.2%})" if sd and diff else
            "a difference of zero cannot be resolved by replicas" if sd else f"no committed spread ({SPREAD}) to size it; train both sides with "
            f"train.replicas >= 3")
    lines.append(f"difference {diff:+.2%}: cannot be judged (a single run on {single}); {size}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m cifar_study.compare", description=__doc__.splitlines()[0])
    ap.add_argument("revs", nargs="*", metavar="REV", help="as for dvc metrics diff: none, A, or A B")
    ap.add_argument("--several", action="store_true", help="judge sides that differ in more than one param")
    args = ap.parse_args(argv)
    if len(args.revs) > 2:
        return error_line("at most two revisions (A B), as dvc metrics diff takes")
    bad = next((r for r in args.revs if not r or not r.isprintable()), None)
    if bad is not None:  # git allows neither in a revision; DVC's own error on them names nothing
        return error_line(f"revision {bad!r}: empty or holding control characters, so no git revision or experiment")
    emit("\n".join(map(printable, compare(args.revs, args.several))))
    return 0


if __name__ == "__main__":
    run_command(main)
