"""The cross-validation stages: `cv` (the out-of-fold estimate, data/models/cv.json), the fold
ensemble that `train --folds K` saves as the submission's model, and `sweep` (CV per grid point).

A member is one (fold, seed) model and a cached unit of its own, keyed by the data's digests,
its parameters, its fold and the code it runs. Members missing from the cache train through
`parallel.run` (local processes or a dask cluster); each result is stored here, in the driver,
the moment it arrives, so a killed run resumes with its finished members reused. Outputs are
written only when every member is there, each atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import parallel, stages
from .cache import _combined, _load_checked, _seal_path, code_digests
from .config import Paths, UserError, asdict
from .cv import CVConfig, fit_member, oof_summary, stratified_folds, stratified_rows
from .fileio import read_json, write_json, write_npz, write_text
from .params import TrainConfig, changed_from_default, resolve

log = logging.getLogger("pipeline")
STAGE = "cv"


@dataclass
class Plan:
    """The members of one cross-validation: every fold for each seed."""

    hp: dict  # the resolved training parameters (JSON-able), folds set to cv.folds
    cv: CVConfig
    rows: np.ndarray  # (n,) the labelled rows cross-validated (indices into train.csv)
    fold: np.ndarray  # (n,) each row's fold
    members: list  # [(fold, seed)]

    @property
    def digest(self) -> str:
        blob = json.dumps({"params": self.hp, "cv": asdict(self.cv)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def member_hp(self, seed: int) -> dict:
        return {**self.hp, "seed": seed, "ensemble": 1}


def plan(cfg: TrainConfig, cv: CVConfig, labels: np.ndarray) -> Plan:
    """Check the parameters (ParamError is a UserError) and lay out the folds and members."""
    if cv.folds < 2:
        raise UserError(f"cross-validation needs --folds >= 2, got {cv.folds}")
    hp = json.loads(json.dumps({**resolve(cfg), "folds": cv.folds}, default=list))
    if hp["patience"] or hp["refit"]:
        raise UserError("--patience and --refit choose on the dev split; with --folds every fold "
                        "model trains the fixed --epochs and keeps its last epoch: drop them.")
    rows = stratified_rows(labels, cv.max_rows, cv.seed)
    try:
        fold = stratified_folds(labels[rows], cv.folds, cv.seed)
    except ValueError as e:
        raise UserError(f"{e} (rows cross-validated: {len(rows)}; raise --max-train)") from None
    members = [(f, hp["seed"] + j) for j in range(hp["ensemble"]) for f in range(cv.folds)]
    return Plan(hp, cv, rows, fold, members)


# ------------------------------------------------------------------ members: cache and workers


def _unit(files, inputs, params, code):
    """A member's cache entry. A worker computed the result; it is handed in through `files`
    (left out of the key), so only the driver ever writes the cache."""
    return files["result"]


def member_code() -> str:
    """Digest of the source a member's result depends on: fit_member's module (cv.py) and every
    package module it imports (train, nn, preprocess, params, ...)."""
    cv_py = Path(fit_member.__code__.co_filename)
    code = {**code_digests(fit_member),
            "pipeline/cv.py": hashlib.sha256(cv_py.read_bytes()).hexdigest()[:12]}
    return _combined(code)


def _key(p: Plan, f: int, seed: int, inputs: dict, code: str) -> tuple:
    params = {"train": p.member_hp(seed), "fold": f, "folds": p.cv.folds,
              "fold_seed": p.cv.seed, "max_rows": p.cv.max_rows}
    return ({}, inputs, params, code)


def _memorized(paths: Paths):
    import joblib
    cache = stages._cache(paths)
    if cache.location is None:  # caching off: nothing is looked up or stored
        return None
    return joblib.Memory(cache.location / "joblib", verbose=0).cache(_unit, ignore=["files"])


def _lookup(paths: Paths, key: tuple, name: str):
    cached = _memorized(paths)
    if cached is None or not cached.check_call_in_cache(*key):
        return None
    return _load_checked(cached, key, name, paths.cache)


def _store(paths: Paths, key: tuple, result) -> None:
    import joblib
    cached = _memorized(paths)
    if cached is None:
        return
    args = ({"result": result}, *key[1:])
    cached(*args)
    write_text(_seal_path(cached.call_and_shelve(*args)), joblib.hash(result))


def fit_plans(paths: Paths, plans: list[Plan], par: parallel.ParallelConfig,
              inputs: dict, pixels: np.ndarray, labels: np.ndarray, normalizer: dict):
    """(each plan's member results in member order, the set of plans with a member trained):
    each member reused from the cache, or trained and stored the moment it arrives."""
    code = member_code()
    work = [(i, m, _key(p, f, s, inputs, code), f"{STAGE} {_label(p, f, s)}")
            for i, p in enumerate(plans) for m, (f, s) in enumerate(p.members)]
    results = {}
    for i, m, key, name in work:
        r = _lookup(paths, key, name)
        if r is not None:
            results[i, m] = r
    todo = [w for w in work if (w[0], w[1]) not in results]
    if not todo:
        return [[results[i, m] for m in range(len(p.members))] for i, p in enumerate(plans)], set()
    where = (f"dask scheduler {par.scheduler}" if par.backend == "dask"
             else f"{min(parallel.workers(par), len(todo))} local worker(s)")
    log.info("%s: training %d of %d member(s) on %s", STAGE, len(todo), len(work), where)
    union = np.unique(np.concatenate([plans[i].rows for i, *_ in todo]))  # only rows used
    data = {"pixels": pixels[union], "labels": labels[union], "normalizer": normalizer}
    tasks, cores = [], parallel.cores_per_task(par, len(todo))
    for i, m, _, name in todo:
        p, (f, _) = plans[i], plans[i].members[m]
        at = np.searchsorted(union, p.rows)  # plan rows -> positions in data
        tasks.append({"cfg": p.member_hp(p.members[m][1]),
                      "train_rows": at[p.fold != f], "eval_rows": at[p.fold == f],
                      "cores": cores, "label": name, "progress": par.progress})
    for t, r in parallel.run(fit_member, data, tasks, par):
        i, m, key, name = todo[t]
        _store(paths, key, r)
        results[i, m] = r
        log.info("%s: done, %.2f%% on its %d held-out rows, %.1f s (%d/%d)", name,
                 100 * r["eval_accuracy"], len(tasks[t]["eval_rows"]), r["seconds"],
                 len(results), len(work))
    trained = {i for i, *_ in todo}
    return [[results[i, m] for m in range(len(p.members))] for i, p in enumerate(plans)], trained


def _label(p: Plan, f: int, seed: int) -> str:
    return f"fold {f + 1}/{p.cv.folds}" + (f" seed {seed}" if p.hp["ensemble"] > 1 else "")


# ----------------------------------------------------------------------------- the estimate


def summarize(p: Plan, results: list[dict], labels: np.ndarray) -> tuple[dict, np.ndarray]:
    """(the cv.json dict, the (n, 10) out-of-fold probabilities, plain and with TTA) of one
    plan's members. cv.json's "tta" holds the estimate of a `--tta` submission."""
    y = labels[p.rows].astype(np.int64)
    oof, oof_tta = (np.zeros((len(y), 10), np.float32) for _ in range(2))  # over seeds
    for (f, _), r in zip(p.members, results):
        oof[p.fold == f] += r["eval_proba"]
        oof_tta[p.fold == f] += r["eval_proba_tta"]
    oof /= np.float32(p.hp["ensemble"])
    oof_tta /= np.float32(p.hp["ensemble"])
    tta = oof_summary(y, oof_tta, p.fold)
    members = [{"fold": f, "seed": s, "accuracy": r["eval_accuracy"], "epochs": r["epochs"],
                "seconds": round(r["seconds"], 2)} for (f, s), r in zip(p.members, results)]
    return {"folds": p.cv.folds, "fold_seed": p.cv.seed, "max_rows": p.cv.max_rows,
            "model": p.hp["model"], "params": p.hp, "params_digest": p.digest,
            "params_changed": json.loads(json.dumps(changed_from_default(p.hp), default=list)),
            "hyperparameters": results[0]["hyperparameters"], "members": members,
            "train_seconds": round(sum(r["seconds"] for r in results), 2),
            "tta": {k: tta[k] for k in ("oof_accuracy", "oof_accuracy_ci95", "oof_loss",
                                        "fold_accuracy")},
            **oof_summary(y, oof, p.fold)}, (oof, oof_tta)


def _data(paths: Paths):
    inputs, files = stages._inputs(paths, parsed=paths.parsed, normalizer=paths.normalizer)
    from .readers import read_digits, read_normalizer
    parsed = read_digits(Path(files["parsed"]))
    return inputs, parsed["train_x"], parsed["train_y"], read_normalizer(Path(files["normalizer"]))


def _record(paths: Paths, summary: dict, trained: bool) -> None:
    """One line of data/runs.jsonl when something was trained (none for a cache reuse)."""
    if not trained:
        return
    from .fileio import append_line
    from .runs import run_record, utc_now
    rec = run_record({**summary, "dev_accuracy": None}, utc_now())
    rec.update({"kind": "cv", "folds": summary["folds"], "oof_accuracy": summary["oof_accuracy"],
                "oof_accuracy_ci95": summary["oof_accuracy_ci95"],
                "oof_loss": summary["oof_loss"]})
    append_line(paths.runs, json.dumps(rec, sort_keys=True))


def _run(paths, cfgs, cv, par):
    t0 = time.perf_counter()
    inputs, pixels, labels, normalizer = _data(paths)
    plans = [plan(c, cv, labels) for c in cfgs]
    results, trained = fit_plans(paths, plans, par, inputs, pixels, labels, normalizer)
    out = []
    for i, (p, rs) in enumerate(zip(plans, results)):
        summary, oof = summarize(p, rs, labels)
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        out.append((p, rs, summary, oof, i in trained))
    return out


def cv(paths: Paths, cfg: TrainConfig, cv_cfg: CVConfig, par: parallel.ParallelConfig) -> dict:
    """Cross-validate cfg: write data/models/cv.json and oof.npz; return the cv.json dict."""
    [(p, _, summary, oof, trained)] = _run(paths, [cfg], cv_cfg, par)
    _write_cv(paths, p, summary, oof)
    _record(paths, summary, trained)
    return summary


def _write_cv(paths: Paths, p: Plan, summary: dict, oof: tuple) -> None:
    write_npz(paths.models / "oof.npz", proba=oof[0], proba_tta=oof[1], rows=p.rows,
              fold=p.fold)
    write_json(paths.models / "cv.json", summary)


def train_folds(paths: Paths, cfg: TrainConfig, cv_cfg: CVConfig,
                par: parallel.ParallelConfig) -> dict:
    """The fold models as the submission's model: cv.json, then model.npz (every fold model,
    averaged by predict), history.json and metrics.json carrying the OOF estimate."""
    [(p, rs, summary, oof, trained)] = _run(paths, [cfg], cv_cfg, par)
    _write_cv(paths, p, summary, oof)
    metrics = {k: summary[k] for k in ("model", "params", "params_changed", "params_digest",
                                       "hyperparameters",
                                       "folds", "rows", "oof_accuracy", "oof_accuracy_ci95",
                                       "oof_loss", "train_seconds", "tta")}
    metrics.update(dev_accuracy=None, estimate=f"{p.cv.folds}-fold out-of-fold", cv=asdict(cv_cfg),
                   members=[{"seed": s, "fold": f, "fold_accuracy": r["eval_accuracy"],
                             "dev_accuracy": None, "best_epoch": r["epochs"],
                             "train_seconds": round(r["seconds"], 2)}
                            for (f, s), r in zip(p.members, rs)])
    stages.write_models(paths, [r["model"] for r in rs], metrics,
                        [{"seed": s, "fold": f, "best_epoch": r["epochs"], "epochs": r["history"]}
                         for (f, s), r in zip(p.members, rs)])
    _record(paths, summary, trained)
    return metrics


def sweep(paths: Paths, cfg: TrainConfig, cv_cfg: CVConfig, par: parallel.ParallelConfig,
          points: list[dict]) -> list[dict]:
    """Cross-validate cfg with each grid point's overrides, all members in one parallel run;
    write data/models/sweep.json and one runs.jsonl line per point trained."""
    from .cv import point_label, ranked
    cfgs = [cfg.replace(**pt) for pt in points]  # points: checked by cv.parse_grid
    out = []
    for pt, (_, _, s, _, trained) in zip(points, _run(paths, cfgs, cv_cfg, par)):
        s = {**s, "label": point_label(pt),
             "point": {k: list(v) if isinstance(v, tuple) else v for k, v in pt.items()}}
        _record(paths, s, trained)
        out.append(s)
    keep = ("label", "point", "oof_accuracy", "oof_accuracy_ci95", "oof_loss", "train_seconds",
            "folds", "params_digest")
    write_json(paths.models / "sweep.json", [{k: s[k] for k in keep} for s in ranked(out)])
    return out


def estimate(metrics: dict, tta: bool) -> dict:
    """The OOF figures of a submission predicted with or without TTA (cv.json or metrics)."""
    return {**metrics, **metrics["tta"]} if tta and metrics.get("tta") else metrics


def estimate_line(summary: dict, tta: bool = False) -> str:
    """One line: the OOF accuracy with its interval, what it is, and where it comes from."""
    e = estimate(summary, tta)
    lo, hi = e["oof_accuracy_ci95"]
    return (f"expected score (out-of-fold, {e['folds']} folds, {e.get('rows', '?')} rows"
            f"{', with TTA' if tta else ''}): {100 * e['oof_accuracy']:.2f}% (95% CI "
            f"{100 * lo:.2f}-{100 * hi:.2f}%), log loss {e['oof_loss']:.4f}")


def read_cv(path: Path) -> dict | None:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def ledger_estimate(metrics: dict, tta: bool) -> dict:
    """A fold ensemble's out-of-fold estimate for the ledger: the TTA one when predicting so."""
    if metrics.get("oof_accuracy") is None:
        return {}
    e = estimate(metrics, tta)
    return {"oof_accuracy": e["oof_accuracy"], "oof_accuracy_ci95": e["oof_accuracy_ci95"],
            "folds": e.get("folds"), "oof_tta": bool(tta and metrics.get("tta"))}


def estimate_words(e: dict) -> str:
    """", out-of-fold accuracy 99.40% (95% CI 99.31-99.48%, 5 folds)" of a ledger entry."""
    lo, hi = e.get("oof_accuracy_ci95") or (float("nan"), float("nan"))
    return (f", out-of-fold accuracy {100 * e['oof_accuracy']:.2f}% (95% CI {100 * lo:.2f}-"
            f"{100 * hi:.2f}%, {e.get('folds')} folds{', TTA' if e.get('oof_tta') else ''})")
