"""Where each stage reads and writes; dvc.yaml declares the same paths (tests/test_code_deps.py checks it)."""

DATA = "data/cifar10.npz"
RAW_DIR = "data/raw"  # downloaded archives (git-ignored, kept so a re-run does not download again)
# metrics/*.json: the few numbers per stage that `dvc metrics show/diff` compare; reports/*.json: the detail.
DATA_METRICS = "metrics/data.json"
DATA_REPORT = "reports/data.json"
FLOPS_METRICS = "metrics/flops.json"
FLOPS_REPORT = "reports/flops.json"
CHECKPOINT = "models/model.pt"
TRAIN_METRICS = "metrics/train.json"
HISTORY = "plots/data/history.csv"
FLOW = "plots/data/flow.csv"
EVAL_METRICS = "metrics/eval.json"
PREDICTIONS = "plots/data/predictions.csv"
CLASS_ACCURACY = "plots/data/class_accuracy.csv"
REPLICAS = "reports/replicas.json"  # per seed replica: seed, test accuracy and loss, per-epoch history
REPLICA_BAND = "plots/data/replicas.csv"  # per epoch: the replicas' held-out mean and mean ± sd
FINDINGS_METRICS = "metrics/findings.json"  # the few numbers dvc metrics diff compares
FINDINGS = "reports/findings.json"  # per-layer flow health, training dynamics, the original study's claims
FIGURES = "plots/figures"
RESUME = ".train_state/train.pt"  # not a DVC output: it must survive `dvc repro` removing outputs
LIVE = "dvclive"  # per-epoch progress while train runs (cifar_study/observe/live.py); not a DVC output either

# Per stage: (data it reads, outputs and metrics it writes), as dvc.yaml declares them.
STAGE_FILES = {
    "check_params": (("params.yaml",), ()),
    "fetch_data": ((), (DATA, DATA_METRICS, DATA_REPORT)),
    "flops": ((), (FLOPS_METRICS, FLOPS_REPORT)),
    "train": ((DATA,), (CHECKPOINT, HISTORY, FLOW, TRAIN_METRICS)),
    "evaluate": ((CHECKPOINT, DATA), (PREDICTIONS, CLASS_ACCURACY, EVAL_METRICS, REPLICAS, REPLICA_BAND)),
    "findings": ((HISTORY, FLOW), (FINDINGS_METRICS, FINDINGS)),  # (and the checkpoint, for W&B's group only)
    "visualize": ((HISTORY, FLOW, PREDICTIONS, TRAIN_METRICS, FINDINGS, REPLICAS, DATA), (FIGURES,)),
}
