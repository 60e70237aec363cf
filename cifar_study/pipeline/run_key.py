"""What a training run depends on, as one key: it names the resume state that may continue the run and
the W&B group of the run's stages. No PyTorch: the findings stage computes it to join that group."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cifar_study.pipeline import paths
from cifar_study.pipeline.code_deps import code_deps
from cifar_study.pipeline.params import Params
from cifar_study.pipeline.untrusted import md5_file


def fingerprint(*parts: Any, files: tuple[str | Path, ...] = ()) -> str:
    """A hash of JSON-able `parts` and of the contents of `files` (their md5s, as DVC knows them)."""
    return hashlib.sha256(json.dumps([parts, [md5_file(f) for f in files]], sort_keys=True, default=str)
                          .encode()).hexdigest()


def run_key(params: Params) -> str:
    """What a training run depends on: its params, the data and the train stage's code (as dvc.yaml declares it)."""
    return fingerprint(params.section("model"), params.section("train"), params.data.val_size, params.data.seed,
                       files=(paths.DATA, *code_deps("stages/train.py")))
