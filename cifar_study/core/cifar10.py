"""What every module agrees on about CIFAR-10 images: their shape, and the original study's normalisation."""

IMAGE_SIZE = 32  # pixels per side
CHANNELS = 3  # RGB
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, CHANNELS)  # HWC, as stored in data/cifar10.npz

# The original study's normalisation constants, applied after scaling pixels to 0-1 (`train.normalize: original`).
# The training split's own statistics (`computed`) differ: std 0.2470/0.2435/0.2616 on the official archive.
ORIGINAL_MEAN = (0.4914, 0.4822, 0.4465)
ORIGINAL_STD = (0.2023, 0.1994, 0.2010)
