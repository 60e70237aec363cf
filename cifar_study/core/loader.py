"""Batches for training and evaluation, two ways with one augmentation distribution.

- `CustomCIFAR10` + `DataLoader` (`train.loader: dataloader`): the reference, one image at a
  time through torchvision transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, Normalize).
- `TensorLoader` (`train.loader: tensor`, the default): the whole uint8 split lives in one tensor
  on the training device, and each batch is cropped, flipped and normalised at once, airbench-style.
  Crop offsets and flips are drawn per image from a seeded CPU generator, so the stream of
  batches is the same on every device; they are drawn for a whole epoch at its start and copied
  to the device once, so a GPU never waits for the host between batches.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from cifar_study.core.cifar10 import IMAGE_SIZE
from cifar_study.pipeline.dataset import Split

PAD = 4  # RandomCrop(32, padding=4): zero padding, crop offset uniform in 0..2*PAD per axis


class CustomCIFAR10(torch.utils.data.Dataset):
    """Images from the canonical uint8 arrays as normalised float tensors (C, H, W)."""

    def __init__(self, split: Split, mean: Sequence[float], std: Sequence[float], augment: bool):
        # Imported here: torchvision loads torch._dynamo (1.5 s a process on a laptop CPU), and only this
        # per-image reference loader needs it; every stage that fails on a bad input fails that much sooner.
        from torchvision import transforms as T

        self.images, self.labels = split.images, split.labels
        steps = [T.RandomCrop(IMAGE_SIZE, padding=PAD), T.RandomHorizontalFlip()] if augment else []
        self.transform = T.Compose([*steps, T.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images[i]).permute(2, 0, 1).float().div_(255)
        return self.transform(image), int(self.labels[i])


def dataloader(split: Split, mean: Sequence[float], std: Sequence[float], *, augment: bool,
               batch_size: int, shuffle: bool, num_workers: int, seed: int, rank: int = 0, world: int = 1) -> DataLoader:
    """`batch_size` is global: with `world` ranks, each loads its DistributedSampler shard in batches of batch_size/world."""
    generator = torch.Generator().manual_seed(seed)
    dataset = CustomCIFAR10(split, mean, std, augment)
    sampler = DistributedSampler(dataset, world, rank, shuffle=shuffle, seed=seed) if world > 1 else None
    return DataLoader(dataset, batch_size=batch_size // world, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=num_workers, generator=generator, persistent_workers=num_workers > 0)


def draw_crop_flip(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: crop offsets dy, dx uniform in 0..2*PAD and a flip with p=0.5, each (n, 1), on the CPU."""
    dy = torch.randint(0, 2 * PAD + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * PAD + 1, (n, 1), generator=generator)
    return dy, dx, torch.rand(n, 1, generator=generator) < 0.5


def crop_flip(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Per image: the 32x32 crop at (dy, dx) of the zero-padded 40x40 image, flipped where `flip`.

    dy, dx and flip must be on the images' device: a host-to-device copy here would make a GPU
    wait for the host on every batch.
    """
    n, c = images.shape[0], images.shape[1]
    side = IMAGE_SIZE + 2 * PAD
    padded = F.pad(images, (PAD, PAD, PAD, PAD)).view(n, c, side * side)
    base = torch.arange(IMAGE_SIZE, device=images.device)
    rows = (dy + base) * side
    cols = dx + torch.where(flip, IMAGE_SIZE - 1 - base, base)
    # One gather for the whole batch: out[b, :, h, w] = padded[b, :, rows[b, h] + cols[b, w]].
    index = (rows[:, :, None] + cols[:, None, :]).view(n, 1, IMAGE_SIZE * IMAGE_SIZE)
    return torch.gather(padded, 2, index.expand(n, c, IMAGE_SIZE * IMAGE_SIZE)).view(n, c, IMAGE_SIZE, IMAGE_SIZE)


def random_crop_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per image: a random 32x32 crop of the zero-padded 40x40 image and a flip with p=0.5."""
    return crop_flip(images, *(t.to(images.device) for t in draw_crop_flip(images.shape[0], generator)))


class TensorLoader:
    """Iterates over (normalised float images, labels) batches of a split held in device memory.

    With `world` ranks, every rank draws the same global batch (same seed) and keeps rows
    rank, rank+world, ...: together the ranks see exactly the batches one process would.
    """

    def __init__(self, split: Split, mean: Sequence[float], std: Sequence[float], *, augment: bool,
                 batch_size: int, shuffle: bool, seed: int, device: torch.device, rank: int = 0, world: int = 1):
        self.images = torch.from_numpy(np.ascontiguousarray(split.images.transpose(0, 3, 1, 2))).to(device)
        self.labels = torch.from_numpy(split.labels).to(device)
        std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
        # x/255 normalised in one multiply-add: (x/255 - mean)/std = x*scale + shift.
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -torch.tensor(mean, device=device).view(1, 3, 1, 1) / std_t
        self.augment, self.batch_size, self.shuffle = augment, batch_size, shuffle
        self.rank, self.world = rank, world
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, device = len(self.labels), self.images.device
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        starts = range(0, n, self.batch_size)
        if self.augment:
            # The whole epoch's crops and flips, drawn batch by batch in the order random_crop_flip
            # draws them (the same stream as drawing them per batch), then copied to the device once:
            # no host-to-device copy, which on CUDA waits for the GPU, inside the step loop.
            draws = [draw_crop_flip(min(self.batch_size, n - start), self.generator) for start in starts]
            dy, dx, flip = (torch.cat(parts).to(device) for parts in zip(*draws))
        order = order.to(device)
        for start in starts:
            batch = slice(start, start + self.batch_size)
            idx = order[batch]
            images = self.images[idx]
            if self.augment:  # the whole global batch, so every rank's generator stays in step
                images = crop_flip(images, dy[batch], dx[batch], flip[batch])
            mine = slice(self.rank, None, self.world)
            yield images[mine].float().mul_(self.scale).add_(self.shift), self.labels[idx][mine]


def make_loader(kind: str, split: Split, mean: Sequence[float], std: Sequence[float], *, augment: bool,
                shuffle: bool, batch_size: int, seed: int, device: torch.device, num_workers: int = 0, rank: int = 0,
                world: int = 1):
    """A loader of the kind `train.loader` names: for training (augment, shuffle) or evaluation (neither)."""
    if kind == "tensor":
        return TensorLoader(split, mean, std, augment=augment, batch_size=batch_size, shuffle=shuffle,
                            seed=seed, device=device, rank=rank, world=world)
    return dataloader(split, mean, std, augment=augment, batch_size=batch_size, shuffle=shuffle,
                      num_workers=num_workers, seed=seed, rank=rank, world=world)
