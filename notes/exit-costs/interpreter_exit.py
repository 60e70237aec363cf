"""What Python's exit costs in a process that imported what a stage imports (PyTorch with torch._dynamo, which
Adam imports, and matplotlib): the time from the last statement to the process's end, four ways of ending.

    python notes/exit-costs/interpreter_exit.py [--rounds 4]
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cifar_study.pipeline.cli import Parser  # noqa: E402

ENDINGS = {"plain exit": "", "gc.freeze() first": "import gc; gc.freeze()",
           "gc.disable() first": "import gc; gc.disable()", "os._exit(0)": "import os; os._exit(0)"}


def main() -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds: at least 1")
    seconds: dict[str, list[float]] = {name: [] for name in ENDINGS}
    for _ in range(args.rounds):  # interleaved: a slow moment of the machine hits every ending alike
        for name, ending in ENDINGS.items():
            code = f"import torch, torch._dynamo, matplotlib.pyplot, time; print(time.monotonic(), flush=True); {ending}"
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            seconds[name].append(time.monotonic() - float(proc.stdout))
    for name, values in seconds.items():
        print(f"{name:<20} median {statistics.median(values):.2f} s  runs {[round(v, 2) for v in values]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
