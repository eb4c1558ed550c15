"""The pipeline's stages: each reads its input files, computes or reuses its result, writes outputs.

This is the only module that knows the file layout. Each stage names its input files (their
content digests key the cache), its parameters and a pure compute function; `cache.Cache` does
the rest (joblib.Memory, the code digest, the log line saying reused or recomputed and why). The
compute functions are module-level and pure; file paths are passed for reading only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import zipfile
from pathlib import Path

import numpy as np

from . import data as data_mod
from .cache import Cache
from .config import ZIP_NAME, Paths, asdict, command_hint
from .fileio import atomic_path, sha256_file, write_json, write_npz
from .lock import project_lock  # noqa: F401 (the commands take it through stages)
from .params import ParamError, PredictConfig, SplitConfig, TrainConfig, resolve
from .readers import read_digits, read_model, read_normalizer, read_split
from .sources import Sources, locate_source, source_digest

log = logging.getLogger("pipeline")


# ----------------------------------------------------------------------------- compute


def _parse(files, inputs, params, code) -> dict[str, np.ndarray]:
    return data_mod.read_competition(Path(files["source"]), progress=files["progress"]).arrays()


def _split(files, inputs, params, code) -> dict[str, np.ndarray]:
    y = read_digits(files["parsed"])["train_y"]
    train_idx, dev_idx = data_mod.stratified_split(y, params["dev_fraction"], params["seed"],
                                                   params["max_train"])
    return {"train_idx": train_idx, "dev_idx": dev_idx}


def _normalize(files, inputs, params, code) -> dict[str, float]:
    from .preprocess import fit_normalizer
    x = read_digits(files["parsed"])["train_x"]
    return fit_normalizer(x[read_split(files["split"], len(x))["train_idx"]])


def _train(files, inputs, params, code):
    from .preprocess import normalize
    from .train import train
    parsed = read_digits(files["parsed"])
    split = read_split(files["split"], len(parsed["train_y"]))
    x = normalize(parsed["train_x"], read_normalizer(files["normalizer"]))  # (42000, 28, 28, 1)
    y = parsed["train_y"].astype(np.int64)
    t, d = split["train_idx"], split["dev_idx"]
    return train(TrainConfig(**params), x[t], y[t], x[d], y[d], progress=files["progress"],
                 checkpoint=Path(files["checkpoint"]), resume=True, label=files["label"])


def _predict(files, inputs, params, code) -> np.ndarray:
    from .predict import predict_proba
    from .preprocess import normalize
    models = read_model(Path(files["model"]))
    x = normalize(read_digits(files["parsed"])["test_x"], read_normalizer(files["normalizer"]))
    return predict_proba(models, x, batch_size=params["batch_size"], tta=params["tta"])


# ----------------------------------------------------------------------------- the stages


def _cache(paths: Paths) -> Cache:
    return Cache(paths.cache if paths.use_cache else None)


def _inputs(paths: Paths, **files: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(digests by file name, paths by key) of a stage's input files, each required to exist."""
    cache = _cache(paths)
    need = {"parsed": "download", "split": "split", "normalizer": "normalize", "model": "train",
            "history": "train", "metrics": "train"}
    from .readers import require_file  # a regular file: not a folder, a device or a FIFO
    for key, path in files.items():
        require_file(path, f"Delete it and run `{command_hint(need[key])}` again.",
                     missing=f"{paths.relative(path)} is missing; run `{command_hint(need[key])}` "
                             f"first.")
    return ({p.name: cache.file_digest(p) for p in files.values()},
            {k: str(p) for k, p in files.items()})


def download(paths: Paths, sources: Sources, *, progress=True) -> Path:
    """Locate the competition data, check it, and write the parsed uint8 arrays."""
    source = locate_source(paths, sources)
    digest = source_digest(source, _cache(paths))
    bar = progress in (True, "bar")  # a parsing bar in a terminal only, not in a log
    arrays, _ = _cache(paths).call("parse", _parse, inputs={ZIP_NAME: digest}, params={},
                                   files={"source": str(source), "progress": bar})
    write_npz(paths.parsed, **arrays)
    return paths.parsed


def split(paths: Paths, cfg: SplitConfig) -> Path:
    inputs, files = _inputs(paths, parsed=paths.parsed)
    result, _ = _cache(paths).call("split", _split, inputs=inputs, params=asdict(cfg),
                                   files=files)
    write_npz(paths.split, **result)
    return paths.split


def normalize(paths: Paths) -> Path:
    inputs, files = _inputs(paths, parsed=paths.parsed, split=paths.split)
    result, _ = _cache(paths).call("normalize", _normalize, inputs=inputs, params={},
                                   files=files)
    write_json(paths.normalizer, result)
    return paths.normalizer


def train(paths: Paths, cfg: TrainConfig, *, progress="bar", resume: bool = True,
          par=None) -> dict:
    """Train cfg.ensemble models (seeds seed, seed+1, ...), save them together, write metrics.

    Each model checkpoints every epoch; an interrupted run continues from its last checkpoint
    (the same result as an uninterrupted run), unless `resume` is False. An ensemble's members
    train in parallel instead (`par`, see ensemble.py), each cached on its own.
    """
    hp = resolve(cfg)  # every parameter checked, the model's defaults filled in
    if hp.get("pseudo"):
        raise ParamError("--pseudo (PSEUDO=) needs --folds K (FOLDS=5): its second round is "
                         "scored out-of-fold; set FOLDS or PSEUDO=0.")
    if hp["ensemble"] > 1:  # members through joblib.Parallel, resumed member by member
        from .ensemble import train_ensemble
        from .parallel import ParallelConfig
        return train_ensemble(paths, hp, par or ParallelConfig())
    inputs, files = _inputs(paths, parsed=paths.parsed, split=paths.split,
                            normalizer=paths.normalizer)
    from .readers import check_appendable
    check_appendable(paths.runs, "the run history")  # refused now, not after the training
    results, computed = [], []
    for k in range(hp["ensemble"]):
        params = {**hp, "seed": hp["seed"] + k, "ensemble": 1}
        key = hashlib.sha256(json.dumps([inputs, params], sort_keys=True).encode()).hexdigest()
        checkpoint = paths.checkpoints / f"{key[:16]}.npz"
        label = (f" (model {k + 1}/{hp['ensemble']}, seed {params['seed']})"
                 if hp["ensemble"] > 1 else "")
        _check_checkpoint(checkpoint, resume, paths, f"train{label}")
        start = time.perf_counter()
        result, reused = _cache(paths).call(
            "train", _train, inputs=inputs, params=params, label=label,
            files={**files, "checkpoint": str(checkpoint), "progress": progress,
                   "label": f"train{label}"})
        computed.append(not reused)
        checkpoint.unlink(missing_ok=True)
        results.append((params, result, time.perf_counter() - start))
    metrics = _train_metrics(hp, results, paths)
    write_models(paths, [r.model for _, r, _ in results], metrics,
                 [{"seed": m["seed"], "best_epoch": r.best_epoch, "epochs": r.history}
                  for m, r, _ in results])
    if any(computed):  # one line of run history per training done, none for a cache reuse
        from .fileio import append_line
        from .runs import run_record, utc_now
        append_line(paths.runs, json.dumps(run_record(metrics, utc_now()), sort_keys=True))
    return metrics


def write_models(paths: Paths, models: list, metrics: dict, history: list[dict]) -> None:
    """The train stage's outputs, each written atomically: model.npz, history.json, metrics.json.
    Every path that trains (one model, an ensemble, the fold models) ends here."""
    from .nn import save_models
    with atomic_path(paths.model) as tmp:
        save_models(tmp, models, extra={"metrics": metrics})
    write_json(paths.history, history)
    write_json(paths.metrics, metrics)


def _check_checkpoint(path: Path, resume: bool, paths: Paths, name: str) -> None:
    """Keep a readable checkpoint to resume from and say so; drop an unreadable one (or any,
    without resume) so training starts afresh instead of failing."""
    if not path.exists():
        return
    if not resume:
        path.unlink()
        log.info("%s: --no-resume: discarded the checkpoint %s", name, paths.relative(path))
        return
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}  # reads every member, checking its CRC
        epoch, phase = int(arrays["epoch"]), int(arrays["phase"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        path.unlink(missing_ok=True)
        log.warning("%s: checkpoint %s is unreadable (%s); training from the start",
                    name, paths.relative(path), type(e).__name__)
        return
    log.info("%s: resuming from the checkpoint after epoch %d%s", name, epoch,
             " of the refit" if phase else "")


def _train_metrics(hp: dict, results, paths: Paths) -> dict:
    """metrics.json: the parameters, each member's figures and the ensemble's dev figures."""
    from .params import changed_from_default
    members = [{"seed": m["seed"], "dev_accuracy": r.dev_accuracy, "best_epoch": r.best_epoch,
                "train_seconds": round(r.seconds, 2)} for m, r, _ in results]
    dev_accuracy, dev = None, {}
    if results[0][1].dev_proba is not None:
        from .metrics import dev_metrics
        y_all = read_digits(paths.parsed)["train_y"]
        y_dev = y_all[read_split(paths.split, len(y_all))["dev_idx"]]
        proba = np.mean([r.dev_proba for _, r, _ in results], axis=0)  # (n_dev, 10)
        dev_accuracy = float(np.mean(proba.argmax(1) == y_dev))
        dev = dev_metrics(y_dev, proba)  # dev_loss, dev_size, per_class precision/recall
    params = json.loads(json.dumps(hp, default=list))
    return {"model": hp["model"], "params": params,
            "params_changed": json.loads(json.dumps(changed_from_default(hp), default=list)),
            "params_digest": hashlib.sha256(json.dumps(params, sort_keys=True).encode()
                                            ).hexdigest()[:12],
            "dev_accuracy": dev_accuracy, "members": members,
            "train_seconds": round(sum(r.seconds for _, r, _ in results), 2),
            "hyperparameters": results[0][1].hyperparameters, **dev}


def predict(paths: Paths, cfg: PredictConfig) -> dict:
    """Predict the test rows, write a validated submission.csv, keep a copy and a ledger line."""
    from .estimate import ledger_estimate
    from .readers import METRICS, read_json_or_warn
    from .submission import publish
    inputs, files = _inputs(paths, model=paths.model, parsed=paths.parsed,
                            normalizer=paths.normalizer)
    proba, _ = _cache(paths).call("predict", _predict, inputs=inputs, params=asdict(cfg),
                                  files=files)
    ids = read_digits(paths.parsed)["test_ids"]
    metrics = read_json_or_warn(paths.metrics, METRICS) or {}  # only for the ledger line
    sha = publish(paths.submission, paths.submission_history, paths.ledger, proba.argmax(1), ids,
                  {"model_sha256": inputs["model.npz"], "model": metrics.get("model"),
                   "params": {"train": metrics.get("params"), "predict": asdict(cfg)},
                   "dev_accuracy": metrics.get("dev_accuracy"),
                   **ledger_estimate(metrics, cfg.tta)},
                  rel=paths.relative)
    return {"path": paths.submission, "sha256": sha, "rows": len(ids),
            "dev_accuracy": metrics.get("dev_accuracy")}


def validate(paths: Paths, path: Path | None = None) -> dict:
    """Check a submission by the rule upload uses (submission.check_submission: the format,
    sample_submission.csv's ImageIds, labels not degenerate); say what made it."""
    from .estimate import estimate_words
    from .readers import submission_reference
    from .submission import check_submission, read_ledger
    path = Path(path) if path is not None else paths.submission
    labels = check_submission(path, **submission_reference(paths.parsed))
    sha = sha256_file(path)
    made = [e for e in read_ledger(paths.ledger) if e.get("kind") == "written"
            and e.get("sha256") == sha]
    made_by, note = None, None
    if made:
        e = made[-1]
        acc, oof = e.get("dev_accuracy"), e.get("oof_accuracy")
        made_by = f"made by {e.get('model') or 'a model'}" + (
            estimate_words(e) if isinstance(oof, float) else
            f", dev-split accuracy {100 * acc:.2f}%" if isinstance(acc, float) else "")
        if paths.model.exists() and e.get("model_sha256") not in (
                None, _cache(paths).file_digest(paths.model)):
            note = (f"the model now in {paths.relative(paths.model)} is not the one that made this "
                    f"file; `{command_hint('predict')}` writes its submission.")
    return {"path": path, "rows": len(labels), "sha256": sha, "made_by": made_by, "note": note}


def report(paths: Paths, cfg: PredictConfig) -> dict:
    """Write data/reports/<run>/ (figures, report.md, metrics.json) explaining the trained model;
    reuse an existing report made from the same files, parameters and code."""
    from . import report as report_mod
    from .cache import code_digests
    inputs, files = _inputs(paths, model=paths.model, history=paths.history,
                            metrics=paths.metrics, parsed=paths.parsed, split=paths.split,
                            normalizer=paths.normalizer)
    key = {"inputs": inputs, "predict": asdict(cfg),
           "code": code_digests(report_mod.write_report)}
    found = report_mod.find_report(paths.reports, key)
    if found is not None:
        report_mod.point_latest(paths.reports, found.name)
        log.info("report: reused %s", paths.relative(found))
        return {"path": found, "reused": True}
    log.info("report: drawing the figures")
    from .preprocess import normalize as apply_normalizer
    from .readers import HISTORY, METRICS
    from .readers import read_json as read_checked
    test_proba, _ = _cache(paths).call(
        "predict", _predict, params=asdict(cfg),
        inputs={k: inputs[k] for k in ("model.npz", "digits.npz", "normalizer.json")},
        files={k: files[k] for k in ("model", "parsed", "normalizer")})
    parsed = read_digits(paths.parsed)
    dev_idx = read_split(paths.split, len(parsed["train_y"]))["dev_idx"]
    dev_pixels = parsed["train_x"][dev_idx]  # (n_dev, 784) uint8
    out = report_mod.write_report(paths.reports, report_mod.ReportInputs(
        models=read_model(paths.model), history=read_checked(paths.history, HISTORY),
        metrics=read_checked(paths.metrics, METRICS), dev_pixels=dev_pixels,
        dev_x=apply_normalizer(dev_pixels, read_normalizer(paths.normalizer)),
        dev_y=parsed["train_y"][dev_idx], train_y=parsed["train_y"], test_proba=test_proba,
        key=key))
    log.info("report: wrote %s", paths.relative(out))
    return {"path": out, "reused": False}


def dev_accuracy(paths: Paths, *, tta: bool = False) -> float:
    """Accuracy of the saved model on the dev rows (e.g. with test-time augmentation)."""
    from .predict import predict_proba
    from .preprocess import normalize as apply_normalizer
    parsed = read_digits(paths.parsed)
    dev_idx = read_split(paths.split, len(parsed["train_y"]))["dev_idx"]
    x = apply_normalizer(parsed["train_x"][dev_idx], read_normalizer(paths.normalizer))
    proba = predict_proba(read_model(paths.model), x, tta=tta)
    return float(np.mean(proba.argmax(1) == parsed["train_y"][dev_idx]))
