"""Training steps with subnormal floats in Adam's state, with and without flushing them to zero.

In the default study, fc1 units that stop firing (ReLU off for every image) get exactly-zero gradients;
Adam's first moment for their weights then decays by 0.9 a step into the subnormal range (below
1.2e-38), where x86 CPUs take microcode assists costing ~100 cycles an operation. This script times
full training steps (forward, backward, Adam) from such a state, alternating flush-to-zero off and on,
each repetition from a fresh copy of the state, and reports the medians and their ratio.

    python bench/denormals.py                          # a synthetic state: 86% of fc1's exp_avg subnormal
    python bench/denormals.py --state .train_state/train.pt   # the state a real run saved
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cifar_study.core.model import build_model  # noqa: E402
from cifar_study.pipeline.params import ModelParams  # noqa: E402

SUBNORMAL = 1e-39  # below torch.finfo(torch.float32).tiny (1.18e-38), above the smallest subnormal


def subnormal_share(optimizer: torch.optim.Optimizer) -> float:
    tiny = torch.finfo(torch.float32).tiny
    moments = [state["exp_avg"] for state in optimizer.state.values()]
    return sum(((m != 0) & (m.abs() < tiny)).sum().item() for m in moments) / sum(m.numel() for m in moments)


def starting_point(state_path: str | None, seed: int) -> tuple[dict, dict]:
    """(model state, Adam state) to start each repetition from."""
    torch.manual_seed(seed)
    model = build_model(ModelParams(), 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if state_path:
        saved = torch.load(state_path, weights_only=True, map_location="cpu")
        model.load_state_dict(saved["model_state"])
        optimizer.load_state_dict(saved["optimizer_state"])
    else:  # one real step creates Adam's state; then fc1's first moments are made subnormal, as measured
        F.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,))).backward()
        optimizer.step()
        exp_avg = optimizer.state[model.fc1.weight]["exp_avg"]
        exp_avg[torch.rand(exp_avg.shape) < 0.86] = SUBNORMAL
    return copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())


def time_steps(start: tuple[dict, dict], flush: bool, steps: int, batch: int, seed: int) -> tuple[float, float]:
    """Seconds per training step from `start`, and the share of subnormal first moments before stepping."""
    model = build_model(ModelParams(), 10)
    model.load_state_dict(start[0])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    optimizer.load_state_dict(copy.deepcopy(start[1]))  # Adam keeps the given tensors and updates them in place
    share = subnormal_share(optimizer)  # before flushing: with it on, subnormals read as zero
    torch.set_flush_denormal(flush)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)
    model.train()
    began = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    seconds = (time.perf_counter() - began) / steps
    torch.set_flush_denormal(False)
    return seconds, share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state", help="a resume state (.train_state/train.pt) to start from; default: synthetic")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    if not torch.set_flush_denormal(True):
        sys.exit("this CPU cannot flush subnormals to zero (needs SSE3): nothing to compare")
    torch.set_flush_denormal(False)
    start = starting_point(args.state, args.seed)
    times: dict[bool, list[float]] = {False: [], True: []}
    shares = set()
    for _ in range(args.repeats):
        for flush in (False, True):  # alternated: drift of the machine hits both alike
            seconds, share = time_steps(start, flush, args.steps, args.batch, args.seed)
            times[flush].append(seconds)
            shares.add(round(share, 4))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    result = {"state": args.state or "synthetic", "subnormal_share_of_exp_avg": sorted(shares),
              "threads": torch.get_num_threads(), "batch": args.batch, "steps": args.steps, "repeats": args.repeats,
              "seconds_per_step": {"subnormals_kept": times[False], "flushed_to_zero": times[True]},
              "median_kept": off, "median_flushed": on, "speedup": off / on}
    print(f"subnormal share of Adam's exp_avg at the start: {sorted(shares)}; median s/step: kept {off:.3f}, "
          f"flushed {on:.3f}; flushing is {off / on:.2f}x faster ({args.repeats} x {args.steps} steps, "
          f"batch {args.batch}, {torch.get_num_threads()} threads)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
