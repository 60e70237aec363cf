"""The bench tools' child processes: timed, and a failure as one line naming the command and its last words.

A tool runs under `cli.run_command`, so Ctrl-C or SIGTERM raise KeyboardInterrupt: `subprocess.run` then kills
the child it waits for, and the tool's temporary project is removed on the way out.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from cifar_study.pipeline.errors import UserError


def timed_child(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    """Seconds that `cmd` took in `cwd`; a UserError if it failed, with the last line of its stderr."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          errors="replace")
    seconds = time.perf_counter() - started
    if proc.returncode:
        said = next((line.strip() for line in reversed(proc.stderr.splitlines()) if line.strip()), "no message")
        said = said.removeprefix("error: ")  # the child's own one-line refusal
        name = " ".join(cmd[1:]) if cmd[1:2] != ["-m"] else cmd[2]
        raise UserError(f"{name} failed in {cwd.name} (exit {proc.returncode}): {said}")
    return seconds
