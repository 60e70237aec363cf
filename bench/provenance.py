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
    """The CPU's model name from /proc/cpuinfo on Linux, with its family and model numbers and its bf16 support
    ("AMD EPYC (family 26, model 2; AVX512-BF16)"): the model name alone is "AMD EPYC" on machines that ran the
    suite 2x apart, and bf16 is 12x slower than fp32 or 1.6x faster by the last. Elsewhere what `platform` knows."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if not fields.get("model name"):
        return platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    bf16 = [name for flag, name in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16")) if flag in flags]
    return (f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}; "
            f"{', '.join(bf16) or 'no bf16 instructions'})")


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
