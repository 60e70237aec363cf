import numpy as np
import pytest
import torch

from cifar_study.core.loader import CustomCIFAR10, TensorLoader, dataloader, random_crop_flip
from cifar_study.pipeline.dataset import Split

CHI2_CRIT_8DF = 26.12  # chi-square critical value, 8 degrees of freedom, p = 0.001


def position_images(n: int) -> Split:
    """Images whose red channel is row+1 and green channel col+1, so a crop's offset can be read back."""
    rows, cols = np.meshgrid(np.arange(32) + 1, np.arange(32) + 1, indexing="ij")
    image = np.stack([rows, cols, np.full_like(rows, 7)], axis=-1).astype(np.uint8)
    return Split(np.repeat(image[None], n, axis=0), np.zeros(n, dtype=np.int64))


def decode_crops(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dy, dx, flipped) per augmented position image (uint8 values, NCHW)."""
    r, g = images[:, 0].long().numpy(), images[:, 1].long().numpy()
    flipped = g[:, 16, 17] < g[:, 16, 16]
    # out[h, w] = padded[dy + h, dx + w] and padded row k holds original row k - 4 (value k - 3).
    dy = r[:, 16, 16] - 13
    dx = np.where(flipped, g[:, 16, 16] - 12, g[:, 16, 16] - 13)
    return dy, dx, flipped


def chi2_uniform(values: np.ndarray, k: int) -> float:
    counts = np.bincount(values, minlength=k)
    expected = len(values) / k
    return float(((counts - expected) ** 2 / expected).sum())


def check_augmentation_distribution(dy, dx, flipped):
    assert dy.min() == 0 and dy.max() == 8 and dx.min() == 0 and dx.max() == 8
    assert chi2_uniform(dy, 9) < CHI2_CRIT_8DF and chi2_uniform(dx, 9) < CHI2_CRIT_8DF
    assert abs(flipped.mean() - 0.5) < 0.02


def test_fast_augmentation_is_uniform_crop_and_fair_flip():
    images = torch.from_numpy(position_images(20000).images).permute(0, 3, 1, 2)
    dy, dx, flipped = decode_crops(random_crop_flip(images, torch.Generator().manual_seed(0)))
    check_augmentation_distribution(dy, dx, flipped)


def test_reference_augmentation_has_the_same_distribution():
    torch.manual_seed(0)
    ds = CustomCIFAR10(position_images(4000), mean=[0, 0, 0], std=[1 / 255] * 3, augment=True)
    images = torch.stack([ds[i][0] for i in range(len(ds))]).round()
    check_augmentation_distribution(*decode_crops(images))


def test_crop_pads_with_zeros_like_torchvision():
    images = torch.full((500, 3, 32, 32), 200, dtype=torch.uint8)
    out = random_crop_flip(images, torch.Generator().manual_seed(1))
    zeros = (out == 0).float().mean().item()
    # Expected share of padding pixels: 1 - E[(32 - |dy - 4|)(32 - |dx - 4|)] / 1024.
    shift = np.abs(np.arange(9) - 4)
    expected = 1 - ((32 - shift).mean() / 32) ** 2
    assert zeros == pytest.approx(expected, abs=0.01)
    assert set(out.unique().tolist()) == {0, 200}


def test_both_loaders_normalise_identically_without_augmentation(tiny):
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    fast = TensorLoader(tiny.test, mean, std, augment=False, batch_size=16, shuffle=False, seed=0,
                        device=torch.device("cpu"))
    ref = dataloader(tiny.test, mean, std, augment=False, batch_size=16, shuffle=False, num_workers=0, seed=0)
    assert len(fast) == len(ref) == 4
    for (xf, yf), (xr, yr) in zip(fast, ref):
        assert xf.shape == xr.shape and xf.dtype == xr.dtype == torch.float32
        torch.testing.assert_close(xf, xr, atol=1e-5, rtol=1e-5)
        assert torch.equal(yf, yr)


def test_normalised_training_batches_are_centred(tiny):
    mean = (tiny.train.images.reshape(-1, 3) / 255).mean(axis=0)
    std = (tiny.train.images.reshape(-1, 3) / 255).std(axis=0)
    x = torch.cat([x for x, _ in TensorLoader(tiny.train, mean, std, augment=False, batch_size=64, shuffle=True,
                                               seed=0, device=torch.device("cpu"))])
    assert x.shape == (200, 3, 32, 32)
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3


def test_fast_loader_is_deterministic_for_a_seed_and_reshuffles_each_epoch(tiny):
    def epochs(seed):
        loader = TensorLoader(tiny.train, [0.5] * 3, [0.25] * 3, augment=True, batch_size=50, shuffle=True,
                              seed=seed, device=torch.device("cpu"))
        return [torch.cat([torch.cat([x.flatten(1), y[:, None].float()], 1) for x, y in loader]) for _ in range(2)]

    first, again, other = epochs(0), epochs(0), epochs(1)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first[0], other[0])


def test_every_image_is_seen_once_per_epoch(tiny):
    loader = TensorLoader(tiny.train, [0.5] * 3, [0.25] * 3, augment=True, batch_size=64, shuffle=True, seed=0,
                          device=torch.device("cpu"))
    labels = torch.cat([y for _, y in loader])
    assert len(labels) == 200 and np.bincount(labels.numpy()).tolist() == [20] * 10
