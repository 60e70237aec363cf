"""Where a measurement was made, for every bench tool's JSON: the machine by name, the code by commit.

`platform.processor()` is empty on Linux, so a CPU used to be recorded as "x86_64": two 2-core machines of
the same kind, an AMD EPYC and an Intel Xeon, ran the same test suite in 700 s and 419 s, and nothing in
a results file told them apart.
"""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU's model name ("Intel(R) Xeon(R) Processor") from /proc/cpuinfo on Linux; elsewhere what
    `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """The CPU and its core count, as the notes' tables name a machine."""
    return f"{cpu_name()}, {os.cpu_count()} cores"


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def commit() -> str | None:
    """HEAD's commit; None without git."""
    return _git("rev-parse", "HEAD") or None


def tree_clean(*paths: str) -> bool | None:
    """Whether the checkout (or only `paths` in it) is its commit exactly, no change and no untracked file;
    None without git."""
    status = _git("status", "--porcelain", "--", *paths)
    return None if status is None else status == ""
