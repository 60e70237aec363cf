"""The bench tools' child processes: timed, ended with the tool, and a failure as one line naming the command.

A tool runs under `cli.run_command`, so Ctrl-C or SIGTERM raise KeyboardInterrupt; the child runs in a session
of its own (dvc_query.owned_child), which is killed on the way out with every process it started (fetch_data's
decoding workers), and the tool's temporary project is removed.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from cifar_study.pipeline.dvc_query import owned_child
from cifar_study.pipeline.errors import UserError


def timed_child(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    """Seconds that `cmd` took in `cwd`; a UserError if it failed, with the last line of its stderr."""
    started = time.perf_counter()
    with owned_child(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                     errors="replace") as proc:
        _, stderr = proc.communicate()
    seconds = time.perf_counter() - started
    if proc.returncode:
        said = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "no message")
        said = said.removeprefix("error: ")  # the child's own one-line refusal
        name = " ".join(cmd[1:]) if cmd[1:2] != ["-m"] else cmd[2]
        raise UserError(f"{name} failed in {cwd.name} (exit {proc.returncode}): {said}")
    return seconds


def succeeds(cmd: list[str]) -> bool:
    """Whether `cmd` exits 0 (`python -c "import wandb"`: is W&B installed?), its output discarded."""
    with owned_child(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        return proc.wait() == 0
