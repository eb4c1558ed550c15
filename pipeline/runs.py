"""The run history, `data/runs.jsonl`: one record per training computed, and `digits runs`."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from .text import table


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def run_name(metrics: dict, when: dt.datetime) -> str:
    """`<UTC time>-<model>-<params digest>`, e.g. 20240601T120301Z-cnn-68287b67f9bb."""
    model, digest = metrics.get("model", "model"), metrics.get("params_digest", "na")
    return f"{when:%Y%m%dT%H%M%SZ}-{model}-{digest}"


def run_record(metrics: dict, when: dt.datetime) -> dict:
    """One line of data/runs.jsonl for a training run the train stage computed."""
    return {"time": when.isoformat(), "model": metrics.get("model"),
            "params": metrics.get("params_changed", {}),
            "hyperparameters": metrics.get("hyperparameters"),
            "params_digest": metrics.get("params_digest"),
            "dev_accuracy": metrics.get("dev_accuracy"), "dev_loss": metrics.get("dev_loss"),
            "train_seconds": metrics.get("train_seconds"),
            "members": [m.get("seed") for m in metrics.get("members", [])]}


def append_cv_record(path: Path, summary: dict, extra: dict) -> None:
    """A cross-validation's line (`"kind": "cv"`, its OOF figures; transductive, with the
    threshold and the pseudo-labelled rows, when it used pseudo-labels) added to `path`."""
    from .fileio import append_line
    rec = run_record({**summary, "dev_accuracy": None}, utc_now())
    rec.update({"kind": "cv", "folds": summary["folds"], "oof_accuracy": summary["oof_accuracy"],
                "oof_accuracy_ci95": summary["oof_accuracy_ci95"],
                "oof_loss": summary["oof_loss"]})
    for key in ("transductive", "pseudo_threshold", "pseudo_rows"):
        if key in summary:
            rec[key] = summary[key]
    rec.update(extra)
    append_line(path, json.dumps(rec, sort_keys=True))


def read_runs(path: Path) -> list[dict]:
    """The records of data/runs.jsonl, oldest first; damaged lines are skipped with one warning."""
    from .readers import read_jsonl
    from .schemas import RUNS
    return read_jsonl(path, RUNS)


def runs_table(runs: list[dict]) -> str:
    """Past training runs as an aligned text table, oldest first."""
    head = ("when (UTC)", "model", "accuracy", "train time", "members", "params (changed)")
    rows = []
    for r in runs:
        when = str(r.get("time", ""))[:16].replace("T", " ")
        acc = r.get("dev_accuracy")
        secs = r.get("train_seconds")
        params = " ".join(f"{k}={_short(v)}" for k, v in sorted((r.get("params") or {}).items()))
        shown = "n/a" if acc is None else f"{100 * acc:.2f}% dev"
        if r.get("oof_accuracy") is not None:  # a cross-validation (cvstages.py)
            shown = f"{100 * r['oof_accuracy']:.2f}% OOF"
        rows.append((when, str(r.get("model", "?")), shown,
                     "n/a" if secs is None else _duration(secs),
                     str(len(r.get("members") or [])), params or "defaults"))
    return table(list(head), [list(r) for r in rows])


def _short(v) -> str:
    return ",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"
