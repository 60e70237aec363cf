"""Stage visualize: the study's figures as PNGs in plots/figures/."""
import numpy as np

from cifar_study import paths, plots, upstream
from cifar_study.cli import run_stage
from cifar_study.data import load_dataset
from cifar_study.flow import snapshots_from_rows
from cifar_study.io import read_json
from cifar_study.params import load_params
from cifar_study.scores import class_accuracy, confusion_matrix


def main() -> None:
    params = load_params()
    p = params.plots
    dataset = load_dataset(paths.DATA)
    classes = dataset.classes
    index = {c: i for i, c in enumerate(classes)}
    # Every upstream file is parsed before any figure: a missing, truncated or foreign one stops the
    # stage with one line naming it.
    history = upstream.read_table(paths.HISTORY, ("epoch", "train_loss", "train_acc", "heldout_loss", "heldout_acc"))
    with upstream.reading(paths.TRAIN_METRICS):
        heldout_name = str(read_json(paths.TRAIN_METRICS)["heldout_split"])
    with upstream.reading(paths.FLOW):
        snapshots = snapshots_from_rows(upstream.read_table(paths.FLOW, ("step", "epoch")))
    predictions = upstream.read_table(paths.PREDICTIONS, ("index", "confidence"))
    with upstream.reading(paths.PREDICTIONS):
        actual = np.array([index[r["actual"]] for r in predictions], dtype=np.int64)
        predicted = np.array([index[r["predicted"]] for r in predictions], dtype=np.int64)
    upstream.check_predictions_data(actual, dataset.test.labels)
    confusion = confusion_matrix(actual, predicted, len(classes))
    # A fixed, seeded choice of test images, so the grid compares like with like across runs.
    sample = np.sort(np.random.default_rng(0).choice(len(predictions), min(p.samples, len(predictions)), replace=False))

    figures = {
        "learning_curves.png": plots.learning_curves(history, heldout_name),
        "confusion_matrix.png": plots.confusion_figure(confusion, classes),
        "class_accuracy.png": plots.class_accuracy_figure(class_accuracy(confusion), classes),
        "sample_predictions.png": plots.prediction_grid(dataset.test.images[sample],
                                                        [classes[i] for i in actual[sample]],
                                                        [classes[i] for i in predicted[sample]]),
        "gradient_flow.png": plots.flow_bars(snapshots, "grad"),
        "weight_flow.png": plots.flow_bars(snapshots, "weight"),
        "gradient_flow_heatmap.png": plots.flow_heatmap(snapshots),
    }
    for name, fig in figures.items():
        plots.save_figure(fig, f"{paths.FIGURES}/{name}", p.dpi)
    print(f"visualize: {len(figures)} figures in {paths.FIGURES}/")


if __name__ == "__main__":
    run_stage(main)
