"""Writing outputs: atomically, all of a stage's outputs together, with the user's umask.

Every output is written to a temporary name beside it. Inside `outputs_together()` (every stage
runs inside one) the temporary files are renamed into place only when the stage has written all
of them: a full disk, a read-only folder or a crash in the middle leaves every previous output as
it was, never a new checkpoint beside old metrics. A write that fails says which path and why.
"""
from __future__ import annotations

import contextlib
import contextvars
import csv
import errno
import io
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from cifar_study.pipeline.cli import stops_deferred
from cifar_study.pipeline.errors import OutputError, first_line
from cifar_study.pipeline.untrusted import json_numbers, read_bounded

MAX_READ_BYTES = 256 << 20  # the largest output read back (predictions.csv of the full test split: 0.3 MB)

# (temporary, final) pairs written in the current `outputs_together()` block; None outside one.
_staged: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar("staged", default=None)
# What to do once the block's outputs are in place (e.g. delete the resume state they make unnecessary).
_after: contextvars.ContextVar[list[Callable[[], None]] | None] = contextvars.ContextVar("after", default=None)


def process_umask() -> int:
    """The process umask, read without changing it where Linux allows (a change races other threads)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)


@contextlib.contextmanager
def outputs_together() -> Iterator[None]:
    """Outputs written in the block (through `atomic_path`) replace the old ones only if the block succeeds."""
    staged: list[tuple[Path, Path]] = []
    after: list[Callable[[], None]] = []
    token, after_token = _staged.set(staged), _after.set(after)
    try:
        yield
        for _, path in staged:  # the one rename that can fail in a folder we could write to
            if path.is_dir():
                raise OutputError(f"{path}: cannot write (a directory is in the way); no output was changed")
        # A stop waits for the last rename, then ends the stage before the actions below: the resume state stays
        with stops_deferred():
            for i, (tmp, path) in enumerate(staged):
                try:
                    os.replace(tmp, path)
                except OSError as exc:
                    done = f"; {', '.join(str(p) for _, p in staged[:i])} already replaced" if i else \
                        "; no output was changed"
                    raise OutputError(f"{path}: cannot write ({_reason(exc)}){done}") from None
    finally:
        _staged.reset(token)
        _after.reset(after_token)
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    for action in after:
        action()


def after_outputs(action: Callable[[], None]) -> None:
    """Run `action` once the stage's outputs are in place (at once outside `outputs_together()`): what
    must not happen if writing them fails, like deleting the resume state of the run that made them."""
    pending = _after.get()
    if pending is None:
        action()
    else:
        pending.append(action)


def _writer_alive(temporary: Path) -> bool:
    """Whether the process that named `temporary` (.<output name>.<pid>.<random>.tmp) still runs: another run of
    the same stage, whose staged outputs must stay. A name without a pid is from an older version: stale."""
    pid = temporary.name.rsplit(".", 3)[-3] if temporary.name.count(".") >= 4 else ""
    if not (pid.isascii() and pid.isdigit()) or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, OverflowError):  # no such process, or no pid at all
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def new_temporary(path: Path) -> Path:
    """A new, empty temporary file beside `path`, named .<name>.<pid>.<random>.tmp (see _writer_alive)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def remove_stale_temporaries(outputs: Sequence[str]) -> None:
    """Delete the temporary files a killed stage (SIGKILL, a power cut) left beside or inside `outputs`:
    beside a file, only the names `atomic_path` makes for it (.<output name>.<pid>.<random>.tmp); inside a folder
    output, which the stage owns (plots/figures, dvclive), any hidden .tmp file; never one of a process that still
    runs. One that cannot be deleted is an OutputError naming it."""
    for output in map(Path, outputs):
        folder, pattern = (output, ".*.tmp") if output.is_dir() and not output.is_symlink() else \
            (output.parent, f".{output.name}.*.tmp")
        if folder.is_dir() and not folder.is_symlink():
            for stale in folder.glob(pattern):
                if stale.is_file() and not stale.is_symlink() and not _writer_alive(stale):
                    try:
                        stale.unlink(missing_ok=True)
                    except OSError as exc:
                        raise OutputError(f"{stale}: cannot remove this temporary of a killed run "
                                          f"({_reason(exc)})") from None


@contextlib.contextmanager
def atomic_path(path: str | Path, now: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`, to be renamed over `path` if the block succeeds.

    Inside `outputs_together()` the rename waits for the end of that block, unless `now` (state
    that must be saved as it happens, like the resume state). Files get the user's umask
    (mkstemp alone would leave them readable by their owner only).
    """
    path = Path(path)
    staged = None if now else _staged.get()
    if not path.is_absolute():  # the project's own outputs: never into a folder a planted link points to
        refuse_links(path, folders_only=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create its folder {path.parent} ({_reason(exc)})") from None
    tmp = None
    try:
        tmp = new_temporary(path)
        yield tmp
        os.chmod(tmp, 0o666 & ~process_umask())
        if staged is None:
            os.replace(tmp, path)
        else:
            staged.append((tmp, path))
            tmp = None  # outputs_together renames or removes it
    except OSError as exc:
        unchanged = "; no output was changed" if staged is not None else ""
        raise OutputError(f"{path}: cannot write ({_reason(exc)}){unchanged}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def refuse_links(path: Path, folders_only: bool = False) -> None:
    """Refuse to write `path` through a symbolic link (the file, or a folder on its way: each one of a
    relative path) or over anything but a regular file: a command writes where the name says, never where
    a planted link points. `folders_only` for stage outputs: DVC may link those files to its cache (rename
    replaces such a link), never a folder."""
    steps = [Path(*path.parts[:i]) for i in range(1, len(path.parts) + 1)] if not path.is_absolute() else \
        [path.parent, path]
    for step in steps[:-1] if folders_only else steps:
        try:
            mode = os.lstat(step).st_mode
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            raise OutputError(f"{path}: cannot write (a file is in the way of its folder)") from None
        if stat.S_ISLNK(mode):
            raise OutputError(f"{step} is a symbolic link: not written through (replace it with a regular "
                              f"{'file' if step == path else 'folder'})")
        if step == path and not stat.S_ISREG(mode):
            raise OutputError(f"{step} is not a regular file: not overwritten")


def write_bytes(path: str | Path, data: bytes | memoryview, now: bool = False) -> None:
    """`data` to `path` atomically (serialise first, e.g. torch.save into a BytesIO, so that a
    failing write reports its OS error rather than a serialiser's)."""
    with atomic_path(path, now) as tmp:
        tmp.write_bytes(data)


def finite_or_none(value: Any) -> Any:
    """NaN and infinity as null: JSON has no such numbers, and DVC and browsers refuse them."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def read_text(path: str | Path) -> str:
    """A file this pipeline wrote, as text: a FIFO, device or huge file in its place is refused, never read."""
    if not os.path.lexists(path):  # callers name the stage that writes it
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    return read_bounded(path, MAX_READ_BYTES).decode()


def read_json(path: str | Path) -> Any:
    """A JSON file an earlier stage wrote; ValueError for a number that is not finite, a key twice, or nesting
    deeper than Python parses (untrusted.json_numbers)."""
    return json_numbers(read_text(path))


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(read_text(path), newline="")))
