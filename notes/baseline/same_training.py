"""Does this tree train and evaluate exactly as another commit did? A tiny project (tests/conftest.py's
project(): 400 synthetic images, 4 epochs, batch 16, W&B off) through fetch_data, train and evaluate with each
tree's package and stage scripts; the weights, the history (wall times aside), the flow statistics and
evaluate's metrics and tables are compared.

    python notes/baseline/same_training.py --against f50b7da

Used to decide whether a baseline trained at --against still stands for this tree's code (dvc.lock's
hashes): identical outputs mean the changes in between compute nothing differently for these params.
"""
import csv
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from cifar_study.pipeline.cli import Parser  # noqa: E402
from tests.conftest import project  # noqa: E402


# evaluate's outputs (dvc.yaml); reports/replicas.json is compared without its wall times
EVALUATE_OUTPUTS = ("metrics/eval.json", "plots/data/predictions.csv", "plots/data/class_accuracy.csv",
                    "plots/data/replicas.csv")


def tree_of(rev: str, into: Path) -> None:
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "cifar_study", "stages"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


def outputs(repo: Path) -> dict:
    for stage in ("fetch_data", "train", "evaluate"):
        subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=repo, check=True, capture_output=True,
                       env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"})
    history = list(csv.DictReader(open(repo / "plots/data/history.csv")))
    return {"weights": torch.load(repo / "models/model.pt", weights_only=True)["model_state"],
            "history": [{k: v for k, v in row.items() if k != "seconds"} for row in history],
            "flow": (repo / "plots/data/flow.csv").read_text(),
            "evaluation": {**{name: (repo / name).read_bytes() for name in EVALUATE_OUTPUTS},
                           "reports/replicas.json": [{**r, "history": [{k: v for k, v in h.items() if k != "seconds"}
                                                                       for h in r["history"]]}
                                                     for r in json.loads((repo / "reports/replicas.json").read_text())]}}


def main() -> None:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=True, help="the other commit")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        this = project(Path(tmp) / "this")
        other = Path(tmp) / "other" / "proj"
        other.mkdir(parents=True)
        tree_of(args.against, other)
        (other / "params.yaml").write_text((this / "params.yaml").read_text())
        a, b = outputs(this), outputs(other)
    same_weights = a["weights"].keys() == b["weights"].keys() and all(
        torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    print(f"this tree against {args.against}: tests/conftest.py's project() (400 images, 4 epochs, batch 16)")
    print(f"weights identical: {same_weights}; history identical (wall times aside): {a['history'] == b['history']}; "
          f"flow statistics identical: {a['flow'] == b['flow']}; "
          f"evaluation identical: {a['evaluation'] == b['evaluation']}")
    same = same_weights and all(a[k] == b[k] for k in ("history", "flow", "evaluation"))
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
