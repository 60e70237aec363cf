"""Stage visualize: the study's figures as PNGs in plots/figures/."""
import numpy as np

from cifar_study import paths, plots
from cifar_study.cli import run_stage
from cifar_study.data import load_dataset
from cifar_study.flow import snapshots_from_rows
from cifar_study.history import EpochRecord
from cifar_study.io import read_csv, read_json
from cifar_study.params import load_params
from cifar_study.scores import confusion_matrix


def main() -> None:
    params = load_params()
    p = params.plots
    predictions = read_csv(paths.PREDICTIONS)
    dataset = load_dataset(paths.DATA)
    classes = dataset.classes
    index = {c: i for i, c in enumerate(classes)}
    actual = np.array([index[r["actual"]] for r in predictions])
    predicted = np.array([index[r["predicted"]] for r in predictions])
    # A fixed, seeded choice of test images, so the grid compares like with like across runs.
    sample = np.sort(np.random.default_rng(0).choice(len(predictions), min(p.samples, len(predictions)), replace=False))
    data = plots.StudyData(
        history=[EpochRecord.from_row(r) for r in read_csv(paths.HISTORY)],
        heldout_name=read_json(paths.TRAIN_METRICS)["heldout_split"],
        flow=snapshots_from_rows(read_csv(paths.FLOW)),
        classes=classes,
        confusion=confusion_matrix(actual, predicted, len(classes)),
        sample_images=dataset.test.images[sample],
        sample_actual=[classes[i] for i in actual[sample]],
        sample_predicted=[classes[i] for i in predicted[sample]],
        flow_flags={h["layer"]: h["flags"] for h in read_json(paths.FINDINGS)["flow_health"]["layers"]})
    figures = plots.study_figures(data)
    for name, fig in figures.items():
        plots.save_figure(fig, f"{paths.FIGURES}/{name}.png", p.dpi)
    print(f"visualize: {len(figures)} figures in {paths.FIGURES}/")


if __name__ == "__main__":
    run_stage(main)
