"""Stage evaluate: the trained model on the test split: accuracy, loss, confusion, per-class accuracy."""
import numpy as np

from cifar_study.analysis.stats import BAND_COLUMNS, replica_band, replica_spread
from cifar_study.core.evaluation import evaluate_replicas
from cifar_study.core.history import ReplicaScore
from cifar_study.core.loader import make_loader
from cifar_study.core.replicas import batched_on
from cifar_study.core.runtime import resolve_device
from cifar_study.core.scores import class_accuracy, confusion_matrix
from cifar_study.observe.wandb_run import Tracker, wandb_group
from cifar_study.pipeline import paths, stage_inputs
from cifar_study.pipeline.checkpoint import load_checkpoint, trained_replicas
from cifar_study.pipeline.dataset import load_dataset
from cifar_study.pipeline.outputs import write_csv, write_json
from cifar_study.pipeline.params import load_params
from cifar_study.pipeline.stage import run_stage

WANDB_SAMPLES = 100  # test images in W&B's predictions table


def main() -> None:
    params = load_params()
    device = resolve_device(params.train.device)
    state = load_checkpoint(paths.CHECKPOINT, device)
    seeds, model, histories = trained_replicas(state, device, batched=batched_on(device))
    dataset = load_dataset(paths.DATA)
    stage_inputs.check_checkpoint_data(state, dataset.classes)
    classes = state["classes"]
    loader = make_loader("tensor", dataset.test, state["mean"], state["std"], augment=False, shuffle=False,
                         batch_size=1000, seed=0, device=device)
    evaluations = evaluate_replicas(model, loader, device)  # every replica in one pass
    result = evaluations[0]  # the study's seed: predictions, per-class accuracy, W&B
    replicas = [ReplicaScore(seed, e.acc, e.loss, [r.row() for r in history])
                for seed, e, history in zip(seeds, evaluations, histories, strict=True)]

    actual, predicted = result.labels.cpu().numpy(), result.predictions().numpy()
    per_class = class_accuracy(confusion_matrix(actual, predicted, len(classes)))
    # Per-class accuracy is in class_accuracy.csv (a plot), not a metric: ten more columns in every table.
    metrics = {"test_acc": round(result.acc, 6), "test_loss": round(result.loss, 6)}
    if len(replicas) > 1:
        metrics.update(replicas=len(replicas), **replica_spread({"test_acc": [r.test_acc for r in replicas],
                                                                 "test_loss": [r.test_loss for r in replicas]}))
    write_json(paths.EVAL_METRICS, metrics)
    write_json(paths.REPLICAS, [r.record() for r in replicas])
    write_csv(paths.REPLICA_BAND, replica_band(histories), BAND_COLUMNS)
    confidence = result.confidence().numpy()
    write_csv(paths.PREDICTIONS, [
        {"index": i, "actual": classes[a], "predicted": classes[p], "confidence": round(float(c), 4)}
        for i, (a, p, c) in enumerate(zip(actual, predicted, confidence))], ("index", "actual", "predicted", "confidence"))
    write_csv(paths.CLASS_ACCURACY, [{"class": c, "accuracy": round(float(a), 6)} for c, a in zip(classes, per_class)],
              ("class", "accuracy"))
    print(f"evaluate: test accuracy {result.acc:.4f}, loss {result.loss:.4f} on {len(actual)} images; "
          f"worst class {classes[int(np.argmin(per_class))]} ({per_class.min():.3f})")
    if len(replicas) > 1:
        print(f"evaluate: {len(replicas)} replicas: test accuracy {metrics['test_acc_mean']:.4f} "
              f"± {metrics['test_acc_sd']:.4f} (mean ± sd)")

    # Joins the W&B group of the train run that made this checkpoint, even when evaluate re-runs alone.
    with Tracker(params.wandb, "evaluate", wandb_group(state.get("run_key", "unknown")),
                 {"model": state["model"], "train": state["train"], "checkpoint": paths.CHECKPOINT}) as tracker:
        sample = np.sort(np.random.default_rng(0).choice(len(actual), min(WANDB_SAMPLES, len(actual)), replace=False))
        tracker.log_evaluation(actual, predicted, classes, per_class, sample, dataset.test.images)
        tracker.summary({k: v for k, v in metrics.items() if k.startswith(("test_", "replicas"))})
        tracker.log_metrics({"test_accuracy": metrics["test_acc"]})  # the original study's key, at the end
        # Logged here, not by train: only this stage knows the test accuracy, and an offline artifact
        # cannot be amended by a later run.
        tracker.log_model(paths.CHECKPOINT, state, metrics)


if __name__ == "__main__":
    run_stage(main)
