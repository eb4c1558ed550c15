"""A small neural-network library in numpy: layers, loss, initializers, optimizers, schedules,
augmentation and the named models (mlp, cnn, seed) of the digit recognizer.

No autograd and no GPU: every layer is an explicit forward/backward pair (`layers.py`).
"""

from pipeline.nn.model import Model, ModelFileError, load_extra, load_models, save_models
from pipeline.nn.models import ARCHITECTURES, DEFAULTS

__all__ = [
    "ARCHITECTURES",
    "DEFAULTS",
    "Model",
    "ModelFileError",
    "load_extra",
    "load_models",
    "save_models",
]
