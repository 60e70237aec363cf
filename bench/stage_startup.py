"""Each stage's whole-process time on a tiny synthetic project: this tree against another commit, side by side.

On small data, and on a GPU, most of a stage's time is start-up: imports, PyTorch, W&B. This measures it as a
user meets it, `python -m stages.<name>` in a fresh process with W&B offline as shipped (where wandb imports).
Each tree runs in its own copy of one tiny project (data and checkpoint made once, by this tree's stages), in
interleaved rounds, so a slow patch of a noisy machine hits both alike; prints each stage's medians and their
ratio; --out writes JSON.

    python bench/stage_startup.py --against HEAD~3 [--stages flops,train,evaluate,findings,visualize]
                                  [--rounds 3] [--out FILE]
"""
from __future__ import annotations

import dataclasses
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cifar_study.pipeline.params import Params  # noqa: E402
from cifar_study.pipeline.cli import Parser, run_command, whole_number  # noqa: E402
from bench.children import succeeds, timed_child  # noqa: E402
from bench.out import checked_out, write_out  # noqa: E402
from bench.provenance import commit, machine, tree_clean  # noqa: E402

# Little data and one epoch; the figures and W&B as shipped (their cost does not depend on the data's size)
TINY = {"data": {"source": "synthetic", "train_limit": 400, "test_limit": 100},
        "train": {"epochs": 1, "batch_size": 32, "device": "cpu"}}
STAGES = ("flops", "train", "evaluate", "findings", "visualize")


def commit_of(rev: str) -> str | None:
    """`rev`'s commit, or None where it names none (a file, a tree, nothing; a leading '-' would be a git option)."""
    if not rev or rev.startswith("-"):
        return None
    proc = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=ROOT,
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def tree(rev: str | None, into: Path) -> Path:
    """A project folder `into` with the package and stage scripts of `rev` (this working tree if None)."""
    into.mkdir(parents=True)
    if rev is None:
        for part in ("cifar_study", "stages"):
            shutil.copytree(ROOT / part, into / part, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        archive = subprocess.run(["git", "archive", "--format=tar", rev, "cifar_study", "stages"], cwd=ROOT,
                                 capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(into, filter="data")
    return into


def run(stage: str, project: Path, env: dict[str, str]) -> float:
    """Seconds of one `python -m stages.<stage>` in `project`."""
    return timed_child([sys.executable, "-m", f"stages.{stage}"], project, env)


def main() -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=True, help="the other commit (any git revision)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {', '.join(STAGES)}")
    ap.add_argument("--rounds", type=whole_number, default=3)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    stages = args.stages.split(",")
    if not set(stages) <= set(STAGES) or args.rounds < 1:
        ap.error(f"--stages from {', '.join(STAGES)}; --rounds at least 1")
    out = checked_out(args.out)
    against = commit_of(args.against)
    if against is None:
        ap.error(f"--against: {args.against!r} names no commit of this repository")
    wandb = succeeds([sys.executable, "-c", "import wandb"])
    with tempfile.TemporaryDirectory(prefix="stage-startup-") as tmp:
        projects = {"this": tree(None, Path(tmp) / "this"), "other": tree(against, Path(tmp) / "other")}
        params = dataclasses.asdict(Params())
        for section, values in TINY.items():
            params[section].update(values)
        params["wandb"]["mode"] = "offline" if wandb else "disabled"
        # Bytecode cached as on a user's machine after a first run (the untimed runs below write it)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(WANDB_DIR=tmp, WANDB_SILENT="true")
        for project in projects.values():
            (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for stage in ("fetch_data", *STAGES):  # the inputs every measured stage reads, made once
            run(stage, projects["this"], env)
        for outputs in ("data", "models", "metrics", "plots", "reports"):
            shutil.copytree(projects["this"] / outputs, projects["other"] / outputs)
        for stage in stages:
            run(stage, projects["other"], env)
        seconds: dict[str, dict[str, list[float]]] = {s: {"this": [], "other": []} for s in stages}
        for _ in range(args.rounds):
            for stage in stages:
                for name in ("other", "this"):
                    seconds[stage][name].append(round(run(stage, projects[name], env), 3))
    rows = {stage: {"this_s": statistics.median(t["this"]), "other_s": statistics.median(t["other"]),
                    "other_over_this": round(statistics.median(t["other"]) / statistics.median(t["this"]), 2),
                    "runs": t} for stage, t in seconds.items()}
    print(f"{'stage':<10} {'this (s)':>9} {args.against + ' (s)':>14} {'ratio':>6}   medians of {args.rounds}")
    for stage, r in rows.items():
        print(f"{stage:<10} {r['this_s']:>9.2f} {r['other_s']:>14.2f} {r['other_over_this']:>5.2f}x")
    write_out(out, {  # "this" is the working tree: HEAD, plus its changes where not clean
        "this": commit(), "this_tree_clean": tree_clean("cifar_study", "stages"), "against": against,
        "wandb": "offline" if wandb else "disabled", "tiny": TINY, "machine": machine(), "rounds": args.rounds,
        "stages": rows})
    return 0


if __name__ == "__main__":
    run_command(main)
