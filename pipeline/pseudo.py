"""Pseudo-labels (`--pseudo P`, opt-in, transductive): a second round of models trained on their
labelled rows plus the test.csv rows the first round labels with probability >= P.

Each second-round model learns from the first-round models trained on the same labelled rows: a
fold model from its own fold's first-round models (their mean test probabilities), a refit model
from the refit models. So no label of a held-out fold reaches its fold model, even through a
pseudo label, and the second round's out-of-fold accuracy is an honest estimate of the whole
procedure. It is transductive: the models have seen the unlabelled test images they then label.
A second-round unit's key adds the threshold, the test images' digest and its teachers' keys.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np

from .cache import _combined, code_digests
from .units import Unit, lookup, store

log = logging.getLogger("pipeline")


def select(proba: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(test rows whose top probability is >= threshold, their argmax labels) of (N, 10)
    probabilities; the rows sorted."""
    rows = np.flatnonzero(proba.max(axis=1) >= np.float32(threshold))  # (n_pseudo,)
    return rows.astype(np.int64), proba[rows].argmax(axis=1).astype(np.int64)


def _teacher_proba(paths, teachers: list[Unit], results: list[dict], x_test: np.ndarray,
                   name: str) -> np.ndarray:
    """(N_test, 10) mean test probabilities of the teachers' models, cached under their keys."""
    from .predict import predict_proba
    code = _combined(code_digests(predict_proba))
    key = ({}, teachers[0].key[1], {"test_proba_of": [u.key[2] for u in teachers],
                                     "teachers_code": [u.key[3] for u in teachers]}, code)
    proba = lookup(paths, key, name)
    if proba is None:
        proba = predict_proba([r["model"] for r in results], x_test)
        store(paths, key, proba)
    return proba


def test_digest(test_pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(test_pixels).tobytes()).hexdigest()[:16]


def _round_two(paths, teachers: list[Unit], results: list[dict], x_test, digest: str,
               threshold: float, code: str, name: str) -> tuple[list[Unit], int]:
    """A second-round unit for each teacher unit, on the rows its group labels -> (units, the
    number of pseudo-labelled rows)."""
    from .refit import fit_rows
    proba = _teacher_proba(paths, teachers, results, x_test, f"pseudo-labels from {name}")
    rows, labels = select(proba, threshold)
    log.info("pseudo-labels from %s: %d of %d test rows at p >= %s", name, len(rows),
             len(proba), threshold)
    if not len(rows):  # nothing to add: the second round is the first (reused, not retrained)
        log.warning("pseudo-labels from %s: no test row reaches p >= %s; its second round is "
                    "its first", name, threshold)
        return list(teachers), 0
    teacher_keys = hashlib.sha256(json.dumps([u.key[2] for u in teachers], sort_keys=True,
                                             default=list).encode()).hexdigest()[:16]
    out = []
    for u in teachers:
        params = {**u.key[2], "pseudo": {"threshold": threshold, "test_sha256": digest,
                                         "teachers": teacher_keys}}
        out.append(Unit(({}, u.key[1], params, code), f"pseudo {u.name}", u.cfg, u.train, u.eval,
                        fit_rows, rows, labels))
    return out, int(len(rows))


def pseudo_units(paths, p, units: tuple[list, list], results: tuple[list, list], d,
                 code: str) -> tuple[tuple[list, list], tuple[list, list]]:
    """Plan p's second round: ((fold units, refit units) in the first round's order, (each
    fold's count of pseudo-labelled rows, the refit group's count, if any))."""
    from .preprocess import normalize
    (fold_u, refit_u), (fold_r, refit_r) = units, results
    x_test = normalize(d.test_pixels, d.normalizer)  # (N_test, 28, 28, 1)
    args = (x_test, test_digest(d.test_pixels), p.hp["pseudo"], code)
    new_fold, fold_counts = list(fold_u), []
    for k in range(p.cv.folds):
        idx = [j for j, (f, _) in enumerate(p.members) if f == k]
        made, n = _round_two(paths, [fold_u[j] for j in idx], [fold_r[j] for j in idx], *args,
                             f"fold {k + 1}'s models")
        for j, u in zip(idx, made):
            new_fold[j] = u
        fold_counts.append(n)
    new_refit, refit_counts = [], []
    if refit_u:
        new_refit, n = _round_two(paths, refit_u, refit_r, *args, "the refit models")
        refit_counts = [n]
    return (new_fold, new_refit), (fold_counts, refit_counts)


def first_round_figures(summary: dict) -> dict:
    """What cv.json keeps of the first round's estimate, beside the second round's."""
    keep = ("oof_accuracy", "oof_accuracy_ci95", "oof_loss", "oof_errors", "fold_accuracy",
            "fold_loss")
    return {**{k: summary[k] for k in keep}, "tta": summary["tta"],
            "members": summary["members"], "train_seconds": summary["train_seconds"]}


def marks(threshold: float, counts: list[int], n_test: int) -> dict:
    """The fields metrics.json, cv.json and the run history carry for a transductive run."""
    return {"transductive": True, "pseudo_threshold": threshold, "pseudo_rows": counts,
            "pseudo_test_rows": int(n_test)}
