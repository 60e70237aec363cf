"""The rules for reading anything that comes from outside the project.

URLs, archives, pickled batches, image files and params.yaml are read only through this module,
so every stage gets the same guarantees:

- nothing foreign runs: a pickle may build only what CIFAR-10 batches hold, YAML only plain data;
- nothing hangs: every read has a size cap, a download also a time limit, and only regular files
  are opened (never a device such as /dev/zero, a FIFO or a socket);
- nothing is dropped silently: a tar archive must be intact to its last byte.

A refusal is a `DataError` (a `ParamError` for params.yaml) whose one-line message names the file.
"""
from __future__ import annotations

import codecs
import contextlib
import functools
import hashlib
import importlib.util
import io
import json
import math
import multiprocessing
import os
import pickle
import stat
import tarfile
import time
import urllib.request
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Iterator
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
from PIL import Image, UnidentifiedImageError

from cifar_study.core.cifar10 import IMAGE_SIZE
from cifar_study.pipeline.errors import DataError, OutputError, ParamError, UserError, first_line

# The most any input may hold: a downloaded file, a local archive, and what an archive unpacks
# to. No copy of CIFAR-10 comes near it: the official archive is 163 MiB (170 MiB unpacked), and
# 60,000 uncompressed 32x32 images in a tar, headers included, about 280 MiB. 1 GiB leaves room
# for any image format, and stops a stream that never ends or a decompression bomb within seconds.
MAX_INPUT_BYTES = 1 << 30
# One image file: a 32x32 RGB image is 3 KiB uncompressed; 1 MiB leaves room for any metadata an
# editor adds, and refuses a file that cannot be a CIFAR image before reading it.
MAX_IMAGE_FILE_BYTES = 1 << 20
MAX_PARAMS_BYTES = 1 << 20  # params.yaml is about 2 KiB
MAX_YAML_VALUES = 100_000  # params.yaml holds about 50; nested aliases ("billion laughs") expand to billions
MAX_JSON_INT = 2 ** 53  # above it an integer is no exact float: no count, seed or size the pipeline writes
# A download stops when no byte has arrived for STALL_TIMEOUT_S (no network, a silent server) and
# when it has run for DOWNLOAD_TIME_LIMIT_S: the official 163 MiB archive arrives within that at
# 100 KB/s; on a slower line, fetch it by hand and set data.url: file:///path/to/the/archive.
STALL_TIMEOUT_S = 30
DOWNLOAD_TIME_LIMIT_S = 1800
CHUNK = 1 << 20


def mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


def larger(size: int, limit: int) -> str:
    """'2 MiB, more than the 1 MiB': in bytes where MiB would print two equal numbers."""
    if mib(size) == mib(limit):
        return f"{size:,} bytes, more than the {limit:,} bytes ({mib(limit)})"
    return f"{mib(size)}, more than the {mib(limit)}"


def kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    return "socket" if stat.S_ISSOCK(mode) else "special file"


def _where(path: str | Path, label: str) -> str:
    """How an error names the file: `label: path`, and an empty name shown as one (`''`)."""
    shown = str(path) or "'' (an empty file name)"
    return f"{label}: {shown}" if label else shown


def open_regular(path: str | Path, limit: int, label: str = "", error: type[UserError] = DataError) -> BinaryIO:
    """`path` opened for reading if it is a regular file of at most `limit` bytes; anything else is refused.

    A device or FIFO is refused before it is opened (reading /dev/zero never ends; opening a FIFO
    waits for a writer), and checked again on the open descriptor in case the path changed between.
    """
    where = _where(path, label)
    fd = None
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            st = os.fstat(fd)
    except FileNotFoundError:
        raise error(f"{where} does not exist") from None
    except OSError as exc:
        raise error(f"{where}: cannot read ({exc.strerror or first_line(exc)})") from None
    if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
        if fd is not None:
            os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{where} is a {kind_of(st.st_mode)}, not a regular file")
        raise error(f"{where} is {larger(st.st_size, limit)} it may be")
    return os.fdopen(fd, "rb")


def read_bounded(path: str | Path, limit: int, label: str = "", error: type[UserError] = DataError) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (see `open_regular`)."""
    with open_regular(path, limit, label, error) as f:
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise error(f"{_where(path, label)}: cannot read ({exc.strerror or first_line(exc)})") from None
    if len(data) > limit:  # it grew after it was opened
        raise error(f"{_where(path, label)} is more than the {mib(limit)} it may be")
    return data


_md5_seen: dict[tuple, str] = {}


def md5_file(path: str | Path) -> str:
    """Lower-case hex md5 of a regular file (at most MAX_INPUT_BYTES).

    Remembered for the file as it is (device, inode, size, modification time): a stage that needs the
    184 MB data file's hash in three places reads the file once.
    """
    with open_regular(path, MAX_INPUT_BYTES) as f:
        st = os.fstat(f.fileno())
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key not in _md5_seen:
            h = hashlib.md5()
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
            _md5_seen[key] = h.hexdigest()
    return _md5_seen[key]


# --- downloads ----------------------------------------------------------------------------------

def download(url: str, dest: Path) -> None:
    """Copy an http(s):// or file:// URL to `dest` within MAX_INPUT_BYTES and DOWNLOAD_TIME_LIMIT_S.

    `dest` is removed on any failure, Ctrl-C included. Network errors propagate as they are (the
    caller says what to do offline); a refusal by these rules is a `DataError`, a failed write
    (a full disk) an `OutputError`.
    """
    deadline = time.monotonic() + DOWNLOAD_TIME_LIMIT_S
    try:
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()  # a killed run's leftover, or a planted link: replaced, never written through
        out = os.fdopen(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")  # O_EXCL: no link followed
    except OSError as exc:
        raise OutputError(f"{dest}: cannot write ({exc.strerror or first_line(exc)})") from None
    try:
        with out:
            if urlparse(url).scheme == "file":
                with open_regular(url2pathname(urlparse(url).path), MAX_INPUT_BYTES, "data.url") as src:
                    _copy(src.read, out, url, deadline)
            else:
                # A read waits at most this long, so the time limit is checked at least this often.
                with urllib.request.urlopen(url, timeout=min(STALL_TIMEOUT_S, DOWNLOAD_TIME_LIMIT_S)) as response:
                    declared = response.headers.get("Content-Length", "")
                    if declared.isdigit() and int(declared) > MAX_INPUT_BYTES:
                        raise DataError(f"{url}: the server declares {mib(int(declared))}, more than the "
                                        f"{mib(MAX_INPUT_BYTES)} any copy of CIFAR-10 needs; check data.url")
                    _copy(response.read1, out, url, deadline)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _copy(read: Any, out: BinaryIO, url: str, deadline: float) -> None:
    total = 0
    while chunk := read(CHUNK):  # read1: returns what has arrived, so a slow stream is checked often
        total += len(chunk)
        if total > MAX_INPUT_BYTES:
            raise DataError(f"{url}: more than {mib(MAX_INPUT_BYTES)} and still sending; no copy of CIFAR-10 "
                            f"is that large; check data.url")
        if time.monotonic() > deadline:
            raise DataError(f"{url}: not complete after {DOWNLOAD_TIME_LIMIT_S} s ({mib(total)} received), the "
                            f"time limit; download it by hand and set data.url: file:///path/to/the/archive")
        try:
            out.write(chunk)
        except OSError as exc:  # a full disk is not a network problem: say so
            raise OutputError(f"{out.name}: cannot write ({exc.strerror or first_line(exc)})") from None


# --- pickles: the official CIFAR-10 batches --------------------------------------------------------

@functools.cache
def _pickle_globals() -> dict[tuple[str, str], Any]:
    """The globals a pickled batch may name: NumPy's array constructors, under both module
    spellings (NumPy 1 wrote numpy.core, NumPy 2 writes numpy._core), and the bytes decoder that
    Python 3 writes for bytes in protocol 2 pickles."""
    core = "numpy._core" if importlib.util.find_spec("numpy._core") else "numpy.core"
    multiarray, numeric = importlib.import_module(f"{core}.multiarray"), importlib.import_module(f"{core}.numeric")
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): codecs.encode}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, bytes, numbers and NumPy arrays; refuses every other global.

    A pickle runs code by naming a callable (os.system, builtins.eval, ...) as a global; this
    unpickler hands out only NumPy's array constructors, so no md5 has to be trusted.
    """
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _pickle_globals()[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR-10 batch holds only "
                                         f"dicts, lists, strings, numbers and uint8 arrays") from None


def unpickle_batch(data: bytes, where: str) -> Any:
    """An official CIFAR-10 batch (a Python 2 pickle) from `data`, built without running foreign code."""
    try:
        return _BatchUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # any failure means "not a CIFAR-10 batch"; the refusal message says why
        raise DataError(f"{where}: not a CIFAR-10 batch ({first_line(exc)})") from None


# --- images --------------------------------------------------------------------------------------

IMAGE_FORMATS = ("PNG", "JPEG")  # what the image folders and `predict` take (a TIFF or WEBP named .png is refused)


def decode_image(data: bytes, name: str) -> np.ndarray:
    """A 32x32 RGB image file as a (32, 32, 3) uint8 array.

    The size and mode come from the file's header and are checked before any pixel is decoded, so
    a decompression bomb (a small file declaring a huge image) costs nothing.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
                if im.mode != "RGB" or im.size != (IMAGE_SIZE, IMAGE_SIZE):
                    raise DataError(f"{name}: expected a {IMAGE_SIZE}x{IMAGE_SIZE} RGB image, "
                                    f"got {im.size[0]}x{im.size[1]} {im.mode}")
                # Which frame, or which colour under a transparent one, is the picture? Not ours to guess.
                if getattr(im, "n_frames", 1) > 1:
                    raise DataError(f"{name}: {im.n_frames} frames (an animated or multi-picture {im.format}); "
                                    "give one picture per file")
                if "transparency" in im.info:
                    raise DataError(f"{name}: has a transparent colour; give an opaque RGB image")
                im.load()
                return np.asarray(im, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{name}: expected a {IMAGE_SIZE}x{IMAGE_SIZE} RGB image, refused unread ({first_line(exc)})") from None
    except UnidentifiedImageError:  # its message names a BytesIO object, not the file
        raise DataError(f"{name}: not a PNG or JPEG image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{name}: cannot decode image ({first_line(exc)})") from None


DECODE_CHUNK = 2048  # images a worker decodes per task
DECODE_MAX_WORKERS = 16


def decode_images(files: list[tuple[bytes, str]], workers: int | None = None) -> np.ndarray:
    """`decode_image` of every (data, name), stacked in order; the first failure in that order is raised.

    Many images are decoded over worker processes, one per core (the 60,000 CIFAR-10 JPEGs take about
    7 s on one core; threads do not help: the decoder holds the GIL for most of a 32x32 image).
    """
    chunks = [files[i:i + DECODE_CHUNK] for i in range(0, len(files), DECODE_CHUNK)]
    workers = min(workers or os.cpu_count() or 1, DECODE_MAX_WORKERS, len(chunks))
    if workers <= 1:
        return _decode_chunk(files)
    # forkserver, not fork: the stage has threads, and a forked copy of a threaded process can deadlock
    context = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                          else "spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context)
    try:
        return np.concatenate(list(pool.map(_decode_chunk, chunks)))
    finally:
        pool.shutdown(cancel_futures=True)  # on an error or Ctrl-C too: no worker outlives the stage


def _decode_chunk(files: list[tuple[bytes, str]]) -> np.ndarray:
    return np.stack([decode_image(data, name) for data, name in files])


# --- tar archives --------------------------------------------------------------------------------

TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, ValueError)


@contextlib.contextmanager
def open_tar(path: Path, label: str, refusal: str) -> Iterator[tarfile.TarFile]:
    """A tar archive (plain, .gz, .bz2 or .xz) in a regular file of at most MAX_INPUT_BYTES;
    `refusal` is the message when it is not one."""
    with open_regular(path, MAX_INPUT_BYTES, label) as f:
        try:
            tar = tarfile.open(fileobj=f, mode="r:*")
        except TAR_ERRORS:
            raise DataError(refusal) from None
        with tar:
            yield tar


def tar_members(tar: tarfile.TarFile, where: str) -> list[tarfile.TarInfo]:
    """Every member of `tar`, in order, after checking that the archive is whole.

    Python's tarfile ends the listing silently at the first damaged header: the members after it
    would be lost without a word. So the rest of the stream, after the last member, must be the
    zero blocks that end a tar; reading it to its end also checks the gzip/bz2/xz checksum.
    """
    members: list[tarfile.TarInfo] = []
    try:
        for m in tar:
            if m.offset_data + m.size > MAX_INPUT_BYTES:  # checked before tarfile seeks past it
                raise DataError(f"{where} unpacks to more than {mib(MAX_INPUT_BYTES)} (at {m.name}); "
                                f"no copy of CIFAR-10 is that large")
            members.append(m)
        tar.fileobj.seek(tar.offset)
        position = tar.offset
        while chunk := tar.fileobj.read(CHUNK):
            position += len(chunk)
            if chunk.count(0) != len(chunk):
                after = f"after {members[-1].name}" if members else "at its start"
                raise DataError(f"{where} is corrupt {after} (a damaged header; the members after it cannot be read)")
            if position > MAX_INPUT_BYTES:
                raise DataError(f"{where} unpacks to more than {mib(MAX_INPUT_BYTES)}; no copy of CIFAR-10 is that large")
    except TAR_ERRORS as exc:
        raise DataError(f"{where} is truncated or corrupt ({first_line(exc)})") from None
    return members


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, where: str, limit: int) -> bytes:
    """The bytes of a regular member of at most `limit` bytes."""
    if member.size > limit:
        raise DataError(f"{where}:{member.name} is {larger(member.size, limit)} it may be")
    try:
        data = tar.extractfile(member).read()
    except TAR_ERRORS as exc:
        raise DataError(f"{where} is truncated or corrupt at {member.name} ({first_line(exc)})") from None
    if len(data) != member.size:
        raise DataError(f"{where} is truncated at {member.name}")
    return data


# --- params.yaml ---------------------------------------------------------------------------------

def finite_number(value: Any) -> bool:
    """An int or float, not a bool, that is a finite float: NaN, infinities and integers too large for a
    float (whose arithmetic would raise OverflowError) are not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def fraction(value: Any) -> bool:
    """A finite number in 0..1: an accuracy, or an sd of accuracies."""
    return finite_number(value) and 0 <= value <= 1


def nonnegative(value: Any) -> bool:
    """A finite number >= 0: a loss, a count of GFLOPs, a duration."""
    return finite_number(value) and value >= 0


def _refuse_constant(word: str) -> float:
    raise ValueError(f"{word} is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e309: no NaN or Infinity literal, yet infinite
        raise ValueError(f"{text} is not a finite number")
    return value


def _bounded_int(text: str) -> int:
    value = int(text)
    if abs(value) > MAX_JSON_INT:
        raise ValueError(f"an integer of {len(text)} digits is larger than any the pipeline writes")
    return value


class DuplicateKeyError(ValueError):
    """A JSON object with a key twice."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys without a word: which value a reader saw would depend on that
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise DuplicateKeyError(f"the key {key!r} appears twice in one object")
        seen.add(key)
    return dict(pairs)


def json_numbers(text: str | bytes) -> Any:
    """JSON whose every number is finite and of a size the pipeline writes; ValueError otherwise (also for
    nesting deeper than Python parses)."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int,
                          object_pairs_hook=unique_keys)
    except RecursionError:
        raise ValueError("nested deeper than any file the pipeline writes") from None


def expands_past(tree: Any, limit: int) -> bool:
    """Whether `tree`, its YAML aliases copied out (as DVC flattens them), holds more than `limit` values."""
    stack, seen = [tree], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(node, dict):
            stack += node.values()
        elif isinstance(node, list):
            stack += node
    return False


def load_yaml(path: Path) -> Any:
    """A YAML file read the way DVC reads params.yaml: ruamel.yaml's safe loader, YAML 1.2.

    So a stage sees the values DVC sees (`1e-4` is a float, `yes` a string), and refuses what DVC
    refuses: duplicate keys, tags that would build Python objects.
    """
    return parse_yaml(read_bounded(path, MAX_PARAMS_BYTES, error=ParamError), str(path))


def parse_yaml(raw: bytes | str, name: str) -> Any:
    """`raw`, the text of the file `name` (a path, or a commit's file), as `load_yaml` reads a file."""
    from ruamel.yaml import YAML, YAMLError
    from ruamel.yaml.constructor import DuplicateKeyError

    try:
        with warnings.catch_warnings():  # a reused anchor: ruamel warns over several lines, and reads it as DVC does
            warnings.simplefilter("ignore")
            tree = YAML(typ="safe").load(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except RecursionError:
        raise ParamError(f"{name}: nested deeper than any file the pipeline reads") from None
    except UnicodeDecodeError as exc:
        raise ParamError(f"{name}: not UTF-8 text ({first_line(exc)})") from None
    except DuplicateKeyError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise ParamError(f"{name}: line {line}: {exc.problem} (DVC refuses duplicate keys too: keep one)") from None
    except YAMLError as exc:
        raise ParamError(f"{name}: not valid YAML ({first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001  a value its constructor cannot build (2001-02-30, !!int x, %YAML 1.3)
        raise ParamError(f"{name}: not valid YAML ({first_line(exc)})") from None
    if expands_past(tree, MAX_YAML_VALUES):
        raise ParamError(f"{name} expands to more than {MAX_YAML_VALUES:,} values (nested YAML aliases): DVC would "
                         "copy every one out and not finish")
    return tree
