"""`make install CPU=1` / TORCH_INDEX=<url>: PyTorch from the given index, before the requirements.

Run against a real package index: an HTTP server on this machine serving small wheels named torch
and torchvision (a CPU build's version), installed by the command `make install` runs."""
from __future__ import annotations

import functools
import http.server
import importlib.metadata
import os
import shlex
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

VERSIONS = {"torch": "2.3.0+cpu", "torchvision": "0.18.0+cpu"}


def make_wheel(folder: Path, name: str, version: str) -> Path:
    tag = "py3-none-any"
    path = folder / f"{name}-{version}-{tag}.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(f"{name}/__init__.py", f"__version__ = {version!r}\n")
        whl.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        whl.writestr(f"{info}/WHEEL", f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n")
        whl.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def index(tmp_path):
    """A PEP 503 simple index over HTTP; yields its URL and the paths it was asked for."""
    root = tmp_path / "index"
    for name, version in VERSIONS.items():
        folder = root / "simple" / name
        folder.mkdir(parents=True)
        wheel = make_wheel(folder, name, version)
        (folder / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>\n')
    asked: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            asked.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/simple", asked
    server.shutdown()


def planned(*args: str) -> list[str]:
    """The commands `make install` would run (make -n), in order."""
    out = subprocess.run(["make", "-n", "install", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def test_cpu_index_comes_first_and_only_when_asked(tmp_path):
    venv = tmp_path / "venv"
    plain = planned(f"VENV={venv}")
    assert not any("--index-url" in line for line in plain)
    cpu = planned(f"VENV={venv}", "CPU=1")
    torch_line = next(i for i, line in enumerate(cpu) if "--index-url https://download.pytorch.org/whl/cpu" in line)
    assert cpu[torch_line].endswith("torch torchvision")
    assert torch_line < next(i for i, line in enumerate(cpu) if "-r requirements.txt" in line)


def test_torch_index_installs_pytorch_from_that_index(tmp_path, index):
    url, asked = index
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    torch_line = next(line for line in planned(f"VENV={venv}", f"TORCH_INDEX={url}") if "--index-url" in line)
    # Only the given index: no pip configuration of this machine (its local wheels, its extra indexes).
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "PIP_EXTRA_INDEX_URL": "",
           "PIP_CONSTRAINT": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(shlex.split(torch_line), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installed = subprocess.run([str(venv / "bin/python"), "-c", "import importlib.metadata as m; "
                                "print(m.version('torch'), m.version('torchvision'))"],
                               capture_output=True, text=True, check=True).stdout.split()
    assert installed == list(VERSIONS.values())
    assert {"/simple/torch/", "/simple/torchvision/"} <= {p for p in asked if p.endswith("/")}, asked
    assert importlib.metadata.version("torch") != VERSIONS["torch"]  # this suite's own environment is untouched
