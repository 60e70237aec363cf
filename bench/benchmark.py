"""Data-path and training-throughput benchmark: the plain PyTorch way against this pipeline.

Runs, in one process, on the same data and device:
  (a) loader throughput: torchvision + PIL per-image DataLoader vs the pipeline's TensorLoader;
  (b) training throughput of SimpleCNN train steps: the plain loop (plain loader, fp32, loss.item()
      every batch) vs the pipeline's default options vs its speed options;
  (c) the share of step time spent waiting for data, and in flow snapshots at train.flow_every.
Configurations are measured in interleaved rounds and medians are reported, so a slow patch on a
noisy machine hits all of them alike. Prints a table and writes JSON.

    python bench/benchmark.py [--device cpu|cuda|mps|auto] [--quick | --smoke] [--compile] [--out FILE]
"""
from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cifar_study  # noqa: E402,F401  (first: a stop while PyTorch imports is one line)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import transforms as T  # noqa: E402
from cifar_study.core.flops import flops_report  # noqa: E402
from cifar_study.core.flow_stats import add_update_ratio, read_snapshots, take_snapshot  # noqa: E402
from cifar_study.core.loader import TensorLoader  # noqa: E402
from cifar_study.core.model import SimpleCNN  # noqa: E402
from cifar_study.core.runtime import resolve_device, seed_everything, slow_bf16  # noqa: E402
from cifar_study.core.training import NullLogger, setup, train_epoch  # noqa: E402
from cifar_study.pipeline.dataset import Split, channel_stats, synthetic  # noqa: E402
from cifar_study.pipeline.params import DEVICES, TrainParams  # noqa: E402
from cifar_study.pipeline.cli import Parser, as_options, run_command  # noqa: E402
from bench.out import checked_out, write_out  # noqa: E402
from bench.provenance import cpu_name  # noqa: E402

BATCH = 128
SMOKE_BATCH, SMOKE_IMAGES = 16, 1024  # --smoke: enough to run every part, not to measure


class PlainCIFAR10(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: a PIL image from the uint8 array, then transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def plain_loader(images, labels, mean, std, workers: int, batch: int) -> DataLoader:
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    return DataLoader(PlainCIFAR10(images, labels, transform), batch_size=batch, shuffle=True, num_workers=workers,
                      persistent_workers=workers > 0)


def batches(loader, n: int) -> Iterator:
    """`n` batches, cycling over the loader as often as needed."""
    while True:
        for item in loader:
            yield item
            n -= 1
            if n == 0:
                return


def forever(loader: Iterable) -> Iterator:
    """The loader's batches, epoch after epoch: shared by successive measurements, so per-epoch work
    (the shuffle, the epoch's crop and flip draws) is spread over an epoch's batches as in training."""
    while True:
        yield from loader


class Limited:
    """The next `n` batches of `source` (with a length, for the progress bar), timing each wait for data."""

    def __init__(self, source: Iterator, n: int, sync: Callable[[], None]):
        self.source, self.n, self.sync, self.data_seconds = source, n, sync, 0.0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        it = (next(self.source) for _ in range(self.n))
        while True:
            started = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            self.data_seconds += time.perf_counter() - started
            yield item


def plain_steps(model, optimizer, loader, n: int, device, sync) -> float:
    """The plain loop of tutorials and of the seed: fp32, a host read of the loss every batch."""
    model.train()
    running = 0.0
    sync()
    started = time.perf_counter()
    for x, y in batches(loader, n):
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running += loss.item()
    sync()
    return time.perf_counter() - started


@dataclasses.dataclass
class Config:
    name: str
    options: dict  # TrainParams overrides; empty for the plain loop
    plain: bool = False


def main() -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=DEVICES)
    ap.add_argument("--quick", action="store_true", help="fewer batches and rounds (noisier)")
    ap.add_argument("--smoke", action="store_true",
                    help="a few batches, one round, no W&B part, no bf16 where the CPU emulates it: checks that it runs")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to warm up)")
    ap.add_argument("--out", default=f"bench/results/benchmark-{datetime.now():%Y%m%d-%H%M%S}.json")
    args = ap.parse_args()
    device = as_options(lambda: resolve_device(args.device), {"train.device": "--device"})
    out = checked_out(args.out, create_folder=args.out == ap.get_default("out"))

    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    cuda = device.type == "cuda"
    # A GPU step takes about a millisecond: more steps per round keep launch jitter out of the medians.
    steps, rounds, warmup = (2, 1, 1) if args.smoke else (8, 3, 2) if args.quick else (100, 5, 10) if cuda else (20, 5, 3)
    torch.manual_seed(0)
    ds = synthetic(seed=0)  # same shapes as CIFAR-10; loading cost does not depend on content
    split = Split(ds.train.images[:SMOKE_IMAGES], ds.train.labels[:SMOKE_IMAGES]) if args.smoke else ds.train
    images, labels = split.images, split.labels
    mean, std = channel_stats(images)
    batch = SMOKE_BATCH if args.smoke else BATCH

    # (a) loader throughput
    loaders = {
        "plain torchvision+PIL DataLoader (0 workers)": lambda: plain_loader(images, labels, mean, std, 0, batch),
        "pipeline TensorLoader": lambda: TensorLoader(split, mean, std, augment=True, batch_size=batch, shuffle=True,
                                                      seed=0, device=device),
    }
    loader_batches = 2 if args.smoke else 10 if args.quick else 30
    loader_ips: dict[str, list[float]] = {k: [] for k in loaders}
    sources = {name: forever(make()) for name, make in loaders.items()}
    for source in sources.values():
        next(source)  # warm up
    for _ in range(rounds):
        for name, source in sources.items():
            sync()
            started = time.perf_counter()
            for _ in range(loader_batches):
                next(source)[0].sum()  # touch the data, as training would
            sync()
            loader_ips[name].append(loader_batches * batch / (time.perf_counter() - started))

    # (b) + (c) training throughput
    configs = [
        Config("plain loop (PIL DataLoader, fp32, .item() per batch)", {}, plain=True),
        Config("pipeline default (TensorLoader, fp32)", {}),
        Config("pipeline + channels_last", {"channels_last": True}),
        Config("pipeline + bf16 autocast", {"amp": "bf16"}),
        Config("pipeline + bf16 + channels_last", {"amp": "bf16", "channels_last": True}),
    ]
    fast = {"amp": "bf16", "channels_last": True}
    if cuda:
        configs.append(Config("pipeline + bf16 + channels_last + fused Adam", {**fast, "fused_adam": True}))
    if args.compile:
        configs.append(Config("pipeline + bf16 + channels_last + compile", {**fast, "compile": True}))
        if cuda:  # CUDA graphs: one replay per step instead of a launch per kernel
            configs.append(Config("pipeline + bf16 + channels_last + compile reduce-overhead + fused Adam",
                                  {**fast, "compile": True, "compile_mode": "reduce-overhead", "fused_adam": True}))
    if args.smoke and slow_bf16(device):  # emulated bf16, 12-15x slower a step, would be most of a smoke run
        configs = [c for c in configs if c.options.get("amp") != "bf16"]
    state = {}
    for cfg in configs:
        seed_everything(0)
        model = SimpleCNN()
        if cfg.plain:
            state[cfg.name] = (model.to(device), torch.optim.Adam(model.parameters(), lr=1e-3),
                               plain_loader(images, labels, mean, std, 0, batch))
        else:
            p = TrainParams(**{"flow_every": 10**9, **cfg.options})  # flow cost is measured apart, below
            state[cfg.name] = (setup(model, p, device),
                               forever(TensorLoader(split, mean, std, augment=True, batch_size=batch, shuffle=True,
                                                    seed=0, device=device)))
    train_ips: dict[str, list[float]] = {c.name: [] for c in configs}
    data_share: dict[str, list[float]] = {c.name: [] for c in configs}

    def measure(cfg: Config, n: int) -> tuple[float, float]:
        if cfg.plain:
            model, optimizer, loader = state[cfg.name]
            return plain_steps(model, optimizer, loader, n, device, sync), float("nan")
        run, source = state[cfg.name]
        limited = Limited(source, n, sync)
        sync()
        started = time.perf_counter()
        train_epoch(run, limited, 1, NullLogger(), [])
        sync()
        elapsed = time.perf_counter() - started
        return elapsed, limited.data_seconds / elapsed

    for cfg in configs:
        measure(cfg, warmup)  # first batches: allocator, oneDNN/cuDNN kernel choice, compilation
    for _ in range(rounds):
        for cfg in configs:
            elapsed, share = measure(cfg, steps)
            train_ips[cfg.name].append(steps * batch / elapsed)
            data_share[cfg.name].append(share)

    # (c) flow snapshot cost at the default interval, against the default config's step time
    run, source = state[configs[1].name]
    x, y = next(source)
    F.cross_entropy(run.forward(x), y).backward()
    snap_times = []
    for _ in range(20):
        sync()
        started = time.perf_counter()
        snapshot = take_snapshot(run.watched, 0, 1)
        add_update_ratio(snapshot, run.watched)  # without a step: the cost, not the value
        read_snapshots([snapshot])
        sync()
        snap_times.append(time.perf_counter() - started)
    step_seconds = batch / statistics.median(train_ips[configs[1].name])
    flow_every = TrainParams().flow_every
    flow_share = statistics.median(snap_times) / (flow_every * step_seconds)
    wandb_seconds = None if args.smoke else wandb_flow_overhead(split, mean, std, device, sync, rounds, batch)
    wandb_share = None if wandb_seconds is None else wandb_seconds / (flow_every * step_seconds)

    # the physical limit: training FLOPs per image (forward + backward ≈ 3 × forward) against a
    # dense matmul's measured rate on this device
    train_flops = 3 * flops_report(SimpleCNN())["flops"]
    # A product large enough to fill a GPU; smaller on a CPU, where 2048 already takes a while.
    size = 256 if args.smoke else 8192 if cuda else 2048
    peak = {dtype: matmul_rate(device, dtype, sync, size) for dtype in ("float32", "bfloat16")}

    report = {
        "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "quick": args.quick, "smoke": args.smoke, "compile": args.compile,
        "batch_size": batch, "steps_per_round": steps, "rounds": rounds, "matmul_size": size,
        "loader_images_per_s": {k: statistics.median(v) for k, v in loader_ips.items()},
        "train_images_per_s": {k: statistics.median(v) for k, v in train_ips.items()},
        "train_images_per_s_all": train_ips,
        "data_wait_share": {k: statistics.median(v) for k, v in data_share.items() if not configs[0].name == k},
        "flow_snapshot_seconds": statistics.median(snap_times),
        "flow_share_at_default_interval": flow_share,
        "wandb_flow_log_seconds": wandb_seconds,
        "wandb_flow_share_at_default_interval": wandb_share,
        "train_gflop_per_image": train_flops / 1e9,
        "matmul_peak_gflops": peak,
    }
    print_table(report, configs)
    write_out(out, report)
    print(f"\nwritten: {out}")
    return 0


def wandb_flow_overhead(split, mean, std, device, sync, rounds: int, batch: int) -> float | None:
    """Extra training seconds per flow snapshot logged to W&B (offline): the same 40 train steps with a
    snapshot every 10 batches, logged to W&B vs not logged, interleaved; median difference / 4.
    None where wandb is not installed."""
    import os
    import tempfile

    try:
        import wandb  # noqa: F401
    except ImportError:
        print("wandb is not installed: the W&B logging cost is not measured", flush=True)
        return None

    from cifar_study.observe.wandb_run import Tracker
    from cifar_study.pipeline.params import WandbParams

    steps, every = 40, 10
    run = setup(SimpleCNN(), TrainParams(flow_every=every), device)
    source = forever(TensorLoader(split, mean, std, augment=True, batch_size=batch, shuffle=True, seed=0,
                                  device=device))
    train_epoch(run, Limited(source, 2, sync), 1, NullLogger(), [])  # warm up
    extra = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["WANDB_DIR"] = tmp
        for _ in range(rounds):
            times = {}
            for logged in (False, True):
                tracker = Tracker(WandbParams(mode="offline", project="benchmark"), "benchmark", "bench", {}) \
                    if logged else NullLogger()
                run.step = 0
                sync()
                started = time.perf_counter()
                train_epoch(run, Limited(source, steps, sync), 1, tracker, [])
                if logged:
                    tracker.finish()  # wait for the background thread: all of its work is counted
                sync()
                times[logged] = time.perf_counter() - started
            extra.append((times[True] - times[False]) / (steps // every))
    return statistics.median(extra)


def matmul_rate(device: torch.device, dtype: str, sync, n: int, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    a @ b
    times = []
    for _ in range(reps):
        sync()
        started = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - started)
    return 2 * n**3 / statistics.median(times) / 1e9


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def print_table(r: dict, configs: list[Config]) -> None:
    print(f"\ndevice: {r['device']} ({r['device_name']}), torch {r['torch']}, {r['threads']} threads, "
          f"batch {r['batch_size']}, medians of {r['rounds']} rounds")
    print("\n(a) loader throughput")
    loaders = r["loader_images_per_s"]
    base = next(iter(loaders.values()))
    for name, ips in loaders.items():
        print(f"  {name:<55} {ips:>12,.0f} img/s  {ips / base:>7.1f}x")
    print("\n(b) training throughput (SimpleCNN train steps)")
    train = r["train_images_per_s"]
    base = train[configs[0].name]
    for cfg in configs:
        ips = train[cfg.name]
        share = r["data_wait_share"].get(cfg.name)
        data = f"data wait {share:5.1%}" if share is not None else ""
        achieved = ips * r["train_gflop_per_image"]
        print(f"  {cfg.name:<55} {ips:>8,.1f} img/s  {ips / base:>5.2f}x  {achieved:>7.1f} GFLOP/s  {data}")
    print(f"\n(c) flow snapshot: {r['flow_snapshot_seconds'] * 1e3:.2f} ms each = "
          f"{r['flow_share_at_default_interval']:.3%} of training time at one every 200 batches (default config)")
    if r["wandb_flow_log_seconds"] is None:
        print("    W&B flow logging: not measured (smoke run, or wandb not installed)")
    else:
        print(f"    W&B flow logging (2 images + scalars, offline, background thread): "
              f"{r['wandb_flow_log_seconds'] * 1e3:.0f} ms extra training time each = "
              f"{r['wandb_flow_share_at_default_interval']:.3%} of training time at one every 200 batches")
    print(f"\nphysical limit: {r['train_gflop_per_image']:.4f} GFLOP per training image (3 x forward); "
          f"dense {r['matmul_size']}x{r['matmul_size']} matmul on this device: "
          f"{r['matmul_peak_gflops']['float32']:,.0f} GFLOP/s fp32, "
          f"{r['matmul_peak_gflops']['bfloat16']:,.0f} GFLOP/s bf16")


if __name__ == "__main__":
    run_command(main)
