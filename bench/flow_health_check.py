"""Does the flow-health check tell healthy from sick training? Train each configuration briefly and print its flags.

    python bench/flow_health_check.py --data synthetic --epochs 2
    python bench/flow_health_check.py --data /path/to/cifar10-jpg.tar.gz --train-limit 5000 --epochs 2

Configurations: the default; train.lr 0.1 (100x too high); block2.conv frozen; and a model made to
vanish (SimpleCNN without BatchNorm, saturated sigmoids instead of ReLU).
"""
from __future__ import annotations

import math
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cifar_study  # noqa: E402,F401  (first: a stop while PyTorch imports is one line)
import torch  # noqa: E402
from torch import nn  # noqa: E402
from cifar_study.analysis.flow_health import FlowHealth, assess  # noqa: E402
from cifar_study.core.loader import make_loader  # noqa: E402
from cifar_study.core.model import SimpleCNN  # noqa: E402
from cifar_study.core.runtime import resolve_device, seed_everything  # noqa: E402
from cifar_study.core.training import setup, train  # noqa: E402
from cifar_study.pipeline.cli import Parser, as_options, run_command, whole_number  # noqa: E402
from cifar_study.pipeline.dataset import channel_stats, fetch  # noqa: E402
from cifar_study.pipeline.errors import UserError  # noqa: E402
from cifar_study.pipeline.params import DEVICES, TrainParams, parse_params  # noqa: E402
from bench.out import checked_out, write_out  # noqa: E402


def vanishing_model() -> nn.Module:
    """SimpleCNN whose gradients die on the way back: no BatchNorm, and saturated sigmoids instead of ReLU.

    Every conv's bias starts at -4, where the sigmoid's slope is 0.018 instead of 0.25, so each block
    shrinks the gradient passing back through it (BatchNorm would undo that, hence none).
    """
    model = SimpleCNN()
    for block in (model.block1, model.block2, model.block3, model.block4):
        block.bn, block.relu = nn.Identity(), nn.Sigmoid()
        with torch.no_grad():
            block.conv.bias.fill_(-4.0)
    return model


def frozen_model(layer: str = "block2.conv") -> nn.Module:
    model = SimpleCNN()
    model.get_submodule(layer).weight.requires_grad_(False)
    return model


CONFIGS: dict[str, tuple[Callable[[], nn.Module], dict]] = {
    "default": (SimpleCNN, {}),
    "lr 0.1": (SimpleCNN, {"lr": 0.1}),
    "block2.conv frozen": (frozen_model, {}),
    "vanishing model": (vanishing_model, {}),
}


def check(make_model: Callable[[], nn.Module], p: TrainParams, ds, device: torch.device) -> FlowHealth:
    seed_everything(p.seed)
    mean, std = channel_stats(ds.train.images)
    train_loader = make_loader("tensor", ds.train, mean, std, augment=True, shuffle=True, batch_size=p.batch_size,
                               seed=p.seed, device=device)
    test_loader = make_loader("tensor", ds.test, mean, std, augment=False, shuffle=False, batch_size=1000,
                              seed=p.seed, device=device)
    result = train(setup(make_model(), p, device), train_loader, test_loader, "test")
    return assess(result.flow)


def main() -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="synthetic", help="'synthetic' or an image-folder archive")
    ap.add_argument("--train-limit", type=whole_number, default=0, help="training images (default 0: all)")
    ap.add_argument("--test-limit", type=whole_number, default=1000)
    ap.add_argument("--epochs", type=whole_number, default=2)
    ap.add_argument("--flow-every", type=whole_number, default=20, help="batches between flow snapshots")
    ap.add_argument("--device", default="cpu", choices=DEVICES, help="default cpu")
    ap.add_argument("--out", default=f"bench/results/flow_health_check-{datetime.now():%Y%m%d-%H%M%S}.json")
    args = ap.parse_args()
    if not args.data.strip():
        ap.error("--data: 'synthetic' or an image-folder archive, not an empty name")
    synthetic = args.data == "synthetic"
    # The stage's rules, in params.py's one place: a refusal names the option
    names = {"data.path": "--data", "data.train_limit": "--train-limit", "data.test_limit": "--test-limit",
             "train.epochs": "--epochs", "train.flow_every": "--flow-every", "train.device": "--device"}
    params = as_options(lambda: parse_params({
        "data": {"source": "synthetic" if synthetic else "folder", "path": "" if synthetic else args.data,
                 "train_limit": args.train_limit, "test_limit": args.test_limit},
        "train": {"epochs": args.epochs, "flow_every": args.flow_every, "device": args.device}}), names)
    device = as_options(lambda: resolve_device(params.train.device), names)
    out = checked_out(args.out, create_folder=args.out == ap.get_default("out"))
    ds = as_options(lambda: fetch(params.data), names)
    batches = params.train.epochs * math.ceil(len(ds.train.labels) / params.train.batch_size)  # the loader's
    if batches <= params.train.flow_every:  # snapshots at batches 0, flow_every, ...: the update ratio needs two
        raise UserError(f"--flow-every: {params.train.flow_every} leaves one flow snapshot in the run's {batches} "
                        f"batch{'es' if batches > 1 else ''}; the check needs two or more (lower it, or raise "
                        f"--epochs or --train-limit)")
    results = {}
    for name, (make_model, options) in CONFIGS.items():
        health = check(make_model, replace(params.train, **options), ds, device)
        results[name] = {"healthy": health.healthy, "flagged": {h.layer: h.flags for h in health.flagged},
                         **health.metrics()}
        print(f"{name}: {'healthy' if health.healthy else 'FLAGGED'} {results[name]['flagged']} "
              f"(median update ratio {results[name]['update_ratio']:.2g})", flush=True)
    write_out(out, {"data": args.data, "train_limit": args.train_limit, "epochs": args.epochs,
                    "flow_every": args.flow_every, "results": results})
    return 0


if __name__ == "__main__":
    run_command(main)
