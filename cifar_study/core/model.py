"""The study's model: SimpleCNN, as the original study defines it."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cifar_study.core.cifar10 import CHANNELS, IMAGE_SIZE
from cifar_study.pipeline.params import ModelParams


def conv_block(cin: int, cout: int) -> nn.Sequential:
    # Named parts give readable layer names in the flow charts: block1.conv.weight, block1.bn.weight.
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(cin, cout, kernel_size=3, padding=1),
                                     bn=nn.BatchNorm2d(cout), relu=nn.ReLU(inplace=True)))


class SimpleCNN(nn.Module):
    """conv 3→32→64, max-pool, conv 64→128→128, max-pool (3×3 convs with BatchNorm and ReLU),
    then fully connected 128·8·8 → 512 → classes with dropout before the last layer."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.5):
        super().__init__()
        self.block1 = conv_block(CHANNELS, 32)
        self.block2 = conv_block(32, 64)
        self.block3 = conv_block(64, 128)
        self.block4 = conv_block(128, 128)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(128 * (IMAGE_SIZE // 4) ** 2, 512)  # two 2x2 max-pools: 32x32 -> 8x8
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block2(self.block1(x)))
        x = self.pool(self.block4(self.block3(x)))
        x = torch.flatten(x, 1)
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


MODELS = {"simple_cnn": SimpleCNN}


def build_model(p: ModelParams, num_classes: int) -> nn.Module:
    return MODELS[p.name](num_classes=num_classes, dropout=p.dropout)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
