"""Per-step loss of each vmap-stacked replica against its separate run, relative difference per step.

    python notes/suite-on-two-cpus/replica_steps.py --lr 1e-4 [--no-mkldnn]

The setting of tests/test_replicas.py::test_per_step_losses_match_separate_runs: 80 tiny synthetic images,
batches of 32 (the last one short), two passes, no dropout, seeds 7 and 8.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cifar_study.core.loader import make_loader  # noqa: E402
from cifar_study.core.model import build_model  # noqa: E402
from cifar_study.core.replicas import ReplicaLoader, build_replicas, replica_losses  # noqa: E402
from cifar_study.pipeline.dataset import Split, synthetic  # noqa: E402
from cifar_study.pipeline.params import ModelParams  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--lr", type=float, default=1e-4)
ap.add_argument("--no-mkldnn", action="store_true")
args = ap.parse_args()
torch.backends.mkldnn.enabled = not args.no_mkldnn

ds = synthetic(seed=0)
idx = np.concatenate([np.flatnonzero(ds.train.labels == c)[:20] for c in range(10)])[::2][:80]
train = Split(ds.train.images[idx], ds.train.labels[idx])
no_dropout, k, seed = ModelParams(dropout=0.0), 2, 7
model = build_replicas(no_dropout, 10, seed, k, batched=True)
singles = []
for j in range(k):
    torch.manual_seed(seed + j)
    singles.append(build_model(no_dropout, 10))
opt = torch.optim.Adam(model.parameters(), lr=args.lr)
opts = [torch.optim.Adam(m.parameters(), lr=args.lr) for m in singles]
stream = ReplicaLoader([make_loader("tensor", train, [0.5] * 3, [0.25] * 3, augment=True, shuffle=True, batch_size=32,
                                    seed=seed + j, device=torch.device("cpu")) for j in range(k)])
model.train()
for m in singles:
    m.train()
print(f"{torch.backends.cpu.get_cpu_capability()}, mkldnn {'off' if args.no_mkldnn else 'on'}, lr {args.lr}")
for step, (x, y) in enumerate(list(stream) * 2):
    losses = replica_losses(model(x), y)
    opt.zero_grad()
    losses.sum().backward()
    opt.step()
    for j, (m, o) in enumerate(zip(singles, opts)):
        loss = torch.nn.functional.cross_entropy(m(x[j]), y[j])
        o.zero_grad()
        loss.backward()
        o.step()
        print(f"step {step} replica {j}: {abs(losses[j].item() - loss.item()) / loss.item():.1e}")
