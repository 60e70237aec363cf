"""Per-step loss of each vmap-stacked replica against its separate run: the relative difference per step.

    python notes/suite-on-two-cpus/replica_steps.py --lr 1e-4 [--no-mkldnn]

The setting of tests/test_replicas.py::test_per_step_losses_match_separate_runs (its per_step_losses): 80
tiny synthetic images, batches of 32 (the last one short), no dropout, seeds 7 and 8; here two passes.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cifar_study.pipeline.dataset import Dataset, Split, synthetic  # noqa: E402
from tests.test_replicas import per_step_losses  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--lr", type=float, default=1e-4)
ap.add_argument("--no-mkldnn", action="store_true")
args = ap.parse_args()
torch.backends.mkldnn.enabled = not args.no_mkldnn

ds = synthetic(seed=0)  # tests/conftest.py's tiny set, then test_replicas.py's `small` of it
train = np.concatenate([np.flatnonzero(ds.train.labels == c)[:20] for c in range(10)])[::2][:80]
small = Dataset(Split(ds.train.images[train], ds.train.labels[train]), Split(ds.test.images[:20], ds.test.labels[:20]),
                ds.classes)
print(f"{torch.backends.cpu.get_cpu_capability()}, mkldnn {'off' if args.no_mkldnn else 'on'}, lr {args.lr}")
for step, pairs in enumerate(per_step_losses(small, args.lr, passes=2), 1):
    for j, (stacked, single) in enumerate(pairs):
        print(f"step {step} replica {j}: {abs(stacked - single) / single:.1e}")
