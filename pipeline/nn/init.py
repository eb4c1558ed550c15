"""Weight initializers: He (for ReLU-family layers), Xavier/Glorot (for tanh/sigmoid) and
PyTorch's default uniform.

Each takes the weight shape and the fan-in/fan-out and draws from the given numpy Generator in
float32. Biases are zero and BatchNorm starts at gamma=1, beta=0; that is decided in `model.py`.
"""

from __future__ import annotations

import numpy as np


def he_normal(rng, shape, fan_in, fan_out):
    """N(0, 2/fan_in): keeps activation variance through ReLU layers (He et al. 2015)."""
    return (rng.standard_normal(shape, dtype=np.float32) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def xavier_uniform(rng, shape, fan_in, fan_out):
    """U(-a, a) with a = sqrt(6/(fan_in+fan_out)) (Glorot & Bengio 2010)."""
    a = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=shape).astype(np.float32)


def torch_uniform(rng, shape, fan_in, fan_out):
    """U(-a, a) with a = 1/sqrt(fan_in): PyTorch's default for Linear and Conv2d weights
    (kaiming_uniform_ with a=sqrt(5)); std 1/sqrt(3 fan_in), 2.45x below He."""
    a = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-a, a, size=shape).astype(np.float32)


INITS = {"he": he_normal, "xavier": xavier_uniform, "torch": torch_uniform}
