"""Bad input gets one clear line and changes nothing; interrupted training resumes; writes are atomic."""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cifar_study.core.loader import make_loader
from cifar_study.core.model import SimpleCNN
from cifar_study.core.training import setup, train
from cifar_study.pipeline import cli
from cifar_study.pipeline import outputs as cio
from cifar_study.pipeline.dataset import Split, fetch, from_folder
from cifar_study.pipeline.errors import DataError, OutputError, UserError
from cifar_study.pipeline.params import DataParams, TrainParams
from cifar_study.pipeline.resume import ResumeStore
from tests.conftest import (
    encode,
    image_folder_files,
    project,
    python_archive,
    run_stage,
    snapshot,
    stage,
    write_files,
    write_tar,
)

# --- bad data: one line naming the file ------------------------------------------------------


def corrupt(files: dict, name: str, data: bytes) -> dict:
    return {**files, name: data}


def bad_sources(tmp: Path, tiny) -> list[tuple[str, Path, str]]:
    files = image_folder_files(tiny)
    first = next(iter(files))  # train/airplane/0000.png
    no_cat_test = {k: v for k, v in files.items() if not k.startswith("test/cat/")}
    no_test = {k: v for k, v in files.items() if not k.startswith("test/")}
    big = encode(np.zeros((64, 64, 3), np.uint8))
    gray = encode(np.zeros((32, 32), np.uint8))
    good_tar = write_tar(tmp / "good.tar.gz", files)
    truncated = tmp / "truncated.tar.gz"
    truncated.write_bytes(good_tar.read_bytes()[: good_tar.stat().st_size // 2])
    text = tmp / "notes.txt"
    text.write_text("not an archive")
    return [
        ("missing path", tmp / "nowhere", "does not exist"),
        ("not an archive", text, "neither a directory nor a readable tar archive"),
        ("truncated archive", truncated, "truncated or corrupt"),
        ("class missing from test", write_files(tmp / "nocat", no_cat_test), "different classes (only in train: cat)"),
        ("split missing", write_files(tmp / "notest", no_test), "has no test/<class>/"),
        ("image not 32x32", write_files(tmp / "big", corrupt(files, first, big)),
         f"{first}: expected a 32x32 RGB image, got 64x64 RGB"),
        ("image not RGB", write_files(tmp / "gray", corrupt(files, first, gray)),
         f"{first}: expected a 32x32 RGB image, got 32x32 L"),
        ("undecodable image", write_files(tmp / "junk", corrupt(files, first, b"\x89PNG garbage")),
         f"{first}: not a PNG or JPEG image"),
    ]


def test_bad_data_sources_are_refused_with_the_file_named(tmp_path, tiny):
    cases = bad_sources(tmp_path, tiny)
    for label, path, message in cases:
        with pytest.raises(DataError) as err:
            from_folder(path)
        assert message in str(err.value), label
        assert "\n" not in str(err.value), label
    assert len(cases) == 8


def test_labels_out_of_range_are_refused(tmp_path, tiny):
    bad = type(tiny)(Split(tiny.train.images, np.where(tiny.train.labels == 3, 12, tiny.train.labels)),
                     tiny.test, tiny.classes)
    archive = python_archive(bad, tmp_path / "a.tar.gz")
    with pytest.raises(DataError, match="train: label 12 out of range 0..9"):
        fetch(DataParams(source="download", url=archive.as_uri(), md5=hashlib.md5(archive.read_bytes()).hexdigest()),
              raw_dir=tmp_path / "raw")


# --- stages: exit code 2, one line, no traceback, outputs untouched ---------------------------

# One epoch to interrupt after, and two more (a busy machine may answer late), on half project()'s images: what
# these tests check is the same on any number, and the trainings are most of this module's time.
SHORT = {"data": {"train_limit": 200}, "train": {"epochs": 3}}


def short_project(tmp: Path, **changes) -> Path:
    """project() at this module's length, with `changes` on top, section by section."""
    return project(tmp, **{s: {**SHORT.get(s, {}), **changes.get(s, {})} for s in SHORT.keys() | changes.keys()})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny project after fetch_data and an uninterrupted train; returns it and its outputs."""
    repo = short_project(tmp_path_factory.mktemp("rel"))
    for name in ("fetch_data", "train"):
        code, out, err = run_stage(repo, name)
        assert code == 0, err
    assert not (repo / ".train_state/train.pt").exists()  # cleared after a complete run
    return repo, snapshot(repo)


@pytest.mark.parametrize("changes, message", [
    ({"train": {"epochs": 0}}, "error: train.epochs: 0 must be > 0"),
    ({"train": {"lr": "fast"}}, "error: train.lr: expected float, got 'fast'"),
    ({"train": {"device": "cuda"}}, "error: train.device: 'cuda' asked for"),
    ({"data": {"val_size": 200}}, "error: data.val_size: 200 must be smaller than the 200 training images"),
])
def test_bad_params_stop_the_stage_with_one_line_and_change_nothing(trained, changes, message):
    if "cuda" in message and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    repo, outputs = trained
    short_project(repo.parent, **changes)
    code, _, err = run_stage(repo, "train")
    short_project(repo.parent)
    assert code == 2
    assert err.strip().startswith(message) and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert snapshot(repo) == outputs


@pytest.mark.parametrize("section, key, value, message", [
    ("train", "epoch", 3, "error: train.epoch: unknown key (allowed in train: epochs, batch_size, lr, seed, device, "
                          "loader, num_workers, flow_every, channels_last, amp, compile, compile_mode, "
                          "fused_adam, nproc, normalize, replicas)"),
    ("wandb", "mode", "ofline", "error: wandb.mode: 'ofline' is not one of offline, online, disabled"),
])
def test_bad_param_of_any_section_is_refused_by_every_stage(trained, section, key, value, message, tmp_path):
    """Before the stage imports PyTorch, too: a PyTorch that cannot be imported changes nothing."""
    repo, outputs = trained
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('PyTorch imported before params.yaml was checked')\n")
    try:
        for name in ("check_params", "fetch_data", "flops", "train", "evaluate", "findings", "visualize"):
            code, _, err = run_stage(repo, name, env={"PYTHONPATH": str(tmp_path)})
            assert code == 2 and err.strip() == message, (name, err)
    finally:
        short_project(repo.parent)
    assert snapshot(repo) == outputs


def without_seconds(history_csv: bytes) -> list[list[str]]:
    rows = [line.split(",") for line in history_csv.decode().splitlines()]
    col = rows[0].index("seconds")
    return [r[:col] + r[col + 1:] for r in rows]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_training_resumes_to_the_same_result(trained, sig):
    repo, outputs = trained
    state = repo / ".train_state/train.pt"
    # W&B offline, as shipped: closing its run is part of what Ctrl-C waits for.
    proc = stage(repo, "train", env={"WANDB_MODE": "offline"}, start_new_session=True)
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline:  # wait for the first complete epoch
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be interrupted"
    os.kill(proc.pid, sig)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent <= 5, f"the stage took {time.monotonic() - sent:.1f} s to stop"
    saved = torch.load(state, weights_only=True)["epoch"]
    progress = f"{saved} of {SHORT['train']['epochs']} epochs saved in .train_state/train.pt"
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and f"train: interrupted; {progress}: run the stage again" in err, err
    else:
        assert proc.returncode == -signal.SIGKILL

    code, out, err = run_stage(repo, "train")
    assert code == 0, err
    assert f"resuming: {progress}; continuing with epoch {saved + 1}" in out, out
    after = snapshot(repo)
    assert after["metrics/train.json"] == outputs["metrics/train.json"]
    assert without_seconds(after["plots/data/history.csv"]) == without_seconds(outputs["plots/data/history.csv"])
    assert after["plots/data/flow.csv"] == outputs["plots/data/flow.csv"]
    resumed = torch.load(repo / "models/model.pt", weights_only=True)["model_state"]
    uninterrupted = torch.load(io.BytesIO(outputs["models/model.pt"]), weights_only=True)["model_state"]
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    assert not state.exists()


def test_an_output_that_cannot_be_written_keeps_the_trained_epochs(tmp_path):
    """The resume state goes only once every output is in place: a failed write costs no training."""
    repo = short_project(tmp_path)
    assert run_stage(repo, "fetch_data")[0] == 0
    (repo / "metrics/train.json").mkdir(parents=True)  # a directory where an output goes: its rename fails
    code, _, err = run_stage(repo, "train")
    assert code == 2 and "metrics/train.json: cannot write (a directory is in the way)" in err, err
    assert torch.load(repo / ".train_state/train.pt", weights_only=True)["epoch"] == SHORT["train"]["epochs"]
    (repo / "metrics/train.json").rmdir()
    code, out, err = run_stage(repo, "train")
    epochs = SHORT["train"]["epochs"]
    assert code == 0 and f"resuming: {epochs} of {epochs} epochs saved" in out and "epoch 1/" not in out, out + err
    assert (repo / "metrics/train.json").is_file() and not (repo / ".train_state/train.pt").exists()


def test_a_stop_while_train_renames_its_outputs_keeps_the_trained_epochs(tmp_path):
    """A stage process stopped right after its checkpoint's rename (probe 6): every output is new, the resume state
    stays, and the next run only writes the outputs (DVC records no stage that exits 130)."""
    repo = short_project(tmp_path)
    assert run_stage(repo, "fetch_data")[0] == 0
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(  # loaded by the stage's Python at start
        "import os, signal, time\nreplace = os.replace\n"
        "def replace_then_stop(source, target):\n    replace(source, target)\n"
        "    if str(target).endswith('model.pt'):\n        os.kill(os.getpid(), signal.SIGINT)\n        time.sleep(0.1)\n"
        "os.replace = replace_then_stop\n")
    code, _, err = run_stage(repo, "train", env={"PYTHONPATH": f"{hook}{os.pathsep}{repo}"})
    assert (code, err.strip().splitlines()[-1]) == (130, "interrupted"), err
    epochs = SHORT["train"]["epochs"]
    assert torch.load(repo / ".train_state/train.pt", weights_only=True)["epoch"] == epochs
    # the project's first training: every output there is this run's
    assert all((repo / f).is_file() for f in ("models/model.pt", "metrics/train.json", "plots/data/history.csv"))
    code, out, err = run_stage(repo, "train")
    assert code == 0 and f"resuming: {epochs} of {epochs} epochs saved" in out and "epoch 1/" not in out, out + err
    assert not (repo / ".train_state/train.pt").exists()


def test_temporaries_of_a_killed_stage_are_removed_at_its_next_start_and_nothing_else(tmp_path):
    repo = project(tmp_path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    alive = subprocess.Popen(["sleep", "60"])  # another run of the same stage, still writing its outputs
    try:
        stale = [repo / "data/.cifar10.npz.k1ll3d.tmp", repo / "metrics/.data.json.x.tmp",  # an older version's names
                 repo / "reports/.data.json.y.tmp", repo / f"metrics/.data.json.{gone.stdout.strip()}.k1ll3d.tmp",
                 repo / "metrics/.data.json.99999999999999999999.k1ll3d.tmp",  # no pid: past any pid, or
                 repo / "metrics/.data.json.\u00b2\u00b3.k1ll3d.tmp"]  # digits that int() reads and no pid is
        kept = [repo / "metrics/.notes.tmp", repo / "metrics/.train.json.z.tmp",  # not this stage's, or not ours
                repo / f"metrics/.data.json.{alive.pid}.st4g3d.tmp"]
        for path in stale + kept:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("partial")
        assert run_stage(repo, "fetch_data")[0] == 0
        assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    finally:
        alive.kill()
        alive.wait()


def test_a_killed_trains_temporaries_of_its_resume_state_and_live_files_are_removed(tmp_path):
    """Probe 7: a SIGKILL while the resume state was saved left a 16 MB temporary in .train_state/ for good."""
    repo = project(tmp_path)
    stale = [repo / ".train_state/.train.pt.99999999999999999999.k1ll3d.tmp",
             repo / "dvclive/.dvc.yaml.99999999999999999999.k1ll3d.tmp"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("partial")
    code, _, err = run_stage(repo, "train")  # no data yet: it stops at once, after the start-up cleaning
    assert code == 2 and "data/cifar10.npz" in err and not any(p.exists() for p in stale), err


def test_a_temporary_that_cannot_be_removed_is_one_line_naming_it(tmp_path, monkeypatch):
    """A read-only folder, a shared workspace: the start-up cleaning's failure is the stage's one line (run_stage
    calls it inside its error handling), not a traceback."""
    stale = tmp_path / ".train.pt.99999999999999999999.k1ll3d.tmp"
    stale.write_text("partial")

    def refused(self, missing_ok=False):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))
    monkeypatch.setattr(Path, "unlink", refused)
    with pytest.raises(OutputError, match=r"k1ll3d.tmp: cannot remove this temporary of a killed run \(Permission"):
        cio.remove_stale_temporaries([str(tmp_path / "train.pt")])


def _state_with(tmp_path: Path, tiny, edit) -> tuple[ResumeStore, object, object]:
    """A genuine resume state of one epoch, then `edit(payload)`'s version of it saved in its place."""
    p = TrainParams(epochs=2, batch_size=50, flow_every=2)
    loader = make_loader("tensor", tiny.train, [0.5] * 3, [0.25] * 3, augment=True, shuffle=True, batch_size=50,
                         seed=0, device=torch.device("cpu"))
    state, store = setup(SimpleCNN(), p, torch.device("cpu")), ResumeStore(tmp_path / "train.pt", "key")
    save = store.saver(state, loader)

    def stop_after_first(result):
        save(result)
        store.wait()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(state, loader, loader, "test", on_epoch_end=stop_after_first)
    payload = torch.load(store.path, weights_only=True)
    torch.save(edit(payload), store.path)
    return store, setup(SimpleCNN(), p, torch.device("cpu")), loader


@pytest.mark.parametrize("edit, refusal", [
    (lambda s: [1, 2, 3], None),  # not a state at all: ignored, loudly
    (lambda s: None, None),
    (lambda s: {"key": s["key"]}, "KeyError: 'history'"),  # this run's key and nothing else
    (lambda s: {**s, "epoch": 7}, "ValueError: step 4, epoch 7 after 1 epochs of history"),
    (lambda s: {**s, "step": "4"}, "ValueError"),
    (lambda s: {**s, "model_state": {k: v[:1] if v.dim() else v for k, v in s["model_state"].items()}},
     "ValueError: model_state: block1.conv.weight is not a torch.float32 tensor of shape (32, 3, 3, 3)"),
    (lambda s: {**s, "flow": [{"step": 0}]}, "TypeError"),
    # what would become a result, or train on from a wrong start (probe 4)
    (lambda s: {**s, "history": [{**s["history"][0], "heldout_acc": float("nan")}]}, "ValueError: history epoch 1"),
    (lambda s: {**s, "history": [{**s["history"][0], "epoch": 99}]}, "ValueError: history row 1 is epoch 99"),
    (lambda s: {**s, "step": -5}, "ValueError: step -5, epoch 1"),
    (lambda s: {**s, "step": 10 ** 30}, "ValueError: step 1000000000000000000000000000000, epoch 1"),
    (lambda s: {**s, "flow": [{**s["flow"][0], "layers": ["\x1b[2J<script>"] * len(s["flow"][0]["layers"])}]},
     "ValueError: step 0: a layer that is not a module name"),
    (lambda s: {**s, "model_state": {k: v.to(torch.bfloat16) if v.is_floating_point() else v
                                     for k, v in s["model_state"].items()}}, "is not a torch.float32 tensor"),
    (lambda s: {**s, "model_state": {k: v * float("nan") if v.is_floating_point() else v
                                     for k, v in s["model_state"].items()}}, "holds values that are not finite numbers"),
    (lambda s: {**s, "optimizer_state": {**s["optimizer_state"], "param_groups": [
        {**g, "lr": "x"} for g in s["optimizer_state"]["param_groups"]]}}, "not this run's optimizer settings"),
    (lambda s: {**s, "optimizer_state": {**s["optimizer_state"], "state": {
        **s["optimizer_state"]["state"], 0: {**s["optimizer_state"]["state"][0], "exp_avg": torch.zeros(7)}}}},
     "ValueError: optimizer_state[0]: exp_avg is not a torch.float32 tensor"),
    (lambda s: {**s, "optimizer_state": {**s["optimizer_state"], "state": {
        **s["optimizer_state"]["state"], 0: {**s["optimizer_state"]["state"][0], "step": torch.tensor(float("inf"))}}}},
     "ValueError: optimizer_state[0]: step is not a count"),
], ids=["a-list", "none", "key-alone", "epoch-past-its-history", "step-as-text", "weights-cut", "flow-fields-missing",
        "nan-in-history", "history-epoch-99", "step-negative", "step-past-any-run", "flow-layer-with-markup-and-escape",
        "weights-in-bf16", "weights-nan", "lr-as-text", "adam-moment-cut", "adam-step-infinite"])
def test_a_resume_state_not_written_by_this_code_is_ignored_or_refused_in_one_line(tmp_path, tiny, capsys, edit,
                                                                                    refusal):
    """Not a state: ignored with a warning (training starts over). This run's key on content this code does not
    write: one line naming the file, since the model may be half loaded by then."""
    store, state, loader = _state_with(tmp_path, tiny, edit)
    if refusal is None:
        assert store.restore(state, loader) is None and "warning: ignoring" in capsys.readouterr().out
        return
    with pytest.raises(DataError) as info:
        store.restore(state, loader)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"{store.path}: not a complete resume state (")
    assert refusal in message and message.endswith("remove it to start from epoch 1"), message


def test_state_from_other_params_is_not_resumed(trained, tmp_path):
    repo, _ = trained
    other = project(tmp_path, train={"lr": 0.002, "epochs": 1})
    shutil.copytree(repo / "data", other / "data")
    (other / ".train_state").mkdir()
    (other / ".train_state/train.pt").write_text("data:\n  source: synthetic\n")  # junk state: must be ignored, loudly
    code, out, err = run_stage(other, "train")
    assert code == 0, err
    assert "not a resume state of this project" in out and "weights_only" not in out and "resuming" not in out


# --- atomic writes ------------------------------------------------------------------------------

def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "m.json"
    cio.write_json(target, {"acc": 0.5})
    with pytest.raises(RuntimeError), cio.atomic_path(target) as tmp:
        tmp.write_text('{"acc": 0.')  # half written...
        raise RuntimeError("killed")  # ...then the process dies
    assert json.loads(target.read_text()) == {"acc": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_failing_rename_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "h.csv"
    cio.write_csv(target, [{"a": 1}], ["a"])
    monkeypatch.setattr(cio.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(UserError, match="h.csv: cannot write \\(disk full\\)"):
        cio.write_csv(target, [{"a": 2}], ["a"])
    assert target.read_text().splitlines() == ["a", "1"]
    assert [p.name for p in tmp_path.iterdir()] == ["h.csv"]


@pytest.mark.parametrize("stdout, reason", [("full disk", "No space left on device"), ("closed pipe", "Broken pipe")])
def test_a_stage_whose_stdout_fails_keeps_its_outputs_and_says_so_in_one_line(trained, stdout, reason, tmp_path):
    """`python -m stages.evaluate > /dev/full`, or `| head -c0`: the evaluation is done, its outputs are kept."""
    repo = shutil.copytree(trained[0], tmp_path / "proj")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    if stdout == "full disk":
        with open("/dev/full", "w") as full:
            proc = subprocess.run([sys.executable, "-m", "stages.evaluate"], cwd=repo, env=env, stdout=full,
                                  stderr=subprocess.PIPE, text=True, timeout=300)
        code, err = proc.returncode, proc.stderr
    else:
        proc = subprocess.Popen([sys.executable, "-m", "stages.evaluate"], cwd=repo, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        proc.stdout.close()  # the reader is gone before the stage writes a line
        err = proc.stderr.read()
        code = proc.wait(timeout=300)
    assert code == 2 and err.splitlines() == [
        f"error: standard output: cannot write ({reason}); the stage's outputs were written"], err
    assert json.loads((repo / "metrics/eval.json").read_text())["test_acc"] >= 0


def test_a_stage_without_stdout_still_writes_its_outputs(tmp_path):
    """`python -m stages.fetch_data >&-`: no stdout at all (Python's sys.stdout is None); print() writes nothing."""
    repo = project(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "stages.fetch_data"], cwd=repo, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "WANDB_MODE": "disabled"}, preexec_fn=lambda: os.close(1), timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert (repo / "data/cifar10.npz").is_file() and (repo / "metrics/data.json").is_file()


@pytest.mark.parametrize("gone, said", [("h.csv", "; no output was changed"), ("i.csv", "; {h} already replaced")])
def test_a_staged_output_gone_before_its_rename_is_one_line(tmp_path, gone, said):
    """Another process removed a staged temporary (probe 3: a second run of the stage, before pids were in the
    names): the rename's failure is an OutputError naming the output and what was replaced already."""
    with pytest.raises(UserError) as info:
        with cio.outputs_together():
            cio.write_csv(tmp_path / "h.csv", [{"a": 1}], ["a"])
            cio.write_csv(tmp_path / "i.csv", [{"a": 1}], ["a"])
            for tmp in tmp_path.glob(f".{gone}.*.tmp"):
                tmp.unlink()
    assert str(info.value) == (f"{tmp_path / gone}: cannot write (No such file or directory)"
                               + said.format(h=tmp_path / "h.csv"))


# --- training faults ---------------------------------------------------------------------------

class OutOfMemoryModel(SimpleCNN):
    def forward(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_suggests_a_smaller_batch(tiny):
    from cifar_study.core.loader import make_loader
    loader = make_loader("tensor", tiny.train, [0.5] * 3, [0.25] * 3, augment=True, shuffle=True, batch_size=32, seed=0,
                         device=torch.device("cpu"))
    with pytest.raises(UserError, match="out of cpu memory at train.batch_size=32: lower train.batch_size"):
        train(setup(OutOfMemoryModel(), TrainParams(epochs=1, batch_size=32), torch.device("cpu")), loader, loader, "test")


def test_a_stop_during_the_epochs_waits_for_the_next_check():
    """Inside the epochs a signal only asks to stop, and the loop stops at its next batch: KeyboardInterrupt
    raised at an arbitrary point can land in Python's import machinery, which ignores it and may keep a lock
    (CI saw a run train on after Ctrl-C, then hang)."""
    previous = signal.signal(signal.SIGINT, cli.interrupt)
    reached = False
    try:
        with pytest.raises(KeyboardInterrupt), cli.stops_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler has run by now, and raised nothing
            reached = True
            cli.check_stop()
    finally:
        signal.signal(signal.SIGINT, previous)
        cli._stop["requested"] = False
    assert reached


def test_a_stop_during_the_renames_waits_for_the_last_one(tmp_path, monkeypatch):
    """Probe 6: a signal between a stage's renames left its new checkpoint beside its old metrics. Now it waits for the
    last rename, then stops before the actions after the outputs: the resume state stays, and the next run only
    writes the outputs again (DVC records no stage that exits 130)."""
    model, metrics = tmp_path / "model.json", tmp_path / "train.json"
    for path in (model, metrics):
        path.write_text("old\n")
    rename = os.replace

    def rename_then_stop(source, target):
        rename(source, target)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here, between the two renames
    monkeypatch.setattr(os, "replace", rename_then_stop)
    previous = signal.signal(signal.SIGINT, cli.interrupt)
    after = []
    try:
        with pytest.raises(KeyboardInterrupt), cio.outputs_together():
            cio.write_json(model, "new")
            cio.write_json(metrics, "new")
            cio.after_outputs(lambda: after.append("resume state removed"))
    finally:
        signal.signal(signal.SIGINT, previous)
        cli._stop["requested"] = False
    assert model.read_text() == metrics.read_text() == '"new"\n' and after == [] and not cli._stop["requested"]


def test_a_stop_during_renames_that_then_fail_leaves_no_stop_behind(tmp_path, monkeypatch):
    """The failed write ends the stage (exit 2); the stop must not linger to interrupt a later block in the process."""
    def stop_then_fail(source, target):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        raise OSError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(os, "replace", stop_then_fail)
    previous = signal.signal(signal.SIGINT, cli.interrupt)
    try:
        with pytest.raises(OutputError, match="no output was changed"), cio.outputs_together():
            cio.write_json(tmp_path / "a.json", 1)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not cli._stop["requested"]
