"""Figures readable at the edges: one epoch, one flow snapshot, 100% accuracy, colour-blind readers."""
import numpy as np
import yaml

from cifar_study.analysis import figures
from cifar_study.core.flow import FlowSnapshot
from cifar_study.core.history import EpochRecord
from tests.conftest import ROOT

LAYERS = ["block1.conv", "block1.bn", "fc1"]


def history(epochs: int) -> list[EpochRecord]:
    return [EpochRecord(e, 2.0 / e, 0.3 + 0.01 * e, 1.5 / e, 0.4 + 0.01 * e, 1e-3, 1.0) for e in range(1, epochs + 1)]


def snapshots(n: int) -> list[FlowSnapshot]:
    return [FlowSnapshot(10 * i, i + 1, LAYERS, [[1e-3, 1e-2, 0.1, 1.0, 1e-3]] * len(LAYERS)) for i in range(n)]


def test_one_epoch_curves_have_whole_axes_and_a_legend_beside_the_points():
    fig = figures.learning_curves(history(1), "test")
    loss, acc = fig.axes
    assert acc.get_ylim() == (0, 100) and loss.get_ylim()[0] == 0 and loss.get_ylim()[1] >= 2.0
    assert loss.get_xlim() == (0.5, 1.5) and list(loss.get_xticks()) == [1]
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1  # outside the axes
    assert "one epoch" in fig.get_suptitle()
    assert all(line.get_marker() in ("o", "s") for ax in fig.axes for line in ax.get_lines())


def test_flow_bar_legend_is_outside_every_axes():
    fig = figures.flow_bars(snapshots(3), "weight")
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "step 0 (epoch 1)", "step 10 (epoch 2)", "step 20 (epoch 3)"]


def test_class_accuracy_axis_ends_at_100_percent():
    fig = figures.class_accuracy_figure(np.array([1.0, 0.5]), ["cat", "dog"])
    assert fig.axes[0].get_xlim() == (0, 100)


def test_prediction_grid_marks_right_and_wrong_without_colour():
    images = np.zeros((2, 32, 32, 3), np.uint8)
    fig = figures.prediction_grid(images, ["cat", "dog"], ["cat", "cat"])
    titles = [ax.get_title() for ax in fig.axes[:2]]
    assert titles[0].startswith("\u2713 pred: cat") and titles[1].startswith("\u2717 pred: cat")


def test_one_snapshot_heat_map_says_so():
    assert "single snapshot" in figures.flow_heatmap(snapshots(1)).axes[0].get_title()
    assert figures.flow_heatmap(snapshots(2)).axes[0].get_title() == "Gradient flow over the whole run"


def test_dvc_confusion_plot_has_the_axes_of_the_png_beside_it():
    plots = [p for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"] if isinstance(p, dict)]
    spec = next(v for p in plots for k, v in p.items() if k.startswith("Confusion matrix"))
    ax = figures.confusion_figure(np.eye(3, dtype=int), ["a", "b", "c"]).axes[0]
    assert (spec["x_label"], spec["y_label"]) == (ax.get_xlabel(), ax.get_ylabel())
    assert (spec["x"], next(iter(spec["y"].values()))) == ("predicted", "actual")


def test_a_gradient_that_was_nan_or_infinite_is_a_blank_cell_not_a_failure(tmp_path):
    """fp16 training can record an infinite gradient (a step GradScaler then skips): the figures still draw."""
    snaps = snapshots(3)
    snaps[1] = FlowSnapshot(10, 2, LAYERS, [[np.inf, np.inf, 0.1, 1.0, 1e-3], [np.nan, np.nan, 0.1, 1.0, np.nan],
                                            [0.0, 0.0, 0.1, 1.0, 0.0]])
    drawn = [figures.flow_heatmap(snaps), figures.flow_health_figure(snaps, {"fc1": ["dead"]}),
             figures.flow_bars(snaps, "grad")]
    for i, fig in enumerate(drawn):
        figures.save_figure(fig, tmp_path / f"{i}.png", 50)
    cells = drawn[0].axes[0].images[0].get_array()
    assert cells.mask[:, 1].all() and not cells.mask[:, 0].any()  # the bad column blank, the others drawn
    every_value_bad = [FlowSnapshot(0, 1, LAYERS, [[np.nan] * 5] * len(LAYERS))]
    figures.save_figure(figures.flow_heatmap(every_value_bad), tmp_path / "blank.png", 50)


def test_text_from_data_is_drawn_as_written_not_as_math():
    """A split's or class's name holding "$...$" is no formula: typeset it would change the text, and an
    unbalanced one stopped the figure with a parse error."""
    import io

    for name in ("$\\foo{$", "$\\sqrt{2}$ costs $5"):
        fig = figures.learning_curves(history(2), name)
        fig.savefig(io.BytesIO(), format="png", dpi=50)
        texts = [t for ax in fig.axes for t in ax.get_legend_handles_labels()[1]] + \
            [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        assert f"{name} (held-out)" in texts
