"""Datasets: the generic IDX reader and MNIST (full, or the sample shipped in the package)."""

from tinynet.datasets.idx import read_idx
from tinynet.datasets.mnist_loader import load_mnist, mnist, mnist_sample

__all__ = ["load_mnist", "mnist", "mnist_sample", "read_idx"]
