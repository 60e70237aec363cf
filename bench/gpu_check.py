"""The GPU path in one run: device and versions, the CUDA tests, the benchmark with and without
torch.compile, and the whole study (the stage modules, without DVC; W&B offline as shipped, where
wandb is installed) on the real images: with the defaults (fp32), with the fastest options, and with
train.replicas=8 (the last two reusing the first run's data and FLOPs, which no option changes), each
stage timed and the train stage's phases recorded (data, setup, W&B start, epochs, outputs, W&B
finish); and the run-to-run spread: the default study's train and evaluate again for more
`train.seed` values, side by side on the one GPU (`python -m cifar_study.spread --from-gpu-check
summary.json` aggregates them). summary.json's top level holds the device, the commit, whether the
tree was clean, the W&B mode, default_train_s, fastest_train_s, replicas8_train_s (replicas2_train_s
in --cpu-smoke) and repro_s (every stage after fetch_data, default options); ratios are only ever
taken within one run.

Started by bench/gpu_check.sh, which first makes sure PyTorch sees a CUDA device. The data is the
CIFAR-10 image-folder archive at data/raw/cifar10-jpg.tar.gz (git-ignored), or wherever --data or
GPU_CHECK_DATA points. Everything goes to one flat results folder ($OUT, or bench/results/gpu-<date>/):

    summary.json, summary.md   every number below, and each step's status and time
    log.txt                    every step's output
    env.txt                    nvidia-smi and the versions
    pytest-cuda.xml            the CUDA tests (JUnit XML)
    bench-eager.json, bench-compile.json   bench/benchmark.py --device cuda [--compile]

A time budget (GPU_CHECK_BUDGET_S, default 480 s) bounds the whole run: a step that would overrun
it is stopped and recorded as `timeout`, later steps as `not run`, and the summary is rewritten
after every step, so whatever finished is kept.

--cpu-smoke runs the same steps on the CPU with a tiny configuration (200 training images, 2
epochs, no torch.compile, the benchmark's --smoke): it proves the orchestration, not the GPU.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the package's paths are the stages' paths
from cifar_study.pipeline import paths  # noqa: E402
from cifar_study.pipeline import cli  # noqa: E402
from cifar_study.pipeline.cli import printable, stop_on_signals  # noqa: E402
from cifar_study.pipeline.errors import UserError  # noqa: E402
from cifar_study.pipeline.untrusted import md5_file  # noqa: E402
from bench.children import succeeds  # noqa: E402
from bench.provenance import commit, cpu_name, tree_clean  # noqa: E402

DATA = "data/raw/cifar10-jpg.tar.gz"  # the conventional place of a local copy (git-ignored); --data or GPU_CHECK_DATA
BUDGET_S = 480
MIN_STEP_S = 5  # a step with less time left than this is not started
STAGES = tuple(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])  # dvc.yaml lists them in run order
STAGE_CAP_S = {"check_params": 30, "fetch_data": 120, "flops": 60, "train": 240, "evaluate": 60, "findings": 60,
               "visualize": 90}

DEFAULTS: dict[str, Any] = {}  # the original study's protocol: fp32, eager, the default Adam
FASTEST = {"amp": "bf16", "channels_last": True, "compile": True, "compile_mode": "reduce-overhead",
           "fused_adam": True}
NO_CUDA_GRAPHS = {**FASTEST, "compile_mode": "default"}  # run instead if CUDA graphs break the fastest study
# --cpu-smoke: tiny and quick; no torch.compile (its C++ builds take minutes on a CPU)
SMOKE = {"data": {"train_limit": 100, "test_limit": 50},
         "train": {"epochs": 2, "batch_size": 50, "flow_every": 2},
         "plots": {"samples": 8, "dpi": 50}}
# Not bf16 in the smoke: most CPUs emulate it, 12-15x slower than fp32 (notes/2026-11-28-cpu-bf16.md), and
# the smoke checks the script, not the options (tests/test_training.py runs bf16 on the CPU).
SMOKE_FASTEST = {"channels_last": True, "fused_adam": True}
# The spread's extra seeds (the default study is the first run, train.seed 42). They run side by side:
# one small model at batch 128 leaves most of the GPU idle, so four share it at little cost each.
SPREAD_SEEDS = (43, 44, 45, 46)
SMOKE_SPREAD_SEEDS = (43,)
# What neither a study's options nor a seed change: run once, in the default study, and copied after.
UPSTREAM = ("fetch_data", "flops")
SPREAD_STAGES = ("train", "evaluate")  # what a seed changes
REPLICAS = 8  # the replicas study: train.replicas seeds trained together, against the default study's one
SMOKE_REPLICAS = 2  # --cpu-smoke: the CPU computes every replica in full, so two show the script works
RESULT_STAGES = ("fetch_data", "flops", "train", "evaluate")  # what study_results reads
# What the stages and this script import; a machine without one of them is told so before any step.
MODULES = ("torch", "torchvision", "numpy", "PIL", "matplotlib", "yaml", "ruamel.yaml", "tqdm", "pytest")

ENV_SCRIPT = """
import importlib.metadata as md, json, os, platform, sys, torch
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
cuda = torch.cuda.is_available()
props = torch.cuda.get_device_properties(0) if cuda else None
nccl = torch.cuda.nccl.version() if cuda else None  # a tuple in recent PyTorch, an int in old ones
print(json.dumps({
    "python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
    "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
    "nccl": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl,
    "device": torch.cuda.get_device_name(0) if cuda else None,  # a CPU's name: provenance.cpu_name()
    "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
    "multiprocessors": props.multi_processor_count if cuda else None,
    "memory_gib": round(props.total_memory / 2**30, 1) if cuda else None,
    "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "matmul_precision": torch.get_float32_matmul_precision(),
    "packages": {n: version(n) for n in ("torchvision", "triton", "numpy", "pillow", "matplotlib", "pyyaml", "pytest",
                                          "wandb", "dvc")},
}))
"""


@dataclass
class Step:
    name: str
    status: str  # ok | failed | timeout | not run | reused (a study's outputs copied from another)
    seconds: float = 0.0
    rc: int | None = None
    note: str = ""
    tail: str = ""  # the end of its output, when it did not succeed
    phases: dict = field(default_factory=dict)  # what the stage printed as `<stage>: phases (s) {...}`

    def line(self) -> str:
        rc = "" if self.rc is None else f", rc {self.rc}"
        note = f" ({self.note})" if self.note else ""
        return f"{self.name}: {self.status}{note} [{self.seconds:.1f} s{rc}]"


@dataclass
class Check:
    out: Path
    smoke: bool
    budget_s: float
    python: str
    data: Path
    work: Path | None = None  # the scratch folder holding each study's copy of the project
    wandb: str = "disabled"  # the studies' W&B mode: offline, as shipped, where wandb imports
    started: float = field(default_factory=time.monotonic)
    steps: list[Step] = field(default_factory=list)
    summary: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.summary = {"mode": "cpu-smoke" if self.smoke else "cuda", "budget_s": self.budget_s,
                        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "data": portable_path(self.data)}

    def portable(self, text: str) -> str:
        """`text` without this machine's paths (the results are meant to be committed): the results folder
        as $OUT, the scratch copies as $WORK, the project as `.`, the Python executable as `python`."""
        for path, name in ((self.out.resolve(), "$OUT"), (self.out, "$OUT"), (self.work, "$WORK"),
                           (self.python, "python"), (ROOT, ".")):
            if path is not None and str(path) not in ("", "."):
                text = text.replace(str(path), name)
        return text

    @property
    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def log(self, text: str) -> None:
        with open(self.out / "log.txt", "a") as f:
            f.write(text)

    def run(self, name: str, cmd: list[str], cap_s: float, cwd: Path = ROOT, env: dict | None = None) -> Step:
        """Run `cmd` with its output in log.txt, stopped after `cap_s` or when the budget is spent."""
        timeout = min(cap_s, self.left)
        if timeout < MIN_STEP_S:
            return self.record(Step(name, "not run", note="time budget spent"))
        self.log(f"\n===== {name}: {self.portable(' '.join(cmd))} (in {self.portable(str(cwd))}, "
                 f"limit {timeout:.0f} s)\n")
        offset = (self.out / "log.txt").stat().st_size
        started = time.monotonic()
        with open(self.out / "log.txt", "a") as logf:
            # Its own process group: a timeout stops it and everything it started (torchrun's workers).
            proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                    stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
                status = "ok" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                stop(proc)
                rc, status = None, "timeout"
            except BaseException:  # Ctrl-C or SIGTERM to the check: the step's processes end with it
                stop(proc)
                raise
        seconds = time.monotonic() - started
        with open(self.out / "log.txt", "rb") as f:
            f.seek(offset)
            output = f.read().decode(errors="replace")
        self.log(f"===== {name}: {status} after {seconds:.1f} s\n")
        tail = "" if status == "ok" else self.portable(output[-3000:])
        return self.record(Step(name, status, seconds, rc, tail=tail, phases=stage_phases(output)))

    def record(self, step: Step) -> Step:
        self.steps.append(step)
        print(f"[{time.monotonic() - self.started:6.1f} s] {step.line()}", flush=True)
        self.write()
        return step

    def write(self) -> None:
        self.summary.update({**headline(self.summary), "elapsed_s": round(time.monotonic() - self.started, 1),
                             "steps": [vars(s) for s in self.steps]})
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")
        (self.out / "summary.md").write_text(markdown(self.summary))


def stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --- the steps ---------------------------------------------------------------------------------

def environment(check: Check) -> None:
    started, lines = time.monotonic(), []
    for cmd in (["nvidia-smi"], ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit,"
                                 "clocks.max.sm,clocks.max.memory", "--format=csv"]):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            lines.append(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        except (OSError, subprocess.SubprocessError) as exc:
            lines.append(f"$ {' '.join(cmd)}\nnot available ({type(exc).__name__}: {exc})\n")
    try:
        proc = subprocess.run([check.python, "-c", ENV_SCRIPT], capture_output=True, text=True, timeout=120)
        ok, versions = proc.returncode == 0, json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-2000:]}
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        ok, versions = False, {"error": f"{type(exc).__name__}: {exc}"}
    if ok and not versions.get("device"):
        versions["device"] = cpu_name()
    versions["git_commit"] = commit() or "unknown"
    check.summary.update(device=versions.get("device"), commit=versions["git_commit"], tree_clean=tree_clean())
    lines.append("$ versions\n" + json.dumps(versions, indent=2) + "\n")
    (check.out / "env.txt").write_text("\n".join(lines))
    check.summary["environment"] = versions
    check.record(Step("environment", "ok" if ok else "failed", time.monotonic() - started,
                      note=str(versions.get("device", versions.get("error")))))


def cuda_tests(check: Check) -> None:
    xml = check.out / "pytest-cuda.xml"
    # -n0: one process; the CUDA tests share one device, and each xdist worker would start PyTorch and CUDA again
    check.run("cuda tests", [check.python, "-m", "pytest", "-n0", "-m", "cuda", "tests/test_cuda.py", "-q", "-rs",
                             "-p", "no:cacheprovider", f"--junitxml={xml}"], cap_s=300)
    if xml.is_file():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        counts["failed"] = [case.get("name") for case in suite.iter("testcase")
                            if case.find("failure") is not None or case.find("error") is not None]
        check.summary["tests"] = counts
        check.write()


def benchmark(check: Check, compile_: bool) -> None:
    name = "bench-compile" if compile_ else "bench-eager"
    if compile_ and check.smoke:
        check.record(Step(name, "not run", note="--cpu-smoke: torch.compile on a CPU takes minutes"))
        return
    out = check.out / f"{name}.json"
    cmd = [check.python, "bench/benchmark.py", "--device", "cpu" if check.smoke else "cuda", "--out", str(out)]
    step = check.run(name, cmd + (["--smoke"] if check.smoke else []) + (["--compile"] if compile_ else []),
                     cap_s=240 if compile_ else 150)
    if step.status == "ok":
        check.summary.setdefault("benchmarks", {})[name] = json.loads(out.read_text())
        check.write()


def study(check: Check, scratch: Path, options: dict[str, Any], seeds: tuple[int, ...] = (),
          upstream: Path | None = None) -> dict[str, Any]:
    """The stages, in order, in `scratch`, a new copy of the project named for the study; returns the
    study's record. With `upstream` (a finished study's folder), its UPSTREAM outputs are copied instead
    of run again. With `seeds`, the spread's runs follow (see `spread`), reusing this study's data."""
    name = scratch.name
    record: dict[str, Any] = {"options": options, "stages": {}}
    check.summary.setdefault("studies", {})[name] = record
    if not check.data.is_file():
        for stage in STAGES:
            check.record(Step(f"{name}:{stage}", "failed", note=f"{portable_path(check.data)} not found: put the "
                              f"archive there, or name it with --data"))
            record["stages"][stage] = {"status": "failed", "seconds": 0.0}
        return record
    record["params"] = write_project(scratch, check, options)
    failed = None
    for stage in STAGES:
        if failed:
            step = check.record(Step(f"{name}:{stage}", "not run", note=f"{failed} did not succeed"))
        elif upstream and stage in UPSTREAM:
            copy_outputs(upstream, scratch, stage)
            step = check.record(Step(f"{name}:{stage}", "reused", note=f"outputs copied from {upstream.name}"))
        else:
            step = check.run(f"{name}:{stage}", [check.python, "-m", f"stages.{stage}"], STAGE_CAP_S[stage],
                             cwd=scratch, env={"WANDB_MODE": check.wandb})
            failed = None if step.status == "ok" else stage
        record["stages"][stage] = {"status": step.status, "seconds": round(step.seconds, 2),
                                   **({"phases": step.phases} if step.phases else {})}
    # A late stage (findings, visualize) cut off by the budget leaves the run's results readable.
    if all(finished(record, s) for s in RESULT_STAGES):
        problem = read_results(scratch, record)
        if problem:
            check.record(Step(f"{name}:results", "failed", note=problem))
            return record
        if seeds:
            spread(check, scratch, options, seeds)
    check.write()
    return record


def stage_phases(output: str) -> dict[str, float]:
    """The phases a stage printed (`train: phases (s) {"data": 1.2, ...}`, see cifar_study.core.runtime)."""
    for line in reversed(output.splitlines()):
        if ": phases (s) " in line:
            try:
                return json.loads(line.split(": phases (s) ", 1)[1])
            except ValueError:
                return {}
    return {}


def headline(s: dict[str, Any]) -> dict[str, Any]:
    """The numbers a reader looks for first, at the summary's top level (None: that step did not finish)."""
    studies = s.get("studies", {})

    def stage_s(study: str, *stages: str) -> float | None:
        record = studies.get(study, {}).get("stages", {})
        if not all(record.get(st, {}).get("status") == "ok" for st in stages):
            return None
        return round(sum(record[st]["seconds"] for st in stages), 2)

    default, replicas = stage_s("default", "train"), stage_s("replicas", "train")
    n = studies.get("replicas", {}).get("options", {}).get("replicas", REPLICAS)  # SMOKE_REPLICAS in a smoke
    return {"wandb": s.get("wandb"), "default_train_s": default, "fastest_train_s": stage_s("fastest", "train"),
            f"replicas{n}_train_s": replicas,
            f"replicas{n}_over_one": round(replicas / default, 3) if replicas and default else None,
            "repro_s": stage_s("default", *STAGES[STAGES.index("fetch_data") + 1:])}


def finished(record: dict[str, Any], stage: str) -> bool:
    return record["stages"].get(stage, {}).get("status") in ("ok", "reused")


def copy_outputs(source: Path, scratch: Path, stage: str) -> None:
    for name in paths.STAGE_FILES[stage][1]:
        (scratch / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, scratch / name)


def spread(check: Check, source: Path, options: dict[str, Any], seeds: tuple[int, ...]) -> None:
    """Train and evaluate once per seed, all seeds at once, each in its own copy of the project beside
    `source` (seed-<N>), with `source`'s data; each run's params and results go to summary["spread"][<seed>]."""
    runs: dict[str, Any] = check.summary.setdefault("spread", {})
    cap = sum(STAGE_CAP_S[s] for s in SPREAD_STAGES)
    timeout = min(cap, check.left)
    if timeout < MIN_STEP_S:
        for seed in seeds:
            check.record(Step(f"spread:seed-{seed}", "not run", note="time budget spent"))
        return
    chain = " && ".join(f"{shlex.quote(check.python)} -m stages.{stage}" for stage in SPREAD_STAGES)
    scratches, procs, logs = {}, {}, {}
    started = time.monotonic()
    try:
        for seed in seeds:
            scratch = scratches[seed] = source.parent / f"seed-{seed}"
            runs[str(seed)] = {"params": write_project(scratch, check, {**options, "seed": seed})}
            for stage in UPSTREAM:
                copy_outputs(source, scratch, stage)
            logs[seed] = open(scratch / "log.txt", "w")
            # A few CPU threads each: the GPU does the work, and 16 threads apiece would fight over the cores.
            procs[seed] = subprocess.Popen(["bash", "-c", chain], cwd=scratch, stdout=logs[seed],
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                           env={**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled",
                                                "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // len(seeds)))})
        check.log(f"\n===== spread: seeds {', '.join(map(str, seeds))} side by side: {check.portable(chain)} "
                  f"(limit {timeout:.0f} s)\n")
        done: dict[int, float] = {}  # seed: seconds until its process ended
        try:
            while len(done) < len(procs) and time.monotonic() - started < timeout:
                done.update({seed: time.monotonic() - started for seed, proc in procs.items()
                             if seed not in done and proc.poll() is not None})
                time.sleep(0.5)
        except BaseException:  # Ctrl-C or SIGTERM to the check: every seed's processes end with it
            for proc in procs.values():
                stop(proc)
            raise
        for seed, proc in procs.items():
            if seed in done:
                rc, status = proc.returncode, "ok" if proc.returncode == 0 else "failed"
            else:
                stop(proc)
                rc, status = None, "timeout"
            logs[seed].close()
            output = (scratches[seed] / "log.txt").read_text(errors="replace")
            check.log(f"----- seed {seed}\n{check.portable(output)}===== spread:seed-{seed}: {status}\n")
            problem = read_results(scratches[seed], runs[str(seed)]) if status == "ok" else None
            if problem:  # one seed's bad outputs fail that seed, not the whole check
                status, output = "failed", f"{output}\n{problem}\n"
            check.record(Step(f"spread:seed-{seed}", status, done.get(seed, time.monotonic() - started), rc,
                              note="side by side with the other seeds",
                              tail="" if status == "ok" else check.portable(output[-3000:])))
    finally:
        for seed, proc in procs.items():
            if proc.poll() is None:
                stop(proc)
        for f in logs.values():
            f.close()


def portable_path(path: Path) -> str:
    """`path` as the summary records it: relative to the project when inside it, else its file name alone
    (the archive's md5 in the summary identifies the data); never this machine's absolute path."""
    try:
        return path.resolve().relative_to(ROOT.resolve()).as_posix()
    except ValueError:
        return path.name


def write_project(scratch: Path, check: Check, options: dict[str, Any]) -> dict[str, Any]:
    """The package, the stages and params.yaml with this study's settings (the stages read ./params.yaml);
    returns those params, with the data's path as `portable_path` records it."""
    for part in ("cifar_study", "stages"):
        shutil.copytree(ROOT / part, scratch / part, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    changes = {"data": {"source": "folder", "path": str(check.data.resolve())},
               "train": {"device": "cpu" if check.smoke else "cuda", **options},
               "wandb": {"mode": check.wandb}}
    for changed in ([SMOKE] if check.smoke else []) + [changes]:
        for section, values in changed.items():
            params[section].update(values)
    (scratch / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return {**params, "data": {**params["data"], "path": portable_path(check.data)}}


def read_results(scratch: Path, record: dict[str, Any]) -> str | None:
    """Adds the run's results in `scratch` to `record`; what went wrong, if they cannot be read."""
    try:
        record.update(study_results(scratch))
    except (OSError, ValueError, KeyError) as exc:
        return f"outputs unreadable: {type(exc).__name__}: {exc}"
    return None


def study_results(scratch: Path) -> dict[str, Any]:
    read = lambda name: json.loads((scratch / name).read_text())  # noqa: E731
    data, flops = read("metrics/data.json"), read("reports/flops.json")
    trained, evaluated = read("metrics/train.json"), read("metrics/eval.json")
    with open(scratch / "plots/data/history.csv") as f:
        history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    seconds = [r["seconds"] for r in history]
    # Model FLOPs an epoch executes: forward + backward (3 x forward) on every training image, and a
    # forward pass on every held-out image (the per-epoch evaluation inside the epoch's time).
    epoch_flops = 3 * flops["flops"] * data["train_count"] + flops["flops"] * data["test_count"]
    steady = seconds[1:] or seconds  # epoch 1 also pays for cuDNN autotuning and torch.compile
    return {
        "test_acc": evaluated["test_acc"], "test_loss": evaluated["test_loss"],
        "heldout_acc_last_epoch": trained["heldout_acc"], "train_loss_last_epoch": trained["train_loss"],
        "epochs": len(history), "train_images": data["train_count"], "test_images": data["test_count"],
        "training_seconds": round(sum(seconds), 2), "epoch1_seconds": round(seconds[0], 2),
        "later_epoch_median_seconds": round(statistics.median(steady), 3),
        "model_tflops_per_s_later_epochs": epoch_flops * len(steady) / sum(steady) / 1e12,
        "history": history,
    }


# --- the summary -------------------------------------------------------------------------------

def markdown(s: dict[str, Any]) -> str:
    env = s.get("environment", {})
    lines = [f"# GPU check ({s['mode']}), {s['started']}", "",
             f"Device: {env.get('device', '?')}; torch {env.get('torch', '?')}, CUDA {env.get('cuda')}, "
             f"cuDNN {env.get('cudnn')}, triton {env.get('packages', {}).get('triton')}; "
             f"git {str(env.get('git_commit', '?'))[:12]}{'' if s.get('tree_clean') else ' (tree not clean)'}; "
             f"{s.get('elapsed_s', 0):.0f} s of a {s['budget_s']:.0f} s budget; W&B {s.get('wandb')}.", "",
             "Train stage, s: " + ", ".join(f"{k.removesuffix('_train_s')} {v}" for k, v in s.items()
                                             if k.endswith("_train_s")) + f"; all stages after fetch_data "
             f"(default options): {s.get('repro_s')} s.", ""]
    if "tests" in s:
        t = s["tests"]
        lines += [f"CUDA tests: {t['passed']} passed, {t['failures'] + t['errors']} failed, {t['skipped']} skipped"
                  + (f" (failed: {', '.join(t['failed'])})" if t["failed"] else ""), ""]
    studies = s.get("studies", {})
    if studies:
        names = list(studies)
        lines += ["## The study, stage by stage (seconds, wall time of each `python -m stages.<name>`)", "",
                  "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for stage in STAGES:
            cells = []
            for n in names:
                st = studies[n]["stages"].get(stage)
                cells.append("" if st is None else f"{st['seconds']:.1f}" if st["status"] == "ok" else st["status"])
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
        rows = [("options", lambda r: ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "defaults (fp32)"),
                ("training (sum of epoch times), s", lambda r: f"{r['training_seconds']:.1f}"),
                ("epoch 1, s", lambda r: f"{r['epoch1_seconds']:.2f}"),
                ("later epochs, median s", lambda r: f"{r['later_epoch_median_seconds']:.3f}"),
                ("model TFLOP/s (later epochs)", lambda r: f"{r['model_tflops_per_s_later_epochs']:.3g}"),
                ("final test accuracy", lambda r: f"{r['test_acc']:.2%}")]
        for label, cell in rows:
            lines.append(f"| {label} | " + " | ".join(cell(studies[n]) if "test_acc" in studies[n] or label == "options"
                                                      else "" for n in names) + " |")
        lines.append("")
    default = studies.get("default", {})
    spread = {f"{default.get('params', {}).get('train', {}).get('seed')} (default study)": default, **s.get("spread", {})}
    if len(spread) > 1:
        lines += ["## Run-to-run spread: the default study over `train.seed` (seeds after the first side by side)", "",
                  "| train.seed | final test accuracy | last held-out accuracy | training (sum of epoch times), s |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {seed} | {r['test_acc']:.2%} | {r['heldout_acc_last_epoch']:.2%} | {r['training_seconds']:.1f} |"
                  if "test_acc" in r else f"| {seed} | not finished | | |" for seed, r in spread.items()]
        lines.append("")
    for name, b in s.get("benchmarks", {}).items():
        lines += [f"## {name}: `bench/benchmark.py` on {b['device']} ({b['device_name']}), batch {b['batch_size']}, "
                  f"medians of {b['rounds']} rounds of {b['steps_per_round']} steps", "",
                  "| configuration | images/s | model TFLOP/s | data wait |", "|---|---:|---:|---:|"]
        for config, ips in b["train_images_per_s"].items():
            wait = b["data_wait_share"].get(config)
            lines.append(f"| {config} | {ips:,.0f} | {ips * b['train_gflop_per_image'] / 1e3:.3g} | "
                         + ("" if wait is None else f"{wait:.1%}") + " |")
        peak = b["matmul_peak_gflops"]
        lines += ["", "Loader: " + ", ".join(f"{k} {v:,.0f} images/s" for k, v in b["loader_images_per_s"].items())
                  + f". Dense {b['matmul_size']}x{b['matmul_size']} matmul: {peak['float32'] / 1e3:.1f} TFLOP/s fp32, "
                  f"{peak['bfloat16'] / 1e3:.1f} TFLOP/s bf16.", ""]
    lines += ["## Steps", ""] + [f"- {st['name']}: {st['status']}" + (f" ({st['note']})" if st["note"] else "")
                                 + f", {st['seconds']:.1f} s" for st in s.get("steps", [])]
    return "\n".join(lines) + "\n"


def module_found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package (ruamel) that is missing or broken
        return False


MAX_BUDGET_S = 24 * 3600  # a day: longer bounds nothing a user would wait for


def budget_s(text: str) -> float | None:
    """The time budget in seconds; None for what bounds nothing (NaN, past a day), leaves no step time
    (less than MIN_STEP_S) or is no number."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if MIN_STEP_S <= value <= MAX_BUDGET_S else None  # NaN fails both comparisons


def refuse(message: str) -> int:
    """One line on stdout (the script's log) for a setup the check cannot start with; the exit status."""
    print(f"gpu_check: {printable(message)}; nothing done", flush=True)
    return 2


class Parser(cli.Parser):
    """The project's parser (whole option names only), its refusals in the check's own words."""

    def error(self, message: str) -> NoReturn:
        self.exit(refuse(f"{message} (see --help)"))


def main() -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="the same steps on the CPU, tiny (checks the script)")
    ap.add_argument("--out", default=os.environ.get("OUT") or
                    f"bench/results/gpu-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument("--data", help=f"the CIFAR-10 image-folder archive (default: GPU_CHECK_DATA, else {DATA})")
    args = ap.parse_args()
    missing = [m for m in MODULES if not module_found(m)]
    if missing:
        return refuse(f"{sys.executable} lacks {', '.join(missing)}: install them (pip install -r requirements.txt)")
    budget = budget_s(os.environ.get("GPU_CHECK_BUDGET_S", str(BUDGET_S)))
    if budget is None:
        return refuse(f"GPU_CHECK_BUDGET_S={os.environ['GPU_CHECK_BUDGET_S']!r} is not a number of seconds from "
                      f"{MIN_STEP_S} to {MAX_BUDGET_S} (default {BUDGET_S})")
    data_from = "--data" if args.data else "GPU_CHECK_DATA"
    data = Path(args.data or os.environ.get("GPU_CHECK_DATA") or DATA).expanduser()
    data = data if data.is_absolute() else ROOT / data
    try:  # the spread compares runs on the same bytes as the committed baseline
        data_md5 = md5_file(data) if data.exists() else None
    except UserError as exc:  # a FIFO or device (which would block or never end), larger than any CIFAR-10 archive
        return refuse(f"{data_from}: {exc}")
    except OSError as exc:  # a name too long, a folder that cannot be searched
        return refuse(f"{data_from}: {data}: {exc.strerror or exc}")
    out = Path(args.out)
    try:  # a results folder holds one check: an earlier one's files (committed logs) are never overwritten
        if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
            return refuse(f"--out/OUT: {out} already exists and is not an empty folder; name a new one")
        out.mkdir(parents=True, exist_ok=True)
        (out / "log.txt").write_text("")
    except OSError as exc:
        return refuse(f"--out/OUT: cannot create {out} ({exc.strerror or exc})")
    check = Check(out=out, smoke=args.cpu_smoke, budget_s=budget, python=sys.executable, data=data,
                  wandb="offline" if succeeds([sys.executable, "-c", "import wandb"]) else "disabled")
    check.summary["wandb"] = check.wandb
    print(f"gpu_check: results in {printable(str(out))}/ (budget {check.budget_s:.0f} s)", flush=True)
    if data_md5 is None:
        print(f"gpu_check: {printable(str(data))} not found: the studies will fail (put the "
              f"archive at {DATA}, or name it with --data)", flush=True)
    else:
        check.summary["data_md5"] = data_md5
    environment(check)
    work = check.work = Path(tempfile.mkdtemp(prefix="gpu-check-"))  # each study's and seed's copy, named for it
    try:
        default = study(check, work / "default", DEFAULTS, SMOKE_SPREAD_SEEDS if check.smoke else SPREAD_SEEDS)
        upstream = work / "default" if all(finished(default, s) for s in UPSTREAM) else None
        fastest = study(check, work / "fastest", SMOKE_FASTEST if check.smoke else FASTEST, upstream=upstream)
        if fastest["stages"].get("train", {}).get("status") == "failed" and not check.smoke:
            study(check, work / "fastest-no-cuda-graphs", NO_CUDA_GRAPHS, upstream=upstream)
        study(check, work / "replicas", {"replicas": SMOKE_REPLICAS if check.smoke else REPLICAS}, upstream=upstream)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cuda_tests(check)
    benchmark(check, compile_=False)
    benchmark(check, compile_=True)
    log = out / "log.txt"  # the steps' own output may name this machine's paths too
    log.write_text(check.portable(log.read_text(errors="replace")))
    check.write()
    print("\n" + (out / "summary.md").read_text(), flush=True)
    bad = [s for s in check.steps if s.status not in ("ok", "reused")
           and not (s.status == "not run" and "cpu-smoke" in s.note)]
    return 1 if bad else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM and SIGHUP take Ctrl-C's path: the running step is stopped with its children


if __name__ == "__main__":
    stop_on_signals(_interrupt)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("gpu_check: interrupted; its running step was stopped, the results so far are in its folder", flush=True)
        sys.exit(130)
