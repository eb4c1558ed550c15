"""Build, validate and write submission.csv, and keep the submissions ledger.

A submission is exactly what Kaggle accepts for this competition: the header `ImageId,Label`,
one row per test image with ImageId 1..28000 in order (as in sample_submission.csv) and an
integer label 0-9, nothing else. Every file written here is validated before it is renamed into
place. The ledger (`ledger.jsonl`) is one JSON object per event, newest last.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np

from .config import N_CLASSES, N_TEST, UserError
from .fileio import append_line, atomic_path, sha256_file

HEADER = ("ImageId", "Label")
_ASCII_DIGITS = re.compile(r"[0-9]+")  # str.isdigit() also accepts '²' and '٣'


class SubmissionError(UserError):
    """A submission file Kaggle would reject."""


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
    if not path.is_file():
        raise SubmissionError(f"{path} does not exist. {fix}")
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


def write_submission(path: Path, labels: np.ndarray, image_ids: np.ndarray) -> str:
    """Write labels as a submission, validated before it atomically replaces `path`; -> sha256."""
    labels = np.asarray(labels)
    if labels.shape != image_ids.shape:
        raise SubmissionError(f"{len(labels)} predictions for {len(image_ids)} test images.")
    body = "\n".join(f"{i},{k}" for i, k in zip(image_ids.tolist(), labels.tolist()))
    with atomic_path(path) as tmp:
        tmp.write_text("ImageId,Label\n" + body + "\n", encoding="utf-8")
        validate_submission(tmp, image_ids)
    return sha256_file(path)


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
    """Every ledger event, oldest first; unreadable lines are skipped, not fatal."""
    if not Path(path).is_file():
        return []
    entries = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries
