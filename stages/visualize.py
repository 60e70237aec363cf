"""Stage visualize: the study's figures as PNGs in plots/figures/."""
import numpy as np

from cifar_study import paths, plots, upstream
from cifar_study.cli import run_stage
from cifar_study.data import load_dataset
from cifar_study.flow import COLUMNS as FLOW_COLUMNS
from cifar_study.flow import snapshots_from_rows
from cifar_study.history import EpochRecord
from cifar_study.io import read_json
from cifar_study.params import load_params
from cifar_study.scores import confusion_matrix


def main() -> None:
    params = load_params()
    p = params.plots
    dataset = load_dataset(paths.DATA)
    classes = dataset.classes
    index = {c: i for i, c in enumerate(classes)}
    # Every upstream file is parsed before any figure: a missing, truncated or foreign one stops the
    # stage with one line naming it.
    history = upstream.read_table(paths.HISTORY, EpochRecord.columns())
    with upstream.reading(paths.TRAIN_METRICS):
        heldout_name = str(read_json(paths.TRAIN_METRICS)["heldout_split"])
    with upstream.reading(paths.FLOW):
        snapshots = snapshots_from_rows(upstream.read_table(paths.FLOW, [c for c in FLOW_COLUMNS if c != "layer"]))
    with upstream.reading(paths.FINDINGS):
        flow_flags = {h["layer"]: h["flags"] for h in read_json(paths.FINDINGS)["flow_health"]["layers"]}
    predictions = upstream.read_table(paths.PREDICTIONS, ("index", "confidence"))
    with upstream.reading(paths.PREDICTIONS):
        actual = np.array([index[r["actual"]] for r in predictions], dtype=np.int64)
        predicted = np.array([index[r["predicted"]] for r in predictions], dtype=np.int64)
    upstream.check_predictions_data(actual, dataset.test.labels)
    # A fixed, seeded choice of test images, so the grid compares like with like across runs.
    sample = np.sort(np.random.default_rng(0).choice(len(predictions), min(p.samples, len(predictions)), replace=False))
    data = plots.StudyData(
        history=[EpochRecord.from_row(r) for r in history],
        heldout_name=heldout_name,
        flow=snapshots,
        classes=classes,
        confusion=confusion_matrix(actual, predicted, len(classes)),
        sample_images=dataset.test.images[sample],
        sample_actual=[classes[i] for i in actual[sample]],
        sample_predicted=[classes[i] for i in predicted[sample]],
        flow_flags=flow_flags)
    figures = plots.study_figures(data)
    for name, fig in figures.items():
        plots.save_figure(fig, f"{paths.FIGURES}/{name}.png", p.dpi)
    print(f"visualize: {len(figures)} figures in {paths.FIGURES}/")


if __name__ == "__main__":
    run_stage(main)
