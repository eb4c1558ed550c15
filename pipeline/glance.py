"""Quick looks without opening a file: one competition digit as text art with the model's
prediction (`digits show`), what each hidden layer makes of it (`digits show --activations`),
and a person's own digit image classified (`digits predict-image`).

They read the trained model, the normalizer and (for `show`) the parsed arrays; only
`--activations` writes a file (its figure). Preparing an image file the MNIST way is
`imageio.py`'s job; drawing is `figures.py`'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import IMAGE_SIDE, Paths, UserError, command_hint
from .imageio import read_image, text_art, to_mnist
from .readers import read_digits, read_model, read_normalizer, require_file

TOP = 3  # probabilities shown by `show`


def _require(path: Path, stage: str) -> Path:
    hint = command_hint(stage)
    require_file(path, f"Delete it and run `{hint}` again.",
                 missing=f"{path} is missing; run `{hint}` first.")
    return path


def classify(paths: Paths, pixels: np.ndarray, *, tta: bool = False) -> np.ndarray:
    """(N, 784) uint8 digits -> (N, 10) probabilities of the trained model (or ensemble)."""
    from .predict import predict_proba
    from .preprocess import normalize
    models = read_model(_require(paths.model, "train"))
    x = normalize(pixels, read_normalizer(_require(paths.normalizer, "normalize")))
    return predict_proba(models, x, tta=tta)


def show(paths: Paths, n: int, *, train: bool = False, layers: bool = False) -> dict:
    """Row n (1-based: the ImageId of test.csv, or the row of train.csv) with its prediction;
    with `layers`, also what each hidden layer of the (first) model makes of it."""
    z = read_digits(_require(paths.parsed, "download"))
    x = z["train_x" if train else "test_x"]  # (N, 784) uint8
    label = int(z["train_y"][n - 1]) if train and 1 <= n <= len(x) else None
    if not 1 <= n <= len(x):
        raise UserError(f"{'train' if train else 'test'} row must be in 1..{len(x)}, got {n}.")
    pixels = x[n - 1]
    proba = classify(paths, pixels[None])[0]  # (10,)
    result = {"what": f"{'train' if train else 'test'} row {n}", "pixels": pixels,
              "label": label, "proba": proba}
    if layers:
        from .preprocess import normalize
        model = read_model(_require(paths.model, "train"))[0]
        x = normalize(pixels[None], read_normalizer(_require(paths.normalizer, "normalize")))[0]
        result["layers"] = hidden_layers(model, x)
        result["first_weights"] = first_dense_weights(model)
    return result


def predict_image(paths: Paths, image: Path) -> dict:
    """A person's own digit image: prepared like MNIST, then classified."""
    pixels = to_mnist(read_image(image)).reshape(-1)  # (784,) uint8
    proba = classify(paths, pixels[None])[0]  # (10,)
    return {"what": str(image), "pixels": pixels, "label": None, "proba": proba}


def describe(result: dict, top: int = TOP) -> str:
    """Text art of the digit, then the prediction and the `top` most likely digits."""
    proba = result["proba"]
    order = np.argsort(-proba, kind="stable")[:top]
    best = int(order[0])
    verdict = f"{result['what']}: predicted {best}"
    if result["label"] is not None:
        verdict += f", labelled {result['label']}" + (" (right)" if best == result["label"]
                                                       else " (WRONG)")
    ranked = "  ".join(f"{k}: {100 * proba[k]:.1f}%" for k in order)
    return f"{text_art(result['pixels'])}\n{verdict}\ntop {top}: {ranked}"


# ---------------------------------------------------------------------- inside the network


def hidden_layers(model, x: np.ndarray) -> list[dict]:
    """One normalized digit x (28, 28, 1) -> what each hidden layer outputs, in eval mode (as at
    prediction): one {"name", "fn", "values"} per activation layer, values (units,) after a
    dense layer or (H, W, C) after a conv, then {"name": "output", "fn": "softmax", "values":
    the 10 probabilities}."""
    from .nn.losses import softmax
    from .report import truncated
    out = []
    for i, ly in enumerate(model.spec["layers"]):
        if ly.get("type") == "act":
            values = truncated(model, i + 1).forward(x[None].astype(np.float32))[0]
            out.append({"name": ly["name"], "fn": ly.get("fn", "?"), "values": values})
    logits = model.forward(x[None].astype(np.float32))  # (1, 10)
    out.append({"name": "output", "fn": "softmax", "values": softmax(logits)[0]})
    return out


def first_dense_weights(model) -> np.ndarray | None:
    """(784, units) weights of a first layer that is dense on the pixels (MLP, seed), else None."""
    for ly in model.spec["layers"]:
        if ly.get("type") == "dense":
            w = np.asarray(model.params[f"{ly['name']}.w"])
            return w if w.shape[0] == IMAGE_SIDE * IMAGE_SIDE else None
        if ly.get("type") in ("conv", "bn"):
            return None
    return None


def strongest(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest activations (channels ranked by their mean), largest first."""
    v = values if values.ndim == 1 else values.reshape(-1, values.shape[-1]).mean(axis=0)
    return np.argsort(-v, kind="stable")[:k]


def describe_layers(result: dict, top: int = 5) -> str:
    """One line per hidden layer: how many units respond, and the strongest ones."""
    lines = []
    for layer in result["layers"][:-1]:
        v = layer["values"]
        if v.ndim == 1:
            best = strongest(v, top)
            lines.append(f"{layer['name']} ({layer['fn']}, {v.size} units): "
                         f"{int((v > 0).sum())} above 0; strongest "
                         + ", ".join(f"#{j} {v[j]:.2f}" for j in best))
        else:
            mean = v.reshape(-1, v.shape[-1]).mean(axis=0)  # (C,)
            best = strongest(v, top)
            lines.append(f"{layer['name']} ({layer['fn']}, {v.shape[-1]} maps of "
                         f"{v.shape[0]}x{v.shape[1]}): strongest maps by mean "
                         + ", ".join(f"#{j} {mean[j]:.2f}" for j in best))
    return "\n".join(lines)


def draw_layers(result: dict, path: Path) -> Path:
    """The figure of `result["layers"]` (figures.activations), written atomically."""
    from . import figures
    from .fileio import atomic_path
    with atomic_path(path) as tmp:
        figures.activations(result["pixels"], result["layers"], result.get("first_weights"),
                            tmp, title=f"inside the network: {result['what']}")
    return path


__all__ = ["classify", "describe", "describe_layers", "draw_layers", "first_dense_weights",
           "hidden_layers", "predict_image", "show", "strongest"]
