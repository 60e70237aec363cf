"""How soon a stage answers: the wall time of `python -m stages.<name>` until it refuses a bad
parameter (train.epochs: 0), for this tree and for another commit, run alternately; medians and the
ratio. Every bad-input message, and every test that spawns a stage, pays this start-up.

    python notes/suite-timings/stage_startup.py --base 1db9651 --repeats 7
"""
from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import NoReturn

import yaml

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("train", "evaluate", "findings")


def fail(message: str) -> NoReturn:
    print(f"stage_startup: {message}", file=sys.stderr)
    sys.exit(2)


def tree(dest: Path, commit: str | None) -> Path:
    """cifar_study/ and stages/ of `commit` (None: the working tree) in `dest`, with a bad params.yaml."""
    if commit is None:
        for part in ("cifar_study", "stages"):
            shutil.copytree(ROOT / part, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        proc = subprocess.run(["git", "archive", commit, "cifar_study", "stages"], cwd=ROOT, capture_output=True)
        if proc.returncode != 0:
            fail(f"--base {commit}: {proc.stderr.decode(errors='replace').strip()}")
        tarfile.open(fileobj=io.BytesIO(proc.stdout)).extractall(dest, filter="data")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["epochs"] = 0
    (dest / "params.yaml").write_text(yaml.safe_dump(params))
    return dest


def seconds(project: Path, stage: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=project, capture_output=True, text=True)
    took = time.perf_counter() - started
    if proc.returncode != 2 or "train.epochs" not in proc.stderr:
        fail(f"{project.name} stages.{stage} did not refuse train.epochs: {proc.stderr[-300:]}")
    return took


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return int(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the commit to compare this tree with")
    ap.add_argument("--repeats", type=positive, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        projects = {"base": tree(Path(tmp) / "base", args.base), "this tree": tree(Path(tmp) / "this", None)}
        times: dict[tuple[str, str], list[float]] = {(k, s): [] for k in projects for s in STAGES}
        for _ in range(args.repeats):
            for stage in STAGES:
                for name, project in projects.items():  # alternately: drifts in machine load hit both alike
                    times[name, stage].append(seconds(project, stage))
    print(f"median seconds until a stage refuses a bad parameter, {args.repeats} runs each (base {args.base})")
    print("| stage | base | this tree | this / base |\n|---|---:|---:|---:|")
    for stage in STAGES:
        base, this = (statistics.median(times[k, stage]) for k in projects)
        print(f"| {stage} | {base:.2f} | {this:.2f} | {this / base:.2f}× |")


if __name__ == "__main__":
    main()
