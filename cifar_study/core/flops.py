"""FLOPs per image, counted the original study's way, and cross-checked with PyTorch's own counter.

The original study counts one multiply-add as 2 FLOPs and only Conv2d and Linear layers:
conv `2·Cin·Cout·Kh·Kw·Hout·Wout` (divided by groups), linear `2·in·out`; biases, BatchNorm,
ReLU, pooling and dropout are not counted.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cifar_study.core.cifar10 import CHANNELS, IMAGE_SIZE
from cifar_study.core.model import count_parameters

INPUT_SHAPE = (1, CHANNELS, IMAGE_SIZE, IMAGE_SIZE)  # one image


@dataclass
class LayerFlops:
    name: str
    kind: str
    output_shape: list[int]
    params: int
    flops: int


def count_flops(model: nn.Module, input_shape: tuple[int, ...] = INPUT_SHAPE) -> list[LayerFlops]:
    """Per-layer FLOPs of one forward pass of a batch of `input_shape`, via forward hooks."""
    layers: list[LayerFlops] = []

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                n, cout, h, w = output.shape
                kh, kw = module.kernel_size
                flops = 2 * n * (module.in_channels // module.groups) * cout * kh * kw * h * w
            else:
                flops = 2 * (output.numel() // module.out_features) * module.in_features * module.out_features
            params = sum(p.numel() for p in module.parameters())
            layers.append(LayerFlops(name, type(module).__name__, list(output.shape), params, flops))
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(input_shape))
    finally:
        for h in handles:
            h.remove()
    return layers


def torch_flop_count(model: nn.Module, input_shape: tuple[int, ...] = INPUT_SHAPE) -> int:
    """Total FLOPs by torch.utils.flop_counter.FlopCounterMode (counts aten ops, not modules)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(input_shape))
    return int(counter.get_total_flops())


def model_cost(model: nn.Module) -> dict:
    """FLOPs (the original study's count) and parameters per image. Without the cross-check: FlopCounterMode
    imports torch._dynamo, seconds of start-up that a stage logging the numbers to W&B need not pay."""
    return _cost(model, count_flops(model))


def _cost(model: nn.Module, layers: list[LayerFlops]) -> dict:
    total = sum(layer.flops for layer in layers)
    return {"flops": total, "gflops": round(total / 1e9, 4), "params": count_parameters(model)}


def flops_report(model: nn.Module) -> dict:
    """model_cost, per layer, cross-checked with PyTorch's own counter."""
    layers = count_flops(model)
    cost = _cost(model, layers)
    reference = torch_flop_count(model)
    return {
        **cost,
        "flop_counter_mode_flops": reference,
        # Both count 2 FLOPs per multiply-add of convolutions and matmuls and skip biases,
        # BatchNorm, ReLU and pooling, so for Conv2d/Linear models they agree exactly.
        "flop_counter_mode_matches": reference == cost["flops"],
        "layers": [asdict(layer) for layer in layers],
    }


def format_table(report: dict) -> str:
    rows = [f"{'layer':<10} {'type':<8} {'output':<16} {'params':>10} {'FLOPs':>14} {'share':>7}"]
    for layer in report["layers"]:
        rows.append(f"{layer['name']:<10} {layer['kind']:<8} {str(tuple(layer['output_shape'])):<16} "
                    f"{layer['params']:>10,} {layer['flops']:>14,} {layer['flops'] / report['flops']:>7.1%}")
    rows.append(f"{'total':<10} {'':<8} {'':<16} {report['params']:>10,} {report['flops']:>14,} "
                f"({report['gflops']} GFLOPs; FlopCounterMode: {report['flop_counter_mode_flops']:,})")
    return "\n".join(rows)
