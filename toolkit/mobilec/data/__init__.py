"""Real datasets for training, calibration and evaluation (see :func:`load_dataset`)."""

from mobilec.data.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    ImageDataset,
    load_dataset,
)
from mobilec.data.idx import parse_idx, read_idx

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "ImageDataset",
    "load_dataset",
    "parse_idx",
    "read_idx",
]
