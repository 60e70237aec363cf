"""params.yaml, validated once into typed, frozen objects.

Every stage calls `load_params()`; nothing else reads the raw YAML. A wrong key, type or
value raises `ParamError` whose message names the key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from cifar_study.pipeline.errors import ParamError, first_line
from cifar_study.pipeline.untrusted import finite_number, load_yaml

# torchvision.datasets.CIFAR10's archive and checksum, repeated here so that the
# parameters (and DVC's view of them) stay plain data.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
SEED_MAX = 2**32 - 1  # NumPy's legacy seeding (np.random.seed) accepts 0..2**32-1
SEED_RANGE = f"a seed is in 0..{SEED_MAX}, the range the random-number generators accept"
PROCESSES_MAX = 256
PROCESSES_NOTE = "a bound on typos: more processes than one machine has cores or GPUs"
COUNT_MAX = 2**53  # any int param: past it, a count is no longer exact as a float, and overflows int64 arithmetic
DEVICES = ("auto", "cpu", "cuda", "mps")  # train.device, and the bench tools' --device
REPLICAS_MAX = 64  # each replica holds its own weights and Adam state on the device (53 MB each)


def _rule(*, choices: tuple[str, ...] = (), ge: float | None = None, gt: float | None = None,
          le: float | None = None, means: str = "", user_path: bool = False, note: str = "",
          check: Callable[[Any], str] | None = None, default: Any) -> Any:
    """A field's rules: allowed choices, bounds (`note` says why), or `check`, which returns what is wrong or "".
    `means`: what an int counts, said when a float is given (`val_size: 0.1` is not a fraction);
    `user_path`: a leading `~` is expanded to the home directory."""
    return field(default=default, metadata={"choices": choices, "ge": ge, "gt": gt, "le": le, "means": means,
                                            "user_path": user_path, "note": note, "check": check})


def _digits(value: int) -> str:
    """A huge integer named by its length: its digits would fill the one-line error, and past 4300 digits (YAML's hex
    and octal get there) Python's str() refuses it."""
    return f"an integer of {len(str(abs(value)))} digits" if value.bit_length() <= 14_000 else \
        "an integer of more than 4,000 digits"


def _shown(value: Any) -> str:
    """`value` as a one-line error shows it: its repr, cut to 80 characters."""
    try:
        text = repr(value)
    except ValueError:  # holds an integer too long for str()
        return _digits(value) if isinstance(value, int) else \
            f"a {type(value).__name__} holding an integer of more than 4,000 digits"
    return text if len(text) <= 80 else text[:77] + "..."


def _md5_problem(value: str) -> str:
    return "" if re.fullmatch(r"[0-9a-fA-F]{32}", value) else "is not an md5 (32 hexadecimal digits)"


def _url_problem(value: str) -> str:
    try:
        scheme = urlparse(value).scheme
    except ValueError as exc:  # "http://[::1": an unclosed IPv6 address
        return f"is not a URL ({first_line(exc)})"
    return "" if scheme in ("http", "https", "file") else "is not an http://, https:// or file:// URL"


@dataclass(frozen=True)
class DataParams:
    source: str = _rule(default="download", choices=("download", "folder", "synthetic"))
    # source=folder: directory or .tar/.tar.gz in image-folder layout
    path: str = _rule(default="", user_path=True)
    url: str = _rule(default=CIFAR10_URL, check=_url_problem)  # source=download: http(s):// or file:// URL
    md5: str = _rule(default=CIFAR10_MD5, check=_md5_problem)  # either case: compared in lower case
    train_limit: int = _rule(default=0, ge=0, means="a number of images; 0 = all")  # else a class-balanced subset
    test_limit: int = _rule(default=0, ge=0, means="a number of images; 0 = all")
    # 0 = held-out set is the test split (the original study's protocol)
    val_size: int = _rule(default=0, ge=0, means="a number of images held out of train, not a fraction")
    seed: int = _rule(default=0, ge=0, le=SEED_MAX, note=SEED_RANGE)  # subset selection and synthetic images


@dataclass(frozen=True)
class ModelParams:
    name: str = _rule(default="simple_cnn", choices=("simple_cnn",))
    dropout: float = _rule(default=0.5, ge=0.0, le=0.999)


@dataclass(frozen=True)
class TrainParams:
    epochs: int = _rule(default=30, gt=0, means="a number of epochs")
    batch_size: int = _rule(default=128, gt=0, means="a number of images per batch")
    lr: float = _rule(default=0.001, gt=0.0, le=10.0, note="a bound on typos: Adam moves every weight by about lr "
                      "each step")
    seed: int = _rule(default=42, ge=0, le=SEED_MAX, note=SEED_RANGE)  # rank r seeds with seed + r
    device: str = _rule(default="auto", choices=DEVICES)
    loader: str = _rule(default="tensor", choices=("tensor", "dataloader"))
    num_workers: int = _rule(default=0, ge=0, le=PROCESSES_MAX, means="a number of processes",  # loader=dataloader only
                             note=PROCESSES_NOTE)
    flow_every: int = _rule(default=200, gt=0, means="a number of batches")  # between gradient/weight-flow snapshots
    channels_last: bool = False
    amp: str = _rule(default="none", choices=("none", "bf16", "fp16"))
    compile: bool = False
    # torch.compile's mode; reduce-overhead and max-autotune replay CUDA graphs (fewer kernel launches)
    compile_mode: str = _rule(default="default",
                              choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    fused_adam: bool = False  # Adam's fused kernels; with amp fp16 they also spare the scaler's per-step host read
    # ranks the train stage launches with torchrun
    nproc: int = _rule(default=1, ge=1, le=PROCESSES_MAX, means="a number of processes", note=PROCESSES_NOTE)
    # Input normalisation after 0-1 scaling: the original study's constants, or the training split's statistics.
    normalize: str = _rule(default="original", choices=("original", "computed"))
    # Seed replicas trained side by side: seeds seed, seed+1, ..., seed+replicas-1 (cifar_study/core/replicas.py).
    replicas: int = _rule(default=1, ge=1, le=REPLICAS_MAX, means="a number of seed replicas")


@dataclass(frozen=True)
class PlotParams:
    samples: int = _rule(default=32, gt=0, le=100, means="a number of images")  # in the sample-prediction grid
    dpi: int = _rule(default=120, ge=50, le=600, means="dots per inch")


@dataclass(frozen=True)
class WandbParams:
    mode: str = _rule(default="offline", choices=("offline", "online", "disabled"))
    project: str = "cifar10-simplecnn"
    entity: str = ""  # empty: the account's default entity
    # Gradient and parameter histograms of every layer, as wandb.watch(log=...) logs them (`none`, not
    # `off`: YAML reads an unquoted off as false).
    watch: str = _rule(default="all", choices=("all", "gradients", "parameters", "none"))
    watch_every: int = _rule(default=100, gt=0)  # batches between histograms


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    plots: PlotParams = field(default_factory=PlotParams)
    wandb: WandbParams = field(default_factory=WandbParams)

    def section(self, name: str) -> dict[str, Any]:
        """One section as a plain dict (for checkpoints and W&B configs)."""
        return dataclasses.asdict(getattr(self, name))


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamError(f"{path}: file not found (run from the project root)")
    raw = load_yaml(path)
    return parse_params({} if raw is None else raw)  # an empty file holds defaults; `false` or `[]` is no mapping


def parse_params(raw: Any) -> Params:
    params = _build(Params, raw, prefix="")
    _check_together(params)
    return params


def parse_section(name: str, raw: Any) -> Any:
    """One section (e.g. a checkpoint's `model` dict) validated exactly as in params.yaml."""
    return _build(typing.get_type_hints(Params)[name], raw, prefix=f"{name}.")


def _check_together(params: Params) -> None:
    """Rules that tie two keys together, checked before any stage does work."""
    if params.data.source == "folder" and not params.data.path:
        raise ParamError("data.path: required when data.source is 'folder' (a directory or .tar/.tar.gz)")
    if params.train.compile_mode != "default" and not params.train.compile:
        raise ParamError(f"train.compile_mode: {params.train.compile_mode!r} needs train.compile: true")
    t = params.train
    if t.seed + max(t.nproc, t.replicas) - 1 > SEED_MAX:
        raise ParamError(f"train.seed: {t.seed} + train.{'nproc' if t.nproc > t.replicas else 'replicas'} - 1 must be "
                         f"<= {SEED_MAX} (rank or replica r seeds with train.seed + r; {SEED_RANGE})")
    if t.replicas > 1:
        if t.amp == "fp16":  # one loss scaler for all: an overflow in one replica would skip every replica's step
            raise ParamError(f"train.replicas: {t.replicas} replicas need train.amp: none or bf16 (got fp16, whose "
                             f"loss scaler they would share)")
        # channels_last has no layout for the stacked (k, B, C, H, W) batches.
        for key, value, alone in (("nproc", t.nproc, 1), ("loader", t.loader, "tensor"), ("compile", t.compile, False),
                                  ("channels_last", t.channels_last, False)):
            if value != alone:
                raise ParamError(f"train.replicas: {t.replicas} replicas need train.{key}: {str(alone).lower()} "
                                 f"(got {str(value).lower()}); replicas already share one process's kernels")
    if params.train.batch_size % params.train.nproc:
        raise ParamError(f"train.batch_size: {params.train.batch_size} must be divisible by train.nproc="
                         f"{params.train.nproc} (it is the global batch, split evenly across ranks)")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "params.yaml"
    if not isinstance(raw, dict):
        raise ParamError(f"{where}: expected a mapping of keys, got {_shown(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted((k if isinstance(k, str) else _shown(k) for k in raw if k not in fields))  # YAML keys: 1, ~, dates
    if unknown:
        raise ParamError(f"{prefix}{unknown[0]}: unknown key (allowed in {where}: {', '.join(fields)})")
    values = {}
    for name, value in raw.items():
        key, kind = f"{prefix}{name}", hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, value, prefix=f"{key}.")
        else:
            values[name] = _check(key, value, kind, fields[name].metadata)
    return cls(**values)


def _check(key: str, value: Any, kind: type, rule: typing.Mapping[str, Any]) -> Any:
    # bool is an int subclass in Python, so `epochs: true` must be refused explicitly.
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[kind]
    if not ok:
        means = f" ({rule['means']})" if rule.get("means") else ""
        raise ParamError(f"{key}: expected {kind.__name__}{means}, got {_shown(value)}")
    if kind is float and not finite_number(value):
        raise ParamError(f"{key}: {_digits(value) if isinstance(value, int) else _shown(value)} is not a finite number")
    value = kind(value)
    if kind is int and abs(value) > COUNT_MAX:
        raise ParamError(f"{key}: {_digits(value)} is larger than any count the study uses (at most 2**53)")
    if rule.get("user_path"):
        value = os.path.expanduser(value)
    if rule.get("choices") and value not in rule["choices"]:
        raise ParamError(f"{key}: {_shown(value)} is not one of {', '.join(rule['choices'])}")
    note = f" ({rule['note']})" if rule.get("note") else ""
    if rule.get("ge") is not None and value < rule["ge"]:
        raise ParamError(f"{key}: {value!r} must be >= {rule['ge']}{note}")
    if rule.get("gt") is not None and value <= rule["gt"]:
        raise ParamError(f"{key}: {value!r} must be > {rule['gt']}{note}")
    if rule.get("le") is not None and value > rule["le"]:
        raise ParamError(f"{key}: {value!r} must be <= {rule['le']}{note}")
    if rule.get("check") and (problem := rule["check"](value)):
        raise ParamError(f"{key}: {_shown(value)} {problem}")
    return value
