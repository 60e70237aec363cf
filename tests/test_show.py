"""`make show` (python -m cifar_study.show): the experiments table within a terminal's width."""
from __future__ import annotations

from cifar_study.show import PENDING, columns_of, rows_of, table


def rev(name: str, lr: float, acc: float | None, extra_params: dict | None = None, **metrics) -> dict:
    params = {"train": {"lr": lr, "epochs": 30, **(extra_params or {})}, "wandb": {"mode": name}}
    files = {"metrics/eval.json": {"data": {"test_acc": acc, "test_loss": 0.5}} if acc is not None else {},
             "metrics/findings.json": {"data": {"flagged_layers": 0, "epoch_95": 18}}, "dvclive/metrics.json": {"data": metrics}}
    return {"rev": name, "name": name, "data": {"params": {"params.yaml": {"data": params}}, "metrics": files}}


def report(*experiments: tuple[dict, str]) -> list:
    head = rev("abcdef1234", 0.001, 0.82)
    head["experiments"] = [{"revs": [e], "executor": {"state": state}} for e, state in experiments]
    return [{**rev("workspace", 0.001, 0.82), "rev": "workspace"}, head]


def test_only_changed_params_and_headline_metrics():
    lines, left_out = table(rows_of(report((rev("exp-a", 0.002, 0.80), "success"))), 120)
    assert lines[0].split() == ["experiment", "test_acc", "train.lr", "test_loss", "flagged_layers", "epoch_95"]
    assert "wandb.mode" not in lines[0] and "train.epochs" not in lines[0] and left_out == []
    assert lines[3].split() == ["exp-a", "0.8", "0.002", "0.5", "0", "18"]


def test_many_changed_params_stay_within_the_width_and_name_what_was_left_out():
    wide = {f"option_with_a_long_name_{i}": i for i in range(12)}
    lines, left_out = table(rows_of(report((rev("exp-b", 0.002, 0.8, wide), "success"))), 120)
    assert max(map(len, lines)) <= 120 and lines[0].startswith("experiment  test_acc")
    assert left_out and all(c.startswith(("train.option", "test_loss", "flagged", "epoch_95")) for c in left_out)


def test_a_running_experiment_shows_no_metric_of_the_previous_run():
    running = rev("exp-c", 0.004, 0.82, step=3)  # its copy still holds the previous evaluate's test_acc
    lines, _ = table(rows_of(report((running, "running"))), 120)
    row = next(line for line in lines if "exp-c" in line)
    assert "(running, epoch 3)" in row and "0.82" not in row and PENDING in row


def test_replicas_show_mean_and_sd():
    lines, _ = table(rows_of(report((rev("exp-d", 0.002, 0.8, test_acc_mean=0.81, test_acc_sd=0.004), "success"))), 120)
    assert "0.81 ± 0.004" in next(line for line in lines if "exp-d" in line)


def test_wide_characters_take_two_columns_and_the_table_stays_aligned():
    """A param value in Chinese or Japanese takes two terminal columns a character: counted as characters, the
    columns after it would shift and the table overrun the width."""
    lines, _ = table(rows_of(report((rev("exp-c", 0.002, 0.80, {"note": "学习率调整实验"}), "success"))), 120)
    starts = [columns_of(line[:line.index(" 0.5 ")]) for line in lines[1:]]  # test_loss's column, after the note's
    assert len(lines) == 4 and len(set(starts)) == 1 and max(map(columns_of, lines)) <= 120, lines


def test_a_failed_experiment_shows_no_metric_of_the_commit_it_started_from():
    """Probe 6: `dvc queue kill` left a row with the baseline's metrics, and DVC's error for it, as if unread."""
    failed = {**rev("exp-f", 0.004, 0.82), "error": {"msg": "Experiment run failed", "type": ""}}
    rows = rows_of(report((failed, "failed")))
    lines, _ = table(rows, 120)
    row = next(line for line in lines if "exp-f" in line)
    assert row.split() == ["exp-f", "(failed)", "-", "0.004", "-", "-", "-"] and not rows[-1].error


def test_a_metrics_file_dvc_cannot_read_is_named_not_shown_as_missing():
    """Probe 6: a metrics file cut short showed as `-`, as a metric never written does."""
    broken = rev("exp-g", 0.002, 0.8)
    broken["data"]["metrics"]["metrics/eval.json"] = {"error": {
        "type": "JSONFileCorruptedError", "msg": "unable to read: 'metrics/eval.json\x1b]2;x\x07'"}}
    rows = rows_of(report((broken, "success")))
    lines, _ = table(rows, 120)
    assert next(line for line in lines if "exp-g" in line).split()[:4] == ["exp-g", "(not", "read)", "-"]
    assert rows[-1].error == r"metrics/eval.json: unable to read: 'metrics/eval.json\x1b]2;x\x07'"


def test_a_missing_metrics_file_is_missing_metrics_and_a_live_or_failed_row_names_no_file():
    """DVC reports a metrics file that is not there as an error too: its metrics are `-`, no more. A running run's
    dvclive/metrics.json is rewritten every epoch, and a failed run's files are its baseline's: no footnote."""
    missing, running, failed = rev("exp-h", 0.002, None), rev("exp-i", 0.003, None), rev("exp-j", 0.004, 0.8)
    missing["data"]["metrics"]["metrics/eval.json"] = {"error": {"type": "FileNotFoundError", "msg": "[Errno 2]"}}
    for r in (running, failed):
        r["data"]["metrics"]["dvclive/metrics.json"] = {"error": {"type": "JSONDecodeError", "msg": "cut short"}}
    rows = rows_of(report((missing, "success"), (running, "running"), (failed, "failed")))
    assert [r.error for r in rows[-3:]] == ["", "", ""]
