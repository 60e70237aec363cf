"""Asking DVC for JSON (compare, show): the workspace's pipeline files checked first, then
`dvc <command> --json` with a time limit and DVC's own error as one line.

DVC opens params.yaml and the metrics files as they are: a FIFO in place of one blocks it forever, so
every file it would read for params or metrics must be a regular file (or absent) before it runs. It also
flattens a params file's YAML aliases into copies: a 3 KB file of nested aliases ("billion laughs") kept
`dvc params diff` busy past 30 s (measured), so a params file is read first as the stages read it
(untrusted.parse_yaml: no aliases that expand past a bound, no duplicate keys, UTF-8).
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import stat
import subprocess
from typing import Any, Callable, Iterator

from cifar_study.pipeline.errors import ParamError, UserError, first_line
from cifar_study.pipeline.untrusted import (MAX_PARAMS_BYTES, DuplicateKeyError, kind_of, larger, parse_yaml,
                                           read_bounded, unique_keys)

DVC_TIMEOUT_S = 300
GIT_TIMEOUT_S = 30
SCAN_LIMIT = 2_000_000  # workspace entries looked at for special files (this project with its .venv: 36,000)
MAX_FILE_BYTES = 1 << 20  # this project's params and metrics files are a few KB; dvc.lock about 20 KB
DVC_YAMLS = ("dvc.yaml", "dvclive/dvc.yaml")
ALWAYS_READ = (*DVC_YAMLS, "dvc.lock", "params.yaml")


def _paths(entries: Any, strings: bool = True) -> list[str]:
    """The file paths in a dvc.yaml list of params, metrics or outs: strings (unless not `strings`), or
    {path: options}."""
    out: list[str] = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, str) and strings:
            out.append(entry)
        elif isinstance(entry, dict):
            out += [key for key in entry if isinstance(key, str)]
    return out


def _vars_files(spec: dict) -> list[str]:
    """The files a `vars:` list names (`file.yaml`, or `file.yaml:key,...`); its mappings are values, no file."""
    entries = spec.get("vars")
    return [e.split(":", 1)[0] for e in entries if isinstance(e, str)] if isinstance(entries, list) else []


def _read_workspace(path: str) -> bytes:
    return read_bounded(path, MAX_PARAMS_BYTES)


def read_by_dvc(read: Callable[[str], bytes] = _read_workspace) -> list[str]:
    """The files DVC reads for params and metrics (`read` gives a file's bytes: the workspace's, or a commit's):
    its own, and those its dvc.yaml files declare (the project's, and DVCLive's of a running or interrupted
    run, whose paths are relative to dvclive/)."""
    files = list(ALWAYS_READ)
    for dvc_yaml in DVC_YAMLS:
        try:
            spec = parse_yaml(read(dvc_yaml), dvc_yaml)  # as DVC parses it (ruamel): PyYAML refuses what DVC reads
        except (UserError, OSError):
            continue  # absent, special or unparsable: DVC says so, or the checks below do
        if not isinstance(spec, dict):
            continue
        declared = _paths(spec.get("metrics")) + _paths(spec.get("params")) + _vars_files(spec)
        stages = spec.get("stages") if isinstance(spec.get("stages"), dict) else {}
        for stage in filter(lambda s: isinstance(s, dict), stages.values()):
            # `foreach: ... do:` declares its params and metrics under `do`
            for body in (stage, stage.get("do") if isinstance(stage.get("do"), dict) else {}):
                # A stage's params are keys of params.yaml (strings) or {file: keys}: only the second names a file.
                declared += _paths(body.get("metrics")) + _paths(body.get("params"), strings=False) + _vars_files(body)
        files += [os.path.normpath(os.path.join(os.path.dirname(dvc_yaml), path)) for path in declared]
    return list(dict.fromkeys(files))


def special_files(root: str = ".", limit: int = SCAN_LIMIT) -> Iterator[tuple[str, str]]:
    """(path, kind) of every FIFO, socket or device in the workspace, or link to one, .git aside, in a fixed order.
    DVC opens files it finds in more ways than a list can follow (paths built from `vars` and `foreach` items,
    a stage's `wdir`, `sub/dvc.yaml`'s own params.yaml, .dvcignore): any one of these would block it."""
    stack, seen = [root], 0
    while stack and seen < limit:  # a bound, not a refusal: a huge workspace is DVC's to walk
        try:
            entries = sorted(os.scandir(stack.pop()), key=lambda e: e.name, reverse=True)
        except OSError:
            continue
        for entry in entries:
            seen += 1
            if entry.is_dir(follow_symlinks=False):
                if entry.name != ".git":
                    stack.append(entry.path)
            elif not entry.is_file(follow_symlinks=False):
                try:
                    mode = os.stat(entry.path).st_mode  # a link: what it points to
                except OSError:
                    continue  # a dangling link, or one DVC cannot follow either
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    yield os.path.normpath(entry.path), kind_of(mode)


def check_workspace(error: type[UserError]) -> None:
    """Refuse, in one line, a workspace file that DVC would block on, could not read as a file, or would
    not finish flattening."""
    special = next(special_files(), None)
    if special is not None:
        raise error(f"{special[0]} in the workspace is a {special[1]}, not a regular file")
    for path in read_by_dvc():
        try:
            st = os.stat(path)
            if stat.S_ISREG(st.st_mode):
                open(path, "rb").close()  # DVC shows a file it cannot read as an absent one
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise error(f"{path} in the workspace: cannot read ({exc.strerror or first_line(exc)})") from None
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path} in the workspace is a {kind_of(st.st_mode)}, not a regular file")
        if st.st_size > MAX_FILE_BYTES:  # DVC parses it whole: 29 MB of metrics took compare 23 s and 900 MB
            raise error(f"{path} in the workspace is {larger(st.st_size, MAX_FILE_BYTES)} a params or metrics file "
                        "may be")
        _refuse_unflattenable(path, lambda: read_bounded(path, MAX_FILE_BYTES), path, error)


def _refuse_unflattenable(path: str, read: Callable[[], bytes], name: str, error: type[UserError]) -> None:
    """Refuse what DVC would not finish or would misread: a YAML file's nested aliases (DVC flattens them:
    dvc.yaml's `vars` too), a JSON metrics file's key given twice (DVC keeps the last, silently) or nesting
    deeper than Python parses."""
    if path.endswith((".yaml", ".yml")):
        try:  # DVC only warns about a params file it cannot read, and diffs it as if empty
            parse_yaml(read(), name)
        except ParamError as exc:
            raise error(str(exc)) from None
    elif path.endswith(".json"):
        try:
            json.loads(read(), object_pairs_hook=unique_keys)
        except DuplicateKeyError as exc:
            raise error(f"{name}: {exc}") from None
        except RecursionError:
            raise error(f"{name}: nested deeper than any metrics file") from None
        except ValueError:
            pass  # not JSON: DVC says so


STOPS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}  # those cli.stop_on_signals turns into a stop


@contextlib.contextmanager
def owned_child(argv: list[str], **popen: Any) -> Iterator[subprocess.Popen]:
    """`argv` started in a session of its own, so that it and whatever it starts (DVC's update check) end with
    this command, on every way out. A Ctrl-C, SIGTERM or SIGHUP landing while it starts waits, blocked, until the
    process is owned here: inside Popen() it would leave the child running."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
    try:
        proc = subprocess.Popen(argv, start_new_session=True,
                                preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS), **popen)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)
        raise
    with proc:
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _git(*args: str) -> bytes | None:
    """git's output, or None where git fails (an unknown name: DVC may still know it as an experiment)."""
    try:
        with owned_child(["git", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            stdout, _ = proc.communicate(timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return stdout if proc.returncode == 0 else None


def _git_text(*args: str) -> str | None:
    out = _git(*args)
    return None if out is None else out.decode(errors="replace").strip()


def check_revision(rev: str, error: type[UserError]) -> str | None:
    """Refuse a revision that names a file or folder (`HEAD:params.yaml`, `HEAD^{tree}`: DVC fails on it about
    pygit2) or whose files DVC would not finish reading (as check_workspace for the workspace). Returns its
    commit; None for a name neither git nor this repository's experiments know (left to DVC)."""
    if rev.startswith("-"):  # git would take it for an option; DVC gets it after `--`
        return None
    found = _git_text("rev-parse", "--verify", "--quiet", rev) or _experiment(rev)
    kind = found and _git_text("cat-file", "-t", found)
    if kind in ("blob", "tree"):
        raise error(f"revision {rev!r} names a {kind} ({'a file' if kind == 'blob' else 'a folder'}), not a commit: "
                    f"give a commit, branch, tag or experiment name")
    commit = found and _git_text("rev-parse", "--verify", "--quiet", f"{found}^{{commit}}")
    if not commit:
        return None

    @functools.cache  # dvc.yaml is read for the paths it declares, then checked itself
    def read(path: str) -> bytes:
        size = _git_text("cat-file", "-s", f"{commit}:{path}")
        if size is None or _git_text("cat-file", "-t", f"{commit}:{path}") != "blob":
            raise FileNotFoundError(path)
        if int(size) > MAX_FILE_BYTES:  # DVC parses it whole
            raise error(f"{path} at {rev} is {larger(int(size), MAX_FILE_BYTES)} a params or metrics file may be")
        data = _git("cat-file", "blob", f"{commit}:{path}")
        if data is None:
            raise FileNotFoundError(path)
        return data

    for path in read_by_dvc(read):
        try:
            data = read(path)
        except FileNotFoundError:
            continue
        _refuse_unflattenable(path, lambda: data, f"{path} at {rev}", error)
    return commit


def _experiments(baseline: str = "") -> dict[str, str]:
    """DVC's experiments ({name: commit}), of one baseline commit or of all: refs/exps/<ab>/<cdef...>/<name>."""
    prefix = f"refs/exps/{baseline[:2]}/{baseline[2:]}" if baseline else "refs/exps"
    out = _git_text("for-each-ref", "--format=%(objectname) %(refname)", prefix) or ""
    return {ref.rsplit("/", 1)[1]: commit for commit, ref in (line.split(" ", 1) for line in out.splitlines())
            if ref.count("/") == 4}


def _experiment(name: str) -> str | None:
    return _experiments().get(name)


def check_experiments_of_head(error: type[UserError]) -> None:
    """check_revision for HEAD and each of its experiments: the commits `dvc exp show` reads."""
    head = check_revision("HEAD", error)
    for name in _experiments(head or "") if head else []:
        check_revision(name, error)


def dvc_json(*args: str, error: type[UserError]) -> Any:
    """`dvc <args[0]> <args[1]> --json <args[2:]>`, parsed; DVC's error as one line of `error`."""
    command = f"dvc {' '.join(args[:2])}"
    try:
        with owned_child(["dvc", *args[:2], "--json", *args[2:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"}) as proc:
            stdout, stderr = proc.communicate(timeout=DVC_TIMEOUT_S)
    except FileNotFoundError:
        raise error("dvc: command not found (activate the project's environment: source .venv/bin/activate)") from None
    except subprocess.TimeoutExpired:
        raise error(f"{command}: no answer within {DVC_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        message = next((line for line in stderr.splitlines() if line.startswith("ERROR")),
                       first_line(RuntimeError(stderr.strip() or stdout.strip())))
        raise error(f"{command}: {message.removeprefix('ERROR: ') or 'failed'}")
    try:
        return json.loads(stdout or "{}")
    except (json.JSONDecodeError, RecursionError):
        raise error(f"{command}: printed something that is not JSON") from None
