"""What every stage script shares: one-line errors for user mistakes, clean exit on Ctrl-C, outputs
that are replaced all together or not at all, and no stray stage when the process that started it
(dvc, torchrun) is killed."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, TextIO

from cifar_study import RANK_ERRORS_ENV, launched_rank
from cifar_study.pipeline.cli import (error_line, escape_unencodable_output, skip_exit_collection, stdout_to_devnull,
                                     stop_on_signals, stops_out_of_imports)
from cifar_study.pipeline.errors import UserError
from cifar_study.pipeline.outputs import outputs_together, refuse_links, remove_stale_temporaries
from cifar_study.pipeline.paths import LIVE, RESUME, STAGE_FILES

LAUNCHER_POLL_S = 1.0  # how often a stage checks that its launcher is still there
SHELLS = {"sh", "dash", "bash", "zsh", "ksh", "mksh", "fish"}


def _parent_of(pid: int) -> int | None:
    """The parent pid of `pid` (Linux /proc); None if `pid` is gone or /proc is unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # fields after "(comm)": state, ppid, ...


def _is_shell_wrapper(pid: int) -> bool:
    """`sh -c 'python -m stages.x'`: how DVC starts a stage ($SHELL, else /bin/sh)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.path.basename(argv[0].decode(errors="replace")) in SHELLS and b"-c" in argv


def stop_with_launcher(poll_s: float = LAUNCHER_POLL_S) -> None:
    """When the launcher (dvc, or torchrun for a data-parallel rank) goes away, stop like on SIGTERM.

    Killing `dvc repro` (`kill <dvc pid>`) kills dvc alone; without this, the stage would train on and
    write its outputs behind DVC's back. A thread polls the parent pid: when the parent exits the stage
    is re-parented and stops cleanly (exit 130, resume state kept). DVC runs a stage as `$SHELL -c cmd`;
    bash replaces itself with the command, but dash (Debian's /bin/sh) stays as the stage's parent and
    outlives a killed dvc, so through such a shell the shell's parent is watched too (/proc, Linux).
    Not prctl(PR_SET_PDEATHSIG): it would fire on the death of that shell, not of dvc, and on the exit
    of the parent *thread* that forked, not of the process.
    A stage started by hand (no DVC_STAGE, not a torchrun rank) belongs to the user's shell and is not
    watched, so `nohup python -m stages.train &` survives a logout.
    """
    if "DVC_STAGE" not in os.environ and "WORLD_SIZE" not in os.environ:  # DVC sets one, torchrun the other
        return
    parent = os.getppid()
    grandparent = _parent_of(parent) if _is_shell_wrapper(parent) else None

    def watch() -> None:
        while os.getppid() == parent and (grandparent is None or _parent_of(parent) == grandparent):
            time.sleep(poll_s)
        print(f"stopping: the process that started this stage (pid {grandparent or parent}) has exited",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def report_error(message: str) -> None:
    if launched_rank():  # the launcher prints it, once
        Path(os.environ[RANK_ERRORS_ENV], f"rank{int(os.environ['RANK']):06d}").write_text(message)
    else:
        error_line(message)


def _written_by(stage: str) -> list[str]:
    """Every path the stage writes: its outputs, and train's resume state and live progress."""
    return [*STAGE_FILES.get(stage, ((), ()))[1], *((RESUME, LIVE) if stage == "train" else ())]


def _refuse_linked_folders(stage: str) -> None:
    """A symlinked folder on the way of any of the stage's outputs, refused before any work (atomic_path refuses it
    too, at the write: for train that would be after the epochs)."""
    for output in map(Path, _written_by(stage)):
        # A folder output (no suffix: plots/figures, dvclive) is checked itself: DVC links files to its cache, not folders
        refuse_links(output / "-" if not output.suffix else output, folders_only=True)


class _StageStdout:
    """A stage's sys.stdout: a full disk or a closed pipe there (`| head -1`) must not stop the stage part-way, which
    would throw away its finished outputs. The first failure is kept for one line at the end; later output goes
    nowhere."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.failure = stream, None

    def write(self, text: str) -> int:
        self._guarded(self.stream.write, text)
        return len(text)

    def flush(self) -> None:
        self._guarded(self.stream.flush)

    def _guarded(self, call: Callable[..., object], *args: object) -> None:
        if self.failure is None:
            try:
                call(*args)
            except OSError as exc:
                self.failure = exc.strerror or str(exc)
                stdout_to_devnull()

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


def run_stage(main: Callable[[], None]) -> None:
    stop_on_signals()
    escape_unencodable_output()
    stop_with_launcher()
    spec = getattr(sys.modules["__main__"], "__spec__", None)  # stages.<name> when run as python -m stages.<name>
    stage = spec.name.rpartition(".")[2] if spec and spec.name.startswith("stages.") else ""
    # `>&-` leaves no stdout at all (None): print() then writes nothing, and there is nothing to guard
    stdout = sys.stdout = _StageStdout(sys.stdout) if sys.stdout is not None else None
    try:
        if stage in STAGE_FILES and not launched_rank():  # one process cleans, before any writes
            remove_stale_temporaries(_written_by(stage))
        _refuse_linked_folders(stage)
        with stops_out_of_imports(), outputs_together():  # a stage that stops part-way changes none of its outputs
            main()
        if stdout is not None:
            stdout.flush()
            if stdout.failure:
                raise UserError(f"standard output: cannot write ({stdout.failure}); the stage's outputs were written")
    except UserError as exc:
        report_error(str(exc))
        sys.exit(2)
    except KeyboardInterrupt:
        if not launched_rank():  # the launcher says it for all ranks
            print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        skip_exit_collection()
