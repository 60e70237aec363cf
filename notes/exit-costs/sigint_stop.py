"""How long the train stage takes to stop after Ctrl-C, this tree against another commit, interleaved runs.

The case of tests/test_reliability.py's SIGINT row: a tiny synthetic project (200 images, 3 epochs, W&B offline),
SIGINT as soon as the first epoch's resume state exists; the time is from the signal to the process's exit.

    python notes/exit-costs/sigint_stop.py --against HEAD~1 [--runs 8]
"""
from __future__ import annotations

import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from stage_startup import commit_of, tree  # noqa: E402

from cifar_study.pipeline.params import Params  # noqa: E402
from cifar_study.pipeline.cli import Parser  # noqa: E402

SHORT = {"data": {"source": "synthetic", "train_limit": 200, "test_limit": 100},
         "train": {"epochs": 3, "batch_size": 16, "flow_every": 10, "device": "cpu"}, "wandb": {"mode": "offline"}}


def project(rev: str | None, into: Path) -> Path:
    tree(rev, into)
    params = dataclasses.asdict(Params())
    for section, values in SHORT.items():
        params[section].update(values)
    (into / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run([sys.executable, "-m", "stages.fetch_data"], cwd=into, check=True, capture_output=True)
    return into


def stop_seconds(repo: Path) -> float:
    state = repo / ".train_state/train.pt"
    state.unlink(missing_ok=True)
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=60)
    if proc.returncode != 130:
        raise SystemExit(f"train exited {proc.returncode}, not 130: {err.decode()[-500:]}")
    return time.monotonic() - sent


def main() -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=True)
    ap.add_argument("--runs", type=int, default=8)
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs: at least 1")
    against = commit_of(args.against)
    if against is None:
        ap.error(f"--against: {args.against!r} names no commit of this repository")
    with tempfile.TemporaryDirectory(prefix="sigint-stop-") as tmp:
        repos = {"this": project(None, Path(tmp, "this")), args.against: project(against, Path(tmp, "other"))}
        seconds: dict[str, list[float]] = {name: [] for name in repos}
        for _ in range(args.runs):
            for name, repo in repos.items():
                seconds[name].append(stop_seconds(repo))
    for name, values in seconds.items():
        print(f"{name:<10} median {statistics.median(values):.2f} s  runs {[round(v, 2) for v in values]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
