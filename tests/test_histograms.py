"""Gradient and parameter histograms: wandb.watch's binning, every parameter, nothing changed."""
import math

import pytest
import torch
import torch.nn.functional as F

from cifar_study.core.model import SimpleCNN
from cifar_study.observe.histograms import BINS, model_histograms, tensor_histogram


def test_64_equal_bins_over_the_finite_range():
    values = torch.arange(BINS + 1, dtype=torch.float32)  # 0..64: one value a bin, the maximum in the last (closed)
    counts, edges = tensor_histogram(torch.cat([values, torch.tensor([math.nan, math.inf, -math.inf])]))
    assert counts == [1.0] * (BINS - 1) + [2.0]
    assert edges == [float(i) for i in range(BINS + 1)]


def test_a_constant_tensor_is_one_bin_and_a_non_finite_one_is_skipped():
    assert tensor_histogram(torch.full((3, 4), 0.5)) == ([12.0], [0.5, 0.5])
    assert tensor_histogram(torch.full((5,), math.nan)) is None
    counts, edges = tensor_histogram(torch.tensor([1.0, math.nan, 2.0]))
    assert sum(counts) == 2 and (edges[0], edges[-1]) == (1.0, 2.0)


@pytest.mark.parametrize("watch, kinds", [("all", {"gradients", "parameters"}), ("gradients", {"gradients"}),
                                          ("parameters", {"parameters"}), ("none", set())])
def test_every_parameter_of_the_model_and_nothing_changed(watch, kinds):
    torch.manual_seed(0)
    model = SimpleCNN()
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    before = {name: (p.detach().clone(), p.grad.clone()) for name, p in model.named_parameters()}
    found = model_histograms(model, watch)
    assert set(found) == {f"{kind}/{name}" for kind in kinds for name in before}
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name][0]) and torch.equal(p.grad, before[name][1])
        if "parameters" in kinds:
            assert sum(found[f"parameters/{name}"][0]) == p.numel()
