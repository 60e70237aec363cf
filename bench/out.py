"""The bench tools' `--out FILE`: checked before any measuring, written whole or not at all, never over results.

Minutes of measuring must have somewhere to go, so a name that cannot take them (a folder, a link, a FIFO, a
missing folder) is refused at once; an existing file is refused too, as it holds earlier results (a committed
note's JSON), then and at the end. The write is whole or nothing: a full disk leaves no half file, a link planted
meanwhile is not written through.
"""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

from cifar_study.pipeline.errors import OutputError, UserError
from cifar_study.pipeline.outputs import finite_or_none, new_temporary, process_umask, refuse_links


def checked_out(name: str | None, create_folder: bool = False) -> Path | None:
    """`--out` as a path it may write, or a UserError naming why not; None where none was asked for.
    `create_folder` for a tool's default, a new name in the git-ignored bench/results/."""
    if name is None:
        return None
    if not name.strip():
        raise UserError("--out: an empty name; name a new file")
    out = Path(name)
    if os.path.lexists(out):
        kind = "a link" if out.is_symlink() else "a file of earlier results" if out.is_file() else "not a regular file"
        raise UserError(f"--out: {name} already exists ({kind}); name a new file")
    try:
        if not out.is_absolute():
            refuse_links(out, folders_only=True)  # as the write will: no folder on its way may be a link
        if create_folder:
            out.parent.mkdir(parents=True, exist_ok=True)
        # The write's own temporary, made and removed: a folder it cannot write in, or a name too long with the
        # temporary's suffix, is refused now, not after the measuring
        new_temporary(out).unlink()
    except OSError as exc:
        raise UserError(f"--out: cannot write {name} ({exc.strerror or exc})") from None
    return out


def write_out(out: Path | None, result: dict[str, Any]) -> None:
    """`result` as JSON at `out` (from checked_out), if one was asked for. Results that appeared at `out` while this
    tool measured (another run's, started the same second) are kept, and this run's go to the first free
    <name>-2.json, ..., said in one line; where even that fails, the line names the temporary that holds them."""
    if out is None:
        return
    tmp, written = None, False
    try:
        if not out.is_absolute():
            refuse_links(out, folders_only=True)  # as checked_out did: a folder linked since then is refused too
        out.parent.mkdir(parents=True, exist_ok=True)  # bench/results/ cleaned (git clean -X) while measuring
        tmp = new_temporary(out)
        tmp.write_text(json.dumps(finite_or_none(result), indent=2, allow_nan=False) + "\n")  # NaN: null, as stages
        tmp.chmod(0o666 & ~process_umask())
        written = True
        names = itertools.chain([out], (out.with_name(f"{out.stem}-{n}{out.suffix}") for n in itertools.count(2)))
        target = next(name for name in names if _placed(tmp, name))
    except OSError as exc:
        kept, tmp = (tmp, None) if written else (None, tmp)  # written: the temporary is the results' only copy
        where = f"; this run's results are in {kept}" if kept else ""
        raise OutputError(f"--out: cannot write {out} ({exc.strerror or exc}){where}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    if target != out:
        raise UserError(f"--out: {out} appeared while this ran and is kept; this run's results are in {target}")


def _placed(tmp: Path, target: Path) -> bool:
    """`tmp` whole at `target` unless something is there (False), never replacing it: a hard link where the file
    system has them (a rename would replace), else a copy into a file created exclusively (vfat, some FUSE mounts)."""
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    except OSError:
        pass
    try:
        with open(target, "xb") as f:
            try:
                f.write(tmp.read_bytes())
            except BaseException:
                f.close()
                target.unlink()  # created above, by this process: a half file is no result
                raise
    except FileExistsError:
        return False
    return True
