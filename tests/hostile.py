"""Hostile input, table-driven (issue 27): the machinery every surface's table shares.

Each row is a real file (or process state) and a real process of a command: it must exit with the row's
status, say any refusal in one line (stderr, or stdout for bench/gpu_check.sh), print no byte of a
terminal escape that came from data, change nothing in the project but what the row lets it write, and
leave no process behind (each command runs in its own session; what it started must end with it).
The classes, each at least twice per surface:
  breach        text from the files reaching a terminal as control characters, or a write through a link
  silent-wrong  NaN, a number out of range, damaged data: refused or marked, never a result
  hang          a FIFO, a device or a huge file where a file is read
  traceback     input of the wrong type or shape
  misleading    an error that must name the real cause
  lost-work     output lost (a full disk) or the command stopped: it says so, exits non-zero, keeps what was there
"""
from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import ROOT

ROW_TIMEOUT_S = 90  # longer is a hang: the row fails instead of waiting
CLASSES = {"breach", "silent-wrong", "hang", "traceback", "misleading", "lost-work"}
ESC = "\x1b]2;owned\x07"  # sets a terminal's window title: it must reach the terminal as text
YAML_ESC = r"\x1b]2;owned\x07"  # the same in a YAML double-quoted string
CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class Row:
    cls: str
    name: str
    setup: Callable[[Path], list[str]]  # makes the row's files in the project; returns the command's arguments
    code: int = 2
    expect: str = ""  # a regular expression: the error line (code != 0), else searched in stdout
    stop: int | None = None  # a signal sent to the command once it has started a child process
    stdout: str | None = None  # where stdout goes (/dev/full), instead of a pipe
    fsize: int | None = None  # RLIMIT_FSIZE of the command (a full disk for one process)
    env: dict = field(default_factory=dict)
    writes: tuple[str, ...] = ()  # files the command may write (a code-0 row of a command that writes)
    check: Callable[[Path], None] | None = None  # more to assert on the project afterwards

    def __str__(self) -> str:
        return f"{self.cls}-{self.name}"


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file of the project (a link as its target), but DVC's and git's own scratch files."""
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith((".dvc/tmp", ".git/")) or path.is_dir() and not path.is_symlink():
            continue
        out[rel] = f"-> {os.readlink(path)}" if path.is_symlink() else \
            path.read_bytes() if path.is_file() else f"special {path.stat().st_mode:o}"
    return out


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def alive(pid: int, group: bool = False) -> bool:
    """Whether process `pid` (or, with `group`, any process of the group or session it leads) still exists."""
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return False
    return True


def command(name: str) -> list[str]:
    """The process of `python -m cifar_study.<name>`."""
    return [sys.executable, "-m", f"cifar_study.{name}"]


def run_row(argv: list[str], row: Row, project: Path, cwd: Path | None = None, says: str = "stderr") -> None:
    """Run `argv` + the row's arguments in `cwd` (default: the project) and assert the row; `says` is where
    the command's one line goes."""
    args = row.setup(project)
    before = snapshot(project)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **row.env}

    def limit() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as a terminal starts it, also when the suite runs under nohup
        if row.fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (row.fsize, row.fsize))

    stdout_path = Path(row.stdout) if row.stdout else project.parent / "stdout.txt"
    with open(stdout_path, "wb") as stdout:
        proc = subprocess.Popen([*argv, *args], cwd=cwd or project, env=env, stdout=stdout, stderr=subprocess.PIPE,
                                start_new_session=True, preexec_fn=limit)
        started: list[int] = []  # the children seen when the signal went (DVC runs in a session of its own)
        try:
            if row.stop is not None:
                deadline = time.monotonic() + ROW_TIMEOUT_S
                while not started and proc.poll() is None and time.monotonic() < deadline:
                    started = children(proc.pid)
                    time.sleep(0.05)
                proc.send_signal(row.stop)  # to the command alone, as a scheduler's `kill` does
            _, err = proc.communicate(timeout=ROW_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"{argv} {row} hung")
        finally:
            left = alive(proc.pid, group=True) or any(alive(pid) for pid in started)
            if alive(proc.pid, group=True):
                os.killpg(proc.pid, signal.SIGKILL)
    out = stdout_path.read_bytes().decode(errors="replace") if not row.stdout else ""
    err = err.decode(errors="replace")
    assert not left, "a process the command started outlived it"
    assert proc.returncode == row.code, (proc.returncode, err, out)
    assert "Traceback" not in out + err and "\x1b" not in out + err, (out, err)
    if row.code:
        lines = (err if says == "stderr" else out).strip().splitlines()
        assert len(lines) == 1 and (says == "stderr" or not err), (out, err)  # stdout may hold what came before
        assert re.search(row.expect, lines[0]), lines[0]
    else:
        assert re.search(row.expect, out), out
    after = snapshot(project)
    for name in row.writes:
        before.pop(name, None), after.pop(name, None)
    assert after == before
    if row.check:
        row.check(project)


def every_class_twice(rows: list[Row]) -> None:
    counts = {c: sum(r.cls == c for r in rows) for c in CLASSES}
    assert {r.cls for r in rows} <= CLASSES and min(counts.values()) >= 2, counts


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


def special(path: str, kind: str, args: list[str] | None = None) -> Callable[[Path], list[str]]:
    """A setup that puts a FIFO, a link to /dev/zero or a directory where `path` is read."""
    def setup(root: Path) -> list[str]:
        target = root / path
        target.unlink(missing_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        {"fifo": os.mkfifo, "dev-zero": lambda p: os.symlink("/dev/zero", p), "directory": os.mkdir}[kind](target)
        return list(args or [])
    return setup


def catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (Linux /proc: SigCgt, bit sig - 1)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return bool(int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M)[1], 16) >> (sig - 1) & 1)
