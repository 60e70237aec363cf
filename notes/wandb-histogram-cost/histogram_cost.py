"""Cost of W&B's gradient and parameter histograms (`wandb.watch: all`) per logged batch.

The same SimpleCNN train steps (batch 128, the default fp32 loop) with the W&B tracker logging, offline:
  - `none`: no histograms (the baseline: the same W&B run, the same loop);
  - `all`: this project's histograms of every parameter and gradient, at every batch;
  - `wandb.watch`: W&B's own hooks (`run.watch(model, log="all", log_freq=1)`), for reference.
Histograms at every batch, in short rounds, interleaved: on a shared machine whose load drifts, a
cost that is a fraction of a train step stands out of the noise only so. Each arm's extra time over
`none` in the same round, divided by the batches it logged, is the cost per logged batch (median
over rounds). The tracker's background thread is waited for inside the timing, so its work counts
too. Also timed apart: computing the histograms alone, the part the training thread waits for.

    python notes/wandb-histogram-cost/histogram_cost.py [--device cpu|cuda|mps|auto] [--quick] [--out bench/results/histograms.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cifar_study.core.loader import TensorLoader  # noqa: E402
from cifar_study.core.model import SimpleCNN  # noqa: E402
from cifar_study.core.runtime import resolve_device, seed_everything  # noqa: E402
from cifar_study.core.training import NullLogger, setup, train_epoch  # noqa: E402
from cifar_study.observe.histograms import model_histograms  # noqa: E402
from cifar_study.observe.wandb_run import Tracker  # noqa: E402
from cifar_study.pipeline.dataset import synthetic  # noqa: E402
from cifar_study.pipeline.params import TrainParams, WandbParams  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import BATCH, Limited  # noqa: E402

ARMS = ("none", "all", "wandb.watch")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="fewer steps and rounds (a smoke run, noisier)")
    ap.add_argument("--out", default="bench/results/histograms.json")
    args = ap.parse_args()

    device = resolve_device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    steps, every, rounds = (3, 1, 2) if args.quick else (6, 1, 10)
    logged = steps // every
    seed_everything(0)
    ds = synthetic(seed=0)  # CIFAR-10 shapes; the cost does not depend on the content
    mean, std = [0.5] * 3, [0.25] * 3
    model = SimpleCNN()
    run = setup(model, TrainParams(flow_every=10**9), device)  # flow snapshots only at step 0, never timed
    loader = TensorLoader(ds.train, mean, std, augment=True, batch_size=BATCH, shuffle=True, seed=0, device=device)
    train_epoch(run, Limited(loader, 3, sync), 1, NullLogger(), [])  # warm up

    def timed(arm: str) -> float:
        tracker = Tracker(WandbParams(mode="offline", project="benchmark", watch="none" if arm != "all" else "all",
                                      watch_every=every), "benchmark", "bench", {})
        if arm == "wandb.watch":
            tracker.run.watch(model, log="all", log_freq=every)
        run.step = 1  # steps 1..steps, `logged` of them due; step 0 would add a flow snapshot
        sync()
        started = time.perf_counter()
        train_epoch(run, Limited(loader, steps, sync), 1, tracker, [])
        if arm == "wandb.watch":
            tracker.run.unwatch(model)
        tracker.finish()  # waits for the logging thread: all of its work is counted
        sync()
        return time.perf_counter() - started

    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["WANDB_DIR"] = tmp
        for _ in range(rounds):
            for arm in ARMS:
                times[arm].append(timed(arm))

    # the training thread's share: computing the histograms of every parameter and gradient
    compute = []
    for _ in range(10):
        sync()
        started = time.perf_counter()
        model_histograms(model, "all")
        sync()
        compute.append(time.perf_counter() - started)

    step_seconds = statistics.median(times["none"]) / steps
    default_every = WandbParams().watch_every
    report = {
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(), "quick": args.quick,
        "batch_size": BATCH, "steps_per_round": steps, "histograms_every": every, "logged_per_round": logged,
        "rounds": rounds, "seconds_per_round": times, "step_seconds": step_seconds,
        "histogram_compute_seconds": statistics.median(compute),
        "default_watch_every": default_every,
    }
    print(f"\ndevice: {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}; "
          f"{steps} train steps a round, histograms every {every} ({logged} logged), medians of {rounds} rounds")
    print(f"  train step without histograms: {step_seconds * 1e3:.0f} ms")
    print(f"  computing the histograms of every parameter and gradient (training thread): "
          f"{report['histogram_compute_seconds'] * 1e3:.1f} ms")
    for arm in ARMS[1:]:
        extra = statistics.median((t - base) / logged for t, base in zip(times[arm], times["none"]))
        share = extra / (default_every * step_seconds)
        report[f"{arm}_seconds_per_logged_batch"] = extra
        report[f"{arm}_share_at_default_interval"] = share
        print(f"  {arm:<12} {extra * 1e3:7.0f} ms extra per logged batch = {extra / step_seconds:.2f} train steps; "
              f"{share:.2%} of training time at one every {default_every} batches")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
