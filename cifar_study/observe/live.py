"""Live training progress with DVCLive: the per-epoch metrics DVC and VS Code show while `train` runs.

After every epoch, `dvclive/` gets one more row of each curve (`plots/metrics/<split>/<loss|acc>.tsv`,
drawn by `dvc plots show` and the VS Code extension) and the epoch's values (`metrics.json`, what
`dvc exp show` lists for a running experiment); `dvclive/dvc.yaml` declares both to DVC.

These are progress files, not results. The stage still writes its final outputs (metrics/train.json,
plots/data/history.csv, ...) atomically at the end, and only then removes `dvclive/`: the live panels
exist while a run is in progress, and after a run that stopped (showing the epochs it completed;
resuming it continues them). The root dvc.yaml does not declare them as outputs, so they change no
stage's cache key and a skipped or cached stage is never out of date because of them.

A failure here (a full disk, a DVCLive bug) prints one warning and turns live logging off; training
goes on and its outputs are the same.
"""
from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from cifar_study.core.flow import FlowSnapshot
from cifar_study.core.history import EpochRecord
from cifar_study.pipeline import paths
from cifar_study.pipeline.cli import error_line
from cifar_study.pipeline.dataset import HELDOUT_NAMES
from cifar_study.pipeline.errors import UserError, first_line
from cifar_study.pipeline.outputs import atomic_path
from cifar_study.pipeline.untrusted import read_bounded

if TYPE_CHECKING:  # for annotations only: `make repro` checks a leftover dvclive/dvc.yaml without PyTorch
    from torch import nn

    from cifar_study.core.training import TrainLogger


# A progress file grows by a row of about 30 bytes an epoch: 10,000 epochs stay under 1 MiB. A resumed run's Live
# reads them whole, so one past this is refused (a 3 GB file took 7 GB of memory), and the run goes on without them.
MAX_LIVE_FILE_BYTES = 16 << 20


def live_dvcyaml(heldout_name: str) -> dict[str, Any]:
    """dvclive/dvc.yaml: the live metrics, and the loss and accuracy curves as the final plots draw them."""
    def curves(stat: str, title: str, label: str) -> dict[str, Any]:
        return {title: {"template": "linear", "x": "step", "x_label": "epoch", "y_label": label,
                        "y": {f"plots/metrics/{split}/{stat}.tsv": stat for split in ("train", heldout_name)}}}

    return {"metrics": ["metrics.json"],
            "plots": [curves("loss", "Live: loss per epoch (run in progress)", "cross-entropy loss"),
                      curves("acc", "Live: accuracy per epoch (run in progress)", "accuracy")]}


def check_leftover(directory: str | Path = paths.LIVE) -> str | None:
    """Why `dvc repro` would stop on `directory`/dvc.yaml (DVC reads every dvc.yaml in the project, and
    names this one without saying what it is), as one line; None when it is absent or as train writes it."""
    path = Path(directory) / "dvc.yaml"
    if not path.exists() and not path.is_symlink():
        return None
    try:
        text = read_bounded(path, 1 << 20).decode()
    except (UserError, OSError, UnicodeDecodeError) as exc:
        text = f"unreadable: {first_line(exc)}"
    if not path.is_symlink() and text in (yaml.safe_dump(live_dvcyaml(h), sort_keys=False) for h in HELDOUT_NAMES):
        return None
    return (f"{path} is not the live-progress file a train run writes (DVC would refuse to run with it): "
            f"remove {directory}/ (progress files only: results are in metrics/ and plots/), then run again")


class LiveLogger:
    """A TrainLogger that writes DVCLive files after every epoch; only the process with `enabled` writes."""

    def __init__(self, directory: str | Path = paths.LIVE, enabled: bool = True):
        self.dir = Path(directory)
        self.enabled = enabled
        self.live = None  # the dvclive.Live, opened at the first epoch logged
        if enabled:
            # Imported now, before W&B's logging thread starts: an import racing one on that thread can
            # leave a module lock held when Ctrl-C lands, and the stage hangs at exit.
            self._guard(lambda: importlib.import_module("dvclive"))

    def _guard(self, call: Callable[[], None]) -> None:
        if not self.enabled:
            return
        try:
            call()
        except Exception as exc:  # live progress must never cost a run: warn once, then it is off
            print(f"warning: live progress ({self.dir}/) failed ({type(exc).__name__}: {first_line(exc)}); "
                  f"continuing without it", file=sys.stderr, flush=True)
            self.enabled = False

    def _open(self, epoch: int, heldout_name: str) -> None:
        from dvclive import Live  # imports DVC: only where live logging is on

        # Live clears and reads this folder: a symlink would take that elsewhere, a FIFO or device
        # inside it would block the read. Refused (then the run goes on without live progress).
        if self.dir.is_symlink() or (self.dir.exists() and not self.dir.is_dir()):
            raise OSError(f"{self.dir} is a symlink or not a folder; not touched")
        for entry in self.dir.rglob("*") if self.dir.is_dir() else []:
            if entry.is_symlink() or not (entry.is_file() or entry.is_dir()):
                raise OSError(f"{entry} is a symlink or special file; not touched")
            if epoch > 1 and entry.is_file() and (size := entry.stat().st_size) > MAX_LIVE_FILE_BYTES:  # read whole
                raise OSError(f"{entry} is {size:,} bytes, more than live progress files hold "
                              f"({MAX_LIVE_FILE_BYTES >> 20} MiB); not read")

        # Epoch 1 starts afresh (Live clears the directory); a later first epoch is a resumed run,
        # whose completed epochs are already in the files: keep them.
        # dvcyaml=False: DVCLive would otherwise edit the project's dvc.yaml; ours is written below.
        # save_dvc_exp=False: the pipeline (`dvc exp run`) records experiments, not DVCLive.
        self.live = Live(str(self.dir), resume=epoch > 1, dvcyaml=False, save_dvc_exp=False)
        with atomic_path(self.dir / "dvc.yaml", now=True) as tmp:  # progress: written now, not with the outputs
            tmp.write_text(yaml.safe_dump(live_dvcyaml(heldout_name), sort_keys=False))

    def log_epoch(self, record: EpochRecord, step: int, heldout_name: str) -> None:
        def log() -> None:
            if self.live is None:
                self._open(record.epoch, heldout_name)
            self.live.step = record.epoch  # the x axis is the epoch, as in plots/data/history.csv
            for name, value in record.logged(heldout_name).items():
                if name != "epoch":  # curves (a .tsv row each) for losses and accuracies, latest values for the rest
                    self.live.log_metric(name, value, plot="/" in name)
            self.live.next_step()  # writes metrics.json and tells the VS Code extension an epoch is done

        self._guard(log)

    def log_flow(self, snapshot: FlowSnapshot) -> None:
        """Flow snapshots are per batch and layer, not curves to watch: plots/data/flow.csv has them at the end."""

    def histograms_due(self, step: int) -> bool:
        return False  # histograms are W&B's

    def take_histograms(self, model: nn.Module, step: int) -> None:
        pass

    def finish(self) -> None:
        """The final outputs are written: the run is no longer in progress, so its live files go."""
        def finish() -> None:
            if self.live is not None:
                self.live.end()
            shutil.rmtree(self.dir, ignore_errors=True)

        self._guard(finish)


class FanOut:
    """A TrainLogger that passes every call on to each of `loggers`, in order."""

    def __init__(self, *loggers: TrainLogger):
        self.loggers = loggers

    def log_epoch(self, record: EpochRecord, step: int, heldout_name: str) -> None:
        for logger in self.loggers:
            logger.log_epoch(record, step, heldout_name)

    def log_flow(self, snapshot: FlowSnapshot) -> None:
        for logger in self.loggers:
            logger.log_flow(snapshot)

    def histograms_due(self, step: int) -> bool:
        return any(logger.histograms_due(step) for logger in self.loggers)

    def take_histograms(self, model: nn.Module, step: int) -> None:
        for logger in self.loggers:
            if logger.histograms_due(step):
                logger.take_histograms(model, step)


if __name__ == "__main__":  # `make repro` runs this first: a leftover that DVC would stop on, explained
    problem = check_leftover()
    if problem:
        sys.exit(error_line(problem))
