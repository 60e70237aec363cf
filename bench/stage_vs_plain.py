"""The train stage as a user runs it, against the plain seed-style script, whole process against whole process.

Each run is a fresh `python` process on the same slice of the real images, one epoch: start-up,
data, training, the held-out pass and saving all count, as they do for a user. Compared:
  plain     a seed-style script: torchvision + PIL DataLoader, fp32, `loss.item()` every batch
  default   `python -m stages.train` with the shipped params (W&B offline where wandb imports)
  bf16+cl   the same with train.amp: bf16 and train.channels_last: true
The three run in interleaved rounds and medians are compared, so a slow patch of a noisy machine
hits all alike. Prints a table; --out writes JSON.

    python bench/stage_vs_plain.py --data data/raw/cifar10-jpg.tar.gz [--train 5000] [--rounds 3]
                                   [--configs default,bf16+cl] [--out FILE]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cifar_study.pipeline.cli import Parser, run_command, whole_number  # noqa: E402
from bench.children import succeeds, timed_child  # noqa: E402
from bench.out import checked_out, write_out  # noqa: E402
from bench.provenance import commit, cpu_name, tree_clean  # noqa: E402

CONFIGS = {"plain": None, "default": {}, "bf16+cl": {"amp": "bf16", "channels_last": True}}


def plain(project: Path) -> None:
    """The seed-style run, in `project`: what a tutorial's script does with the same data and model."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from benchmark import plain_loader, plain_steps
    from cifar_study.core.cifar10 import ORIGINAL_MEAN, ORIGINAL_STD
    from cifar_study.core.model import SimpleCNN

    params = yaml.safe_load((project / "params.yaml").read_text())["train"]
    torch.manual_seed(params["seed"])
    with np.load(project / "data/cifar10.npz") as z:
        train, test = (z["x_train"], z["y_train"]), (z["x_test"], z["y_test"])
    model = SimpleCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
    loader = plain_loader(*train, ORIGINAL_MEAN, ORIGINAL_STD, 0, params["batch_size"])
    plain_steps(model, optimizer, loader, len(loader), torch.device("cpu"), lambda: None)
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for x, y in plain_loader(*test, ORIGINAL_MEAN, ORIGINAL_STD, 0, 1000):
            logits = model(x)
            correct += (logits.argmax(1) == y).sum().item()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
    torch.save(model.state_dict(), project / "plain.pt")
    print(f"plain: test loss {loss / len(test[1]):.4f}, accuracy {correct / len(test[1]):.4f}")


def prepare(scratch: Path, data: Path, train: int, test: int) -> None:
    """A copy of the project whose params give one epoch on the slice; fetch_data run once, for all."""
    for part in ("cifar_study", "stages"):
        shutil.copytree(ROOT / part, scratch / part, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source="folder", path=str(data.resolve()), train_limit=train, test_limit=test)
    params["train"].update(epochs=1, device="cpu")
    (scratch / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    timed_child([sys.executable, "-m", "stages.fetch_data"], scratch)


def timed(scratch: Path, config: str, wandb: str) -> float:
    if CONFIGS[config] is None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--plain", str(scratch)]
    else:
        params = yaml.safe_load((scratch / "params.yaml").read_text())
        params["train"].update({"amp": "none", "channels_last": False, **CONFIGS[config]})
        (scratch / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        cmd = [sys.executable, "-m", "stages.train"]
    return timed_child(cmd, scratch, env={**os.environ, "WANDB_MODE": wandb, "WANDB_DIR": str(scratch)})


def main() -> None:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/raw/cifar10-jpg.tar.gz", help="the CIFAR-10 image-folder archive")
    ap.add_argument("--train", type=whole_number, default=5000, help="training images (a class-balanced slice)")
    ap.add_argument("--test", type=whole_number, default=1000, help="test images")
    ap.add_argument("--rounds", type=whole_number, default=3)
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"which of {', '.join(CONFIGS)} (plain always runs)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--plain", help=argparse.SUPPRESS)  # internal: run the plain script in this project
    args = ap.parse_args()
    if args.plain:
        return plain(Path(args.plain))
    out = checked_out(args.out)
    data = Path(args.data)
    if not data.is_file():
        ap.error(f"--data: {str(data)!r} is not a file (the CIFAR-10 image-folder archive)")
    unknown = set(args.configs.split(",")) - set(CONFIGS)
    if unknown or args.rounds < 1 or args.train < 10 or args.test < 1:
        ap.error(f"--configs from {', '.join(CONFIGS)} (not {', '.join(sorted(unknown)) or '-'}); "
                 f"--rounds at least 1, --train at least 10 (a class-balanced slice), --test at least 1")
    wandb = "offline" if succeeds([sys.executable, "-c", "import wandb"]) \
        else "disabled"
    chosen = ["plain", *(c for c in CONFIGS if c != "plain" and c in args.configs.split(","))]
    seconds: dict[str, list[float]] = {c: [] for c in chosen}
    with tempfile.TemporaryDirectory(prefix="stage-vs-plain-") as tmp:
        scratch = Path(tmp)
        prepare(scratch, data, args.train, args.test)
        for r in range(args.rounds):
            for config in chosen:
                seconds[config].append(timed(scratch, config, wandb))
                print(f"round {r + 1}/{args.rounds}: {config} {seconds[config][-1]:.1f} s", flush=True)
    median = {c: statistics.median(s) for c, s in seconds.items()}
    result = {"device": cpu_name(), "cpus": os.cpu_count(), "commit": commit(), "tree_clean": tree_clean(),
              "train_images": args.train,
              "test_images": args.test, "epochs": 1, "rounds": args.rounds, "wandb": wandb, "seconds": seconds,
              "median_seconds": median, "speed_vs_plain": {c: median["plain"] / m for c, m in median.items()}}
    print(f"\nwhole process, one epoch of {args.train} images, medians of {args.rounds} interleaved rounds "
          f"(W&B {wandb}):")
    for config, m in median.items():
        print(f"  {config:8s} {m:7.1f} s   {result['speed_vs_plain'][config]:.2f}x the plain script")
    write_out(out, result)


if __name__ == "__main__":
    run_command(main)
