"""Seed replicas: k copies of the study trained side by side in one process (`train.replicas`).

Replica j is the experiment a single run with `train.seed + j` is: the weights `build_model` draws
after seeding that seed, its own data order and augmentation (its own loader seed), its own dropout.
The replicas' parameters are stacked along a new first dimension, so one Adam over the stacked
tensors is k independent Adams (Adam is element-wise), and the loss is the sum of the replicas'
losses, so each replica's gradient is exactly its own. Nothing else mixes them: every replica keeps
its own BatchNorm statistics, and there is no loss scaling across replicas or gradient clipping.

`torch.func.vmap` runs the k forward passes as one: convolutions become grouped convolutions and
linear layers batched matmuls, which is what makes k replicas cost little more than one on a GPU.
On a CPU, where no launch latency is saved, a loop over the replicas is faster (bench/replicas.py
measures both), so the CPU runs them one after another inside the same step.
"""
from __future__ import annotations

import copy
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from cifar_study.core.model import build_model
from cifar_study.pipeline.params import ModelParams


class ReplicaView:
    """Replica j's parameters as leaf views of the stacked ones, each with its own gradient slice:
    what the flow statistics and W&B histograms read (they take `named_parameters()`)."""

    def __init__(self, names: list[str], stacked: list[nn.Parameter], j: int):
        self.views = []
        for name, p in zip(names, stacked):
            view = p.detach()[j]
            view.grad = p.grad[j] if p.grad is not None else None
            self.views.append((name, view))

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.views)


class Replicas(nn.Module):
    """k models as one module: forward takes (k, B, C, H, W) per-replica batches, or (B, C, H, W)
    shared by all, and returns (k, B, classes) logits."""

    def __init__(self, models: list[nn.Module], batched: bool):
        super().__init__()
        params, buffers = stack_module_state(models)
        self.names, self.buffer_names = list(params), list(buffers)
        self.stacked = nn.ParameterList([nn.Parameter(params[n].detach().clone()) for n in self.names])
        for i, name in enumerate(self.buffer_names):
            self.register_buffer(f"buffer{i}", buffers[name].clone())
        # The architecture without storage, for functional_call; kept out of the module tree.
        self.__dict__["base"] = copy.deepcopy(models[0]).to("meta")
        self.k, self.batched = len(models), batched

    def train(self, mode: bool = True) -> "Replicas":
        self.base.train(mode)  # dropout and BatchNorm read the mode from the module functional_call runs
        return super().train(mode)

    def _buffers_of(self) -> list[torch.Tensor]:
        return [getattr(self, f"buffer{i}") for i in range(len(self.buffer_names))]

    def _one(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = x.dim() == 4
        if self.batched:
            params, buffers = dict(zip(self.names, self.stacked)), dict(zip(self.buffer_names, self._buffers_of()))
            return vmap(self._one, in_dims=(0, 0, None if shared else 0), randomness="different")(params, buffers, x)
        buffers = self._buffers_of()
        return torch.stack([self._one({n: p[j] for n, p in zip(self.names, self.stacked)},
                                      {n: b[j] for n, b in zip(self.buffer_names, buffers)}, x if shared else x[j])
                            for j in range(self.k)])

    def replica(self, j: int) -> ReplicaView:
        return ReplicaView(self.names, list(self.stacked), j)

    def replica_state(self, j: int) -> dict[str, torch.Tensor]:
        """Replica j's state_dict, in the single model's names (what models/model.pt holds)."""
        state = {n: p.detach()[j].clone() for n, p in zip(self.names, self.stacked)}
        state.update({n: b[j].clone() for n, b in zip(self.buffer_names, self._buffers_of())})
        return {n: state[n] for n in self.base.state_dict()}


def batched_on(device: torch.device) -> bool:
    """One vmap pass where kernel launches cost (CUDA, MPS); a loop on the CPU, where it is faster."""
    return device.type != "cpu"


def build_replicas(p: ModelParams, num_classes: int, seed: int, k: int, batched: bool) -> Replicas:
    """Replica j initialised as `build_model` initialises a single run seeded with `seed + j`."""
    models = []
    for j in range(k):
        torch.manual_seed(seed + j)
        models.append(build_model(p, num_classes))
    return Replicas(models, batched)


def replica_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per replica, (k,), for (k, B, classes) logits and (k, B) labels."""
    k = logits.shape[0]
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view(k, -1).mean(1)


class ReplicaLoader:
    """k loaders in step: each batch is (k, B, C, H, W) images and (k, B) labels, replica j's from loader j."""

    def __init__(self, loaders: list):
        self.loaders = loaders
        self.generators = [loader.generator for loader in loaders]

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batches in zip(*self.loaders):
            xs, ys = zip(*batches)
            yield torch.stack(xs), torch.stack(ys)
