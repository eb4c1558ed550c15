"""The architectures by name (`mlp`, `cnn`, `seed`) and each one's default hyperparameters.

`build_spec(name, hp) -> spec` gives the layer list `Model` builds; `DEFAULTS[name]` holds the
training settings measured for that model (see docs/nn-results.md), which TrainConfig fields
override when set. How training uses them is `pipeline/train.py`'s business.
"""

from __future__ import annotations

from pipeline.config import IMAGE_SIDE, N_CLASSES, N_PIXELS


def mlp_spec(hp):
    """Flatten -> [Dense -> act (-> Dropout)] per hidden size -> Dense(10)."""
    layers = [{"type": "flatten", "name": "flat"}]
    d_in = N_PIXELS
    init = "he" if hp["activation"] in ("relu", "leaky_relu") else "xavier"
    for i, h in enumerate(hp["hidden"], 1):
        layers.append({"type": "dense", "name": f"fc{i}", "in": d_in, "out": int(h), "init": init})
        layers.append({"type": "act", "name": f"a{i}", "fn": hp["activation"]})
        if hp["dropout"] > 0:
            layers.append({"type": "dropout", "name": f"drop{i}", "p": hp["dropout"]})
        d_in = int(h)
    layers.append({"type": "dense", "name": "out", "in": d_in, "out": N_CLASSES, "init": "xavier"})
    return {"name": "mlp", "input_shape": [IMAGE_SIDE, IMAGE_SIDE, 1], "layers": layers}


def _conv_block(layers, name, cin, cout, k, pad, act):
    layers += [
        {"type": "conv", "name": name, "cin": cin, "cout": cout, "k": k, "pad": pad, "init": "he"},
        {"type": "bn", "name": f"{name}bn", "c": cout},
        {"type": "act", "name": f"{name}a", "fn": act},
    ]


def cnn_spec(hp):
    """Conv blocks (conv -> BatchNorm -> act) with 2x2 max pools, then a BatchNorm'd dense
    layer with dropout and the output layer. `hp["channels"]` sets the widths."""
    act = hp["activation"]
    c1, c2, fc = hp["channels"]
    layers = []
    _conv_block(layers, "c1", 1, c1, 3, 1, act)  # 28x28
    _conv_block(layers, "c2", c1, c1, 3, 1, act)
    layers.append({"type": "pool", "name": "p1"})  # 14x14
    _conv_block(layers, "c3", c1, c2, 3, 1, act)
    _conv_block(layers, "c4", c2, c2, 3, 1, act)
    layers.append({"type": "pool", "name": "p2"})  # 7x7
    layers += [
        {"type": "flatten", "name": "flat"},
        {"type": "dense", "name": "fc", "in": 7 * 7 * c2, "out": fc, "init": "he"},
        {"type": "bn", "name": "fcbn", "c": fc},
        {"type": "act", "name": "fca", "fn": act},
    ]
    if hp["dropout"] > 0:
        layers.append({"type": "dropout", "name": "drop", "p": hp["dropout"]})
    layers.append({"type": "dense", "name": "out", "in": fc, "out": N_CLASSES, "init": "xavier"})
    return {"name": "cnn", "input_shape": [IMAGE_SIDE, IMAGE_SIDE, 1], "layers": layers}


def seed_spec(hp):
    """The seed project's 784-10-10 network: one small hidden layer, sigmoid/tanh."""
    h = int(hp["hidden"][0]) if hp["hidden"] else 10
    return {"name": "seed", "input_shape": [IMAGE_SIDE, IMAGE_SIDE, 1], "layers": [
        {"type": "flatten", "name": "flat"},
        {"type": "dense", "name": "fc1", "in": N_PIXELS, "out": h, "init": "xavier"},
        {"type": "act", "name": "a1", "fn": hp["activation"]},
        {"type": "dense", "name": "out", "in": h, "out": N_CLASSES, "init": "xavier"},
    ]}


ARCHITECTURES = {"mlp": mlp_spec, "cnn": cnn_spec, "seed": seed_spec}

# Defaults per model. batch_size None = the whole training set (full-batch gradient descent).
DEFAULTS = {
    "mlp": dict(epochs=30, batch_size=128, lr=1e-3, optimizer="adamw", schedule="onecycle",
                weight_decay=1e-4, hidden=(512, 256), activation="relu", dropout=0.1,
                label_smoothing=0.0, augment="shift=2,rotate=10,zoom=0.1,elastic=0"),
    "cnn": dict(epochs=15, batch_size=128, lr=3e-3, optimizer="adamw", schedule="onecycle",
                weight_decay=1e-4, hidden=(), activation="relu", dropout=0.3,
                label_smoothing=0.0, augment="shift=2,rotate=10,zoom=0.1,elastic=0",
                channels=(32, 64, 256)),
    "seed": dict(epochs=500, batch_size=None, lr=0.5, optimizer="sgd", schedule="constant",
                 weight_decay=0.0, hidden=(10,), activation="tanh", dropout=0.0,
                 label_smoothing=0.0, augment="none"),
}


def build_spec(name, hp):
    if name not in ARCHITECTURES:
        raise ValueError(f"model must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    return ARCHITECTURES[name](hp)
