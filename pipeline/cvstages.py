"""The cross-validation stages: `cv` (the out-of-fold estimate, data/models/cv.json), the fold
ensemble that `train --folds K` saves as the submission's model (or, with --refit, the recipe
refit on every row, refit.py), and `sweep` (CV per grid point). --pseudo adds a second,
transductive round (pseudo.py).

A member is one (fold, seed) model and a cached unit of its own, keyed by the data's digests,
its parameters, its fold and the code it runs (units.py: reused, or trained through
`parallel.run` and stored the moment it arrives, so a killed run resumes with its finished
members reused). Outputs are written only when every member is there, each atomically.
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
from .cache import _combined, code_digests
from .config import Paths, UserError, asdict
from .cv import CVConfig, fit_member, oof_summary, stratified_folds, stratified_rows
from .fileio import write_json, write_npz
from .params import TrainConfig, changed_from_default, resolve
from .units import Unit, fit_units

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
        """One member's parameters: the refit and the pseudo-label round are no part of a fold
        member's training (a first-round member is the same with or without them)."""
        hp = {k: v for k, v in self.hp.items() if k != "pseudo"}
        return {**hp, "seed": seed, "ensemble": 1, "refit": False}


def plan(cfg: TrainConfig, cv: CVConfig, labels: np.ndarray) -> Plan:
    """Check the parameters (ParamError is a UserError) and lay out the folds and members."""
    if cv.folds < 2:
        raise UserError(f"cross-validation needs --folds >= 2, got {cv.folds}")
    hp = json.loads(json.dumps({**resolve(cfg), "folds": cv.folds}, default=list))
    if hp["patience"]:
        raise UserError("--patience chooses the epoch on the dev split; with --folds every fold "
                        "model trains the fixed --epochs and keeps its last epoch: drop it.")
    rows = stratified_rows(labels, cv.max_rows, cv.seed)
    try:
        fold = stratified_folds(labels[rows], cv.folds, cv.seed)
    except ValueError as e:
        raise UserError(f"{e} (rows cross-validated: {len(rows)}; raise --max-train)") from None
    members = [(f, hp["seed"] + j) for j in range(hp["ensemble"]) for f in range(cv.folds)]
    return Plan(hp, cv, rows, fold, members)


# ---------------------------------------------------------------------------- the members


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


def fold_units(p: Plan, inputs: dict, code: str) -> list[Unit]:
    """Plan p's members: fold f's model trains on the other folds' rows, scored on fold f's."""
    return [Unit(_key(p, f, s, inputs, code), f"{STAGE} {_label(p, f, s)}", p.member_hp(s),
                 p.rows[p.fold != f], p.rows[p.fold == f], fit_member) for f, s in p.members]


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


@dataclass
class Data:
    inputs: dict  # the input files' digests (digits.npz, normalizer.json)
    pixels: np.ndarray  # (42000, 784) uint8, train.csv
    labels: np.ndarray  # (42000,)
    normalizer: dict
    test_pixels: np.ndarray  # (28000, 784) uint8, test.csv


def _data(paths: Paths) -> Data:
    inputs, files = stages._inputs(paths, parsed=paths.parsed, normalizer=paths.normalizer)
    from .readers import read_digits, read_normalizer
    parsed = read_digits(Path(files["parsed"]))
    return Data(inputs, parsed["train_x"], parsed["train_y"],
                read_normalizer(Path(files["normalizer"])), parsed["test_x"])


def _record(paths: Paths, summary: dict, trained: bool, extra: dict | None = None) -> None:
    """One line of data/runs.jsonl when something was trained (none for a cache reuse)."""
    if trained:
        from .runs import append_cv_record
        append_cv_record(paths.runs, summary, extra or {})


@dataclass
class Fitted:
    """One plan's cross-validation, done: the final round's fold and refit results."""

    plan: Plan
    folds: list  # the fold members' results, in plan.members order
    refit: list  # the refit members' results, one per seed ([] without --refit)
    summary: dict  # cv.json
    oof: tuple  # the out-of-fold probabilities, plain and with TTA
    trained: bool  # a member was trained (not all reused)
    pseudo_rows: list  # the pseudo-labelled test rows of each refit model's group ([]: none)
    seconds: float  # the members' training seconds, summed over every round


def _fit(paths, cfgs, cv, par, *, refit: bool = False) -> list[Fitted]:
    """Cross-validate each of cfgs (and with `refit`, train each on every row), all members in
    one parallel run; then the second round of those with --pseudo, again in one run."""
    from .refit import refit_units, rows_code
    t0 = time.perf_counter()
    d = _data(paths)
    plans = [plan(c, cv, d.labels) for c in cfgs]
    code, rcode = member_code(), rows_code()
    units = [(fold_units(p, d.inputs, code), refit_units(p, d.inputs, rcode) if refit else [])
             for p in plans]
    first, fresh = _fit_groups(paths, units, par, d, STAGE)
    final, counts = list(first), {}
    second = [i for i, p in enumerate(plans) if p.hp.get("pseudo")]
    if second:
        from .pseudo import pseudo_units
        made = [pseudo_units(paths, plans[i], units[i], first[i], d, rcode) for i in second]
        results, fresh2 = _fit_groups(paths, [u for u, _ in made], par, d, "pseudo")
        for j, i in enumerate(second):
            final[i], fresh[i], counts[i] = results[j], fresh[i] or fresh2[j], made[j][1]
    out = []
    for i, p in enumerate(plans):
        summary, oof = summarize(p, final[i][0], d.labels)
        if i in counts:  # cv.json: the second round's estimate, the first round's beside it
            from .pseudo import first_round_figures, marks
            summary["first_round"] = first_round_figures(summarize(p, first[i][0], d.labels)[0])
            summary.update(marks(p.hp["pseudo"], counts[i][0], len(d.test_pixels)))
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        rounds = [first[i]] + ([final[i]] if i in counts else [])
        seconds = sum(r["seconds"] for fr, rr in rounds for r in fr + rr)
        out.append(Fitted(p, final[i][0], final[i][1], summary, oof, fresh[i],
                          counts[i][1] if i in counts else [], round(seconds, 2)))
    return out


def _fit_groups(paths, groups: list[tuple[list, list]], par, d: Data, stage: str):
    """fit_units over every plan's (fold units, refit units) at once -> each plan's (fold
    results, refit results), and whether the plan had a unit trained."""
    flat = [u for fu, ru in groups for u in fu + ru]
    results, trained = fit_units(paths, flat, par, stage, d.pixels, d.labels, d.normalizer,
                                 d.test_pixels)
    out, fresh, at = [], [], 0
    for fu, ru in groups:
        n, m = len(fu), len(ru)
        out.append((results[at:at + n], results[at + n:at + n + m]))
        fresh.append(any(trained[at:at + n + m]))
        at += n + m
    return out, fresh


def cv(paths: Paths, cfg: TrainConfig, cv_cfg: CVConfig, par: parallel.ParallelConfig) -> dict:
    """Cross-validate cfg (and its pseudo-label round): write data/models/cv.json and oof.npz;
    return the cv.json dict. --refit changes the submission's models, not the estimate: cv
    trains no refit models."""
    [fit] = _fit(paths, [cfg], cv_cfg, par)
    _write_cv(paths, fit.plan, fit.summary, fit.oof)
    _record(paths, fit.summary, fit.trained)
    return fit.summary


def _write_cv(paths: Paths, p: Plan, summary: dict, oof: tuple) -> None:
    write_npz(paths.models / "oof.npz", proba=oof[0], proba_tta=oof[1], rows=p.rows,
              fold=p.fold)
    write_json(paths.models / "cv.json", summary)


def train_folds(paths: Paths, cfg: TrainConfig, cv_cfg: CVConfig,
                par: parallel.ParallelConfig) -> dict:
    """The submission's models after cross-validation: the fold models, or with --refit the
    models refit on every row (refit.py). Writes cv.json, then model.npz (the models predict
    averages), history.json and metrics.json carrying the OOF estimate and what it is of."""
    refit = bool(resolve(cfg)["refit"])
    [fit] = _fit(paths, [cfg], cv_cfg, par, refit=refit)
    p, summary, rs = fit.plan, fit.summary, fit.folds
    _write_cv(paths, p, summary, fit.oof)
    metrics = {k: summary[k] for k in ("model", "params", "params_changed", "params_digest",
                                       "hyperparameters",
                                       "folds", "rows", "oof_accuracy", "oof_accuracy_ci95",
                                       "oof_loss", "tta")}
    folds = [{"seed": s, "fold": f, "fold_accuracy": r["eval_accuracy"], "dev_accuracy": None,
              "best_epoch": r["epochs"], "train_seconds": round(r["seconds"], 2),
              **({"pseudo_rows": r["pseudo_rows"]} if r.get("pseudo_rows") else {})}
             for (f, s), r in zip(p.members, rs)]
    metrics.update(dev_accuracy=None, estimate=f"{p.cv.folds}-fold out-of-fold", cv=asdict(cv_cfg),
                   submission_models="folds", members=folds, train_seconds=fit.seconds)
    models = [r["model"] for r in rs]
    history = [{"seed": s, "fold": f, "best_epoch": r["epochs"], "epochs": r["history"]}
               for (f, s), r in zip(p.members, rs)]
    if refit:  # the refit models are the submission; the fold models move to fold_members
        from .refit import refit_metrics
        metrics.update(refit_metrics(p, fit.refit), fold_members=folds)
        models = [r["model"] for r in fit.refit]
        history = [{"seed": m["seed"], "best_epoch": r["epochs"], "epochs": r["history"]}
                   for m, r in zip(metrics["members"], fit.refit)]
    if "transductive" in summary:
        from .pseudo import marks
        metrics.update(marks(summary["pseudo_threshold"],
                             fit.pseudo_rows if refit else summary["pseudo_rows"],
                             summary["pseudo_test_rows"]),
                       first_round={k: summary["first_round"][k] for k in (
                           "oof_accuracy", "oof_accuracy_ci95", "oof_loss")})
    stages.write_models(paths, models, metrics, history)
    _record(paths, summary, fit.trained, {k: metrics[k] for k in ("submission_models",
                                                                  "pseudo_rows") if k in metrics})
    return metrics


def sweep(paths: Paths, cfg: TrainConfig, cv_cfg: CVConfig, par: parallel.ParallelConfig,
          points: list[dict]) -> list[dict]:
    """Cross-validate cfg with each grid point's overrides, all members in one parallel run;
    write data/models/sweep.json and one runs.jsonl line per point trained. A sweep ranks the
    recipe without pseudo-labels (--pseudo is dropped, with a warning)."""
    from .cv import point_label, ranked
    if getattr(cfg, "pseudo", None):
        log.warning("sweep: ranking the points without pseudo-labels (pseudo=%s applies to "
                    "`digits cv` and `digits train --folds`)", cfg.pseudo)
        cfg = cfg.replace(pseudo=0.0)
    cfgs = [cfg.replace(**pt) for pt in points]  # points: checked by cv.parse_grid
    out = []
    for pt, fit in zip(points, _fit(paths, cfgs, cv_cfg, par)):
        s = {**fit.summary, "label": point_label(pt),
             "point": {k: list(v) if isinstance(v, tuple) else v for k, v in pt.items()}}
        _record(paths, s, fit.trained)
        out.append(s)
    keep = ("label", "point", "oof_accuracy", "oof_accuracy_ci95", "oof_loss", "train_seconds",
            "folds", "params_digest")
    write_json(paths.models / "sweep.json", [{k: s[k] for k in keep} for s in ranked(out)])
    return out
