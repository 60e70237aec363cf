"""Where each stage reads and writes; dvc.yaml declares the same paths (tests/test_code_deps.py checks it)."""

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

# Per stage: (data it reads, outputs and metrics it writes), as dvc.yaml declares them.
STAGE_FILES = {
    "fetch_data": ((), (DATA, DATA_SUMMARY)),
    "flops": ((), (FLOPS,)),
    "train": ((DATA,), (CHECKPOINT, HISTORY, FLOW, TRAIN_METRICS)),
    "evaluate": ((CHECKPOINT, DATA), (PREDICTIONS, CLASS_ACCURACY, EVAL_METRICS)),
    "visualize": ((HISTORY, FLOW, PREDICTIONS, TRAIN_METRICS, DATA), (FIGURES,)),
}
