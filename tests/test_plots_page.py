"""The `dvc plots show` / `dvc plots diff` page draws every plot in headless Chromium with the network refused.

Screenshots of every page checked here are kept in test-artifacts/browser/ (git-ignored).
"""
from __future__ import annotations

import configparser
import hashlib
import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from cifar_study.analysis.figures import FIGURES
from cifar_study.core.history import EpochRecord
from cifar_study.observe.live import LiveLogger
from tests.browser import INSTALL_HINT, Chromium, PageResult, find_chromium
from tests.conftest import ROOT
from tests.test_pipeline import TINY, dvc, git, project_files, set_params

TEMPLATE = ROOT / "plots_page/template.html"
ARTIFACTS = ROOT / "test-artifacts/browser"
# The vega plots dvc.yaml declares (the rest, plots/figures, are images).
VEGA_TITLES = [next(iter(p)) for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"] if isinstance(p, dict)]
COMMITTED_FIGURES = sorted(p.name for p in (ROOT / "plots/figures").glob("*.png"))  # the baseline's


# --- the template itself ----------------------------------------------------------------------

def inline_scripts(html: str) -> list[str]:
    return re.findall(r"<script>(.*?)</script>", html, flags=re.S)


def test_template_inlines_the_libraries_dvc_loads_and_nothing_else():
    from dvc_render.vega import VegaRenderer

    html = TEMPLATE.read_text(encoding="utf-8")
    assert "{plot_divs}" in html
    assert "{scripts}" not in html  # DVC fills that placeholder with its CDN <script> tags
    markup = re.sub(r"<script>.*?</script>", "", html, flags=re.S)  # the libraries' own strings aside
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)=", markup), "the page must load nothing"
    libraries = json.loads((ROOT / "plots_page/versions.json").read_text())["libraries"]
    inlined = {hashlib.sha256(code.encode()).hexdigest() for code in inline_scripts(html)}
    for lib in libraries:
        assert lib["sha256"] in inlined, f"{lib['name']}: template.html differs from versions.json"
        assert (ROOT / f"plots_page/LICENSE.{lib['name']}").is_file()
    pinned = {lib["name"]: lib["version"] for lib in libraries}
    loaded = dict(re.findall(r"npm/(vega(?:-lite|-embed)?)@([0-9.]+)", VegaRenderer.SCRIPTS))
    assert pinned == loaded, "DVC's default page loads other versions: run python plots_page/build.py"


def test_template_is_what_build_py_writes():
    """The page's own code (WRAPPER, DRAWER) lives in build.py and its output, template.html: one edited
    without the other, or a hand edit to the template, fails here (rebuilding needs npm; this needs nothing)."""
    spec = importlib.util.spec_from_file_location("plots_page_build", ROOT / "plots_page/build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    html = TEMPLATE.read_text(encoding="utf-8")
    head = "Rebuilt by plots_page/build.py. -->\n"
    start, end = html.find(head) + len(head), html.find("\n    <script>\n(function () {\n  var embed")
    assert 0 < start < end, "template.html lacks build.py's header comment or its WRAPPER script"
    libraries = html[start:end]  # the inlined vega builds, checked against versions.json above
    assert html == build.PAGE.format(libraries=libraries, wrapper=build.WRAPPER, drawer=build.DRAWER)


def test_dvc_uses_the_template_with_no_flags():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc/config")
    assert (ROOT / ".dvc" / config["plots"]["html_template"]).resolve() == TEMPLATE


# --- in the browser ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    executable = find_chromium()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail(f"{INSTALL_HINT}: CI must run the browser test")
        pytest.skip(INSTALL_HINT)
    chromium = Chromium(executable, ARTIFACTS / "chromium.log")
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy of the project with its committed baseline results, as a fresh git repository."""
    repo = tmp_path_factory.mktemp("page") / "repo"
    for f in project_files():
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, repo / f)
    shutil.rmtree(repo / "dvclive", ignore_errors=True)  # a run in progress here is not the baseline
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "baseline")
    return repo


def render(repo: Path, name: str, *args: str) -> Path:
    """`dvc plots <args>` into a fresh folder; returns its page."""
    out = repo.parent / name
    shutil.rmtree(out, ignore_errors=True)
    dvc(repo, "plots", *args, "-o", str(out))
    return out / "index.html"


def assert_drawn(result: PageResult, titles: list[str], images: int, revisions: list[str] | None = None) -> None:
    assert result.blocked == [], f"the page tried to load {result.blocked}"
    assert result.errors == []
    assert len(result.vega) == len(titles)
    for panel in result.vega:
        assert panel.drawn, panel
        for rev in revisions or []:
            assert rev in panel.texts, (rev, panel.id)
    assert sorted(t for panel in result.vega for t in titles if t in panel.texts) == sorted(titles)
    assert len(result.images) == images
    assert all(i["loaded"] and i["width"] > 100 for i in result.images), result.images


def test_baseline_page_draws_every_panel_offline(repo, browser):
    page = render(repo, "baseline", "show")
    result = browser.open(page, ARTIFACTS / "plots_show_baseline.png")
    assert_drawn(result, VEGA_TITLES, len(COMMITTED_FIGURES))
    assert len(result.vega) + len(result.images) == len(VEGA_TITLES) + len(COMMITTED_FIGURES)


def test_dvc_default_page_draws_no_chart_offline(repo, browser):
    """The control: DVC's own page, whose libraries come from a CDN, leaves every chart blank here."""
    from dvc_render.html import PAGE_HTML

    default = repo.parent / "default_template.html"
    default.write_text(PAGE_HTML)
    result = browser.open(render(repo, "default", "show", "--html-template", str(default)),
                          ARTIFACTS / "plots_show_dvc_default_template.png", timeout=5)  # nothing will draw
    assert len(result.blocked) == 3 and all("cdn.jsdelivr.net/npm/vega" in url for url in result.blocked)
    assert len(result.vega) == len(VEGA_TITLES) and not any(p.svg for p in result.vega)
    assert not result.drawn


PAYLOAD = "</script><script>console.error('PWNED')</script>"


@pytest.mark.parametrize("data, column", [("plots/data/predictions.csv", "actual"),
                                          ("plots/data/class_accuracy.csv", "class")])
def test_text_that_would_close_a_script_in_plot_data_runs_nothing(repo, browser, data, column):
    """DVC writes plot data unescaped inside each chart's <script>: a field holding "</script>" (a planted or
    hand-edited CSV: the pipeline's own class names cannot) would end it and run what follows. The template
    keeps DVC's markup in an inert <template> and draws each chart from its spec parsed as JSON."""
    path = repo / data
    original = path.read_text()
    header, first, *rest = original.splitlines()
    fields = first.split(",")
    fields[header.split(",").index(column)] = PAYLOAD
    path.write_text("\n".join([header, ",".join(fields), *rest]) + "\n")
    try:
        page = render(repo, f"breach-{column}", "show")
        assert PAYLOAD in page.read_text()  # DVC's page carries it as it is
        # Until every chart drew or showed its refusal: the spoiled one never draws, so waiting for all to draw
        # would wait out the timeout.
        result = browser.open(page, ARTIFACTS / f"plots_show_breach_{column}.png", timeout=20,
                              until=lambda r: len(r.vega) == len(VEGA_TITLES) and r.settled)
    finally:
        path.write_text(original)
    assert result.errors == []  # in particular no "PWNED": the planted script never ran
    spoiled = [p for p in result.vega if not p.drawn]
    assert len(spoiled) == 1 and "was not drawn: its data is not what dvc plots writes" in spoiled[0].error
    assert len(result.vega) == len(VEGA_TITLES) and result.blocked == []


@pytest.mark.slow
def test_tiny_run_page_and_its_diff_against_the_baseline(repo, browser):
    set_params(repo, TINY)
    dvc(repo, "repro")
    result = browser.open(render(repo, "tiny", "show"), ARTIFACTS / "plots_show_tiny_run.png")
    assert_drawn(result, VEGA_TITLES, len(FIGURES))

    result = browser.open(render(repo, "diff", "diff", "HEAD"), ARTIFACTS / "plots_diff_baseline_tiny_run.png")
    assert_drawn(result, VEGA_TITLES, len(COMMITTED_FIGURES) + len(FIGURES), revisions=["HEAD", "workspace"])


def test_live_panels_and_metrics_while_a_run_is_in_progress(repo, browser, monkeypatch):
    monkeypatch.chdir(repo)
    logger = LiveLogger(repo / "dvclive")
    for epoch in (1, 2):
        logger.log_epoch(EpochRecord(epoch, 2.0 / epoch, 0.3 * epoch, 1.5 / epoch, 0.25 * epoch, 0.001, 9.0),
                         step=0, heldout_name="test")
    live_titles = [next(iter(p)) for p in yaml.safe_load((repo / "dvclive/dvc.yaml").read_text())["plots"]]
    result = browser.open(render(repo, "live", "show"), ARTIFACTS / "plots_show_live.png")
    assert_drawn(result, VEGA_TITLES + live_titles, len(list((repo / "plots/figures").glob("*.png"))))

    workspace = json.loads(dvc(repo, "exp", "show", "--json"))[0]
    assert workspace["rev"] == "workspace"
    live = workspace["data"]["metrics"]["dvclive/metrics.json"]["data"]
    assert live["step"] == 2 and live["test"]["acc"] == 0.5
    logger.finish()
