"""Stage visualize: the study's figures as PNGs in plots/figures/."""

import numpy as np

from cifar_study.analysis import figures
from cifar_study.core.history import EpochRecord, history_of
from cifar_study.core.scores import confusion_matrix
from cifar_study.pipeline import paths, stage_inputs
from cifar_study.pipeline.dataset import HELDOUT_NAMES, load_dataset
from cifar_study.pipeline.outputs import read_json
from cifar_study.pipeline.params import load_params
from cifar_study.pipeline.stage import run_stage


def main() -> None:
    params = load_params()
    p = params.plots
    dataset = load_dataset(paths.DATA)
    classes = dataset.classes
    index = {c: i for i, c in enumerate(classes)}
    # Every upstream file is parsed before any figure: a missing, truncated or foreign one stops the
    # stage with one line naming it.
    with stage_inputs.reading(paths.HISTORY):  # epochs 1, 2, ... of finite, in-range numbers, or one line
        history = history_of(stage_inputs.read_table(paths.HISTORY, EpochRecord.columns()))
    with stage_inputs.reading(paths.TRAIN_METRICS):
        heldout_name = read_json(paths.TRAIN_METRICS)["heldout_split"]
        if heldout_name not in HELDOUT_NAMES:  # it is drawn into the figures' titles
            raise ValueError(f"heldout_split is not one of {', '.join(HELDOUT_NAMES)}")
    snapshots = stage_inputs.read_flow(paths.FLOW)
    stage_inputs.check_flow_history(snapshots, len(history))
    with stage_inputs.reading(paths.FINDINGS):
        flow_flags = {h["layer"]: h["flags"] for h in read_json(paths.FINDINGS)["flow_health"]["layers"]}
        if not all(isinstance(f, list) and all(isinstance(flag, str) for flag in f) for f in flow_flags.values()):
            raise TypeError("a layer's flags are not a list of text")
    with stage_inputs.reading(paths.REPLICAS):
        replicas = [history_of(replica["history"]) for replica in read_json(paths.REPLICAS)]
        if any(len(h) != len(history) for h in replicas):
            raise ValueError("the replicas' histories are not history.csv's epochs")
    predictions = stage_inputs.read_table(paths.PREDICTIONS, ("index", "confidence"))
    with stage_inputs.reading(paths.PREDICTIONS):
        actual = np.array([index[r["actual"]] for r in predictions], dtype=np.int64)
        predicted = np.array([index[r["predicted"]] for r in predictions], dtype=np.int64)
    stage_inputs.check_predictions_data(actual, dataset.test.labels)
    # A fixed, seeded choice of test images, so the grid compares like with like across runs.
    sample = np.sort(np.random.default_rng(0).choice(len(predictions), min(p.samples, len(predictions)), replace=False))
    data = figures.StudyData(
        history=history,
        heldout_name=heldout_name,
        flow=snapshots,
        classes=classes,
        confusion=confusion_matrix(actual, predicted, len(classes)),
        sample_images=dataset.test.images[sample],
        sample_actual=[classes[i] for i in actual[sample]],
        sample_predicted=[classes[i] for i in predicted[sample]],
        flow_flags=flow_flags,
        replicas=replicas)
    drawn = figures.study_figures(data)
    for name, fig in drawn.items():
        figures.save_figure(fig, f"{paths.FIGURES}/{name}.png", p.dpi)
    print(f"visualize: {len(drawn)} figures in {paths.FIGURES}/")


if __name__ == "__main__":
    run_stage(main)
