"""Stage evaluate: the trained model on the test split: accuracy, loss, confusion, per-class accuracy."""
import numpy as np

from cifar_study.core.evaluation import evaluate
from cifar_study.core.loader import make_loader
from cifar_study.core.runtime import resolve_device
from cifar_study.core.scores import class_accuracy, confusion_matrix
from cifar_study.observe.wandb_run import Tracker, wandb_group
from cifar_study.pipeline import paths, stage_inputs
from cifar_study.pipeline.checkpoint import load_checkpoint, model_from_checkpoint
from cifar_study.pipeline.dataset import load_dataset
from cifar_study.pipeline.outputs import write_csv, write_json
from cifar_study.pipeline.params import load_params
from cifar_study.pipeline.stage import run_stage

WANDB_SAMPLES = 100  # test images in W&B's predictions table


def main() -> None:
    params = load_params()
    device = resolve_device(params.train.device)
    state = load_checkpoint(paths.CHECKPOINT, device)
    model = model_from_checkpoint(state, device)
    dataset = load_dataset(paths.DATA)
    stage_inputs.check_checkpoint_data(state, dataset.classes)
    classes = state["classes"]
    loader = make_loader("tensor", dataset.test, state["mean"], state["std"], augment=False, shuffle=False,
                         batch_size=1000, seed=0, device=device)
    result = evaluate(model, loader, device)

    actual, predicted = result.labels.cpu().numpy(), result.predictions().numpy()
    per_class = class_accuracy(confusion_matrix(actual, predicted, len(classes)))
    # Per-class accuracy is in class_accuracy.csv (a plot), not a metric: ten more columns in every table.
    metrics = {"test_acc": round(result.acc, 6), "test_loss": round(result.loss, 6)}
    write_json(paths.EVAL_METRICS, metrics)
    confidence = result.confidence().numpy()
    write_csv(paths.PREDICTIONS, [
        {"index": i, "actual": classes[a], "predicted": classes[p], "confidence": round(float(c), 4)}
        for i, (a, p, c) in enumerate(zip(actual, predicted, confidence))], ("index", "actual", "predicted", "confidence"))
    write_csv(paths.CLASS_ACCURACY, [{"class": c, "accuracy": round(float(a), 6)} for c, a in zip(classes, per_class)],
              ("class", "accuracy"))
    print(f"evaluate: test accuracy {result.acc:.4f}, loss {result.loss:.4f} on {len(actual)} images; "
          f"worst class {classes[int(np.argmin(per_class))]} ({per_class.min():.3f})")

    # Joins the W&B group of the train run that made this checkpoint, even when evaluate re-runs alone.
    with Tracker(params.wandb, "evaluate", wandb_group(state.get("run_key", "unknown")),
                 {"model": state["model"], "train": state["train"], "checkpoint": paths.CHECKPOINT}) as tracker:
        sample = np.sort(np.random.default_rng(0).choice(len(actual), min(WANDB_SAMPLES, len(actual)), replace=False))
        tracker.log_evaluation(actual, predicted, classes, per_class, sample, dataset.test.images)
        tracker.summary({"test_acc": metrics["test_acc"], "test_loss": metrics["test_loss"]})
        tracker.log_metrics({"test_accuracy": metrics["test_acc"]})  # the original study's key, at the end
        # Logged here, not by train: only this stage knows the test accuracy, and an offline artifact
        # cannot be amended by a later run.
        tracker.log_model(paths.CHECKPOINT, state, metrics)


if __name__ == "__main__":
    run_stage(main)
