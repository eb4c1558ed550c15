"""Build, validate and write submission.csv, and keep the submissions ledger.

A submission is exactly what Kaggle accepts for this competition: the header `ImageId,Label`,
one row per test image with ImageId 1..28000 in order (as in sample_submission.csv) and an
integer label 0-9, nothing else. Every file written here is validated before it is renamed into
place. The ledger (`ledger.jsonl`) is one JSON object per event, newest last.

`check_submission` is the one rule `validate` and `upload` share: the format above, then the
class distribution, which must not be degenerate (one label on most rows, or shares far from the
training labels'; see `degenerate`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import shutil
import time
from pathlib import Path

import numpy as np

from .config import N_CLASSES, N_TEST, UserError
from .fileio import append_line, atomic_path
from .readers import check_appendable, display, read_jsonl, require_file
from .schemas import LEDGER

HEADER = ("ImageId", "Label")
_ASCII_DIGITS = re.compile(r"[0-9]+")  # str.isdigit() also accepts '²' and '٣'


# Degenerate: one label on more than MAX_SHARE of the rows, or label shares whose total variation
# distance from train.csv's exceeds TV_LIMIT (plus twice what sampling alone gives on average
# for that many rows). Measured (README, Reliability): a 97% MLP is at 0.01; even a one-epoch
# MLP trained on 500 rows (23% dev accuracy) stays at 0.26 with at most 22% on one label; a
# model that uses only 5 of the 10 digits is at >= 0.5, one that always says 0 at 0.9.
MAX_SHARE = 0.5
TV_LIMIT = 0.45
BYTES_PER_ROW = 32  # "28000,9\n" is 8 bytes; anything far larger is not a submission


class SubmissionError(UserError):
    """A submission file Kaggle would reject."""


class DegenerateSubmission(SubmissionError):
    """A well-formed submission whose labels cannot come from a working model."""


def default_ids(n: int = N_TEST) -> np.ndarray:
    return np.arange(1, n + 1, dtype=np.int64)


def validate_submission(path: Path, image_ids: np.ndarray | None = None) -> np.ndarray:
    """Check a submission file; return its labels, or raise SubmissionError saying what is wrong.

    `image_ids` are the expected ImageIds in order (those of sample_submission.csv); by default
    1..28000.
    """
    path = Path(path)
    expected = default_ids() if image_ids is None else np.asarray(image_ids)
    fix = "Regenerate it with `make predict` (or `digits predict`)."
    limit = BYTES_PER_ROW * (len(expected) + 1) + 1024
    try:  # bounded before read: a folder, a device or a 2 GB file is refused without reading it
        size = require_file(path, fix, max_bytes=limit, missing=f"{path} does not exist. {fix}")
    except UserError as e:
        raise SubmissionError(str(e)) from None
    if size == 0:
        raise SubmissionError(f"{path} is empty: expected the header ImageId,Label and "
                              f"{len(expected)} rows. {fix}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        from .filekind import describe
        raise SubmissionError(f"{path} is {describe(path)}, not a submission: Kaggle expects a "
                              f"UTF-8 CSV file with the header ImageId,Label and one row per "
                              f"test image ({len(expected)} rows). {fix}") from None
    if text.startswith("\ufeff"):
        raise SubmissionError(f"{path} starts with a byte-order mark; Kaggle expects plain "
                              f"UTF-8 with the header ImageId,Label. {fix}")
    lines = text.splitlines()
    if not lines:
        raise SubmissionError(f"{path} is empty: expected the header ImageId,Label and "
                              f"{len(expected)} rows. {fix}")
    try:
        rows = list(csv.reader(lines))
    except csv.Error as e:  # e.g. a field over the csv module's 128 KiB limit
        raise SubmissionError(f"{path} is not a plain CSV ({e}). {fix}") from None
    if tuple(rows[0]) != HEADER:
        raise SubmissionError(f"{path}: header is {','.join(rows[0])!r}, expected exactly "
                              f"'ImageId,Label'. {fix}")
    body = rows[1:]
    if len(body) != len(expected):
        raise SubmissionError(f"{path} has {len(body)} rows, expected exactly {len(expected)} "
                              f"(one per test image). {fix}")
    labels = np.empty(len(body), np.int64)
    for i, row in enumerate(body):
        line = i + 2
        if len(row) != 2:
            raise SubmissionError(f"{path} line {line}: {len(row)} values, expected 2 "
                                  f"(ImageId,Label). {fix}")
        image_id, label = row
        if not _ASCII_DIGITS.fullmatch(image_id) or int(image_id) != expected[i]:
            raise SubmissionError(f"{path} line {line}: ImageId {image_id!r}, expected "
                                  f"{expected[i]} (ImageIds run 1..{len(expected)} in order, "
                                  f"each once). {fix}")
        if not (_ASCII_DIGITS.fullmatch(label) and len(label) == 1):
            raise SubmissionError(f"{path} line {line}: Label {label!r} is not an integer "
                                  f"0-{N_CLASSES - 1}. {fix}")
        labels[i] = int(label)
    return labels


def label_shares(labels: np.ndarray) -> np.ndarray:
    """(N,) labels 0-9 -> (10,) share of each label."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=N_CLASSES)[:N_CLASSES]
    return counts / max(counts.sum(), 1)


def degenerate(labels: np.ndarray, train_labels: np.ndarray | None = None) -> str | None:
    """Why these labels cannot be a working model's, or None: one label on most rows, or label
    shares far (total variation distance) from train.csv's (uniform when unknown), allowing for
    the sampling noise of a small file."""
    n = len(labels)
    if n == 0:
        return None
    ref = (label_shares(train_labels) if train_labels is not None and len(train_labels)
           else np.full(N_CLASSES, 1 / N_CLASSES))
    got = label_shares(labels)
    tv = 0.5 * float(np.abs(got - ref).sum())
    noise = 0.5 * float(np.sum(np.sqrt(2 * ref * (1 - ref) / (math.pi * n))))  # E[TV] by chance
    limit = TV_LIMIT + 2 * noise
    top = int(np.argmax(got))
    if tv <= limit and got[top] <= MAX_SHARE + 2 * noise:
        return None
    return (f"label {top} is on {100 * got[top]:.1f}% of the {n} rows (train.csv: "
            f"{100 * ref[top]:.1f}%; the limit is {100 * MAX_SHARE:.0f}%) and its label shares "
            f"are {tv:.2f} away from train.csv's (total variation; the limit is {limit:.2f})")


def check_submission(path: Path, image_ids: np.ndarray | None = None,
                     train_labels: np.ndarray | None = None, *,
                     allow_degenerate: bool = False) -> np.ndarray:
    """The one rule of `validate` and `upload`: a valid file (validate_submission) whose labels
    are not degenerate (unless allowed); -> its labels."""
    labels = validate_submission(path, image_ids)
    if not allow_degenerate and (problem := degenerate(labels, train_labels)) is not None:
        raise DegenerateSubmission(
            f"{path} is well-formed but degenerate: {problem}. Is the model broken (see "
            f"`digits runs`)? Retrain it; `digits upload --force` sends it anyway.")
    return labels


def render_submission(labels: np.ndarray, image_ids: np.ndarray) -> bytes:
    """The bytes of a submission file for these labels."""
    labels = np.asarray(labels)
    if labels.shape != image_ids.shape:
        raise SubmissionError(f"{len(labels)} predictions for {len(image_ids)} test images.")
    body = "\n".join(f"{i},{k}" for i, k in zip(image_ids.tolist(), labels.tolist()))
    return ("ImageId,Label\n" + body + "\n").encode("utf-8")


def _write_checked(path: Path, content: bytes, image_ids: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)
        validate_submission(tmp, image_ids)


def write_submission(path: Path, labels: np.ndarray, image_ids: np.ndarray) -> str:
    """Write labels as a submission, validated before it atomically replaces `path`; -> sha256."""
    content = render_submission(labels, image_ids)
    _write_checked(path, content, image_ids)
    return hashlib.sha256(content).hexdigest()


def publish(path: Path, history: Path, ledger: Path, labels: np.ndarray,
            image_ids: np.ndarray, entry: dict, rel=display) -> str:
    """Write the submission and, unless the last one written had the same bytes and model, a
    "written" ledger line (`entry` plus sha256 and the copy's file, shown by `rel`) and a
    timestamped copy in `history`; -> sha256.

    What can fail comes first (the ledger checked and read, tolerantly); right after `path` is
    replaced the ledger line is appended, so it is never lost; the copy comes last.
    """
    check_appendable(ledger, "the submissions ledger")
    content = render_submission(labels, image_ids)
    sha = hashlib.sha256(content).hexdigest()
    written = [e for e in read_ledger(ledger) if e.get("kind") == "written"]
    last = written[-1] if written else {}
    # a new file, or the same labels from another model: either way the ledger says who made it
    new = (last.get("sha256"), last.get("model_sha256")) != (sha, entry.get("model_sha256"))
    copy = history / f"{path.stem}-{timestamp()}{path.suffix}"
    _write_checked(path, content, image_ids)
    if new:
        append_ledger(ledger, {**entry, "kind": "written", "file": rel(copy), "sha256": sha})
        with atomic_path(copy) as tmp:
            tmp.write_bytes(content)
    return sha


def keep_copy(path: Path, history: Path, stamp: str) -> Path:
    """A timestamped copy of the submission, e.g. history/submission-20261121-174500.csv."""
    copy = history / f"{path.stem}-{stamp}{path.suffix}"
    with atomic_path(copy) as tmp:
        shutil.copyfile(path, tmp)
    return copy


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def append_ledger(path: Path, entry: dict) -> None:
    """Add one event to the ledger (UTC time added when missing)."""
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}
    append_line(path, json.dumps(entry, sort_keys=True))


def read_ledger(path: Path) -> list[dict]:
    """Every ledger event, oldest first; damaged lines are skipped with one warning, not fatal."""
    return read_jsonl(path, LEDGER)
