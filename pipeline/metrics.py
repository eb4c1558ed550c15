"""Figures of a classifier's predictions: confusion matrix, per-class precision and recall,
dev metrics (loss, accuracy, per class), and the most confidently wrong rows."""

from __future__ import annotations

import numpy as np

from .config import N_CLASSES

N_MISTAKES = 24  # most confidently wrong dev digits shown


def confusion_matrix(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(10, 10) int64 counts: row = true class, column = predicted class."""
    cm = np.zeros((N_CLASSES, N_CLASSES), np.int64)
    np.add.at(cm, (np.asarray(y, np.int64), np.asarray(pred, np.int64)), 1)
    return cm


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and support per class from a confusion matrix (0 where undefined)."""
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    return {"precision": np.divide(tp, predicted, out=np.zeros(N_CLASSES), where=predicted > 0),
            "recall": np.divide(tp, support, out=np.zeros(N_CLASSES), where=support > 0),
            "support": support}


def dev_metrics(y: np.ndarray, proba: np.ndarray) -> dict:
    """JSON-able dev figures of (N,) labels and (N, 10) probabilities: loss, accuracy, per class."""
    y = np.asarray(y, np.int64)
    p_true = np.clip(proba[np.arange(len(y)), y], 1e-12, 1.0)  # (N,)
    cm = confusion_matrix(y, proba.argmax(axis=1))
    pc = per_class(cm)
    return {"dev_loss": float(-np.mean(np.log(p_true))), "dev_size": int(len(y)),
            "per_class": [{"class": k, "precision": round(float(pc["precision"][k]), 6),
                           "recall": round(float(pc["recall"][k]), 6),
                           "support": int(pc["support"][k])} for k in range(N_CLASSES)]}


def confident_mistakes(y: np.ndarray, proba: np.ndarray, k: int = N_MISTAKES) -> np.ndarray:
    """Indices of the k wrong predictions made with the highest probability, most sure first."""
    pred = proba.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    sure = proba[wrong, pred[wrong]]
    return wrong[np.argsort(-sure, kind="stable")[:k]]
