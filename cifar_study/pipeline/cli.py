"""What the project's commands share (predict, show, compare, spread, results, the stages): errors as
one line on stderr with exit 2, Ctrl-C and SIGTERM as one line with exit 130, output that either
reaches stdout or is an error, and text that comes from data made harmless before it reaches a terminal."""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import re
import signal
import sys
from typing import Any, Callable, Iterator, Mapping, NoReturn, TypeVar

from cifar_study.pipeline.errors import OutputError, UserError

T = TypeVar("T")


def printable(text: str) -> str:
    """`text` with every non-printing character written as its escape (`\\x1b`, `\\u202e`, `\\n`).

    A param value, metric string, file name or experiment name can hold a terminal escape sequence (which
    rewrites the screen or the window title) or a bidirectional override (which shows text other than
    what is there); printed as escapes they show what is there, and an error stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def error_line(message: str) -> int:
    """Print `error: <message>` as one safe line on stderr; the exit status for a bad input."""
    print(f"error: {printable(message)}", file=sys.stderr)
    return 2


def stdout_to_devnull() -> None:
    """Send what is still buffered for stdout, and all later output, nowhere: after a failed write it would fail
    again at exit, as a second message."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.__stdout__.fileno())
    os.close(devnull)


def emit(text: str) -> None:
    """`text` on stdout, flushed: a full disk or a closed pipe is an OutputError, not a cut file with exit 0."""
    try:
        print(text, flush=True)
    except OSError as exc:
        stdout_to_devnull()
        raise OutputError(f"standard output: cannot write ({exc.strerror or exc})") from None


def escape_unencodable_output() -> None:
    """A terminal or pipe in ASCII (LANG=C, PYTHONIOENCODING=ascii) gets what it cannot show as escapes (\\xb1), as
    stderr does already, instead of a UnicodeEncodeError part-way through the output."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")


_stop = {"requested": False, "deferred": False}


def interrupt(signum: int, frame: object) -> None:
    """Ctrl-C and SIGTERM (a scheduler, `kill`): KeyboardInterrupt, at once, or inside `stops_deferred()` at the
    next `check_stop()` or the block's end."""
    if not _stop["deferred"]:
        raise KeyboardInterrupt
    _stop["requested"] = True


@contextlib.contextmanager
def stops_deferred() -> Iterator[None]:
    """A stop inside waits for the next `check_stop()` (the training loop calls it every batch), or for the end of
    the block (a stage's renames of its outputs: one part-way would leave a new checkpoint beside old metrics).
    Raised anywhere, KeyboardInterrupt can land in Python's import machinery, which ignores it ("Exception ignored
    in _get_module_lock") and may keep a module lock: CI saw a run train on after Ctrl-C and then hang."""
    outer, _stop["deferred"] = _stop["deferred"], True
    try:
        yield
    finally:
        _stop["deferred"] = outer  # a block inside another: the outer one's end decides
        pending = _stop["requested"] and not outer
        if not outer:
            _stop["requested"] = False  # also when the block failed: its error ends the command instead
    if pending:
        raise KeyboardInterrupt


def check_stop() -> None:
    """KeyboardInterrupt if a stop was asked for."""
    if _stop["requested"]:
        _stop["requested"] = False
        raise KeyboardInterrupt


def skip_exit_collection() -> None:
    """Python's exit runs a garbage collection over every object still alive; with PyTorch imported that pass
    took seconds per process (notes/2026-11-29-exit-costs.md). Nothing there needs collecting, so the
    objects are frozen out of it; atexit handlers and weakref finalizers still run."""
    gc.freeze()


@contextlib.contextmanager
def stops_out_of_imports() -> Iterator[None]:
    """A stop that lands while a C extension initialises (matplotlib's Agg backend, imported at the first figure
    saved) leaves it as the ImportError it caused: raised here as the stop it is."""
    try:
        yield
    except ImportError as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt) or isinstance(exc.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise


def exit_status(main: Callable[[], int | None]) -> int | None:
    """`main()`'s status, where a UserError is one line on stderr and 2, and a stop is one line and 130: the
    one place a command's errors become its exit status (run_command's core; tests call it in-process)."""
    try:
        with stops_out_of_imports():
            return main()
    except UserError as exc:
        return error_line(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def hangup_ignored() -> bool:
    """Whether SIGHUP is ignored: nohup started this process to outlive a closed terminal."""
    return signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


def stop_on_signals(handler: Callable[[int, object], None] = interrupt) -> None:
    """Ctrl-C, SIGTERM and a closed terminal (SIGHUP) stop the command through `handler`. SIGINT also when a shell
    started it in the background (with SIGINT ignored); SIGHUP not under nohup, which ignores it on purpose."""
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    if not hangup_ignored():
        signal.signal(signal.SIGHUP, handler)


def run_command(main: Callable[[], int | None]) -> NoReturn:
    """Exit with `exit_status(main)`; Ctrl-C, SIGTERM or SIGHUP stop it with one line and exit 130, and a process
    it started (subprocess.run) is killed on the way out instead of running on."""
    stop_on_signals()
    escape_unencodable_output()
    code = exit_status(main)
    skip_exit_collection()
    sys.exit(code)


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line too (argparse prints the usage and then the error), and which takes
    options by their whole names only: argparse would read `--cpu` as `--cpu-smoke`, a wrapper looking for the name
    would not."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(error_line(f"{self.prog}: {message} (see --help)"))


def whole_number(text: str) -> int:
    """An argparse type for counts: digits 0-9 only. int() also takes `٣`, `1_0` and ` 3`, which on a
    command line are typos, not numbers."""
    if not re.fullmatch(r"[0-9]+", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (digits 0-9)")
    if len(text.lstrip("0")) > 9:
        raise argparse.ArgumentTypeError(f"{text if len(text) <= 12 else text[:12] + '...'} is too large")
    return int(text)


def as_options(build: Callable[[], T], options: Mapping[str, str]) -> T:
    """`build()`, which checks a tool's options by the stages' rules (parse_params, resolve_device, fetch); a
    refusal names the option typed (--epochs), where theirs names the param (train.epochs)."""
    try:
        return build()
    except UserError as exc:
        key, _, rest = str(exc).partition(":")
        if key not in options:
            raise
        raise type(exc)(f"{options[key]}:{rest}") from None
