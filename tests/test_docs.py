"""The documentation holds together: every relative link resolves, the README stays one page, and no
committed file names a path that exists on one machine only."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

from cifar_study.spread import _project_relative
from tests.conftest import ROOT

README_MAX_LINES, README_MAX_BYTES = 250, 20_000
DOCS = sorted({ROOT / "README.md", ROOT / "reports/RESULTS.md", *ROOT.glob("docs/*.md"), *ROOT.glob("notes/*.md")})
# [text](target) and ![alt](target), the target up to a space or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
# An absolute path under a home, root or work folder, or the sibling folder of one particular checkout.
MACHINE_PATH = r"(^|[^A-Za-z0-9_.])/(work|root|home)/[A-Za-z0-9_.-]+|\.\./shared\b"


def links(doc: Path) -> list[str]:
    text = FENCE.sub("", doc.read_text())  # code blocks show commands, not links
    text = re.sub(r"`[^`\n]*`", "", text)
    return [m.group(1) for m in LINK.finditer(text)]


def test_the_documents_exist():
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    assert {"README.md", "docs/parameters.md", "docs/outputs.md", "docs/wandb.md", "docs/plots.md",
            "docs/troubleshooting.md", "docs/scaling.md", "docs/development.md", "notes/README.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(doc):
    broken = []
    for target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):  # a URL, or an anchor here
            continue
        path = unquote(target.split("#", 1)[0])
        if not (doc.parent / path).exists():
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)}: links to nothing: {broken}"


def test_the_readme_is_one_page():
    readme = ROOT / "README.md"
    lines, size = len(readme.read_text().splitlines()), readme.stat().st_size
    assert lines <= README_MAX_LINES and size <= README_MAX_BYTES, (
        f"README.md is {lines} lines and {size} bytes; at most {README_MAX_LINES} and {README_MAX_BYTES}: "
        "move reference material to docs/ and measurements to notes/")


def test_no_committed_file_names_a_machine_path():
    try:
        found = subprocess.run(["git", "grep", "-nIE", MACHINE_PATH, "--", ".", ":(exclude).ci"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
    except OSError:
        pytest.skip("git is not installed: the check of committed files needs it")
    if found.returncode not in (0, 1):  # 1: nothing found
        pytest.skip(f"not a git checkout ({found.stderr.strip()[:200]}): nothing to check")
    assert found.returncode == 1, ("paths of one machine (only .ci/ may name the CI checkout's shared data "
                                   "folder):\n" + found.stdout[:3000])


def test_the_spread_records_paths_inside_the_project_relative_to_it(tmp_path):
    inside, outside = tmp_path / "data/raw/cifar10-jpg.tar.gz", "/elsewhere/cifar10-jpg.tar.gz"
    collected = {"source": str(tmp_path / "notes/run/summary.json"), "common_params": {"data.path": str(inside)},
                 "runs": [{"params": {"data.path": outside}}], "baseline": {"params": {"data.path": "data/x.tar"}}}
    assert _project_relative(collected, tmp_path) == {
        "source": "notes/run/summary.json", "common_params": {"data.path": "data/raw/cifar10-jpg.tar.gz"},
        "runs": [{"params": {"data.path": outside}}], "baseline": {"params": {"data.path": "data/x.tar"}}}
