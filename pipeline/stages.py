"""The pipeline's stages: each reads its input files, computes or reuses its result, writes outputs.

This is the only module that knows the file layout. Each stage names its input files (their
content digests key the cache), its parameters and a pure compute function; `cache.Cache` does
the rest (joblib.Memory, the code digest, the log line saying reused or recomputed and why). The
compute functions are module-level and pure; file paths are passed for reading only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import data as data_mod
from .cache import Cache
from .config import ZIP_NAME, Paths, UserError, asdict, command_hint
from .fileio import (
    atomic_path,
    read_json,
    read_json_dict,
    read_npz,
    sha256_file,
    write_json,
    write_npz,
)
from .params import PredictConfig, SplitConfig, TrainConfig, resolve

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class Sources:
    """Where the competition data may come from, in the order they are tried after data/raw."""

    kaggle_input: Path = Path("/kaggle/input/digit-recognizer")  # a Kaggle Notebook's input
    mirror: Path | None = None  # a local directory holding digit-recognizer.zip (or the CSVs)
    use_api: bool = True  # finally, download through the Kaggle API


# ----------------------------------------------------------------------------- compute


def _parse(files, inputs, params, code) -> dict[str, np.ndarray]:
    return data_mod.read_competition(Path(files["source"]), progress=files["progress"]).arrays()


def _split(files, inputs, params, code) -> dict[str, np.ndarray]:
    y = read_npz(files["parsed"])["train_y"]
    train_idx, dev_idx = data_mod.stratified_split(y, params["dev_fraction"], params["seed"],
                                                   params["max_train"])
    return {"train_idx": train_idx, "dev_idx": dev_idx}


def _normalize(files, inputs, params, code) -> dict[str, float]:
    from .preprocess import fit_normalizer
    x = read_npz(files["parsed"])["train_x"]
    return fit_normalizer(x[read_npz(files["split"])["train_idx"]])


def _train(files, inputs, params, code):
    from .preprocess import normalize
    from .train import train
    parsed, split = read_npz(files["parsed"]), read_npz(files["split"])
    x = normalize(parsed["train_x"], read_json(files["normalizer"]))  # (42000, 28, 28, 1) float32
    y = parsed["train_y"].astype(np.int64)
    t, d = split["train_idx"], split["dev_idx"]
    return train(TrainConfig(**params), x[t], y[t], x[d], y[d], progress=files["progress"],
                 checkpoint=Path(files["checkpoint"]), resume=True, label=files["label"])


def _predict(files, inputs, params, code) -> np.ndarray:
    from .nn import load_models
    from .predict import predict_proba
    from .preprocess import normalize
    models = load_models(Path(files["model"]))
    x = normalize(read_npz(files["parsed"])["test_x"], read_json(files["normalizer"]))
    return predict_proba(models, x, batch_size=params["batch_size"], tta=params["tta"])


# ----------------------------------------------------------------------------- the stages


def _cache(paths: Paths) -> Cache:
    return Cache(paths.cache if paths.use_cache else None)


def _inputs(paths: Paths, **files: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(digests by file name, paths by key) of a stage's input files, each required to exist."""
    cache = _cache(paths)
    need = {"parsed": "download", "split": "split", "normalizer": "normalize", "model": "train",
            "history": "train", "metrics": "train"}
    for key, path in files.items():
        if not path.exists():
            raise UserError(f"{_rel(path, paths)} is missing; run `{command_hint(need[key])}` "
                            f"first.")
    return ({p.name: cache.file_digest(p) for p in files.values()},
            {k: str(p) for k, p in files.items()})


def locate_source(paths: Paths, sources: Sources) -> Path:
    """The competition data: data/raw's zip, a Kaggle Notebook input, the mirror, or the API."""
    if paths.raw_zip.exists():
        log.info("download: using %s (already there)", _rel(paths.raw_zip, paths))
        return paths.raw_zip
    if (sources.kaggle_input / "train.csv").is_file():
        log.info("download: using the Kaggle Notebook input %s", sources.kaggle_input)
        return sources.kaggle_input
    if (sources.kaggle_input / ZIP_NAME).is_file():  # read in place: the input is read-only
        log.info("download: using the Kaggle Notebook input %s", sources.kaggle_input / ZIP_NAME)
        return sources.kaggle_input / ZIP_NAME
    if sources.mirror is not None:
        zip_path = sources.mirror / ZIP_NAME
        if zip_path.is_file():
            data_mod.check_zip(zip_path)
            with atomic_path(paths.raw_zip) as tmp:
                shutil.copyfile(zip_path, tmp)
            log.info("download: copied %s from the mirror %s", ZIP_NAME, sources.mirror)
            return paths.raw_zip
        if (sources.mirror / "train.csv").is_file():
            log.info("download: using the CSVs in the mirror %s", sources.mirror)
            return sources.mirror
        raise data_mod.DataError(f"The mirror {sources.mirror} (KAGGLE_MIRROR) holds neither "
                                 f"{ZIP_NAME} nor train.csv/test.csv/sample_submission.csv.")
    if not sources.use_api:
        raise data_mod.DataError(_no_data_message(paths))
    from . import kaggle_io
    log.info("download: fetching %s through the Kaggle API", ZIP_NAME)
    return kaggle_io.download_competition(paths.raw, progress=True)


def _no_data_message(paths: Paths) -> str:
    return (f"No competition data found. Put {ZIP_NAME} in {_rel(paths.raw, paths)}/, "
            f"or set KAGGLE_MIRROR to a directory that holds it (or the three CSVs), "
            f"or attach the competition to your Kaggle Notebook, "
            f"or provide Kaggle API credentials (see README, 'Credentials').")


def download(paths: Paths, sources: Sources, *, progress=True) -> Path:
    """Locate the competition data, check it, and write the parsed uint8 arrays."""
    source = locate_source(paths, sources)
    digest = source_digest(source, paths)
    bar = progress in (True, "bar")  # a parsing bar in a terminal only, not in a log
    arrays, _ = _cache(paths).call("parse", _parse, inputs={ZIP_NAME: digest}, params={},
                                   files={"source": str(source), "progress": bar})
    write_npz(paths.parsed, **arrays)
    return paths.parsed


def source_digest(source: Path, paths: Paths) -> str:
    """Digest of the competition data: the zip's, or of the three CSVs in a directory."""
    cache = _cache(paths)
    if source.is_file():
        return cache.file_digest(source)
    h = hashlib.sha256()
    for name in data_mod.MEMBERS:
        h.update(cache.file_digest(source / name).encode())
    return h.hexdigest()


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
    from .nn import save_models
    hp = resolve(cfg)  # every parameter checked, the model's defaults filled in
    if hp["ensemble"] > 1:  # members through joblib.Parallel, resumed member by member
        from .ensemble import train_ensemble
        from .parallel import ParallelConfig
        return train_ensemble(paths, hp, par or ParallelConfig())
    inputs, files = _inputs(paths, parsed=paths.parsed, split=paths.split,
                            normalizer=paths.normalizer)
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
    with atomic_path(paths.model) as tmp:
        save_models(tmp, [r.model for _, r, _ in results], extra={"metrics": metrics})
    write_json(paths.history, [{"seed": m["seed"], "best_epoch": r.best_epoch,
                                "epochs": r.history} for m, r, _ in results])
    write_json(paths.metrics, metrics)
    if any(computed):  # one line of run history per training done, none for a cache reuse
        from .fileio import append_line
        from .runs import run_record, utc_now
        append_line(paths.runs, json.dumps(run_record(metrics, utc_now()), sort_keys=True))
    return metrics


def _check_checkpoint(path: Path, resume: bool, paths: Paths, name: str) -> None:
    """Keep a readable checkpoint to resume from and say so; drop an unreadable one (or any,
    without resume) so training starts afresh instead of failing."""
    if not path.exists():
        return
    if not resume:
        path.unlink()
        log.info("%s: --no-resume: discarded the checkpoint %s", name, _rel(path, paths))
        return
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}  # reads every member, checking its CRC
        epoch, phase = int(arrays["epoch"]), int(arrays["phase"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        path.unlink(missing_ok=True)
        log.warning("%s: checkpoint %s is unreadable (%s); training from the start",
                    name, _rel(path, paths), type(e).__name__)
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
        y_dev = read_npz(paths.parsed)["train_y"][read_npz(paths.split)["dev_idx"]]
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
    from .submission import append_ledger, keep_copy, read_ledger, timestamp, write_submission
    inputs, files = _inputs(paths, model=paths.model, parsed=paths.parsed,
                            normalizer=paths.normalizer)
    proba, _ = _cache(paths).call("predict", _predict, inputs=inputs, params=asdict(cfg),
                                  files=files)
    ids = read_npz(paths.parsed)["test_ids"]
    sha = write_submission(paths.submission, proba.argmax(1), ids)
    metrics = read_json_dict(paths.metrics)
    written = [e for e in read_ledger(paths.ledger) if e.get("kind") == "written"]
    if not written or written[-1].get("sha256") != sha:
        copy = keep_copy(paths.submission, paths.submission_history, timestamp())
        append_ledger(paths.ledger, {
            "kind": "written", "file": _rel(copy, paths), "sha256": sha,
            "model_sha256": inputs["model.npz"], "model": metrics.get("model"),
            "params": {"train": metrics.get("params"), "predict": asdict(cfg)},
            "dev_accuracy": metrics.get("dev_accuracy"),
            "oof_accuracy": metrics.get("oof_accuracy"), "folds": metrics.get("folds"),
            "oof_accuracy_ci95": metrics.get("oof_accuracy_ci95")})
    return {"path": paths.submission, "sha256": sha, "rows": len(ids),
            "dev_accuracy": metrics.get("dev_accuracy")}


def validate(paths: Paths, path: Path | None = None) -> dict:
    """Validate a submission against sample_submission.csv's ImageIds; say what made it."""
    from .submission import read_ledger, validate_submission
    path = Path(path) if path is not None else paths.submission
    ids = read_npz(paths.parsed)["test_ids"] if paths.parsed.exists() else None
    labels = validate_submission(path, ids)
    sha = sha256_file(path)
    made = [e for e in read_ledger(paths.ledger) if e.get("kind") == "written"
            and e.get("sha256") == sha]
    made_by, note = None, None
    if made:
        e = made[-1]
        acc, oof = e.get("dev_accuracy"), e.get("oof_accuracy")
        made_by = f"made by {e.get('model') or 'a model'}" + (
            _oof_words(e) if isinstance(oof, float) else
            f", dev-split accuracy {100 * acc:.2f}%" if isinstance(acc, float) else "")
        if paths.model.exists() and e.get("model_sha256") not in (
                None, _cache(paths).file_digest(paths.model)):
            note = (f"the model now in {_rel(paths.model, paths)} is not the one that made this "
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
        log.info("report: reused %s", _rel(found, paths))
        return {"path": found, "reused": True}
    log.info("report: drawing the figures")
    from .nn import load_models
    from .preprocess import normalize as apply_normalizer
    test_proba, _ = _cache(paths).call(
        "predict", _predict, params=asdict(cfg),
        inputs={k: inputs[k] for k in ("model.npz", "digits.npz", "normalizer.json")},
        files={k: files[k] for k in ("model", "parsed", "normalizer")})
    parsed, dev_idx = read_npz(paths.parsed), read_npz(paths.split)["dev_idx"]
    dev_pixels = parsed["train_x"][dev_idx]  # (n_dev, 784) uint8
    out = report_mod.write_report(paths.reports, report_mod.ReportInputs(
        models=load_models(paths.model), history=read_json(paths.history),
        metrics=read_json(paths.metrics), dev_pixels=dev_pixels,
        dev_x=apply_normalizer(dev_pixels, read_json(paths.normalizer)),
        dev_y=parsed["train_y"][dev_idx], train_y=parsed["train_y"], test_proba=test_proba,
        key=key))
    log.info("report: wrote %s", _rel(out, paths))
    return {"path": out, "reused": False}


def dev_accuracy(paths: Paths, *, tta: bool = False) -> float:
    """Accuracy of the saved model on the dev rows (e.g. with test-time augmentation)."""
    from .nn import load_models
    from .predict import predict_proba
    from .preprocess import normalize as apply_normalizer
    parsed, dev_idx = read_npz(paths.parsed), read_npz(paths.split)["dev_idx"]
    x = apply_normalizer(parsed["train_x"][dev_idx], read_json(paths.normalizer))
    proba = predict_proba(load_models(paths.model), x, tta=tta)
    return float(np.mean(proba.argmax(1) == parsed["train_y"][dev_idx]))


# ------------------------------------------------ cross-validation stages (see cvstages.py)


def cv(paths: Paths, cfg: TrainConfig, cv_cfg, par) -> dict:
    """K-fold CV of cfg over the labelled rows: data/models/cv.json with the OOF estimate."""
    from . import cvstages
    return cvstages.cv(paths, cfg, cv_cfg, par)


def train_folds(paths: Paths, cfg: TrainConfig, cv_cfg, par) -> dict:
    """The K fold models as the submission's model.npz, with the OOF estimate in metrics."""
    from . import cvstages
    return cvstages.train_folds(paths, cfg, cv_cfg, par)


def _oof_words(e: dict) -> str:
    """", out-of-fold accuracy 99.40% (95% CI 99.31-99.48%, 5 folds)" of a ledger entry."""
    lo, hi = e.get("oof_accuracy_ci95") or (float("nan"), float("nan"))
    return (f", out-of-fold accuracy {100 * e['oof_accuracy']:.2f}% (95% CI {100 * lo:.2f}-"
            f"{100 * hi:.2f}%, {e.get('folds')} folds)")


def sweep(paths: Paths, cfg: TrainConfig, cv_cfg, par, points: list[dict]) -> list[dict]:
    """CV of cfg for each grid point, ranked into data/models/sweep.json."""
    from . import cvstages
    return cvstages.sweep(paths, cfg, cv_cfg, par, points)


# ----------------------------------------------------------------------------------------------


def _rel(path: Path, paths: Paths) -> str:
    try:
        return str(Path(path).resolve().relative_to(paths.root))
    except ValueError:
        return str(path)


@contextlib.contextmanager
def project_lock(paths: Paths, *, wait: bool = True):
    """Hold an exclusive lock on the project's data so two runs never write the same outputs."""
    paths.data.mkdir(parents=True, exist_ok=True)
    with open(paths.data / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise UserError("Another digits run holds the project lock (data/.lock); "
                                "wait for it to finish.") from None
            log.warning("another digits run is in progress; waiting for it to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            _sweep_orphans(paths)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _sweep_orphans(paths: Paths) -> None:
    """Delete the temporary files (`.NAME.*.tmp`, see fileio.atomic_path) a killed run left.

    Called with the project lock held, so no other run is writing them.
    """
    orphans = [p for root in (paths.data, paths.submissions) if root.is_dir()
               for p in root.rglob(".*.tmp") if p.is_file()]
    if paths.output is not None and paths.output.is_dir():  # a notebook's output: ours only
        orphans += [p for p in paths.output.glob(f".{paths.submission.name}.*.tmp")]
    for p in orphans:
        p.unlink(missing_ok=True)
    if orphans:
        log.info("removed %d temporary file(s) left by an interrupted run", len(orphans))
