"""What every module agrees on about CIFAR-10 images: one definition of their shape."""

IMAGE_SIZE = 32  # pixels per side
CHANNELS = 3  # RGB
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, CHANNELS)  # HWC, as stored in data/cifar10.npz
