"""Refit after cross-validation (`--folds K --refit`): the recipe the K fold models
cross-validated, trained again on every cross-validated row (all 42000 labelled rows, unless
--max-train) for the same fixed epoch count, one model per ensemble seed. Those models, not the
fold models, are then the submission; the estimate stays the fold models' out-of-fold one, of
the recipe trained on (K-1)/K of the rows.

Also the worker every such model runs, `fit_rows` (labelled rows, optionally pseudo-labelled
test rows, optionally held-out rows to score), used by the pseudo-label round too.
"""

from __future__ import annotations

import hashlib
import inspect
import time

import numpy as np

from .cache import _combined, code_digests
from .units import Unit


def fit_rows(data: dict, task: dict) -> dict:
    """Train one model on data rows task["train_rows"] (plus data["test_pixels"] rows
    task["pseudo_rows"] labelled task["pseudo_labels"]), for the fixed epochs, keeping the last;
    score task["eval_rows"] when there are any (as cv.fit_member does). A worker writes nothing:
    it returns the model, its history and, when scored, the held-out probabilities."""
    from .cv import step_threads, tta_proba
    from .parallel import member_progress
    from .params import TrainConfig
    from .preprocess import normalize
    from .train import evaluate, train
    t0 = time.perf_counter()
    cfg = TrainConfig(**task["cfg"])
    pixels, labels, norm = data["pixels"], np.asarray(data["labels"], np.int64), data["normalizer"]
    tr, ev = task["train_rows"], task.get("eval_rows", np.zeros(0, np.int64))
    x, y = normalize(pixels[tr], norm), labels[tr]  # (n, 28, 28, 1), (n,)
    pr = task.get("pseudo_rows")
    n_pseudo = 0 if pr is None else len(pr)
    if n_pseudo:
        x = np.concatenate([x, normalize(data["test_pixels"][pr], norm)])  # (n + n_pseudo, ...)
        y = np.concatenate([y, np.asarray(task["pseudo_labels"], np.int64)])
    with step_threads(task.get("cores", 1)):
        result = train(cfg, x, y, progress=member_progress(task), label=task.get("label", ""))
    out = {"model": result.model, "history": result.history, "epochs": result.best_epoch,
           "hyperparameters": result.hyperparameters, "train_rows": int(len(tr)),
           "pseudo_rows": n_pseudo}
    if len(ev):
        x_eval = normalize(pixels[ev], norm)  # (n_eval, 28, 28, 1)
        _, acc, proba = evaluate(result.model, x_eval, labels[ev])
        out.update(eval_proba=proba, eval_accuracy=acc,
                   eval_proba_tta=tta_proba(result.model, x_eval))
    out["seconds"] = time.perf_counter() - t0
    return out


def rows_code() -> str:
    """Digest of the source fit_rows runs: its own, and every package module it imports."""
    own = hashlib.sha256(inspect.getsource(fit_rows).encode()).hexdigest()[:12]
    return _combined({**code_digests(fit_rows), "pipeline/refit.py:fit_rows": own})


def refit_params(p, seed: int) -> dict:
    """The key's parameters of the refit member of `seed` of cross-validation plan p: its
    training parameters and the rows it trains on (all of them, or the --max-train subset)."""
    rows = {"max_rows": p.cv.max_rows, "rows_seed": p.cv.seed if p.cv.max_rows else None}
    return {"train": p.member_hp(seed), "refit": "every cross-validated row", **rows}


def refit_units(p, inputs: dict, code: str) -> list[Unit]:
    """One unit per ensemble seed of plan p, each on every row p cross-validated."""
    seeds = [p.hp["seed"] + j for j in range(p.hp["ensemble"])]
    n = p.hp["ensemble"]
    return [Unit(({}, inputs, refit_params(p, s), code),
                 "refit" + (f" seed {s}" if n > 1 else ""),
                 p.member_hp(s), p.rows, np.zeros(0, np.int64), fit_rows) for s in seeds]


def refit_metrics(p, results: list[dict]) -> dict:
    """metrics.json's account of the refit models that make the submission: they are its
    `members`; the estimate stays the fold models'."""
    k = p.cv.folds
    return {"submission_models": "refit",
            "estimate": f"{k}-fold out-of-fold (of fold models on {k - 1}/{k} of the rows)",
            "refit": {"rows": int(len(p.rows)), "epochs": p.hp["epochs"],
                      "models": len(results),
                      "estimate_of": f"the recipe trained on {k - 1}/{k} of the rows "
                                     f"(each fold model); the submission's models are refit "
                                     f"on all {len(p.rows)}"},
            "members": [{"seed": r["hyperparameters"]["seed"], "dev_accuracy": None,
                         "best_epoch": r["epochs"], "train_rows": r["train_rows"],
                         "train_seconds": round(r["seconds"], 2),
                         **({"pseudo_rows": r["pseudo_rows"]} if r["pseudo_rows"] else {})}
                        for r in results]}
