"""tinynet: multi-layer perceptrons trained by backpropagation, on NumPy, Numba or CuPy.

import tinynet as tn
net = tn.MLP.from_sizes([784, 128, 10], activation="relu", output_activation="softmax")
net.fit(X, labels, tn.CrossEntropy(), tn.SGD(lr=0.1), epochs=5, batch_size=64)
"""

from tinynet import datasets, distributed, losses, schedules, system
from tinynet.backend import (
    Backend,
    available_backends,
    get_backend,
    get_threads,
    set_backend,
    set_threads,
    to_numpy,
    use_backend,
    use_threads,
)
from tinynet.callbacks import EarlyStopping
from tinynet.errors import (
    BackendError,
    DataFileError,
    InvalidInputError,
    ModelFileError,
    ShapeError,
    TinynetError,
)
from tinynet.layers import ACTIVATIONS, Dense, Parameter, Rescaling
from tinynet.losses import BinaryCrossEntropy, CrossEntropy, Loss, SquaredError
from tinynet.model import MLP, load, one_hot
from tinynet.optim import SGD, Adam, AdamW, Optimizer
from tinynet.perceptron import Perceptron
from tinynet.schedules import CosineLR, ExponentialLR, ReduceLROnPlateau, StepLR
from tinynet.training import History

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "SGD",
    "Adam",
    "AdamW",
    "Backend",
    "BackendError",
    "BinaryCrossEntropy",
    "CosineLR",
    "CrossEntropy",
    "DataFileError",
    "Dense",
    "EarlyStopping",
    "ExponentialLR",
    "History",
    "InvalidInputError",
    "Loss",
    "ModelFileError",
    "Optimizer",
    "Parameter",
    "Perceptron",
    "ReduceLROnPlateau",
    "Rescaling",
    "ShapeError",
    "SquaredError",
    "StepLR",
    "TinynetError",
    "available_backends",
    "datasets",
    "distributed",
    "get_backend",
    "get_threads",
    "load",
    "losses",
    "one_hot",
    "schedules",
    "set_backend",
    "set_threads",
    "system",
    "to_numpy",
    "use_backend",
    "use_threads",
]
