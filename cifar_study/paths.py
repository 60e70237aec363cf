"""Where each stage reads and writes; dvc.yaml declares the same paths."""
from pathlib import Path

DATA = "data/cifar10.npz"
RAW_DIR = "data/raw"  # downloaded archives (git-ignored, kept so a re-run does not download again)
DATA_SUMMARY = "metrics/data.json"
FLOPS = "metrics/flops.json"
CHECKPOINT = "models/model.pt"
TRAIN_METRICS = "metrics/train.json"
HISTORY = "plots/data/history.csv"
FLOW = "plots/data/flow.csv"
EVAL_METRICS = "metrics/eval.json"
PREDICTIONS = "plots/data/predictions.csv"
CLASS_ACCURACY = "plots/data/class_accuracy.csv"
FIGURES = "plots/figures"
RESUME = ".train_state/train.pt"  # not a DVC output: it must survive `dvc repro` removing outputs
LIVE = "dvclive"  # per-epoch progress while train runs (cifar_study/live.py); not a DVC output either


def code_files() -> list[Path]:
    """The package and the train stage: a change to them starts training afresh instead of resuming."""
    return sorted(Path("cifar_study").glob("*.py")) + [Path("stages/train.py")]
