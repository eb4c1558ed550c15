"""Cross-validation arithmetic: stratified seeded folds, the out-of-fold (OOF) estimate, one fold
member's fit, and sweep grids.

Every labelled row is scored exactly once, by the one fold model that never saw it: its fold's
model trains on the other folds for the fixed epoch count and keeps its last epoch (no early
stopping, no epoch picked on the scored rows). The 95% interval of the OOF accuracy is the Wilson
score interval over the N out-of-fold predictions, treated as N Bernoulli trials: it is the
sampling uncertainty of a score on this many digits, not the spread between training runs.
Pure numpy; files, caching and workers are other modules' business.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np

from .config import N_CLASSES

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
CI_METHOD = "Wilson score interval (z = 1.96) over the out-of-fold predictions"


@dataclass(frozen=True)
class CVConfig:
    folds: int = 5  # K: each fold's model trains on the other K - 1 folds
    seed: int = 0  # seeds the assignment of rows to folds
    max_rows: int = 0  # cross-validate a stratified subset of this many labelled rows; 0 = all


# ------------------------------------------------------------------------------ folds and rows


def stratified_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(N,) fold number 0..k-1 of every row: each class shuffled, then dealt round-robin.

    The deal continues across classes, so fold sizes differ by at most one, and so do each
    class's counts per fold. The same (y, k, seed) always gives the same folds.
    """
    y = np.asarray(y)
    counts = np.bincount(y.astype(np.int64), minlength=N_CLASSES) if y.size else np.zeros(1)
    smallest = int(counts[counts > 0].min()) if y.size else 0
    if not 2 <= k <= smallest:
        raise ValueError(f"folds must be between 2 and the smallest class's row count "
                         f"({smallest}), got {k}")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    dealt = 0
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))  # (n_label,)
        fold[idx] = (dealt + np.arange(len(idx))) % k
        dealt += len(idx)
    return fold


def stratified_rows(y: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Sorted indices of exactly `max_rows` rows (0: all rows) in the class proportions, the
    remainders of the rounding going to the classes with the largest fractions."""
    if max_rows < 0:
        raise ValueError(f"max_rows must be >= 0, got {max_rows}")
    if max_rows == 0 or max_rows >= len(y):
        return np.arange(len(y), dtype=np.int64)
    classes, counts = np.unique(y, return_counts=True)
    quota = max_rows * counts / len(y)  # (n_classes,) float
    take = np.floor(quota).astype(np.int64)
    extra = np.argsort(-(quota - take), kind="stable")[: max_rows - take.sum()]
    take[extra] += 1
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(y == c))[:n] for c, n in zip(classes, take)]
    return np.sort(np.concatenate(keep)).astype(np.int64)


# ----------------------------------------------------------------------------- the estimate


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion correct/n: (centre -+ half) / (1 + z^2/n) with
    centre = p + z^2/2n and half = z sqrt(p(1-p)/n + z^2/4n^2)."""
    if n <= 0 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n and n > 0, got correct={correct}, n={n}")
    p = correct / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo = 0.0 if correct == 0 else (centre - half) / denom  # exact ends: no rounding past p
    hi = 1.0 if correct == n else (centre + half) / denom
    return lo, hi


def log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean -log p(true class), probabilities clipped at 1e-12, in float64."""
    p_true = proba[np.arange(len(y)), np.asarray(y, np.int64)].astype(np.float64)  # (N,)
    return float(-np.mean(np.log(np.clip(p_true, 1e-12, 1.0))))


def oof_summary(y: np.ndarray, proba: np.ndarray, fold: np.ndarray) -> dict:
    """The OOF figures of labels y (N,), out-of-fold probabilities (N, 10), folds (N,)."""
    y = np.asarray(y, np.int64)
    pred = proba.argmax(axis=1)  # (N,)
    hit = pred == y  # (N,)
    cm = np.zeros((N_CLASSES, N_CLASSES), np.int64)  # rows: true class, columns: predicted
    np.add.at(cm, (y, pred), 1)
    tp, predicted, support = np.diag(cm), cm.sum(axis=0), cm.sum(axis=1)
    k = int(fold.max()) + 1
    return {
        "oof_accuracy": float(hit.mean()),
        "oof_accuracy_ci95": list(wilson_interval(int(hit.sum()), len(y))),
        "ci_method": CI_METHOD,
        "oof_loss": log_loss(y, proba),
        "oof_errors": int((~hit).sum()),
        "rows": int(len(y)),
        "fold_accuracy": [float(hit[fold == f].mean()) for f in range(k)],
        "fold_loss": [log_loss(y[fold == f], proba[fold == f]) for f in range(k)],
        "fold_rows": [int(np.sum(fold == f)) for f in range(k)],
        "per_class": [{"class": c, "support": int(support[c]),
                       "precision": float(tp[c] / predicted[c]) if predicted[c] else 0.0,
                       "recall": float(tp[c] / support[c]) if support[c] else 0.0}
                      for c in range(N_CLASSES)],
        "confusion": cm.tolist(),
    }


# ------------------------------------------------------------------- one member, on a worker


def fit_member(data: dict, task: dict) -> dict:
    """Train one fold model on data rows task["train_rows"], score task["eval_rows"].

    `data` holds "pixels" (N, 784) uint8, "labels" (N,) and "normalizer"; it is the same object
    for every member, so it reaches each worker once. Returns the model, the eval rows'
    probabilities, plain and with test-time augmentation (as predict --tta would give them),
    and the history: a worker writes nothing, the driver stores the result.
    """
    from .parallel import member_progress
    from .params import TrainConfig
    from .preprocess import normalize
    from .train import evaluate, train
    t0 = time.perf_counter()
    cfg = TrainConfig(**task["cfg"])  # the resolved parameters, as the train stage passes them
    pixels, labels = data["pixels"], np.asarray(data["labels"], np.int64)
    tr, ev = task["train_rows"], task["eval_rows"]
    with step_threads(task.get("cores", 1)):
        result = train(cfg, normalize(pixels[tr], data["normalizer"]), labels[tr],
                       progress=member_progress(task), label=task.get("label", ""))
    x_eval = normalize(pixels[ev], data["normalizer"])  # (n_eval, 28, 28, 1)
    _, acc, proba = evaluate(result.model, x_eval, labels[ev])
    return {"model": result.model, "eval_proba": proba, "eval_accuracy": acc,
            "eval_proba_tta": tta_proba(result.model, x_eval),
            "history": result.history, "epochs": result.best_epoch,
            "hyperparameters": result.hyperparameters,
            "seconds": time.perf_counter() - t0}


@contextlib.contextmanager
def step_threads(n: int):
    """Train with n Python threads in the conv+pool steps (train.STEP_THREADS) and the batch
    prefetch only when n > 1: two members on two cores each keep to one. The result is the same
    for any count (pipeline/nn/fused.py, batches.py), so it is no part of a member's key."""
    from . import train as train_mod
    before = train_mod.STEP_THREADS, train_mod.PREFETCH
    train_mod.STEP_THREADS, train_mod.PREFETCH = max(1, min(n, before[0])), n > 1 and before[1]
    try:
        yield
    finally:
        train_mod.STEP_THREADS, train_mod.PREFETCH = before


def tta_proba(model, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """(N, 10) float32: the mean of softmax over predict's TTA shifts, on the BLAS threads the
    caller set (predict_proba would switch to all cores, which a worker must not)."""
    from .nn.losses import softmax
    from .predict import TTA_SHIFTS, shift_images
    fill = float(x.min()) if x.size else 0.0
    out = np.zeros((x.shape[0], N_CLASSES), np.float32)  # (N, 10)
    for s in range(0, x.shape[0], batch_size):
        xb = x[s : s + batch_size]  # (B, 28, 28, 1)
        for dr, dc in TTA_SHIFTS:
            xs = xb if (dr, dc) == (0, 0) else shift_images(xb, dr, dc, fill)
            out[s : s + batch_size] += softmax(model.forward(xs))
    out *= 1.0 / len(TTA_SHIFTS)
    return out


# ------------------------------------------------------------------------------ sweep grids

NOT_SWEPT = ("model", "ensemble", "folds", "patience", "refit")  # fixed for the whole sweep


def parse_grid(grid: str, base) -> list[dict]:
    """"lr=1e-3,3e-3 epochs=15,20" -> every combination, e.g. [{"lr": 0.001, "epochs": 15}, ...].

    Space-separated `name=v1,v2,...` terms over the training parameters (params.py), each value
    checked against its declaration and every combination against the model `base` (a
    TrainConfig) trains; layer sizes are written with x (hidden=512x256,256). ValueError names a
    bad term.
    """
    from .params import BY_NAME, ParamError, coerce, resolve, section
    names = {p.name for p in section("train") + section("model")} - set(NOT_SWEPT)
    axes = []
    for term in grid.split():
        name, sep, values = term.partition("=")
        name = name.strip().lower().replace("-", "_")
        if not sep or not values.strip(","):
            raise ValueError(f"grid term {term!r} is not name=value[,value...]")
        if name not in names:
            raise ValueError(f"grid term {term!r}: {name!r} is not one of "
                             f"{', '.join(sorted(names))}")
        if name in (n for n, _ in axes):
            raise ValueError(f"grid names {name!r} twice")
        try:
            axes.append((name, [coerce(BY_NAME[name], v.replace("x", ",") if
                                       BY_NAME[name].kind == "sizes" else v)
                                for v in values.split(",") if v]))
        except ParamError as e:
            raise ValueError(f"grid term {term!r}: {str(e).split(': ', 1)[-1]}") from None
    if not axes:
        raise ValueError("the grid is empty; write e.g. \"lr=1e-3,3e-3 epochs=15,20\"")
    points = [{}]
    for name, values in axes:
        points = [{**p, name: v} for p in points for v in values]
    for p in points:
        try:
            resolve(base.replace(**p))
        except ParamError as e:
            raise ValueError(f"{point_label(p)}: {e}") from None
    return points


def point_label(point: dict) -> str:
    return " ".join(f"{k}={'x'.join(map(str, v)) if isinstance(v, tuple) else v}"
                    for k, v in point.items())


def ranked(results: list[dict]) -> list[dict]:
    """Sweep results, best first: higher OOF accuracy, then lower log loss."""
    return sorted(results, key=lambda r: (-r["oof_accuracy"], r["oof_loss"]))


def sweep_table(results: list[dict]) -> str:
    """The ranked sweep as an aligned text table."""
    head = ("rank", "OOF accuracy", "95% interval", "log loss", "train s", "params")
    rows = [(str(i + 1), f"{100 * r['oof_accuracy']:.2f}%",
             f"{100 * r['oof_accuracy_ci95'][0]:.2f}-{100 * r['oof_accuracy_ci95'][1]:.2f}%",
             f"{r['oof_loss']:.4f}", f"{r['train_seconds']:.1f}", r["label"])
            for i, r in enumerate(ranked(results))]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


__all__ = ["CVConfig", "fit_member", "oof_summary", "parse_grid", "stratified_folds",
           "stratified_rows", "sweep_table", "wilson_interval"]
