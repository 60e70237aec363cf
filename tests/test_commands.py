"""Hostile input to the commands a user runs by hand (issue 27): compare, show and predict, one table
each (the rows' machinery and classes: tests/hostile.py); and a stop while a command still imports."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_study.core.model import SimpleCNN
from cifar_study.pipeline.checkpoint import save_checkpoint
from cifar_study.pipeline.params import ModelParams
from tests.conftest import ROOT, image_folder_files, write_tar
from tests.hostile import (
    CIFAR,
    ESC,
    ROW_TIMEOUT_S,
    YAML_ESC,
    Row,
    alive,
    catches,
    command,
    every_class_twice,
    run_row,
    special,
    write,
)

pytestmark = pytest.mark.slow

# --- compare and show: a DVC repository whose HEAD holds 3 replicas at 0.50 ± 0.01 ---------------------------

@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("dvc-repo") / "project"
    repo.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    write(repo, {"dvc.yaml": "metrics:\n  - metrics/eval.json\n",
                 "reports/spread/spread.json": '{"final_test_acc": {"sd": 0.0096}}',
                 "params.yaml": "train:\n  lr: 0.001\n  replicas: 3\n",
                 "metrics/eval.json": '{"test_acc": 0.5, "replicas": 3, "test_acc_mean": 0.5, "test_acc_sd": 0.01}'})
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"], cwd=repo, check=True)
    return repo


@pytest.fixture
def project(dvc_repo, tmp_path) -> Path:
    """A copy of the repository for one row."""
    return Path(shutil.copytree(dvc_repo, tmp_path / "project", symlinks=True))


def files(args: list[str] | None = None, **named: str | bytes) -> Callable[[Path], list[str]]:
    """A setup that writes files (keyword `metrics` for metrics/eval.json, `params`, `spread`) and passes `args`."""
    where = {"metrics": "metrics/eval.json", "params": "params.yaml", "spread": "reports/spread/spread.json",
             "dvc_yaml": "dvc.yaml"}

    def setup(root: Path) -> list[str]:
        write(root, {where[k]: v for k, v in named.items()})
        return list(args or [])
    return setup


def commit(root: Path) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "row"], cwd=root, check=True)


# "Billion laughs": 3 KB of nested YAML aliases that DVC flattens into 10**10 values.
ALIAS_BOMB = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]"
                                                                    for i in range(1, 10)]) + "\n"
REPLICAS_3 = '{"test_acc": %s, "replicas": 3, "test_acc_mean": %s, "test_acc_sd": 0.01}'
SINGLE = '{"test_acc": %s}'

COMPARE_ROWS = [
    Row("breach", "param-name-with-a-terminal-escape", files(params=f"train:\n  lr: 0.001\n  replicas: 3\n  "
                                                                f"\"n{YAML_ESC}\": 1\n", metrics=REPLICAS_3 % (0.6, 0.6)),
        code=0, expect=r"changed params: train\.n\\x1b\]2;owned\\x07 None -> 1"),
    Row("breach", "param-value-with-a-terminal-escape",
        files(params=f"train:\n  lr: 0.001\n  replicas: 3\n  note: \"{YAML_ESC}\"\n", metrics=REPLICAS_3 % (0.6, 0.6)),
        code=0, expect=r"train\.note None -> '\\x1b\]2;owned\\x07'"),
    Row("silent-wrong", "nan-accuracy", files(params="train:\n  lr: 0.001\n", metrics=SINGLE % "NaN"),
        expect=r"^error: metrics/eval.json at workspace: test_acc is nan, not a finite number"),
    Row("silent-wrong", "accuracy-in-percent", files(params="train:\n  lr: 0.001\n", metrics=SINGLE % 84.5),
        expect=r"^error: metrics/eval.json at workspace: test accuracy 84.5 is not a fraction in 0..1$"),
    Row("silent-wrong", "spread-sd-nan", files(params="train:\n  lr: 0.01\n", metrics=SINGLE % 0.6,
                                              spread='{"final_test_acc": {"sd": NaN}}'),
        expect=r"^error: reports/spread/spread.json: not a spread written by python -m cifar_study.spread \(NaN is not a "
               r"finite number\)$"),
    Row("silent-wrong", "spread-sd-past-a-float", files(params="train:\n  lr: 0.01\n", metrics=SINGLE % 0.6,
                                                      spread='{"final_test_acc": {"sd": 1e309}}'),
        expect=r"^error: reports/spread/spread.json: not a spread written by .*\(1e309 is not a finite number\)$"),
    Row("traceback", "replicas-of-400-digits", files(params=f"train:\n  lr: 0.001\n  replicas: {10 ** 400}\n",
                                                     metrics=REPLICAS_3.replace('"replicas": 3', f'"replicas": {10 ** 400}') % (0.6, 0.6)),
        expect=r"^error: metrics/eval.json at workspace: replicas is 1000000000\d*, not a count of 1 to 64 replicas$"),
    Row("hang", "eval-json-fifo", special("metrics/eval.json", "fifo"),
        expect=r"^error: metrics/eval.json in the workspace is a FIFO \(named pipe\), not a regular file"),
    Row("hang", "params-yaml-fifo", special("params.yaml", "fifo"),
        expect=r"^error: params.yaml in the workspace is a FIFO \(named pipe\), not a regular file"),
    Row("hang", "spread-is-dev-zero", lambda r: (files(params="train:\n  lr: 0.01\n", metrics=SINGLE % 0.6)(r),
                                                 special("reports/spread/spread.json", "dev-zero")(r))[1],
        expect=r"^error: reports/spread/spread.json in the workspace is a device, not a regular file$"),
    Row("hang", "params-yaml-alias-bomb", files(params=ALIAS_BOMB),
        expect=r"^error: params.yaml expands to more than 100,000 values \(nested YAML aliases\)"),
    Row("hang", "params-of-a-project-in-a-subfolder-is-a-fifo", special("sub/params.yaml", "fifo"),
        expect=r"^error: sub/params.yaml in the workspace is a FIFO \(named pipe\), not a regular file$"),
    Row("traceback", "unknown-option", files(["--bogus"]),
        expect=r"^error: python -m cifar_study.compare: unrecognized arguments: --bogus \(see --help\)$"),
    Row("traceback", "spread-not-utf8", files(params="train:\n  lr: 0.01\n", metrics=SINGLE % 0.6, spread=b"\xff\xfe{"),
        expect=r"^error: reports/spread/spread.json: not a spread written by python -m cifar_study.spread \("),
    Row("traceback", "spread-sd-a-list", files(params="train:\n  lr: 0.01\n", metrics=SINGLE % 0.6,
                                               spread='{"final_test_acc": [0.01]}'),
        expect=r"^error: reports/spread/spread.json: not a spread written by python -m cifar_study.spread"),
    Row("misleading", "revision-with-a-terminal-escape", files([f"HEAD{ESC}"]),
        expect=r"^error: revision 'HEAD\\x1b\]2;owned\\x07': empty or holding control characters"),
    Row("silent-wrong", "nan-param-on-both-sides-is-no-change", lambda r: (
        files(params="train:\n  lr: .nan\n  replicas: 3\n")(r), commit(r),
        files(params="train:\n  lr: .nan\n  replicas: 3\n  seed: 7\n", metrics=REPLICAS_3 % (0.6, 0.6))(r))[2],
        code=0, expect=r"^changed params: train\.seed None -> 7\n"),
    Row("hang", "metrics-file-of-two-mib", files(metrics='{"test_acc": 0.5, "pad": "' + "x" * (2 << 20) + '"}'),
        expect=r"^error: metrics/eval.json in the workspace is 2 MiB, more than the 1 MiB a params or metrics file may be$"),
    Row("misleading", "eval-json-a-list", files(metrics="[0.5]"),
        expect=r"^error: workspace: no test accuracy in metrics/eval.json \(the file is absent, or not what evaluate"),
    Row("misleading", "params-yaml-a-directory", special("params.yaml", "directory"),
        expect=r"^error: params.yaml in the workspace is a directory, not a regular file"),
    Row("misleading", "params-yaml-empty", files(params="", metrics=REPLICAS_3 % (0.6, 0.6)),
        expect=r"^error: workspace: params.yaml holds no params"),
    Row("misleading", "eval-json-true", files(params="train:\n  lr: 0.001\n", metrics="true"),
        expect=r"^error: workspace: no test accuracy in metrics/eval.json \(the file is absent, or not what evaluate"),
    Row("misleading", "revision-naming-a-file", files(["HEAD:params.yaml"]),
        expect=r"^error: revision 'HEAD:params.yaml' names a blob \(a file\), not a commit"),
    Row("misleading", "revision-naming-a-folder", files(["HEAD^{tree}", "HEAD"]),
        expect=r"^error: revision 'HEAD\^\{tree\}' names a tree \(a folder\), not a commit"),
    Row("traceback", "difference-of-1e-200", lambda r: (files(params="train:\n  lr: 0.001\n", metrics=SINGLE % 0.0)(r),
                                                       commit(r), files(params="train:\n  lr: 0.01\n",
                                                                        metrics=SINGLE % 1e-200)(r))[2],
        code=0, expect=r"difference \+0\.00%: cannot be judged .* more than 1000 replicas per side"),
    Row("hang", "alias-bomb-committed-at-the-other-side", lambda r: (files(params=ALIAS_BOMB)(r), commit(r),
                                                                   files(params="train:\n  lr: 0.01\n  replicas: 3\n")(r),
                                                                   ["HEAD~1", "HEAD"])[3],
        expect=r"^error: params.yaml at HEAD expands to more than 100,000 values \(nested YAML aliases\)"),
    Row("hang", "dvc-yaml-alias-bomb", files(dvc_yaml="metrics:\n  - metrics/eval.json\nvars:\n" +
                                              "".join(f"  - {line}\n" for line in ALIAS_BOMB.splitlines())),
        expect=r"^error: dvc.yaml expands to more than 100,000 values \(nested YAML aliases\)"),
    Row("hang", "workspace-named-as-a-side", lambda r: special("metrics/eval.json", "fifo")(r) + ["HEAD", "workspace"],
        expect=r"^error: metrics/eval.json in the workspace is a FIFO \(named pipe\), not a regular file"),
    Row("misleading", "two-names-of-one-commit", lambda r: (subprocess.run(["git", "tag", "v1"], cwd=r, check=True),
                                                          ["v1", "HEAD"])[1],
        expect=r"^error: v1 and HEAD are the same commit \([0-9a-f]{7}\): nothing to compare$"),
    Row("silent-wrong", "metric-key-twice-the-last-would-win",
        files(metrics='{"test_acc": 0.5, "replicas": 3, "test_acc_mean": 0.1, "test_acc_sd": 0.01, "test_acc_mean": 0.6}'),
        expect=r"^error: metrics/eval.json: the key 'test_acc_mean' appears twice in one object$"),
    Row("traceback", "metrics-nested-past-the-parser", files(metrics="[" * 100_000 + "]" * 100_000),
        expect=r"^error: metrics/eval.json: nested deeper than any metrics file$"),
    Row("lost-work", "sigterm-while-dvc-runs", files(), code=130, expect=r"^interrupted$", stop=signal.SIGTERM),
    Row("lost-work", "sigint-while-dvc-runs", files(), code=130, expect=r"^interrupted$", stop=signal.SIGINT),
    Row("lost-work", "stdout-on-a-full-disk", files(params="train:\n  lr: 0.1\n  replicas: 3\n",
                                                    metrics=REPLICAS_3 % (0.6, 0.6)), stdout="/dev/full",
        expect=r"^error: standard output: cannot write \(No space left on device\)$"),
]

SHOW_ROWS = [
    Row("breach", "param-value-with-a-terminal-escape", files(params=f"train:\n  lr: \"{YAML_ESC}\"\n  replicas: 3\n"),
        code=0, expect=r"workspace +0\.5 ± 0\.01 +\\x1b\]2;owned\\x07"),
    Row("breach", "metric-text-with-a-terminal-escape", files(metrics=f'{{"test_acc": "{ESC}"}}'.replace("\x1b", "\\u001b")
                                                             .replace("\x07", "\\u0007")),
        code=0, expect=r"workspace +'\\x1b\]2;owned\\x07' \(!\)"),
    Row("silent-wrong", "nan-accuracy", files(metrics=SINGLE % "NaN"), code=0,
        expect=r"workspace +nan \(!\)[\s\S]*\(\(!\) marks a metric that is not a finite number"),
    Row("silent-wrong", "accuracy-in-percent-and-sd-past-any-accuracy",
        files(metrics='{"test_acc": 84.5, "test_acc_mean": 84.5, "test_acc_sd": 1e308}'), code=0,
        expect=r"workspace +84\.5 \(!\) ± 1e\+308 \(!\)[\s\S]*or an accuracy outside 0\.\.1"),
    Row("silent-wrong", "accuracy-as-text", files(metrics=SINGLE % '"0.99"'), code=0, expect=r"workspace +'0\.99' \(!\)"),
    Row("traceback", "loss-of-400-digits", files(metrics='{"test_acc": 0.5, "test_loss": %d}' % 10 ** 400), code=0,
        expect=r"workspace +0\.5 +10{22}… \(!\)"),
    Row("misleading", "metrics-file-cut-short-is-not-a-missing-metric", files(metrics='{"test_acc": 0.5,'), code=0,
        expect=r"workspace \(not read\) +-\s[\s\S]*\(workspace \(not read\): metrics/eval\.json: unable to read"),
    Row("silent-wrong", "negative-loss", files(metrics='{"test_acc": 0.5, "test_loss": -2.3}'), code=0,
        expect=r"workspace +0\.5 +-2\.3 \(!\)[\s\S]*a negative loss or count"),
    Row("silent-wrong", "fractional-layer-count-and-negative-gflops",
        files(metrics='{"test_acc": 0.5, "flagged_layers": 1.5, "gflops": -7}'), code=0,
        expect=r"workspace +0\.5 +1\.5 \(!\) +-7 \(!\)"),
    Row("hang", "params-yaml-fifo", special("params.yaml", "fifo"),
        expect=r"^error: params.yaml in the workspace is a FIFO \(named pipe\), not a regular file"),
    Row("hang", "declared-metrics-file-is-dev-zero", special("metrics/eval.json", "dev-zero"),
        expect=r"^error: metrics/eval.json in the workspace is a device, not a regular file"),
    # every file DVC opens: its config, a `vars:` file, the metrics of a `foreach` stage
    Row("hang", "dvc-config-local-is-a-fifo", special(".dvc/config.local", "fifo"),
        expect=r"^error: .dvc/config.local in the workspace is a FIFO \(named pipe\), not a regular file$"),
    Row("hang", "vars-file-is-a-fifo", lambda r: (files(dvc_yaml="vars:\n  - v.yaml:a\nmetrics:\n  - metrics/eval.json\n")(r),
                                                  special("v.yaml", "fifo")(r))[1],
        expect=r"^error: v.yaml in the workspace is a FIFO \(named pipe\), not a regular file$"),
    Row("hang", "metrics-of-a-foreach-stage-is-a-fifo", lambda r: (files(dvc_yaml=(
        "stages:\n  each:\n    foreach: [a]\n    do:\n      cmd: echo ${item}\n      metrics:\n        - m.json:\n"
        "            cache: false\n"))(r), special("m.json", "fifo")(r))[1],
        expect=r"^error: m.json in the workspace is a FIFO \(named pipe\), not a regular file$"),
    # ...and any FIFO or device in the workspace: DVC opens files that no list follows
    Row("hang", "metrics-path-built-from-a-foreach-item-is-a-fifo", lambda r: (files(dvc_yaml=(
        "stages:\n  each:\n    foreach: [a]\n    do:\n      cmd: echo ${item}\n      metrics:\n        - m-${item}.json:\n"
        "            cache: false\n"))(r), special("m-a.json", "fifo")(r))[1],
        expect=r"^error: m-a.json in the workspace is a FIFO \(named pipe\), not a regular file$"),
    Row("hang", "dvcignore-is-a-fifo", special(".dvcignore", "fifo"),
        expect=r"^error: .dvcignore in the workspace is a FIFO \(named pipe\), not a regular file$"),
    Row("hang", "live-metrics-of-a-stopped-run-is-a-fifo",
        lambda r: (write(r, {"dvclive/dvc.yaml": "metrics:\n- metrics.json\n"}), special("dvclive/metrics.json", "fifo")(r))[1],
        expect=r"^error: dvclive/metrics.json in the workspace is a FIFO \(named pipe\), not a regular file$"),
    Row("hang", "params-yaml-alias-bomb", files(params=ALIAS_BOMB),
        expect=r"^error: params.yaml expands to more than 100,000 values \(nested YAML aliases\)"),
    Row("hang", "alias-bomb-committed-at-head", lambda r: (files(params=ALIAS_BOMB)(r), commit(r),
                                                         files(params="train:\n  lr: 0.01\n  replicas: 3\n")(r))[2],
        expect=r"^error: params.yaml at HEAD expands to more than 100,000 values \(nested YAML aliases\)"),
    Row("traceback", "width-not-a-number", files(["--width", "wide"]),
        expect=r"^error: python -m cifar_study.show: argument --width: 'wide' is not a whole number \(digits 0-9\) "
               r"\(see --help\)$"),
    Row("misleading", "width-of-5000-digits", files(["--width", "9" * 5000]),
        expect=r"^error: python -m cifar_study.show: argument --width: 999999999999\.\.\. is too large \(see --help\)$"),
    Row("traceback", "params-yaml-a-list", files(params="- 1\n- 2\n"), code=0,
        expect=r"\nworkspace \(not read\) +- [\s\S]*\n\(workspace \(not read\): failed to parse .*got 'list'"),
    Row("traceback", "accuracy-nested-in-an-object", files(metrics='{"test_acc": {"mean": [0.5]}}'), code=0,
        expect=r"workspace +-"),
    Row("misleading", "dvc-not-installed", files(), env={"PATH": "/usr/bin:/bin"},
        expect=r"^error: dvc: command not found \(activate the project's environment"),
    Row("misleading", "not-a-dvc-repository", lambda r: shutil.rmtree(r / ".dvc") or [],
        expect=r"^error: dvc exp show: you are not inside of a DVC repository"),
    Row("lost-work", "sigterm-while-dvc-runs", files(), code=130, expect=r"^interrupted$", stop=signal.SIGTERM),
    Row("lost-work", "stdout-on-a-full-disk", files(), stdout="/dev/full",
        expect=r"^error: standard output: cannot write \(No space left on device\)$"),
    Row("traceback", "a-date-that-does-not-exist", files(params="train:\n  lr: 2001-02-30\n  replicas: 3\n"),
        expect=r"^error: params.yaml: not valid YAML \(day is out of range for month\)$"),
    Row("traceback", "dvc-yaml-with-a-date-that-does-not-exist",
        files(dvc_yaml="vars:\n  - d: 2001-02-30\nmetrics:\n  - metrics/eval.json\n"),
        expect=r"^error: dvc.yaml: not valid YAML \(day is out of range for month\)$"),
    # PyYAML refuses a reused anchor where DVC's parser reads it: the FIFO it names must still be found.
    Row("hang", "fifo-declared-through-a-reused-anchor", lambda r: (
        files(dvc_yaml="metrics:\n  - &x metrics/eval.json\n  - &x metrics/fifo.json\n")(r),
        special("metrics/fifo.json", "fifo")(r))[1],
        expect=r"^error: metrics/fifo.json in the workspace is a FIFO \(named pipe\), not a regular file$"),
    Row("traceback", "stdout-in-ascii", files(), code=0, env={"PYTHONIOENCODING": "ascii"},
        expect=r"workspace +0\.5 \\xb1 0\.01"),
]


@pytest.mark.parametrize("row", COMPARE_ROWS, ids=str)
def test_compare(row, project):
    run_row(command("compare"), row, project)


@pytest.mark.parametrize("row", SHOW_ROWS, ids=str)
def test_show(row, project):
    run_row(command("show"), row, project)


# --- predict: a checkpoint and images -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("predict") / "model.pt"
    save_checkpoint(path, **checkpoint_fields(SimpleCNN()))
    return path


def checkpoint_fields(model: torch.nn.Module, **fields) -> dict:
    return {"model_state": model.state_dict(), "model": {"name": "simple_cnn", "dropout": 0.5}, "train": {},
            "classes": CIFAR, "mean": [0.5] * 3, "std": [0.25] * 3, "epoch": 1, "history": [], **fields}


@pytest.fixture
def predict_project(model_file, tmp_path) -> Path:
    root = tmp_path / "project"
    (root / "models").mkdir(parents=True)
    shutil.copy(model_file, root / "models/model.pt")
    Image.fromarray(np.full((40, 40, 3), 90, dtype=np.uint8)).save(root / "cat.png")
    return root


def image(name: str) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        shutil.copy(root / "cat.png", root / name)
        return [name]
    return setup


def model_file_of(change: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        change(root / "models/model.pt")
        return ["cat.png"]
    return setup


def flip_a_weight_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside fc1.weight, 16 of the file's 18 MB: torch.load reads it without a word
    path.write_bytes(bytes(data))


def saved_as(**fields) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        model = SimpleCNN()
        if fields.pop("nan", False):
            with torch.no_grad():
                model.block1.conv.weight[0, 0, 0, 0] = float("nan")
        save_checkpoint(path, **checkpoint_fields(model, **fields))
    return change


def quantized(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():  # PyTorch deprecates quantized dtypes: the test's own making, not the command's
        warnings.simplefilter("ignore")
        return {k: torch.quantize_per_tensor(v, 0.1, 0, torch.qint8) if v.is_floating_point() else v
                for k, v in weights.items()}


def torch_saved(make: Callable[[], object]) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        buffer = io.BytesIO()
        torch.save(make(), buffer)
        path.write_bytes(buffer.getvalue())
    return change


PREDICT_ROWS = [
    Row("breach", "file-name-with-a-terminal-escape", image(f"a{ESC}.png"), code=0,
        expect=r"^a\\x1b\]2;owned\\x07\.png: \w+ \d"),
    Row("breach", "file-name-with-a-bidi-override", image("x\u202egnp.exe.png"), code=0,
        expect=r"^x\\u202egnp\.exe\.png: \w+ \d"),
    Row("silent-wrong", "a-weight-byte-changed", model_file_of(flip_a_weight_byte),
        expect=r"^error: checkpoint's model_state: not the weights it was saved with \(their SHA-256 differs"),
    Row("silent-wrong", "no-recorded-digest", model_file_of(torch_saved(lambda: checkpoint_fields(SimpleCNN()))),
        expect=r"^error: checkpoint's model_state: not the weights it was saved with .*or none was recorded"),
    Row("silent-wrong", "nan-weight-with-its-digest", model_file_of(saved_as(nan=True)),
        expect=r"^error: checkpoint's block1.conv.weight: holds values that are not finite numbers"),
    Row("silent-wrong", "std-so-small-the-outputs-overflow", model_file_of(saved_as(std=[1e-320] * 3)),
        expect=r"^error: models/model.pt: the model's outputs are not finite numbers"),
    Row("silent-wrong", "16-bit-png-would-clip-to-white",
        lambda r: (Image.fromarray(np.full((40, 40), 32768, dtype=np.uint16)).save(r / "gray16.png"), ["gray16.png"])[1],
        expect=r"^error: gray16.png: I;16 pixels \(16-bit or floating point\); convert it to an 8-bit image$"),
    Row("hang", "image-is-a-fifo", special("pipe.png", "fifo", ["pipe.png"]),
        expect=r"^error: pipe.png is a FIFO \(named pipe\), not a regular file$"),
    Row("hang", "model-is-dev-zero", special("models/model.pt", "dev-zero", ["cat.png"]),
        expect=r"^error: checkpoint: models/model.pt is a device, not a regular file$"),
    Row("traceback", "top-not-a-number", files(["cat.png", "--top", "three"]),
        expect=r"^error: python -m cifar_study.predict: argument --top: 'three' is not a whole number \(digits 0-9\) "
               r"\(see --help\)$"),
    Row("silent-wrong", "top-in-arabic-indic-digits", files(["cat.png", "--top", "\u0663"]),
        expect=r"^error: python -m cifar_study.predict: argument --top: '\u0663' is not a whole number"),
    Row("silent-wrong", "animated-png-would-be-its-first-frame",
        lambda r: (Image.new("RGB", (40, 40), "red").save(r / "anim.png", save_all=True,
                                                            append_images=[Image.new("RGB", (40, 40), "blue")]),
                   ["anim.png"])[1],
        expect=r"^error: anim.png: an animated PNG \(2 frames\); give one frame as its own image$"),
    Row("misleading", "empty-image-name", files(["cat.png", ""]),
        expect=r"^error: '' \(an empty file name\) does not exist$"),
    Row("traceback", "class-names-not-text", model_file_of(saved_as(classes=list(range(10)))),
        expect=r"^error: models/model.pt: classes: class name 0 is not text \(int\)$"),
    Row("silent-wrong", "complex-weights-would-lose-their-imaginary-part", model_file_of(saved_as(model_state={
        k: v.to(torch.complex64) for k, v in SimpleCNN().state_dict().items()})),
        expect=r"^error: checkpoint's model_state: block1.conv.weight is torch.complex64, not torch.float32: run dvc "
               r"repro train$"),
    Row("misleading", "quantized-weights-without-pytorchs-warnings",
        model_file_of(lambda path: saved_as(model_state=quantized(SimpleCNN().state_dict()))(path)),
        expect=r"^error: checkpoint's model_state: block1.conv.weight is torch.qint8, not torch.float32"),
    Row("traceback", "weights-under-numbers-not-names",
        model_file_of(torch_saved(lambda: checkpoint_fields(SimpleCNN(), model_state={0: torch.zeros(1)}))),
        expect=r"^error: checkpoint's model_state: holds something other than named dense tensors"),
    Row("traceback", "mean-of-400-digits", model_file_of(saved_as(mean=[10 ** 400, 0, 0])),
        expect=r"^error: models/model.pt: mean: expected 3 finite numbers$"),
    Row("traceback", "dropout-of-400-digits", model_file_of(torch_saved(lambda: {
        **checkpoint_fields(SimpleCNN()), "model": {"name": "simple_cnn", "dropout": 10 ** 400}})),
        expect=r"^error: checkpoint's model params: model.dropout: an integer of 401 digits is not a finite number$"),
    Row("traceback", "mean-as-text", model_file_of(saved_as(mean="0.5")),
        expect=r"^error: models/model.pt: mean: expected 3 finite numbers$"),
    Row("misleading", "model-is-a-directory", lambda r: ["cat.png", "--model", "models"],
        expect=r"^error: checkpoint: models is a directory, not a regular file$"),
    Row("misleading", "code-in-the-file-is-not-advised", model_file_of(torch_saved(lambda: {"model": ModelParams()})),
        expect=r"^error: models/model.pt: not a loadable checkpoint \(not a file of tensors and plain data only\)"),
    Row("lost-work", "stdout-on-a-full-disk", files(["cat.png"]), stdout="/dev/full",
        expect=r"^error: standard output: cannot write \(No space left on device\)$"),
    Row("lost-work", "stdout-past-the-file-size-limit", files(["cat.png"]), fsize=10,
        expect=r"^error: standard output: cannot write \(File too large\)$"),
]


@pytest.mark.parametrize("row", PREDICT_ROWS, ids=str)
def test_predict(row, predict_project):
    run_row(command("predict"), row, predict_project)


@pytest.mark.parametrize("rows", [COMPARE_ROWS, SHOW_ROWS, PREDICT_ROWS], ids=["compare", "show", "predict"])
def test_every_class_has_two_rows(rows):
    every_class_twice(rows)


def signalled_while_importing(argv: list[str], sig: int, cwd: Path, env: dict | None = None,
                              sighup: object = signal.SIG_DFL, again_after: float | None = None) -> tuple:
    """Start `argv` with SIGHUP at `sighup` (default: as from a terminal), send `sig` once it handles stops and
    before PyTorch has loaded (and once more `again_after` seconds later); (exit status, stderr, stdout)."""
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env=env, preexec_fn=lambda: signal.signal(signal.SIGHUP, sighup))
    try:
        # stop_on_signals installs SIGTERM's handler, then SIGINT's, then SIGHUP's unless it is ignored: wait for the
        # last one (a suite under load once sent SIGHUP between the first and the last, and the default killed it)
        last = signal.SIGINT if sighup is signal.SIG_IGN else signal.SIGHUP
        deadline = time.monotonic() + ROW_TIMEOUT_S
        while not catches(proc.pid, last) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert "libtorch" not in Path(f"/proc/{proc.pid}/maps").read_text(), "no handler before PyTorch loads"
        proc.send_signal(sig)
        if again_after is not None:
            time.sleep(again_after)
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=ROW_TIMEOUT_S)
    finally:
        if alive(proc.pid, group=True):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, err, out


@pytest.mark.parametrize("module,rank,says", [("cifar_study.predict", False, b"interrupted\n"),
                                               ("stages.evaluate", False, b"interrupted\n"),
                                               ("stages.train", True, b"")], ids=["predict", "stage", "rank"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["sigint", "sigterm", "sighup"])
def test_a_stop_while_pytorch_is_imported_is_one_line(module, rank, says, sig, tmp_path):
    """The first seconds of a command or stage import PyTorch, before its main runs: a stop there too is
    `interrupted` and exit 130, not a KeyboardInterrupt traceback or a silent 143. A rank that the launcher
    started says nothing: when one rank fails the launcher stops the others, and its line is the only one."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    shutil.copy(ROOT / "params.yaml", tmp_path)  # a stage checks it first
    if rank:
        env.update(RANK="1", WORLD_SIZE="2", CIFAR_STUDY_RANK_ERRORS=str(tmp_path))
    assert signalled_while_importing([sys.executable, "-m", module, "cat.png"], sig, tmp_path, env) == (130, says, b"")


@pytest.mark.parametrize("tool", ["replicas", "benchmark", "flow_health_check"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["sigint", "sighup"])
def test_a_stop_while_a_bench_tool_imports_pytorch_is_one_line(tool, sig, tmp_path):
    argv = [sys.executable, str(ROOT / f"bench/{tool}.py"), "--out", str(tmp_path / "r.json")]
    assert signalled_while_importing(argv, sig, tmp_path) == (130, b"interrupted\n", b"")


def test_a_stage_under_nohup_outlives_a_closed_terminal(tmp_path):
    """nohup starts a stage with SIGHUP ignored, so that it survives a logout: the stage keeps that."""
    shutil.copy(ROOT / "params.yaml", tmp_path)
    code, err, _ = signalled_while_importing([sys.executable, "-m", "stages.evaluate"], signal.SIGHUP, tmp_path,
                                             {**os.environ, "PYTHONPATH": str(ROOT)}, sighup=signal.SIG_IGN,
                                             again_after=1.0)  # while PyTorch is imported, and once main runs
    # It ran to its own end: no model here, so one line naming it (not "interrupted", 130)
    assert code == 2 and b"models/model.pt: checkpoint not found" in err, err


@pytest.mark.parametrize("runner, ends, code", [
    ("stage.run_stage", "return", 0), ("stage.run_stage", "raise UserError('bad')", 2),
    ("stage.run_stage", "raise KeyboardInterrupt", 130), ("cli.run_command", "return 0", 0),
    ("cli.run_command", "return 2", 2), ("cli.run_command", "raise KeyboardInterrupt", 130)])
def test_every_way_out_skips_the_last_collection(runner, ends, code, tmp_path):
    """Python's exit collects garbage over every live object: seconds per process with PyTorch imported
    (notes/2026-11-29-exit-costs.md), 2 to 3.5 s of a stage's 5 s after Ctrl-C. Stages and commands freeze
    the objects first, on every way out."""
    script = (f"import atexit, gc\nfrom cifar_study.pipeline import cli, stage\n"
              f"from cifar_study.pipeline.errors import UserError\n"
              f"atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
              f"def main():\n    {ends}\n{runner}(main)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=ROW_TIMEOUT_S)
    assert (proc.returncode, proc.stdout) == (code, "frozen True\n"), proc.stderr


@pytest.mark.parametrize("runner", ["stage.run_stage", "cli.run_command"])
@pytest.mark.parametrize("raised, code, says", [
    ("raise ImportError('initialization failed') from KeyboardInterrupt()", 130, "interrupted\n"),
    ("raise ImportError('no module named x')", 1, "ImportError: no module named x\n")])
def test_a_stop_while_a_c_extension_initialises_is_a_stop(runner, raised, code, says, tmp_path):
    """Probe 7: Ctrl-C during matplotlib's first Agg import (pybind11 raises ImportError from the interrupt) was a
    traceback and exit 1. An ImportError of its own stays one."""
    script = f"from cifar_study.pipeline import cli, stage\ndef main():\n    {raised}\n{runner}(main)\n"
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=ROW_TIMEOUT_S)
    assert proc.returncode == code and proc.stderr.endswith(says), proc.stderr


@pytest.mark.parametrize("tool, args, says", [
    ("bench/stage_startup.py", ["--against", "HEAD", "--rounds", "0"], "--stages from"),
    ("bench/stage_startup.py", ["--against=--output=x.tar"], "names no commit"),
    ("bench/stage_vs_plain.py", ["--nope"], "unrecognized arguments: --nope"),
    ("bench/stage_vs_plain.py", ["--data", "nowhere.tar.gz"], "'nowhere.tar.gz' is not a file"),
    ("bench/stage_vs_plain.py", ["--data", "README.md", "--configs", "default,bf16"], "(not bf16)"),
    ("bench/stage_vs_plain.py", ["--data", "README.md", "--rounds", "0"], "--rounds at least 1"),
    ("bench/benchmark.py", ["--device", "cuda", "--out", "missing/r.json"], "error: --device: 'cuda' asked for"),
])
def test_bench_tools_refuse_a_bad_argument_in_one_line(tool, args, says, tmp_path):
    """The bench tools that answer before importing PyTorch (the others share the same parser), and an option
    refused by the stages' own rules, named as the option."""
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the row would measure on it")
    proc = subprocess.run([sys.executable, str(ROOT / tool), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=ROW_TIMEOUT_S)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: ") and says in proc.stderr, proc.stderr


def test_bench_results_name_the_cpu_and_the_commit():
    """A CPU by its model name, not the architecture: on Linux `platform.processor()` is empty, and results from
    an AMD EPYC and an Intel Xeon were both recorded as "x86_64"."""
    from bench import provenance

    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
              if line.split(":", 1)[0].strip() == "model name"]
    if models:
        assert re.fullmatch(re.escape(models[0]) + r" \(family \d+, model \d+; [^)]+\)", provenance.cpu_name())
    assert provenance.machine() == f"{provenance.cpu_name()}, {os.cpu_count()} cores"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert provenance.commit() == (head.stdout.strip() if head.returncode == 0 else None)



def bench_args(archive: bytes | None = None) -> Callable[[Path], list[str]]:
    """A setup for bench/stage_vs_plain.py on the project's tiny.tar.gz (`archive` in its place if given), with a
    temporary folder of its own (TMPDIR=tmp) that must be empty again afterwards."""
    def setup(root: Path) -> list[str]:
        (root / "tmp").mkdir()
        if archive is not None:
            (root / "tiny.tar.gz").write_bytes(archive)
        return ["--data", "tiny.tar.gz", "--train", "100", "--test", "20", "--rounds", "1"]
    return setup


BENCH_ROWS = [
    Row("lost-work", "sigterm-while-a-child-runs", bench_args(), code=130, expect=r"^interrupted$",
        stop=signal.SIGTERM, env={"TMPDIR": "tmp"}),
    Row("lost-work", "sighup-while-a-child-runs", bench_args(), code=130, expect=r"^interrupted$",
        stop=signal.SIGHUP, env={"TMPDIR": "tmp"}),
    Row("traceback", "data-that-is-no-archive", bench_args(b"junk"), env={"TMPDIR": "tmp"},
        expect=r"^error: stages\.fetch_data failed in stage-vs-plain-\w+ \(exit 2\): data\.path: \S*tiny\.tar\.gz is "
               r"neither a directory nor a readable tar archive"),
]


def out_is(kind: str, *args: str) -> Callable[[Path], list[str]]:
    """A setup whose --out (results.json in the project) is already `kind` (or in a folder that is missing)."""
    def setup(root: Path) -> list[str]:
        out = root / ("missing/results.json" if kind == "in a missing folder" else "results.json")
        if kind == "earlier results":
            out.write_text('{"median_s": 1.0}\n')
        elif kind == "fifo":
            os.mkfifo(out)
        elif kind == "link":
            (root.parent / "elsewhere.json").write_text("untouched\n")
            out.symlink_to(root.parent / "elsewhere.json")
        return [*args, "--out", str(out)]
    return setup


# Every --out is refused before any measuring (bench/out.py); each row runs no training
OUT_ROWS = [
    Row("lost-work", "out-in-a-missing-folder", out_is("in a missing folder"),
        expect=r"^error: --out: cannot write \S*/missing/results.json \(No such file or directory\)$"),
    Row("traceback", "out-name-too-long-with-the-writes-suffix", lambda r: ["--out", str(r / ("a" * 245 + ".json"))],
        expect=r"^error: --out: cannot write \S*a{245}.json \(File name too long\)$"),
    Row("lost-work", "out-holds-earlier-results", out_is("earlier results"),
        expect=r"^error: --out: \S*results.json already exists \(a file of earlier results\); name a new file$"),
    Row("hang", "out-is-a-fifo", out_is("fifo"),
        expect=r"^error: --out: \S*results.json already exists \(not a regular file\); name a new file$"),
    Row("breach", "out-is-a-link-out-of-the-project", out_is("link"),
        expect=r"^error: --out: \S*results.json already exists \(a link\); name a new file$"),
]
def device_rows(tool: str) -> list[Row]:
    """--device of a bench tool that trains: a choice, and refused by the stages' rules under its own name."""
    return [Row("breach", "device-with-a-terminal-escape", lambda r: ["--device", ESC],
                expect=rf"^error: {re.escape(tool)}: argument --device: invalid choice: '\\x1b\]2;owned\\x07'"),
            Row("misleading", "cuda-without-cuda-names-the-option", lambda r: ["--device", "cuda"],
                expect=r"^error: --device: 'cuda' asked for, but PyTorch sees no CUDA device here")]


REPLICAS_BENCH_ROWS = [
    Row("traceback", "unknown-device", lambda r: ["--device", "bogus"],
        expect=r"^error: replicas.py: argument --device: invalid choice: 'bogus'"),
    Row("traceback", "replicas-as-text", lambda r: ["--k", "four"],
        expect=r"^error: replicas.py: argument --k: 'four' is not a whole number"),
    Row("hang", "a-hundred-thousand-replicas", lambda r: ["--k", "100000"],
        expect=r"^error: replicas.py: --k from 2 to 64 \(train.replicas' bound\)"),
    Row("silent-wrong", "more-images-than-the-synthetic-set", lambda r: ["--images", "1000000"],
        expect=r"--images from 128 to 5,000 \(the synthetic set\)"),
    Row("silent-wrong", "no-rounds-no-medians", lambda r: ["--rounds", "0"], expect=r"--rounds at least 1 \(see --help\)$"),
    *device_rows("replicas.py"),
    Row("breach", "out-through-a-linked-folder", lambda r: ((r.parent / "elsewhere").mkdir(),
                                                            (r / "linked").symlink_to(r.parent / "elsewhere"),
                                                            ["--out", "linked/results.json"])[2],
        expect=r"^error: linked is a symbolic link: not written through \(replace it with a regular folder\)$"),
    Row("misleading", "out-is-a-folder", lambda r: (r.joinpath("results").mkdir(), ["--out", "results"])[1],
        expect=r"^error: --out: results already exists \(not a regular file\); name a new file$"),
    *OUT_ROWS,
]


FLOW_HEALTH_ROWS = [  # bench/flow_health_check.py: its options go through params.py's rules (probe 5)
    Row("traceback", "no-epochs", lambda r: ["--epochs", "0"], expect=r"^error: --epochs: 0 must be > 0$"),
    Row("traceback", "flow-every-as-text", lambda r: ["--flow-every", "often"],
        expect=r"^error: flow_health_check.py: argument --flow-every: 'often' is not a whole number"),
    Row("silent-wrong", "flow-every-negative-was-every-batch", lambda r: ["--flow-every", "-1"],
        expect=r"^error: flow_health_check.py: argument --flow-every: '-1' is not a whole number"),
    Row("silent-wrong", "one-snapshot-has-no-update-ratio", lambda r: ["--train-limit", "100", "--epochs", "1"],
        expect=r"^error: --flow-every: 20 leaves one flow snapshot in the run's 1 batch; the check needs two or more"),
    Row("hang", "data-is-a-fifo", lambda r: (os.mkfifo(r / "fifo.tar.gz"), ["--data", "fifo.tar.gz"])[1],
        expect=r"^error: --data: fifo.tar.gz is a FIFO \(named pipe\), not a regular file$"),
    Row("hang", "data-is-a-device", lambda r: ["--data", "/dev/zero"],
        expect=r"^error: --data: /dev/zero is a device, not a regular file$"),
    Row("breach", "data-named-with-a-terminal-escape", lambda r: ["--data", f"x{ESC}.tar.gz"],
        expect=r"^error: --data: \S*x\\x1b\]2;owned\\x07.tar.gz does not exist$"),
    Row("misleading", "too-few-images-names-the-option", lambda r: ["--train-limit", "5"],
        expect=r"^error: --train-limit: 5 is fewer than the 10 classes"),
    *device_rows("flow_health_check.py"),
    Row("misleading", "empty-data-names-the-option", lambda r: ["--data", ""],
        expect=r"^error: flow_health_check.py: --data: 'synthetic' or an image-folder archive, not an empty name"),
    *OUT_ROWS,
]


TRAINING_BENCH_TABLES = {"replicas": REPLICAS_BENCH_ROWS, "flow_health_check": FLOW_HEALTH_ROWS}


@pytest.mark.parametrize("tool", TRAINING_BENCH_TABLES)
def test_the_bench_tables_have_two_rows_per_class(tool):
    every_class_twice(TRAINING_BENCH_TABLES[tool])


@pytest.mark.parametrize("tool, row", [(tool, row) for tool, rows in TRAINING_BENCH_TABLES.items() for row in rows],
                         ids=lambda v: str(v))
def test_training_bench_tool(tool, row, tmp_path):
    if "cuda" in row.name and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the row would measure on it")
    project = tmp_path / "project"
    project.mkdir()
    run_row([sys.executable, str(ROOT / f"bench/{tool}.py")], row, project)


@pytest.mark.parametrize("kind", ["results", "a link"])
def test_results_that_appear_while_a_bench_tool_measures_are_kept(kind, tmp_path):
    """--out is checked at the start; another run's results (or a planted link) may be there by the end (probe 5)."""
    from bench.out import checked_out, write_out
    from cifar_study.pipeline.errors import UserError

    out = checked_out(str(tmp_path / "r.json"))
    (tmp_path / "elsewhere").write_text("earlier\n")
    if kind == "results":
        out.write_text("earlier\n")
    else:
        out.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match=r"^--out: \S*r.json appeared while this ran and is kept; this run's results "
                                        r"are in \S*r-2.json$"):
        write_out(out, {"median_s": 1.0})
    assert out.read_text() == (tmp_path / "elsewhere").read_text() == "earlier\n"
    assert json.loads((tmp_path / "r-2.json").read_text()) == {"median_s": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "r-2.json", "r.json"]  # no temporary left


def test_results_go_whole_to_a_file_system_without_hard_links_and_to_a_folder_cleaned_meanwhile(tmp_path, monkeypatch):
    import errno

    from bench.out import checked_out, write_out
    from cifar_study.pipeline.errors import UserError

    out = checked_out(str(tmp_path / "results/r.json"), create_folder=True)
    (tmp_path / "results").rmdir()  # git clean -X of bench/results/ while the tool measured

    def no_links(*args):
        raise OSError(errno.EPERM, "Operation not permitted")  # vfat, some FUSE and SMB mounts
    monkeypatch.setattr(os, "link", no_links)
    write_out(out, {"median_s": 1.0, "ratio": [float("nan"), float("inf")]})  # a measurement that is no number: null
    assert json.loads(out.read_text()) == {"median_s": 1.0, "ratio": [None, None]}
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]
    with pytest.raises(UserError, match=r"this run's results are in \S*r-2.json$"):
        write_out(out, {"median_s": 2.0})  # and still never over a file: the copy goes to a file created exclusively
    assert json.loads(out.read_text())["median_s"] == 1.0
    assert json.loads((tmp_path / "results/r-2.json").read_text()) == {"median_s": 2.0}


@pytest.mark.parametrize("tool", ["stage_vs_plain", "stage_startup", "benchmark"])
@pytest.mark.parametrize("row", OUT_ROWS, ids=str)
def test_bench_out_is_refused_before_any_measuring(tool, row, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    args = {"stage_vs_plain": ["--data", str(project / "missing.tar.gz")], "stage_startup": ["--against", "HEAD"]}
    args = args.get(tool, [])
    run_row([sys.executable, str(ROOT / f"bench/{tool}.py"), *args], row, project, cwd=ROOT)


@pytest.mark.parametrize("row", BENCH_ROWS, ids=str)
def test_stage_vs_plain(row, tmp_path, tiny):
    """Its children end with it, its temporary project goes, and a failing stage is one line."""
    project = tmp_path / "project"
    write_tar(project / "tiny.tar.gz", image_folder_files(tiny, "JPEG"))
    run_row([sys.executable, str(ROOT / "bench/stage_vs_plain.py")], row, project)
