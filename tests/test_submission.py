"""The submission validator, writer and ledger."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.submission import (
    SubmissionError,
    append_ledger,
    read_ledger,
    validate_submission,
    write_submission,
)

IDS = np.arange(1, 28001)


def good_text(labels=None) -> str:
    labels = np.zeros(28000, int) if labels is None else labels
    return "ImageId,Label\n" + "".join(f"{i},{k}\n" for i, k in zip(IDS, labels))


def test_written_submission_validates(tmp_path):
    # what write_submission writes passes validation and round-trips the labels
    labels = np.arange(28000) % 10
    path = tmp_path / "submission.csv"
    sha = write_submission(path, labels, IDS)
    assert len(sha) == 64
    assert np.array_equal(validate_submission(path, IDS), labels)


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.replace("ImageId,Label", "id,label", 1), "header"),
    (lambda t: t.rsplit("\n", 2)[0] + "\n", "27999 rows"),
    (lambda t: t + "28001,0\n", "28001 rows"),
    (lambda t: t.replace("\n2,0\n", "\n1,0\n", 1), "ImageId '1', expected 2"),
    (lambda t: t.replace("\n5,0\n", "\n5,0.0\n", 1), "Label '0.0'"),
    (lambda t: t.replace("\n5,0\n", "\n5,seven\n", 1), "Label 'seven'"),
    (lambda t: t.replace("\n5,0\n", "\n5,10\n", 1), "Label '10'"),
    (lambda t: t.replace("\n5,0\n", "\n5,-1\n", 1), "Label '-1'"),
    (lambda t: t.replace("ImageId,Label", ",ImageId,Label", 1), "header"),
    (lambda t: "", "empty"),
])
def test_bad_submissions_are_refused(tmp_path, mutate, message):
    # each kind of malformed submission gets a SubmissionError naming the problem
    path = tmp_path / "s.csv"
    path.write_text(mutate(good_text()))
    with pytest.raises(SubmissionError, match=message):
        validate_submission(path, IDS)


def test_invalid_labels_never_replace_a_good_file(tmp_path):
    # writing out-of-range labels fails and leaves the previous submission byte-identical
    path = tmp_path / "submission.csv"
    write_submission(path, np.zeros(28000, int), IDS)
    before = path.read_bytes()
    with pytest.raises(SubmissionError):
        write_submission(path, np.full(28000, 11), IDS)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_ledger_appends_and_reads(tmp_path):
    # ledger entries come back in order with a UTC time added
    ledger = tmp_path / "ledger.jsonl"
    append_ledger(ledger, {"kind": "written", "sha256": "a"})
    append_ledger(ledger, {"kind": "upload", "sha256": "a"})
    entries = read_ledger(ledger)
    assert [e["kind"] for e in entries] == ["written", "upload"]
    assert entries[0]["time"].endswith("Z")
