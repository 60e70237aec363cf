"""What k seed replicas cost against one run: the training loop's time for `train.replicas` = 1 and = k.

Runs, in one process, on the same synthetic images and device, in interleaved rounds (medians, so a
slow patch on a noisy machine hits every configuration alike):
  - replicas=1: the study's own loop and model;
  - replicas=k, loop: k stacked replicas whose forward passes run one after another (the CPU's choice);
  - replicas=k, vmap: the same replicas in one batched pass (grouped convolutions, batched matmuls:
    the choice on CUDA and MPS).
Each measurement is one epoch of training plus its held-out evaluation, as the train stage runs it.
Prints a table and writes JSON.

    python bench/replicas.py [--k 4] [--images 2560] [--rounds 3] [--device cpu|cuda|mps|auto] [--out FILE]
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cifar_study  # noqa: E402,F401  (first: a stop while PyTorch imports is one line)
import torch  # noqa: E402
from cifar_study.core.loader import make_loader  # noqa: E402
from cifar_study.core.model import build_model  # noqa: E402
from cifar_study.core.replicas import ReplicaLoader, build_replicas  # noqa: E402
from cifar_study.core.runtime import resolve_device, seed_everything  # noqa: E402
from cifar_study.core.training import setup, train  # noqa: E402
from cifar_study.pipeline.dataset import SYNTHETIC_CLASSES, SYNTHETIC_PER_CLASS, Split, synthetic  # noqa: E402
from cifar_study.pipeline.params import DEVICES, REPLICAS_MAX, ModelParams, TrainParams  # noqa: E402
from cifar_study.pipeline.cli import Parser, as_options, run_command, whole_number  # noqa: E402
from bench.out import checked_out, write_out  # noqa: E402
from bench.provenance import cpu_name  # noqa: E402

MEAN, STD = [0.5] * 3, [0.25] * 3
SEED = 42


def epoch_seconds(train_split: Split, test_split: Split, device: torch.device, k: int, batched: bool) -> float:
    """Wall time of one epoch (training + held-out evaluation) of k replicas, the device synchronised."""
    p = TrainParams(epochs=1, seed=SEED, replicas=k, flow_every=200)
    seed_everything(SEED)
    loaders = [make_loader("tensor", train_split, MEAN, STD, augment=True, shuffle=True, batch_size=p.batch_size,
                           seed=SEED + j, device=device) for j in range(k)]
    heldout = make_loader("tensor", test_split, MEAN, STD, augment=False, shuffle=False, batch_size=1000, seed=SEED,
                          device=device)
    model = build_model(ModelParams(), 10) if k == 1 else build_replicas(ModelParams(), 10, SEED, k, batched)
    state = setup(model, p, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    train(state, loaders[0] if k == 1 else ReplicaLoader(loaders), heldout, "test")
    sync()
    return time.perf_counter() - started


def main() -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=whole_number, default=4, help="replicas to compare with one (default 4)")
    ap.add_argument("--images", type=whole_number, default=2560, help="training images (default 2560: 20 batches of 128)")
    ap.add_argument("--rounds", type=whole_number, default=3, help="interleaved rounds; medians are reported (default 3)")
    ap.add_argument("--device", default="cpu", choices=DEVICES, help="default cpu")
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()
    images = SYNTHETIC_PER_CLASS["train"] * len(SYNTHETIC_CLASSES)
    if not 2 <= args.k <= REPLICAS_MAX or not 128 <= args.images <= images or args.rounds < 1:
        ap.error(f"--k from 2 to {REPLICAS_MAX} (train.replicas' bound), --images from 128 to {images:,} (the "
                 "synthetic set), --rounds at least 1")
    out = checked_out(args.out)
    device = as_options(lambda: resolve_device(args.device), {"train.device": "--device"})
    data = synthetic(seed=0)
    train_split = Split(data.train.images[:args.images], data.train.labels[:args.images])
    test_split = Split(data.test.images[:1000], data.test.labels[:1000])
    configs = {"replicas=1": (1, False), f"replicas={args.k} loop": (args.k, False),
               f"replicas={args.k} vmap": (args.k, True)}
    epoch_seconds(train_split, test_split, device, 1, False)  # warm-up: allocator, kernels, thread pools
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, (k, batched) in configs.items():
            times[name].append(epoch_seconds(train_split, test_split, device, k, batched))
    medians = {name: statistics.median(t) for name, t in times.items()}
    one = medians["replicas=1"]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"{args.images} images, 1 epoch, {args.rounds} rounds on {device_name} ({torch.get_num_threads()} threads)")
    for name, m in medians.items():
        print(f"  {name:18s} median {m:7.2f} s  {m / one:5.2f}x replicas=1")
    write_out(out, {"device": device_name, "images": args.images, "k": args.k, "rounds": args.rounds,
                    "seconds": times, "median_s": medians, "ratio_to_one": {n: m / one for n, m in medians.items()}})
    return 0


if __name__ == "__main__":
    run_command(main)
