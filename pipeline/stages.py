"""The pipeline's stages: each reads its input files, computes or reuses its result, writes outputs.

This is the only module that knows both the file layout and joblib.Memory. A stage's cache key is
the content digest of its input files, every parameter, and a digest of the package source it
depends on (joblib alone only notices edits to the decorated function, not to helpers it calls).
Each stage logs one line: reused from cache, or recomputed and why. The cached functions are
module-level and pure; file paths are passed for reading only and left out of the key.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np

from . import data as data_mod
from .config import ZIP_NAME, Paths, PredictConfig, SplitConfig, TrainConfig, UserError, asdict
from .fileio import atomic_path, read_json, sha256_file, write_json, write_npz, write_text
from .readers import read_digits, read_model, read_normalizer, read_split

log = logging.getLogger("pipeline")

PACKAGE = Path(__file__).resolve().parent
# The package source each stage's result depends on (files or directories under pipeline/).
STAGE_CODE = {
    "parse": ("data.py", "config.py"),
    "split": ("data.py",),
    "normalize": ("preprocess.py",),
    "train": ("train.py", "nn", "preprocess.py"),
    "predict": ("predict.py", "nn", "preprocess.py"),
    "report": ("report.py", "figures.py", "predict.py", "nn", "preprocess.py"),
}


@dataclass(frozen=True)
class Sources:
    """Where the competition data may come from, in the order they are tried after data/raw."""

    kaggle_input: Path = Path("/kaggle/input/digit-recognizer")  # a Kaggle Notebook's input
    mirror: Path | None = None  # a local directory holding digit-recognizer.zip (or the CSVs)
    use_api: bool = True  # finally, download through the Kaggle API


# ---------------------------------------------------------------- digests and cache bookkeeping


def file_digest(path: Path, paths: Paths) -> str:
    """sha256 of a file, remembered by (size, mtime) so unchanged files are not read again."""
    path = Path(path).resolve()
    st = path.stat()
    book_path = paths.cache / "digests.json"
    book = _read_json_or_empty(book_path)
    key = str(path)
    seen = book.get(key)
    if seen and seen["size"] == st.st_size and seen["mtime_ns"] == st.st_mtime_ns:
        return seen["sha256"]
    digest = sha256_file(path)
    book[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    _ensure_cache_dir(paths)
    write_json(book_path, book)
    return digest


def source_digest(source: Path, paths: Paths) -> str:
    """Digest of the competition data: the zip's, or of the three CSVs in a directory."""
    if source.is_file():
        return file_digest(source, paths)
    h = hashlib.sha256()
    for name in data_mod.MEMBERS:
        h.update(file_digest(source / name, paths).encode())
    return h.hexdigest()


def code_digests(stage: str) -> dict[str, str]:
    """sha256 (12 hex digits) of every source file the stage depends on, by relative path."""
    files = []
    for entry in STAGE_CODE[stage]:
        p = PACKAGE / entry
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return {str(f.relative_to(PACKAGE.parent)): hashlib.sha256(f.read_bytes()).hexdigest()[:12]
            for f in files if f.exists()}


def _combined(digests: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]


def _read_json_or_empty(path: Path) -> dict:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return {}


def _ensure_cache_dir(paths: Paths) -> None:
    """The cache holds pickles: keep it owner-only (it must be trusted, see the README)."""
    paths.cache.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.cache, 0o700)


def memory(paths: Paths) -> joblib.Memory:
    _ensure_cache_dir(paths)
    return joblib.Memory(paths.cache / "joblib", verbose=0)


def _why(stage: str, key: dict, paths: Paths) -> str:
    """Compare this call's key with the stage's previous one and say what changed."""
    last = _read_json_or_empty(paths.cache / "last" / f"{stage}.json")
    if not last:
        return "no earlier result"
    reasons = []
    for name, digest in key["inputs"].items():
        if last.get("inputs", {}).get(name) != digest:
            reasons.append(f"input {name} changed")
    for name, value in key["params"].items():
        before = last.get("params", {}).get(name, "<unset>")
        if before != value:
            reasons.append(f"parameter {name} changed {before} -> {value}")
    changed = sorted(f for f, d in key["code"].items() if last.get("code", {}).get(f) != d)
    if changed:
        more = " ..." if len(changed) > 3 else ""
        reasons.append(f"code changed ({', '.join(changed[:3])}{more})")
    return "; ".join(reasons) or "cache entry missing (cleared or unreadable)"


def cached_call(stage: str, func, paths: Paths, *, inputs: dict[str, str], params: dict,
                files: dict | None = None, label: str = "") -> tuple[object, bool]:
    """Call `func(files, inputs, params, code)` through joblib.Memory and log reuse or why not.

    `inputs` maps input names to content digests, `params` holds every parameter (JSON-able),
    `files` holds paths to read (not part of the key). Returns (result, reused from cache).
    """
    code = code_digests(stage)
    key = {"inputs": inputs, "params": params, "code": code}
    cached = memory(paths).cache(func, ignore=["files"])
    name = f"{stage}{label}"
    args = (files or {}, inputs, params, _combined(code))
    result = None
    if cached.check_call_in_cache(*args):
        result = _load_checked(cached, args, name, paths)
    else:
        log.info("%s: recomputing (%s)", name, _why(stage, key, paths))
    reused = result is not None
    if not reused:
        result = cached(*args)
        write_text(_seal_path(cached.call_and_shelve(*args)), joblib.hash(result))
    last = paths.cache / "last" / f"{stage}.json"
    write_json(last, key)
    return result, reused


def _seal_path(shelved) -> Path:
    """Beside a joblib entry's output.pkl: the digest of the result, written when stored."""
    return Path(shelved.store_backend.location, shelved.func_id, shelved.args_id, "digest")


def _load_checked(cached, args, name: str, paths: Paths):
    """The cached result when it loads and matches its sealed digest; else None, after saying so
    in one line and clearing the entry (a truncated or bit-flipped pickle is recomputed)."""
    shelved = cached.call_and_shelve(*args)  # a reference; nothing is loaded yet
    seal = _seal_path(shelved)
    try:
        result = shelved.get()
        sealed = seal.read_text().strip() if seal.is_file() else None
        problem = None if sealed == joblib.hash(result) else "its digest does not match"
    except Exception as e:  # unpickling a damaged file can raise almost anything
        problem = f"it cannot be read: {type(e).__name__}"
    if problem is None:
        log.info("%s: reused from cache", name)
        return result
    log.warning("%s: cache entry %s is corrupt (%s); recomputing", name,
                _rel(seal.parent, paths), problem)
    shelved.clear()
    return None


# ----------------------------------------------------------------------------- the stages


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
    train_idx = read_split(files["split"], len(x))["train_idx"]
    return fit_normalizer(x[train_idx])


def _train(files, inputs, params, code):
    from .train import train
    cfg = _train_config(params)
    x_train, y_train, x_dev, y_dev = _training_arrays(files)
    return train(cfg, x_train, y_train, x_dev, y_dev, progress=files["progress"],
                 checkpoint=Path(files["checkpoint"]), resume=True)


def _predict(files, inputs, params, code) -> np.ndarray:
    from .predict import predict_proba
    from .preprocess import normalize
    models = read_model(Path(files["model"]))
    test_x = read_digits(files["parsed"])["test_x"]
    x = normalize(test_x, read_normalizer(files["normalizer"]))
    return predict_proba(models, x, batch_size=params["batch_size"], tta=params["tta"])


def _train_config(d: dict) -> TrainConfig:
    return TrainConfig(**{**d, "hidden": tuple(d["hidden"])})


def _training_arrays(files):
    from .preprocess import normalize
    parsed = read_digits(files["parsed"])
    split = read_split(files["split"], len(parsed["train_y"]))
    norm = read_normalizer(files["normalizer"])
    x = normalize(parsed["train_x"], norm)  # (42000, 28, 28, 1) float32
    y = parsed["train_y"].astype(np.int64)
    t, d = split["train_idx"], split["dev_idx"]
    return x[t], y[t], x[d], y[d]


def locate_source(paths: Paths, sources: Sources) -> Path:
    """The competition data: data/raw's zip, a Kaggle Notebook input, the mirror, or the API."""
    if paths.raw_zip.exists() or paths.raw_zip.is_symlink():
        from .readers import require_file
        require_file(paths.raw_zip, f"Remove it and put the competition's {ZIP_NAME} there, "
                     f"or run `make data` to fetch it.")
        log.info("download: using %s (already there)", _rel(paths.raw_zip, paths))
        return paths.raw_zip
    if (sources.kaggle_input / "train.csv").is_file():
        log.info("download: using the Kaggle Notebook input %s", sources.kaggle_input)
        return sources.kaggle_input
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
            f"or set KAGGLE_MIRROR to a directory that holds it, "
            f"or provide Kaggle API credentials (see README, 'Credentials').")


def download(paths: Paths, sources: Sources, *, progress: bool = True) -> Path:
    """Locate the competition data, check it, and write the parsed uint8 arrays."""
    source = locate_source(paths, sources)
    digest = source_digest(source, paths)
    arrays, _ = cached_call("parse", _parse, paths, inputs={ZIP_NAME: digest},
                            params={}, files={"source": str(source), "progress": progress})
    write_npz(paths.parsed, **arrays)
    return paths.parsed


def split(paths: Paths, cfg: SplitConfig) -> Path:
    parsed = _require(paths.parsed, "make data", paths)
    result, _ = cached_call("split", _split, paths,
                            inputs={"digits.npz": file_digest(parsed, paths)},
                            params=asdict(cfg), files={"parsed": str(parsed)})
    write_npz(paths.split, **result)
    return paths.split


def normalize(paths: Paths) -> Path:
    parsed = _require(paths.parsed, "make data", paths)
    split_file = _require(paths.split, "make split", paths)
    result, _ = cached_call("normalize", _normalize, paths,
                            inputs={"digits.npz": file_digest(parsed, paths),
                                    "split.npz": file_digest(split_file, paths)},
                            params={}, files={"parsed": str(parsed), "split": str(split_file)})
    write_json(paths.normalizer, result)
    return paths.normalizer


def train(paths: Paths, cfg: TrainConfig, *, progress: bool = True, resume: bool = True) -> dict:
    """Train cfg.ensemble models (seeds seed, seed+1, ...), save them together, write metrics.

    Each model checkpoints every epoch; an interrupted run continues from its last checkpoint
    (the same result as an uninterrupted run), unless `resume` is False.
    """
    from .nn import save_models
    files = {"parsed": str(_require(paths.parsed, "make data", paths)),
             "split": str(_require(paths.split, "make split", paths)),
             "normalizer": str(_require(paths.normalizer, "make normalize", paths))}
    inputs = {name: file_digest(Path(p), paths) for name, p in
              (("digits.npz", files["parsed"]), ("split.npz", files["split"]),
               ("normalizer.json", files["normalizer"]))}
    results, computed = [], []
    for k in range(cfg.ensemble):
        member = cfg.replace(seed=cfg.seed + k, ensemble=1)
        params = asdict(member)
        key = hashlib.sha256(json.dumps([inputs, params, code_digests("train")],
                                        sort_keys=True).encode()).hexdigest()
        member_files = {**files, "checkpoint": str(paths.checkpoints / f"{key[:16]}.npz")}
        label = f" (model {k + 1}/{cfg.ensemble}, seed {member.seed})" if cfg.ensemble > 1 else ""
        _check_checkpoint(Path(member_files["checkpoint"]), resume, paths, f"train{label}")
        start = time.perf_counter()
        result, reused = cached_call("train", _train, paths, inputs=inputs, params=params,
                                     files={**member_files, "progress": progress}, label=label)
        computed.append(not reused)
        Path(member_files["checkpoint"]).unlink(missing_ok=True)
        results.append((member, result, time.perf_counter() - start))
    metrics = _train_metrics(cfg, results, paths)
    save_models(paths.model, [r.model for _, r, _ in results], extra={"metrics": metrics})
    write_json(paths.history, [{"seed": m.seed, "best_epoch": r.best_epoch, "epochs": r.history}
                               for m, r, _ in results])
    write_json(paths.metrics, metrics)
    if any(computed):  # one line of run history per training done, none for a cache reuse
        from .fileio import append_line
        from .report import run_record, utc_now
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


def _train_metrics(cfg: TrainConfig, results, paths: Paths) -> dict:
    y_dev = None
    if results[0][1].dev_proba is not None:
        y_all = read_digits(paths.parsed)["train_y"]
        y_dev = y_all[read_split(paths.split, len(y_all))["dev_idx"]]
    members = [{"seed": m.seed, "dev_accuracy": r.dev_accuracy, "best_epoch": r.best_epoch,
                "train_seconds": round(r.seconds, 2)} for m, r, _ in results]
    dev_accuracy, dev = None, {}
    if y_dev is not None:
        from .report import dev_metrics
        proba = np.mean([r.dev_proba for _, r, _ in results], axis=0)  # (n_dev, 10)
        dev_accuracy = float(np.mean(proba.argmax(1) == y_dev))
        dev = dev_metrics(y_dev, proba)  # dev_loss, dev_size, per_class precision/recall
    params = asdict(cfg)
    return {"model": cfg.model, "params": params,
            "params_digest": hashlib.sha256(json.dumps(params, sort_keys=True).encode()
                                            ).hexdigest()[:12],
            "dev_accuracy": dev_accuracy, "members": members,
            "train_seconds": round(sum(r.seconds for _, r, _ in results), 2),
            "hyperparameters": results[0][1].hyperparameters, **dev}


def predict(paths: Paths, cfg: PredictConfig) -> dict:
    """Predict the test rows, write a validated submission.csv, keep a copy and a ledger line."""
    from .readers import METRICS, read_json_or_none
    from .submission import publish
    files = {"model": str(_require(paths.model, "make train", paths)),
             "parsed": str(_require(paths.parsed, "make data", paths)),
             "normalizer": str(_require(paths.normalizer, "make normalize", paths))}
    inputs = {"model.npz": file_digest(Path(files["model"]), paths),
              "digits.npz": file_digest(Path(files["parsed"]), paths),
              "normalizer.json": file_digest(Path(files["normalizer"]), paths)}
    proba, _ = cached_call("predict", _predict, paths, inputs=inputs, params=asdict(cfg),
                           files=files)
    ids = read_digits(files["parsed"])["test_ids"]
    metrics = read_json_or_none(paths.metrics, METRICS) or {}
    sha = publish(paths.submission, paths.submission_history, paths.ledger, proba.argmax(1), ids,
                  {"params": {"train": metrics.get("params"), "predict": asdict(cfg)},
                   "dev_accuracy": metrics.get("dev_accuracy")}, rel=lambda p: _rel(p, paths))
    return {"path": paths.submission, "sha256": sha, "rows": len(ids),
            "dev_accuracy": metrics.get("dev_accuracy")}


def validate(paths: Paths, path: Path | None = None) -> dict:
    """Check a submission by the rule upload uses (submission.check_submission): the format,
    sample_submission.csv's ImageIds, a label distribution that is not degenerate."""
    from .readers import METRICS, read_json_or_none, submission_reference
    from .submission import check_submission
    path = Path(path) if path is not None else paths.submission
    labels = check_submission(path, **submission_reference(paths.parsed))
    metrics = read_json_or_none(paths.metrics, METRICS) or {}
    return {"path": path, "rows": len(labels), "sha256": sha256_file(path),
            "dev_accuracy": metrics.get("dev_accuracy"), "model": metrics.get("model")}


def report(paths: Paths, cfg: PredictConfig) -> dict:
    """Write data/reports/<run>/ (figures, report.md, metrics.json) explaining the trained model;
    reuse an existing report made from the same files, parameters and code."""
    from . import report as report_mod
    files = {"model.npz": _require(paths.model, "make train", paths),
             "history.json": _require(paths.history, "make train", paths),
             "metrics.json": _require(paths.metrics, "make train", paths),
             "digits.npz": _require(paths.parsed, "make data", paths),
             "split.npz": _require(paths.split, "make split", paths),
             "normalizer.json": _require(paths.normalizer, "make normalize", paths)}
    inputs = {name: file_digest(p, paths) for name, p in files.items()}
    key = {"inputs": inputs, "predict": asdict(cfg), "code": code_digests("report")}
    found = report_mod.find_report(paths.reports, key)
    if found is not None:
        report_mod.point_latest(paths.reports, found.name)
        log.info("report: reused %s", _rel(found, paths))
        return {"path": found, "reused": True}
    log.info("report: drawing the figures")
    from .preprocess import normalize as apply_normalizer
    from .readers import HISTORY, METRICS
    from .readers import read_json as read_checked
    test_proba, _ = cached_call(
        "predict", _predict, paths, params=asdict(cfg),
        inputs={k: inputs[k] for k in ("model.npz", "digits.npz", "normalizer.json")},
        files={"model": str(files["model.npz"]), "parsed": str(files["digits.npz"]),
               "normalizer": str(files["normalizer.json"])})
    parsed = read_digits(files["digits.npz"])
    dev_idx = read_split(files["split.npz"], len(parsed["train_y"]))["dev_idx"]
    dev_pixels = parsed["train_x"][dev_idx]  # (n_dev, 784) uint8
    out = report_mod.write_report(paths.reports, report_mod.ReportInputs(
        models=read_model(files["model.npz"]),
        history=read_checked(files["history.json"], HISTORY),
        metrics=read_checked(files["metrics.json"], METRICS), dev_pixels=dev_pixels,
        dev_x=apply_normalizer(dev_pixels, read_normalizer(files["normalizer.json"])),
        dev_y=parsed["train_y"][dev_idx], train_y=parsed["train_y"], test_proba=test_proba,
        key=key))
    log.info("report: wrote %s", _rel(out, paths))
    return {"path": out, "reused": False}


def _require(path: Path, make_target: str, paths: Paths) -> Path:
    from .readers import require_file  # a regular file: not a folder, a device or a FIFO
    require_file(path, f"Delete it and run `{make_target}` again.",
                 missing=f"{_rel(path, paths)} is missing; run `{make_target}` first.")
    return path


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
    for p in orphans:
        p.unlink(missing_ok=True)
    if orphans:
        log.info("removed %d temporary file(s) left by an interrupted run", len(orphans))
