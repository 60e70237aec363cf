"""Run-to-run spread: the same study over several seeds, aggregated.

The seeds are the replicas of one experiment (`dvc exp run -S train.replicas=5`, which trains seeds
train.seed .. train.seed + 4 side by side): this module reads the workspace's reports/replicas.json
and params.yaml, compares the committed baseline (the last commit of dvc.lock) with the replica of its
seed, and writes

    reports/spread/runs.json    what was collected: every run, and the committed baseline
    reports/spread/spread.json  mean, standard deviation and 95% intervals, final and per epoch
    reports/spread/spread.png   the per-epoch band and the final accuracies

    python -m cifar_study.spread                # the workspace's replicas, then summarise
    python -m cifar_study.spread --from-gpu-check notes/gpu-runs/<run>/summary.json   # a GPU check's seeds
    python -m cifar_study.spread --from-runs    # summarise the committed runs.json again

The statistics live in cifar_study/analysis/stats.py, shared with the replicas' metrics and compare.
"""
from __future__ import annotations

import csv
import io
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifar_study.analysis.stats import CONFIDENCE, interval
from cifar_study.core.history import history_of
from cifar_study.pipeline import paths
from cifar_study.pipeline.cli import Parser, emit, printable, run_command
from cifar_study.pipeline.errors import UserError
from cifar_study.pipeline.outputs import (outputs_together, refuse_links, remove_stale_temporaries,
                                          write_json)
from cifar_study.pipeline.params import Params
from cifar_study.pipeline.untrusted import finite_number, fraction, json_numbers, load_yaml, md5_file, parse_yaml, read_bounded
from cifar_study.results import JPEG_REFERENCE, ORIGINAL, SPREAD
from cifar_study.results import SPREAD_FIGURE as FIGURE
from cifar_study.results import SPREAD_RUNS as RUNS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NOT_RESULTS = ("wandb.",)  # W&B settings change no result: runs may differ in them
# The baseline may differ from the runs in these and still be the same protocol: the seed (the check
# pairs it with the run of its seed), and the device and options that change speed, not the method.
SAME_PROTOCOL = ("train.seed", "train.replicas", "train.amp", "train.channels_last", "train.compile",
                 "train.compile_mode", "train.fused_adam", "train.device")


MAX_RECORD_BYTES = 64 << 20  # runs.json or a GPU check's summary.json: tens of KiB for a handful of runs


class SpreadError(UserError):
    """A set of runs that cannot be aggregated; the message is one line."""


@dataclass(frozen=True)
class SeedRun:
    name: str
    seed: int
    test_acc: float
    heldout_acc: list[float]  # per epoch
    seconds: float  # wall time of all epochs (sum of history.csv's per-epoch times)

    def __post_init__(self) -> None:
        """Refuse what no study run writes (a NaN, a percentage, a float seed) before it skews the statistics, and a
        name the figure's legend would not show as written (a control character; matplotlib hides a leading _)."""
        if not isinstance(self.name, str) or not 0 < len(self.name) <= 80 or not self.name.isprintable() \
                or self.name.startswith("_"):
            raise ValueError(f"run name {printable(repr(self.name))[:80]} is not one this study writes (1 to 80 "
                             f"printable characters, not starting with _)")
        _seed(self.seed)
        for what, value in (("test_acc", self.test_acc), *(("heldout_acc", v) for v in self.heldout_acc)):
            if not fraction(value):
                raise ValueError(f"run {self.name}: {what} {value!r} is not an accuracy between 0 and 1")
        if not finite_number(self.seconds) or self.seconds < 0:
            raise ValueError(f"run {self.name}: seconds {self.seconds!r} is not a wall time")


def _seed(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"train.seed {value!r} is not an integer")
    return value


def _flat(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _with_defaults(params: dict[str, Any]) -> dict[str, Any]:
    """A run's params with each key it did not record at the code's default: a key added to the study after
    the run (train.replicas) defaults to what the code did before the key existed. W&B settings aside,
    which dvc.lock does not record (NOT_RESULTS)."""
    defaults = _flat(asdict(Params()))
    return {**params, **{k: v for k, v in defaults.items() if k not in params and not k.startswith(NOT_RESULTS)}}


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if done.returncode:
        raise SpreadError(f"git {' '.join(args)}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
    return done.stdout


def _run_at(repo: Path, commit: str, name: str, seed: int) -> SeedRun:
    """The per-epoch history and test accuracy a commit holds (an experiment's, or the baseline's)."""
    history = history_of(csv.DictReader(io.StringIO(_git(repo, "show", f"{commit}:{paths.HISTORY}"))))
    test = json_numbers(_git(repo, "show", f"{commit}:{paths.EVAL_METRICS}"))
    return SeedRun(name, seed, test["test_acc"], [r.heldout_acc for r in history], round(sum(r.seconds for r in history), 1))


def _baseline_commit(repo: Path) -> str:
    """The last commit of dvc.lock: where the committed baseline's results were recorded."""
    base = _git(repo, "log", "-1", "--format=%H", "--", "dvc.lock").strip()
    if not base:
        raise SpreadError("no commit holds dvc.lock: commit a baseline (dvc repro) first")
    return base


def _baseline_run(repo: Path, commit: str) -> dict[str, Any]:
    """The run committed at the experiments' baseline commit (dvc.lock, metrics/, plots/data/), with the
    params dvc.lock recorded for it (those of every stage, flattened)."""
    lock = parse_yaml(_git(repo, "show", f"{commit}:dvc.lock"), f"dvc.lock at {commit[:7]}")
    # dvc.lock records a stage's params as dotted keys or, for a whole section, as a nested mapping.
    params = _with_defaults(_flat({k: v for stage in lock["stages"].values()
                                   for k, v in stage.get("params", {}).get("params.yaml", {}).items()}))
    run = _run_at(repo, commit, f"baseline at {commit[:7]}", _seed(params["train.seed"]))
    return {**asdict(run), "params": params}


def collect_replicas(repo: Path) -> dict[str, Any]:
    """The workspace's seed replicas (reports/replicas.json, params.yaml), with the committed baseline."""
    tree = load_yaml(repo / "params.yaml")
    if not isinstance(tree, dict):
        raise SpreadError("params.yaml: not a mapping of sections (data, model, train, ...)")
    params = _with_defaults(_flat(tree))
    replicas = json_numbers(read_bounded(repo / paths.REPLICAS, MAX_RECORD_BYTES, error=SpreadError))
    if not isinstance(replicas, list) or len(replicas) < 2:
        raise SpreadError(f"{paths.REPLICAS}: {len(replicas) if isinstance(replicas, list) else 'no'} replica(s); "
                          "the spread needs at least 2 (dvc exp run -S train.replicas=5)")
    if type(params.get("train.replicas")) is not int or params["train.replicas"] != len(replicas):
        raise SpreadError(f"{paths.REPLICAS} holds {len(replicas)} replicas but params.yaml says train.replicas: "
                          f"{params.get('train.replicas')} (stale: run dvc repro)")
    runs = []
    for j, r in enumerate(replicas):
        history = history_of(r["history"])
        seed = _seed(r["seed"])
        # Epoch times are the stacked run's: a replica's share is 1/k of them.
        runs.append((SeedRun(f"replica-{j}", seed, r["test_acc"], [h.heldout_acc for h in history],
                             round(sum(h.seconds for h in history) / len(replicas), 1)), {**params, "train.seed": seed}))
    base = _baseline_commit(repo)
    return _collected(repo, "replicas", runs, base, _baseline_run(repo, base))


def _collected(repo: Path, prefix: str, runs: list[tuple[SeedRun, dict[str, Any]]], base: str,
               baseline: dict[str, Any]) -> dict[str, Any]:
    """The runs, checked to share every param but train.seed, with what they change from `base`'s params.yaml."""
    common = None
    for run, params in runs:
        kept = {k: v for k, v in params.items() if k != "train.seed" and not k.startswith(NOT_RESULTS)}
        if common is not None and kept != common:
            key = sorted(k for k in kept.keys() | common.keys() if kept.get(k) != common.get(k))[0]
            raise SpreadError(f"run {run.name} differs from {runs[0][0].name} in {key}, not only in train.seed")
        common = kept
    defaults = _with_defaults(_flat(parse_yaml(_git(repo, "show", f"{base}:params.yaml"), f"params.yaml at {base[:7]}")))
    changed = {k: v for k, v in common.items() if defaults.get(k) != v}
    return {"prefix": prefix, "changed_params": changed, "runs": [asdict(run) for run, _ in runs],
            "common_params": common, "baseline": baseline}


def collect_gpu_check(repo: Path, summary_path: Path) -> dict[str, Any]:
    """The default study and the spread's seeds from a bench/gpu_check.py summary.json, with the baseline
    committed in `repo` (the last commit of dvc.lock) to compare with the run of its seed."""
    summary = json_numbers(read_bounded(summary_path, MAX_RECORD_BYTES, error=SpreadError))
    if not isinstance(summary, dict) or not isinstance(summary.get("data_md5", ""), str) \
            or not isinstance(summary.get("environment", {}).get("device", ""), str):
        raise SpreadError(f"{summary_path}: not a bench/gpu_check.py summary.json")
    records = [("default", summary.get("studies", {}).get("default", {}))]
    records += sorted(((f"seed-{seed}", r) for seed, r in summary.get("spread", {}).items()), key=lambda x: int(x[0][5:]))
    runs = []
    for name, r in records:
        if "test_acc" not in r:  # a run that did not finish: the summary's steps say why
            continue
        params = _with_defaults(_flat(r["params"]))
        runs.append((SeedRun(f"gpu-{name}", _seed(params["train.seed"]), r["test_acc"],
                             [h["heldout_acc"] for h in r["history"]], round(r["training_seconds"], 1)), params))
    if len(runs) < 2:
        raise SpreadError(f"{summary_path}: {len(runs)} finished run(s); the spread needs at least 2")
    base = _baseline_commit(repo)
    baseline = _baseline_run(repo, base)
    # The same archive under another path is the same data: compare the bytes, not the path.
    archive = repo / str(baseline["params"].get("data.path", ""))
    baseline["data_md5"] = md5_file(archive) if archive.is_file() else None
    collected = _collected(repo, "gpu", runs, base, baseline)
    return {**collected, "source": str(summary_path), "data_md5": summary.get("data_md5"),
            "device": summary.get("environment", {}).get("device")}


def comparable(collected: dict[str, Any]) -> bool:
    """Whether the baseline is the spread's protocol: the same params as the runs, save those in
    SAME_PROTOCOL (what the check below is about), and data.path where both name the same bytes."""
    baseline, common = collected["baseline"], collected["common_params"]
    same_data = baseline.get("data_md5") is not None and baseline.get("data_md5") == collected.get("data_md5")
    return all(common.get(k) == v for k, v in baseline["params"].items()
               if k not in SAME_PROTOCOL and not (k == "data.path" and same_data))


def _differences(collected: dict[str, Any]) -> dict[str, list[Any]]:
    """The SAME_PROTOCOL params (the seed aside) in which the baseline differs from the runs: [baseline's, runs']."""
    base, common = collected["baseline"]["params"], collected["common_params"]
    return {k: [base.get(k), common.get(k)] for k in SAME_PROTOCOL if k != "train.seed" and base.get(k) != common.get(k)}


def summarize(collected: dict[str, Any]) -> dict[str, Any]:
    runs = [SeedRun(**r) for r in collected["runs"]]
    if len(runs) < 2:
        raise SpreadError(f"{len(runs)} run(s) in {RUNS}; the spread needs at least 2")
    seeds = [r.seed for r in runs]
    if len(set(seeds)) != len(seeds):  # one run listed twice would shrink the sd
        raise SpreadError(f"two runs share a train.seed ({', '.join(map(str, sorted(seeds)))}): each seed is one run")
    epochs = {len(r.heldout_acc) for r in runs}
    if len(epochs) != 1:
        raise SpreadError(f"the runs have different epoch counts ({sorted(epochs)})")
    per_epoch = [{"epoch": e + 1, **interval([r.heldout_acc[e] for r in runs])} for e in range(epochs.pop())]
    final = interval([r.test_acc for r in runs])
    base = collected["baseline"]
    SeedRun(**{k: base[k] for k in ("name", "seed", "test_acc", "heldout_acc", "seconds")})  # checked as the runs are
    same_seed = next((r for r in runs if r.seed == base["seed"]), None)
    check = None if same_seed is None or not comparable(collected) else {
        "seed": base["seed"], "baseline": base["name"], "differs_in": _differences(collected),
        "baseline_test_acc": base["test_acc"],
        "spread_run_test_acc": same_seed.test_acc, "difference": base["test_acc"] - same_seed.test_acc,
        "within_prediction_interval": final["pi_low"] <= base["test_acc"] <= final["pi_high"]}
    return {"confidence": CONFIDENCE, "changed_params": collected["changed_params"], "device": collected.get("device"),
            "runs": [{"name": r.name, "seed": r.seed, "test_acc": r.test_acc, "seconds": r.seconds} for r in runs],
            "final_test_acc": final, "heldout_acc_per_epoch": per_epoch, "baseline_check": check}


def spread_figure(collected: dict[str, Any], spread: dict[str, Any]) -> Figure:
    # matplotlib imported here, not at the top: it would slow every refusal of this command by about a second.
    # Through figures: importing it turns off math in text from data (a param value's "$...$").
    from cifar_study.analysis.figures import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 4.6), layout="constrained")
    band, finals = fig.subplots(1, 2, width_ratios=(2.2, 1))
    rows = spread["heldout_acc_per_epoch"]
    epochs = [r["epoch"] for r in rows]
    for run in collected["runs"]:
        band.plot(epochs, [a * 100 for a in run["heldout_acc"]], color="0.6", lw=0.8)
    band.fill_between(epochs, [r["ci_low"] * 100 for r in rows], [r["ci_high"] * 100 for r in rows], alpha=0.3,
                      label=f"{CONFIDENCE:.0%} confidence interval of the mean")
    band.plot(epochs, [r["mean"] * 100 for r in rows], lw=2, label=f"mean of {len(collected['runs'])} seeds")
    band.plot([], [], color="0.6", lw=0.8, label="each seed")
    base, check = collected["baseline"], spread["baseline_check"]
    if check:
        band.plot(epochs, [a * 100 for a in base["heldout_acc"]], "k--", lw=1.2,
                  label=printable(f"{base['name']} (seed {base['seed']}, {_options(check)})"))
    band.set(title="Held-out accuracy per epoch over seeds", xlabel="epoch", ylabel="held-out accuracy (%)",
             ylim=(max(0, min(r["min"] for r in rows) * 100 - 5), 100))
    band.xaxis.set_major_locator(MaxNLocator(integer=True))
    band.grid(alpha=0.3)
    band.legend(loc="lower right", fontsize=8)

    final = spread["final_test_acc"]
    finals.errorbar([0], [final["mean"] * 100], yerr=[[(final["mean"] - final["pi_low"]) * 100],
                    [(final["pi_high"] - final["mean"]) * 100]], fmt="none", ecolor="0.5", capsize=8,
                    label=f"{CONFIDENCE:.0%} prediction interval (one run)")
    finals.errorbar([0], [final["mean"] * 100], yerr=[[(final["mean"] - final["ci_low"]) * 100],
                    [(final["ci_high"] - final["mean"]) * 100]], fmt="o", lw=4, capsize=0,
                    label=f"mean, {CONFIDENCE:.0%} CI of the mean")
    finals.plot([0.25] * len(collected["runs"]), [r["test_acc"] * 100 for r in collected["runs"]], "o", color="0.4",
                label="each seed")
    if check:
        finals.plot([-0.25], [base["test_acc"] * 100], "kD", label=printable(f"{base['name']} ({_options(check)})"))
    for value, text, style in ((ORIGINAL["test_acc"], "original study (official archive)", ":"),
                               (JPEG_REFERENCE, "plain implementation, JPEG copy", "-.")):
        finals.axhline(value * 100, ls=style, color="tab:red", lw=1, label=f"{text}: {value:.2%}")
    finals.set(title="Final test accuracy", ylabel="test accuracy (%)", xticks=[], xlim=(-0.6, 0.6))
    finals.grid(alpha=0.3, axis="y")
    finals.legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=7)  # below: never over a point
    changed = ", ".join(f"{k}={v}" for k, v in collected["changed_params"].items() if not k.startswith("data."))
    device = f" on {collected['device']}" if collected.get("device") else ""
    # Params are text from a file: a control character is drawn as its escape (matplotlib has no glyph for it)
    fig.suptitle(printable(f"Run-to-run spread over train.seed ({changed or 'defaults'}){device}"))
    return fig


def _options(check: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]} {b}" for k, (b, _) in check["differs_in"].items()) or "same options"


def _project_relative(value: Any, root: Path) -> Any:
    """`value` with every data.path and the source inside the project made relative to it (committed files
    name no machine's absolute path); a path outside the project stays as given."""
    if isinstance(value, list):
        return [_project_relative(v, root) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _project_relative(v, root) for k, v in value.items()}
    for key in ("data.path", "source"):
        if isinstance(out.get(key), str) and Path(out[key]).is_absolute():
            try:
                out[key] = Path(out[key]).resolve().relative_to(root.resolve()).as_posix()
            except ValueError:
                pass
    return out


def write(root: Path, collected: dict[str, Any]) -> dict[str, Any]:
    from cifar_study.analysis.figures import save_figure  # matplotlib: only for the figure (see spread_figure)

    collected = _project_relative(collected, root)
    spread = summarize(collected)
    for name in (RUNS, SPREAD, FIGURE):
        refuse_links(root / name)
    (root / SPREAD).parent.mkdir(parents=True, exist_ok=True)
    # A killed run's temporaries, in a committed folder: `git add -A` would take them
    remove_stale_temporaries([str(root / name) for name in (RUNS, SPREAD, FIGURE)])
    with outputs_together():
        write_json(root / RUNS, collected)
        write_json(root / SPREAD, spread)
        save_figure(spread_figure(collected, spread), root / FIGURE, dpi=110)
    return spread


def main() -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    source = ap.add_mutually_exclusive_group()
    source.add_argument("--from-runs", action="store_true", help=f"summarise the committed {RUNS} again")
    source.add_argument("--from-gpu-check", metavar="SUMMARY", type=Path,
                        help="the runs of a bench/gpu_check.sh summary.json instead of the workspace's replicas")
    args = ap.parse_args()
    root = Path(".")
    try:
        if args.from_runs:
            collected = json_numbers(read_bounded(root / RUNS, MAX_RECORD_BYTES, error=SpreadError))
        elif args.from_gpu_check:
            collected = collect_gpu_check(root, args.from_gpu_check)
        else:
            collected = collect_replicas(root)
        spread = write(root, collected)
    except OSError as exc:
        raise SpreadError(str(exc)) from None
    # A hand-edited file, or a commit that is no study run; RecursionError: JSON nested deeper than Python parses.
    except (AttributeError, KeyError, TypeError, ValueError, RecursionError) as exc:
        source = RUNS if args.from_runs else args.from_gpu_check or paths.REPLICAS
        raise SpreadError(f"{source}: not what a study run writes ({type(exc).__name__}: {exc})") from None
    final = spread["final_test_acc"]
    if spread["baseline_check"] is None:
        print("spread: no same-seed check against the baseline (no run of its seed, other params, "
              "or its data could not be compared: is its data.path here?)", file=sys.stderr)
    emit(f"spread: {final['n']} runs, final test accuracy {final['mean']:.2%} ± {final['sd']:.2%} (sd), "
         f"{CONFIDENCE:.0%} CI {final['ci_low']:.2%}–{final['ci_high']:.2%}; wrote {RUNS}, {SPREAD}, {FIGURE}")
    return 0


if __name__ == "__main__":
    run_command(main)
