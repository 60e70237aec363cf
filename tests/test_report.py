"""The README's Results section is generated from the committed files, never typed."""
from pathlib import Path

from cifar_study.results import SECTIONS, render, update
from tests.conftest import workspace_or_committed

# What the Results section is rendered from, and the README itself.
SOURCES = ["README.md", "dvc.lock", "metrics", "plots/data", "reports"]


def sections_mismatch(root: Path) -> str | None:
    readme = (root / "README.md").read_text()
    for name, draw in SECTIONS.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        if readme.count(start) != 1 or readme.count(end) != 1:
            return f"{root}/README.md: needs exactly one {start} ... {end}"
        if readme.split(start, 1)[1].split(end, 1)[0].strip() != draw(root).strip():
            return f"{root}: README.md's {name} section differs from its files (run: python -m cifar_study.results)"
    return None if update(root / "README.md", root) == readme else f"{root}: README.md is not up to date"


def test_readme_results_and_findings_match_the_committed_files(tmp_path):
    # A user's experiments rewrite metrics/ and plots/ in the workspace: then HEAD's copies are checked.
    problems = [sections_mismatch(root) for root in workspace_or_committed(SOURCES, tmp_path)]
    assert None in problems, problems


def test_render_reports_every_epoch_and_the_seed(tmp_path):
    for rel in ("metrics", "plots/data"):
        (tmp_path / rel).mkdir(parents=True)
    (tmp_path / "plots/data/history.csv").write_text(
        "epoch,train_loss,train_acc,heldout_loss,heldout_acc,lr,seconds\n"
        "1,1.8,0.35,1.4,0.49,0.001,200\n2,1.5,0.45,1.2,0.57,0.001,210\n")
    (tmp_path / "metrics/train.json").write_text('{"heldout_split": "test"}')
    (tmp_path / "metrics/eval.json").write_text('{"test_acc": 0.57, "test_loss": 1.2}')
    (tmp_path / "plots/data/class_accuracy.csv").write_text("class,accuracy\ncat,0.4\ndog,0.6\n")
    (tmp_path / "metrics/flops.json").write_text('{"flops": 161163264, "gflops": 0.1612}')
    (tmp_path / "metrics/data.json").write_text('{"train_count": 50000, "test_count": 10000}')
    (tmp_path / "dvc.lock").write_text(
        "stages:\n  fetch_data:\n    params:\n      params.yaml:\n        data.source: folder\n"
        "        data.path: ../shared/data/cifar10-jpg.tar.gz\n")
    text = render(tmp_path)
    assert "| 2 | 1.5000 | 45.00% | 1.2000 | 57.00% | 210 |" in text
    assert "**57.00%** | 84.54%" in text and "49.00% | 47.23%" in text
    assert "from `../shared/data/cifar10-jpg.tar.gz`" in text and "0.11 h" in text
    assert "| dog | 60.00% |" in text
