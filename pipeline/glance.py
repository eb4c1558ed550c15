"""Quick looks without opening a file: one competition digit as text art with the model's
prediction (`digits show`), and a person's own digit image classified (`digits predict-image`).

Both read the trained model, the normalizer and (for `show`) the parsed arrays; they write
nothing. Preparing an image file the MNIST way is `imageio.py`'s job.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import Paths, UserError
from .imageio import read_image, text_art, to_mnist
from .readers import read_digits, read_model, read_normalizer, require_file

TOP = 3  # probabilities shown by `show`


def _require(path: Path, make_target: str) -> Path:
    require_file(path, f"Delete it and run `{make_target}` again.",
                 missing=f"{path} is missing; run `{make_target}` first.")
    return path


def classify(paths: Paths, pixels: np.ndarray, *, tta: bool = False) -> np.ndarray:
    """(N, 784) uint8 digits -> (N, 10) probabilities of the trained model (or ensemble)."""
    from .predict import predict_proba
    from .preprocess import normalize
    models = read_model(_require(paths.model, "make train"))
    x = normalize(pixels, read_normalizer(_require(paths.normalizer, "make normalize")))
    return predict_proba(models, x, tta=tta)


def show(paths: Paths, n: int, *, train: bool = False) -> dict:
    """Row n (1-based: the ImageId of test.csv, or the row of train.csv) with its prediction."""
    z = read_digits(_require(paths.parsed, "make data"))
    x = z["train_x" if train else "test_x"]  # (N, 784) uint8
    label = int(z["train_y"][n - 1]) if train and 1 <= n <= len(x) else None
    if not 1 <= n <= len(x):
        raise UserError(f"{'train' if train else 'test'} row must be in 1..{len(x)}, got {n}.")
    pixels = x[n - 1]
    proba = classify(paths, pixels[None])[0]  # (10,)
    return {"what": f"{'train' if train else 'test'} row {n}", "pixels": pixels,
            "label": label, "proba": proba}


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


__all__ = ["classify", "describe", "predict_image", "show"]
