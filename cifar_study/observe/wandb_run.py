"""Weights & Biases logging that can never cost a run.

Every W&B call goes through `Tracker._guard`: the first failure (no network, a bad API key, a
full disk, a W&B bug) prints one warning and turns W&B off for the rest of the stage, which goes
on and writes exactly the outputs it writes without W&B.

Logging runs on one background thread, in order: rendering a flow chart takes a few hundred
milliseconds on a CPU, and the training loop must not wait for it.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from cifar_study.core.flow import STATS, FlowSnapshot
from cifar_study.core.history import EpochRecord
from cifar_study.pipeline.cli import printable
from cifar_study.pipeline.errors import OutputError, first_line
from cifar_study.pipeline.outputs import write_bytes
from cifar_study.pipeline.params import ModelParams, WandbParams, parse_section

if TYPE_CHECKING:  # PyTorch is imported where it is used: the findings stage logs to W&B without it
    from torch import nn

    from cifar_study.observe.histograms import PendingHistograms

INIT_TIMEOUT_S = 30  # online mode without network: give up after this, not W&B's default 90 s
INTERRUPT_WAIT_S = 0.5  # Ctrl-C: how long queued logs may still take before they are dropped


def wandb_mode(p: WandbParams) -> str:
    """The WANDB_MODE environment variable overrides `wandb.mode` in params.yaml."""
    return os.environ.get("WANDB_MODE") or p.mode


def wandb_root() -> str:
    """The directory W&B writes its `wandb/` folder into: the project's own, by absolute path.

    `dvc exp run --queue`/`--temp` runs the stages in a temporary copy (.dvc/tmp/exps/...) that is
    deleted afterwards; DVC sets DVC_ROOT to the original project there (and to the project for
    `dvc repro`), so every run lands in <project>/wandb/. WANDB_DIR, if set, wins; outside DVC the
    stage runs from the project root. Always passed to wandb.init: W&B reads WANDB_DIR only once
    per process.
    """
    return os.path.abspath(os.environ.get("WANDB_DIR") or os.environ.get("DVC_ROOT") or ".")


def wandb_group(run_key: str) -> str:
    """The W&B group of a pipeline run: the train run's key, which the checkpoint carries to evaluate."""
    return f"run-{run_key[:10]}"


def resume_id_file(stage: str, group: str) -> Path:
    """Where a stage's unfinished W&B run id waits for the re-run that resumes it.

    Kept next to the runs (<project>/wandb/, or WANDB_DIR's) rather than in the resume state: it
    must survive a queued experiment's temporary copy, and it is not a result.
    """
    return Path(wandb_root()) / "wandb" / "unfinished" / f"{stage}-{group}.id"


def unfinished_id(path: Path) -> str | None:
    """The id an interrupted run left, if any (anything else in the file is ignored: W&B ids are [a-z0-9])."""
    try:
        if not path.is_file() or path.stat().st_size > 1024:  # a FIFO would block the read; an id is short
            return None
        text = path.read_text(errors="replace").strip()
    except OSError:
        return None
    return text if re.fullmatch(r"[a-z0-9]{1,64}", text) else None


def has_credentials() -> bool:
    """Whether W&B finds an API key (WANDB_API_KEY, ~/.netrc, its settings) without asking for one."""
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    try:
        return wbauth.authenticate_session(host=wandb_setup.singleton().settings.base_url, source="cifar_study",
                                           prompt=False, update_session=False) is not None
    except Exception:  # a malformed key is "found": wandb.init then fails, and the guard warns
        return True


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def model_cost(p: ModelParams, num_classes: int) -> dict[str, Any]:
    """FLOPs and parameters per image (core.flops.model_cost), without drawing from the RNG that training uses."""
    import torch  # here, not at the top: findings logs to W&B without PyTorch

    from cifar_study.core import flops
    from cifar_study.core.model import build_model

    with torch.random.fork_rng(devices=[]):  # building a model initialises weights from the global RNG
        return flops.model_cost(build_model(p, num_classes))


def model_metadata(path: str, checkpoint: dict[str, Any], test_metrics: dict[str, Any]) -> dict[str, Any]:
    """What a person looks for on the model artifact: how good, how costly, and where it came from."""
    cost = model_cost(parse_section("model", checkpoint["model"]), len(checkpoint["classes"]))
    md5 = hashlib.md5()  # DVC's hash of the file: its cache key, as dvc.lock records it
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            md5.update(chunk)
    git = git_state()
    return {"test_accuracy": test_metrics["test_acc"], "test_loss": test_metrics["test_loss"],
            "gflops": cost["gflops"], "flops": cost["flops"], "params": cost["params"],
            "epochs": checkpoint["epoch"], "normalize": checkpoint["train"].get("normalize"),
            "mean": list(checkpoint["mean"]), "std": list(checkpoint["std"]),
            "run_key": checkpoint.get("run_key", "unknown"), "git_commit": git["commit"], "git_dirty": git["dirty"],
            "dvc_path": path, "dvc_md5": md5.hexdigest()}


def _figures() -> Any:
    """cifar_study.analysis.figures, imported on first use: matplotlib adds about 0.5 s to every stage process
    on a laptop CPU, and only the images logged to W&B need it."""
    from cifar_study.analysis import figures

    return figures


def figure_image(fig: Any) -> Any:
    """A matplotlib Figure as a PIL image (W&B stores it as PNG)."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    buf.seek(0)
    return Image.open(buf)


class Tracker:
    """One W&B run for one stage: `job_type` is the stage, `group` ties a pipeline run's stages together."""

    def __init__(self, p: WandbParams, stage: str, group: str, config: dict[str, Any], enabled: bool = True):
        self.run = None  # set once wandb.init returns (_start)
        self.wandb = None
        self._on = False  # W&B started, and not failed since
        self.watch, self.watch_every = p.watch, p.watch_every
        self._flows: list[FlowSnapshot] = []  # this epoch's, logged with it (log_epoch)
        self._histograms: list[PendingHistograms] = []
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wandb")  # one thread: logs stay in order
        mode = wandb_mode(p)
        if mode == "disabled" or not enabled:  # enabled=False: a data-parallel rank other than 0
            return
        try:
            import wandb
        except ImportError as exc:
            self._warn("import", exc)
            return
        if mode == "online" and not has_credentials():  # wandb.init would wait at a login prompt
            print("warning: W&B online mode, but no W&B API key is set; continuing without W&B "
                  "(log in with `wandb login`, or set WANDB_API_KEY; or use wandb.mode: offline)",
                  file=sys.stderr, flush=True)
            return
        root = wandb_root()
        if os.path.exists(root) and not os.path.isdir(root):  # W&B would warn thrice, then write into /tmp
            print(printable(f"warning: W&B's folder {root} (WANDB_DIR) is not a folder; continuing without W&B"),
                  file=sys.stderr, flush=True)
            return
        self.wandb = wandb
        # An interrupted stage re-run with the same params continues its W&B run, so a sweep's
        # dashboard shows one run per stage and experiment, not a failed one beside a second.
        self._id_file = resume_id_file(stage, group)
        resumed = unfinished_id(self._id_file)
        settings = dict(project=p.project, entity=p.entity or None, mode=mode, group=group, job_type=stage,
                        name=f"{stage}-{group}", config={**config, "git": git_state()}, dir=root,
                        id=resumed, resume="allow" if resumed else None,
                        settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S, silent=True))
        self._on = True
        self._start(stage, mode, resumed, settings)
        if self._on:
            # What the logging thread uses, imported now, on the main thread: an import there racing one
            # here can leave a module lock held when Ctrl-C lands, and the stage hangs at exit.
            _figures()
            for name in ("Image", "Histogram", "Table", "plot", "Artifact"):
                getattr(wandb, name)

    def _start(self, stage: str, mode: str, resumed: str | None, settings: dict[str, Any]) -> None:
        self.run = self._guard("init", lambda: self.wandb.init(**settings), always=True)
        if self.run is None:
            self._on = False
            self._forget()  # a run that cannot be resumed (deleted online, say) must not fail every retry
            return
        self._remember(self.run.id)
        self._guard("setup", self._define_metrics)
        self._guard("setup", lambda: self._say_where(stage, mode, resumed))

    def _remember(self, run_id: str) -> None:
        try:
            # Renamed into place: a FIFO or symlink planted at the path is replaced, never opened or followed.
            write_bytes(self._id_file, (run_id + "\n").encode(), now=True)
        except (OSError, OutputError) as exc:  # W&B itself is fine: only a re-run after an interruption starts a new run
            print(printable(f"warning: cannot keep the W&B run id in {self._id_file} ({first_line(exc)}); "
                            "an interrupted run will be continued as a new W&B run"), file=sys.stderr, flush=True)

    def _forget(self) -> None:
        try:
            self._id_file.unlink(missing_ok=True)
        except OSError:
            pass  # a folder we cannot write: _remember has warned already

    def _say_where(self, stage: str, mode: str, resumed: str | None) -> None:
        again = ""
        if resumed and self._ran_before(mode, resumed):
            again = f" (resuming the interrupted W&B run {resumed})"
        elif resumed:  # an id file copied from elsewhere, or a run deleted since: say what really happens
            again = f" (a new W&B run with the id {resumed} found in {self._id_file}: no earlier run of it exists)"
        if mode == "offline":
            where = self.run.settings.sync_dir
            # a resumed offline run is one directory per attempt; `wandb sync` joins them in start order
            upload = f"{os.path.dirname(where)}/offline-run-*-{resumed}*" if resumed else where
            # the folder names the run id, which WANDB_RUN_ID or the id file may fill with control characters
            print(printable(f"{stage}: W&B offline run in {where}{again}; upload it with: wandb sync {upload}"),
                  flush=True)
        else:
            print(printable(f"{stage}: W&B run at {self.run.url}{again} (online: synced as it runs)"), flush=True)

    def _ran_before(self, mode: str, run_id: str) -> bool:
        """Whether `run_id` was really run before: online, W&B says it resumed; offline, a folder of an
        earlier attempt is here (wandb sync joins them)."""
        if mode != "offline":
            return bool(getattr(self.run, "resumed", False))
        this = Path(self.run.settings.sync_dir)
        return any(d != this for d in (Path(wandb_root()) / "wandb").glob(f"offline-run-*-{run_id}"))

    @property
    def active(self) -> bool:
        return self._on and self.run is not None

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.active else None

    def _warn(self, what: str, exc: BaseException) -> None:
        print(printable(f"warning: W&B {what} failed ({type(exc).__name__}: {first_line(exc)}); continuing without "
                        "W&B"), file=sys.stderr, flush=True)

    def _guard(self, what: str, call: Callable[[], Any], always: bool = False) -> Any:
        if not self._on and not always:
            return None
        try:
            return call()
        except Exception as exc:  # any W&B failure: warn once, then W&B is off
            if self._on or always:  # off already: the stage closed the run while this call was running
                self._warn(what, exc)
                self._close(1)  # already failing: the warning is printed
            return None

    def _submit(self, what: str, call: Callable[[], Any]) -> None:
        """Run `call` on the logging thread (guarded); returns at once."""
        if self._on:
            self._worker.submit(self._guard, what, call)

    def _close(self, exit_code: int) -> Exception | None:
        """W&B off first (a call still running on the logging thread then fails quietly), then the run closed;
        returns what closing it raised, if anything."""
        run, self.run, self._on = self.run, None, False
        if run is not None:  # None: W&B failed, or the interrupt came before wandb.init was started
            try:
                run.finish(exit_code=exit_code)
            except Exception as exc:
                return exc
        return None

    def _define_metrics(self) -> None:
        # Per-epoch charts use the epoch as x axis; flow charts use the global batch step.
        self.run.define_metric("epoch")
        for prefix in ("train/*", "test/*", "val/*", "lr"):
            self.run.define_metric(prefix, step_metric="epoch")

    # --- training (implements training.TrainLogger) ---

    def log_epoch(self, record: EpochRecord, step: int, heldout_name: str) -> None:
        """The epoch's flow snapshots and histograms in step order (W&B drops a step lower than one it has
        seen), then the epoch's metrics at the step after its last batch."""
        flows, self._flows = self._flows, []
        taken, self._histograms = self._histograms, []
        for item in sorted([*flows, *taken], key=lambda item: item.step):  # stable: a flow before its step's histograms
            if isinstance(item, FlowSnapshot):
                self._log_flow(item)
            else:
                self._log_histograms(item)
        values = record.logged(heldout_name)
        self._submit("log", lambda: self.run.log(values, step=step))

    def log_flow(self, snapshot: FlowSnapshot) -> None:
        if self._on:
            self._flows.append(snapshot)

    def _log_flow(self, snapshot: FlowSnapshot) -> None:
        values: dict[str, Any] = {f"flow/{stat}/{layer}": v for layer, row in zip(snapshot.layers, snapshot.values)
                                  for stat, v in zip(STATS, row)}

        def image(quantity: str, key: str) -> None:
            values[key] = self.wandb.Image(figure_image(_figures().flow_bars([snapshot], quantity)))

        # One image a task: Python joins the logging thread at exit, so Ctrl-C waits for the image being
        # rendered (up to a second on a CPU), and the tasks still queued are dropped.
        self._submit("log", lambda: image("grad", "gradients"))
        self._submit("log", lambda: (image("weight", "weights"), self.run.log(values, step=snapshot.step)))

    def histograms_due(self, step: int) -> bool:
        return self._on and self.watch != "none" and step % self.watch_every == 0

    def take_histograms(self, model: nn.Module, step: int) -> None:
        """`gradients/<parameter>` and `parameters/<parameter>` histograms at the global batch `step`.

        Computed here, on the training thread (the optimizer step changes the tensors next), into device
        buffers; read, wrapped as W&B histograms and logged with the epoch.
        """
        from cifar_study.observe.histograms import take_histograms

        pending = self._guard("histograms", lambda: take_histograms(model, self.watch, step))
        if pending is not None:
            self._histograms.append(pending)

    def _log_histograms(self, pending: PendingHistograms) -> None:
        from cifar_study.observe.histograms import read_histograms

        found = self._guard("histograms", lambda: read_histograms(pending))
        if found:
            self._submit("log", lambda: self.run.log(
                {key: self.wandb.Histogram(np_histogram=h) for key, h in found.items()}, step=pending.step))

    def log_replicas(self, seeds: list[int], histories: list[list[EpochRecord]], heldout_name: str) -> None:
        """Every replica's per-epoch history as one table with a `replica` column (one dashboard, not k),
        and its held-out accuracy per replica as one chart."""
        if not self._on:
            return
        wandb = self.wandb
        columns = ["replica", "seed", *EpochRecord.columns()]

        def log() -> None:
            table = wandb.Table(columns=columns, data=[[j, seed, *r.row().values()]
                                                       for j, (seed, history) in enumerate(zip(seeds, histories))
                                                       for r in history])
            chart = wandb.plot.line_series(xs=[r.epoch for r in histories[0]],
                                           ys=[[r.heldout_acc for r in h] for h in histories],
                                           keys=[f"replica {j} (seed {s})" for j, s in enumerate(seeds)],
                                           title=f"{heldout_name} accuracy per replica", xname="epoch")
            self.run.log({"replicas/history": table, f"replicas/{heldout_name}_acc": chart})

        self._submit("log", log)

    # --- evaluation ---

    def log_evaluation(self, actual: np.ndarray, predicted: np.ndarray, classes: list[str], per_class: np.ndarray,
                       sample: np.ndarray, images: np.ndarray) -> None:
        """Confusion matrix, per-class accuracy and sample predictions (`sample` indexes the test split)."""
        if not self._on:
            return
        wandb = self.wandb

        def log() -> None:
            accuracy = wandb.Table(columns=["class", "accuracy"], data=[[c, float(a)] for c, a in zip(classes, per_class)])
            table = wandb.Table(columns=["image", "predicted", "actual", "correct"])
            for i in sample:
                table.add_data(wandb.Image(images[i]), classes[predicted[i]], classes[actual[i]],
                               bool(predicted[i] == actual[i]))
            grid = _figures().prediction_grid(images[sample[:32]], [classes[i] for i in actual[sample[:32]]],
                                         [classes[i] for i in predicted[sample[:32]]])
            self.run.log({
                "confusion_matrix": wandb.plot.confusion_matrix(y_true=actual.tolist(), preds=predicted.tolist(),
                                                                class_names=classes),
                "class_accuracy": wandb.plot.bar(accuracy, "class", "accuracy", title="Accuracy per class (test)"),
                "predictions": table,
                "prediction_grid": wandb.Image(figure_image(grid), caption="\u2713 green correct, \u2717 red wrong"),
            })

        self._submit("log", log)

    def log_model_cost(self, p: ModelParams, num_classes: int) -> None:
        """`GFLOPs` as a metric at the start of the run (step 0, as the original study logs it), and FLOPs
        and parameters per image in the run's summary (the flops stage owns the tracked numbers)."""
        if not self._on:
            return
        flops = model_cost(p, num_classes)
        self._submit("log", lambda: self.run.log({"GFLOPs": flops["gflops"]}, step=0))
        self.summary({"gflops_per_sample": flops["gflops"], "flops_per_sample": flops["flops"],
                      "params": flops["params"]})

    def log_metrics(self, values: dict[str, Any]) -> None:
        """Metrics at the run's next step."""
        self._submit("log", lambda: self.run.log(values))

    def log_model(self, path: str, checkpoint: dict[str, Any], test_metrics: dict[str, Any]) -> None:
        """The checkpoint file at `path` as the W&B artifact `model` (type `model`), with model_metadata()."""
        if not self._on:
            return
        metadata = self._guard("artifact", lambda: model_metadata(path, checkpoint, test_metrics))
        if metadata is None:
            return

        def log() -> None:
            artifact = self.wandb.Artifact("model", type="model", metadata=metadata,
                                           description="SimpleCNN trained on CIFAR-10: the train stage's checkpoint")
            artifact.add_file(path)  # copied to W&B's staging area: a later train run cannot change what is uploaded
            self.run.log_artifact(artifact)

        self._submit("artifact", log)

    def summary(self, values: dict[str, Any]) -> None:
        self._submit("summary", lambda: self.run.summary.update(values))

    def finish(self, exit_code: int = 0) -> None:
        """Wait for queued logs, then close the run. Interrupted or failed (exit code not 0), wait
        INTERRUPT_WAIT_S at most: Ctrl-C must end the stage in seconds, and the epochs after the resume
        state are re-run anyway."""
        if exit_code != 0:
            try:
                self._worker.submit(lambda: None).result(timeout=INTERRUPT_WAIT_S)
            except (FutureTimeout, RuntimeError):  # RuntimeError: the worker was already shut down
                print("warning: W&B: logs still queued when the stage stopped were dropped", file=sys.stderr,
                      flush=True)
            # The task running now (a flow image, say) fails quietly once the run is closed; Python's exit waits
            # for it (a second at most). A daemon thread would not be waited for, but one still drawing while
            # the interpreter shut down crashed it (SIGSEGV, SIGABRT: 2 of 6 interrupted runs).
            self._worker.shutdown(wait=False, cancel_futures=True)
        else:
            self._worker.shutdown(wait=True)
        failed = self._close(exit_code)
        if failed is not None:
            self._warn("finish", failed)
        if exit_code == 0 and self.wandb is not None:
            self._forget()  # the stage completed (W&B on or not): its next run is a new W&B run

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> None:
        self.finish(0 if kind is None else 130 if kind is KeyboardInterrupt else 1)
