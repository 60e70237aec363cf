"""Rebuild template.html: DVC's plots page with vega, vega-lite and vega-embed inlined, for offline use.

Run by a developer, never by the pipeline (it needs the npm registry):

    python plots_page/build.py

The versions are the ones the installed DVC's default page loads from a CDN (dvc_render's
VegaRenderer.SCRIPTS), so the offline page draws exactly what the online one would. Each package
is fetched with `npm pack`, its registry integrity is checked, and its minified browser build is
inlined byte for byte; versions.json records version, integrity, licence and the sha256 of what
was inlined (tests/test_plots_page.py checks the template against it).
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILDS = {"vega": "build/vega.min.js", "vega-lite": "build/vega-lite.min.js", "vega-embed": "build/vega-embed.min.js"}

# DVC's per-chart code is `vegaEmbed('#id', spec)`. The template replaces that global with a wrapper
# that draws SVG (sharp when zoomed or printed, and readable by a test) and, if a chart fails, says
# why inside its panel instead of leaving it blank.
WRAPPER = """(function () {
  var embed = window.vegaEmbed;
  window.vegaEmbed = function (el, spec, opts) {
    return embed(el, spec, Object.assign({renderer: "svg"}, opts)).catch(function (err) {
      var panel = typeof el === "string" ? document.querySelector(el) : el;
      if (panel) {
        var note = document.createElement("pre");
        note.className = "chart-error";
        note.textContent = "This chart could not be drawn: " + err;
        panel.appendChild(note);
      }
      throw err;
    });
  };
})();"""

# The charts are drawn from an inert <template>, their specs parsed as JSON: see DRAWER's comment.
DRAWER = r"""(function () {
  // DVC writes each chart as a div holding a script element, "var spec = {...}; vegaEmbed(<its id>, spec);", with
  // the plot data unescaped in it: a CSV field holding an end-of-script tag would end it and run what follows.
  // Inside <template> nothing runs; here each chart is drawn from its spec parsed as JSON, never run.
  var source = document.getElementById("plots");
  var shown = document.createElement("div");
  shown.appendChild(document.importNode(source.content, true));
  Array.prototype.forEach.call(shown.querySelectorAll("script"), function (s) { s.remove(); });
  source.parentNode.insertBefore(shown, source);
  Array.prototype.forEach.call(source.content.querySelectorAll("div[id] > script"), function (script) {
    var panel = document.getElementById(script.parentNode.id);  // the shown copy: template content is no document
    var found = /^\s*var spec = ([\s\S]*);\s*vegaEmbed\('#[^']*', spec\);\s*$/.exec(script.textContent);
    var spec = null;
    try {
      spec = found && JSON.parse(found[1]);
    } catch (err) {}
    if (panel && spec) {
      window.vegaEmbed(panel, spec).catch(function () {});  // the wrapper notes a failure in the panel
    } else if (panel) {
      var note = document.createElement("pre");
      note.className = "chart-error";
      note.textContent = "This chart was not drawn: its data is not what dvc plots writes (text that would run as code?)";
      panel.appendChild(note);
    }
  });
})();"""

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC plots</title>
    <!-- This project's `dvc plots show` / `dvc plots diff` page (.dvc/config: plots.html_template).
         It has no placeholder for scripts, so DVC's CDN script tags are left out: the libraries
         below are inlined and the page needs no network. Rebuilt by plots_page/build.py. -->
{libraries}
    <script>
{wrapper}
    </script>
    <style>
        table {{
            border-spacing: 15px;
        }}
        .chart-error {{
            color: #b00020;
            white-space: pre-wrap;
        }}
    </style>
</head>
<body>
    <template id="plots">
    {{plot_divs}}
    </template>
    <script>
{drawer}
    </script>
</body>
</html>
"""


def dvc_page_versions() -> dict[str, str]:
    """{package: version} of the scripts DVC's default page loads."""
    from dvc_render.vega import VegaRenderer

    found = dict(re.findall(r"npm/(vega(?:-lite|-embed)?)@([0-9][0-9.]*)", VegaRenderer.SCRIPTS))
    if set(found) != set(BUILDS):
        raise SystemExit(f"dvc_render's default page loads {found}, expected {sorted(BUILDS)}: update build.py")
    return found


def npm_pack(name: str, version: str, workdir: Path) -> tuple[Path, str]:
    """Download name@version's tarball; returns it and its registry integrity (checked)."""
    integrity = subprocess.run(["npm", "view", f"{name}@{version}", "dist.integrity"], check=True,
                               capture_output=True, text=True).stdout.strip()
    filename = subprocess.run(["npm", "pack", f"{name}@{version}"], cwd=workdir, check=True,
                              capture_output=True, text=True).stdout.strip().splitlines()[-1]
    tarball = workdir / filename
    algorithm, digest = integrity.split("-", 1)
    actual = base64.b64encode(hashlib.new(algorithm, tarball.read_bytes()).digest()).decode()
    if actual != digest:
        raise SystemExit(f"{tarball.name}: {algorithm} {actual} is not the registry's {digest}")
    return tarball, integrity


def member(tarball: Path, path: str) -> str:
    with tarfile.open(tarball) as tar:
        return tar.extractfile(f"package/{path}").read().decode("utf-8")


def main() -> None:
    versions = dvc_page_versions()
    if any("</script" in code.lower() for code in (WRAPPER, DRAWER)):
        raise SystemExit("WRAPPER or DRAWER holds an end-of-script tag: it would cut its own <script> element short")
    blocks, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in BUILDS.items():
            tarball, integrity = npm_pack(name, versions[name], Path(tmp))
            code, licence = member(tarball, build), member(tarball, "LICENSE")
            if "</script" in code.lower() or "<!--" in code:
                raise SystemExit(f"{name} {build} cannot be inlined in a <script> element as it is")
            licence_name = json.loads(member(tarball, "package.json"))["license"]
            (HERE / f"LICENSE.{name}").write_text(licence)
            blocks.append(f"    <!-- {name} {versions[name]} ({build}), {licence_name}:\n{licence.strip()}\n    -->\n"
                          f"    <script>{code}</script>")
            records.append({"name": name, "version": versions[name], "file": build, "license": licence_name,
                            "npm_integrity": integrity, "sha256": hashlib.sha256(code.encode()).hexdigest(),
                            "bytes": len(code.encode())})
    (HERE / "template.html").write_text(PAGE.format(libraries="\n".join(blocks), wrapper=WRAPPER, drawer=DRAWER))
    (HERE / "versions.json").write_text(json.dumps({"libraries": records}, indent=2) + "\n")
    print(f"wrote {HERE / 'template.html'} ({(HERE / 'template.html').stat().st_size} bytes)")


if __name__ == "__main__":
    main()
