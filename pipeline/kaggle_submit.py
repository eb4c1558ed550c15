"""Submitting to Kaggle: check today's submission limit, upload a validated submission, wait
for its public score and record it in the ledger; list the submissions, ledger and Kaggle joined.

Built on `kaggle_io` (credentials, connection, retries, error messages), like it through the
real `kaggle` package alone. Validating the file is `submission.validate_submission`'s job.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import COMPETITION
from .fileio import sha256_file
from .kaggle_io import (
    KaggleError,
    Retry,
    Sleep,
    _connect,
    _credentials,
    _kaggle_prints,
    _with_retry,
)

log = logging.getLogger(__name__)

# what KaggleApi.competition_submit answers when the file could not be put in storage
UPLOAD_FAILED = "Could not submit to competition"
FINAL_STATUSES = ("COMPLETE", "ERROR")
RETRY = Retry()  # the default: kaggle_io's


@dataclass(frozen=True)
class Poll:
    """How to wait for Kaggle to score an upload."""

    interval: float = 5.0  # seconds between looks at the submission list
    timeout: float = 600.0  # give up waiting (the submission stays on Kaggle) after this long



def upload_submission(path: Path, message: str, *, ledger: Path, force: bool = False,
                      image_ids=None, train_labels=None, competition: str = COMPETITION,
                      poll: Poll = Poll(),
                      retry: Retry = RETRY, sleep: Sleep = time.sleep,
                      clock: Callable[[], float] = time.monotonic, progress: bool = True) -> dict:
    """Validate `path`, submit it, wait for its public score, record it in `ledger`; return that.

    Nothing is sent for an invalid file (the rule of `digits validate`), nor, unless `force`,
    for a degenerate one or one byte-identical to an earlier upload. Raises KaggleError when the
    file could not be submitted, when Kaggle scored it ERROR,
    or when no score came within `poll.timeout` (the entry is recorded in all but the first case).
    """
    from .readers import check_appendable
    from .submission import append_ledger, check_submission, read_ledger

    path = Path(path)
    if not message.strip():
        raise KaggleError("A submission needs a message describing it (-m MESSAGE).")
    check_submission(path, image_ids, train_labels, allow_degenerate=force)
    check_appendable(ledger, "the record of this upload")
    sha = sha256_file(path)
    if not force:
        for old in reversed(read_ledger(ledger)):
            if old.get("kind") == "upload" and old.get("sha256") == sha and old.get("ref"):
                raise KaggleError(
                    f"{path} is byte-identical to the file uploaded at {old.get('time')} as "
                    f"submission {old['ref']} (status {old.get('status')}, public score "
                    f"{old.get('public_score')}); pass --force to upload it again.")
    by_hand = f"Or upload {path} by hand at https://www.kaggle.com/c/{competition}/submit."
    creds = _credentials(by_hand)
    api = _connect(creds, retry, sleep, by_hand)

    def submit():
        with _kaggle_prints(creds, keep=progress):
            return api.competition_submit(str(path), message, competition, quiet=not progress)

    left = _submissions_left(api, creds, competition, retry, sleep)
    response = _with_retry(submit, f"submitting {path.name}", creds, retry, sleep,
                           competition=competition, resend_safe=False)
    if response.message == UPLOAD_FAILED:
        raise KaggleError(f"Could not submit: uploading {path} to Kaggle's storage failed (the "
                          f"reason is printed above); nothing was submitted. Run this again.")
    entry = {"kind": "upload", "competition": competition, "file": _display(path, ledger),
             "sha256": sha, "message": message, "ref": response.ref or None,
             "date": _iso(dt.datetime.now(dt.timezone.utc)),  # Kaggle's own, once it lists it
             "status": "PENDING", "public_score": None,
             "left_today": None if left is None else max(left - 1, 0)}

    def seen(sub) -> None:
        entry["date"] = _iso(sub.date) or entry["date"]

    try:
        if entry["ref"] is None:
            entry["ref"] = _find_ref(api, creds, competition, message, retry, sleep)
        sub = _wait_for_score(api, creds, competition, entry["ref"], poll, retry, sleep, clock,
                              progress, seen)
        entry["status"] = sub.status.name
        entry["public_score"] = sub.public_score or None
        if entry["status"] == "ERROR":
            entry["error"] = sub.error_description or None
    finally:  # recorded even on a timeout or Ctrl-C: the file is on Kaggle now
        append_ledger(ledger, entry)
    if entry["status"] == "ERROR":
        raise KaggleError(f"Kaggle could not score submission {entry['ref']}: "
                          f"{entry.get('error') or 'no reason given'}. It is recorded in {ledger}.")
    return entry


def _submissions_left(api, creds, competition, retry, sleep) -> int | None:
    """How many submissions Kaggle allows today, said in a log line; None when the installed
    kaggle package or the server cannot tell (the upload goes ahead). Raises KaggleError when
    none are left, before anything is sent."""
    get = getattr(api, "competition_get_submission_limits", None)
    if get is None:
        log.info("Kaggle: this kaggle package cannot tell how many submissions are left today "
                 "(a newer one can: `pip install -U kaggle`); uploading.")
        return None

    def call():
        with _kaggle_prints(creds):
            return get(competition)

    try:
        limits = _with_retry(call, "checking today's submission limit", creds, retry, sleep,
                             competition=competition)
    except KaggleError as e:
        log.warning("Kaggle: could not learn how many submissions are left today (%s); "
                    "uploading anyway.", str(e).split(". ")[0])
        return None
    left, today = int(limits.num_allowed_now or 0), int(limits.num_today or 0)
    total = int(limits.num_total or 0)
    if left == 0 and limits.limited_by_total:
        raise KaggleError(f"Kaggle allows no more submissions to {competition}: the lifetime "
                          f"limit is reached ({total} made). Nothing was sent.")
    if left == 0 and (today or total):
        raise KaggleError(f"Kaggle allows no more submissions to {competition} today: {today} "
                          f"made today, which is the daily limit. It resets at 00:00 UTC; "
                          f"upload then. Nothing was sent.")
    if left == 0:  # what Kaggle answers before you join: the submission itself will say
        log.warning("Kaggle: no submissions allowed yet: it says this before you join the "
                    "competition (https://www.kaggle.com/c/%s/rules); trying anyway.", competition)
        return None
    log.info("Kaggle: %d submission%s left today (%d made today); uploading.", left,
             "" if left == 1 else "s", today)
    return left


def _display(path: Path, ledger: Path) -> str:
    """`path` relative to the project root (the ledger's grandparent) when it lies inside it."""
    try:
        return str(path.resolve().relative_to(Path(ledger).resolve().parent.parent))
    except ValueError:
        return str(path)


def _list(api, creds, competition, retry, sleep) -> list:
    def call():
        with _kaggle_prints(creds):
            return api.competition_submissions(competition) or []
    return _with_retry(call, "listing submissions", creds, retry, sleep, competition=competition)


def _find_ref(api, creds, competition, message, retry, sleep) -> int:
    """The ref of our newest submission, for a server that did not return one on creation."""
    for sub in _list(api, creds, competition, retry, sleep):
        if sub.description == message:
            return sub.ref
    raise KaggleError(f"Kaggle accepted the submission but it is not in the submission list; "
                      f"check {_submissions_page(competition)}.")


def _submissions_page(competition: str) -> str:
    return f"https://www.kaggle.com/c/{competition}/submissions"


def _wait_for_score(api, creds, competition, ref, poll, retry, sleep, clock, progress,
                    seen=lambda sub: None):
    """Poll the submission list until submission `ref` is COMPLETE or ERROR, or time runs out;
    `seen(sub)` is called each time Kaggle lists it."""
    from tqdm import tqdm

    start = clock()
    with tqdm(desc=f"Kaggle is scoring submission {ref}", file=sys.stderr, disable=not progress,
              bar_format="{desc} [{elapsed}]") as bar:
        while True:
            sub = next((s for s in _list(api, creds, competition, retry, sleep) if s.ref == ref),
                       None)
            if sub is not None:
                seen(sub)
            status = sub.status.name if sub is not None else "PENDING"
            bar.set_description(f"Kaggle is scoring submission {ref}: {status}")
            if status in FINAL_STATUSES:
                return sub
            if clock() - start + poll.interval >= poll.timeout:
                raise KaggleError(
                    f"Kaggle had not scored submission {ref} after {poll.timeout:.0f} s (status "
                    f"{status}); it is recorded in the ledger. See `digits submissions` later, or "
                    f"{_submissions_page(competition)}.")
            sleep(poll.interval)


def list_submissions(ledger: Path, *, competition: str = COMPETITION, remote: bool = True,
                     retry: Retry = RETRY, sleep: Sleep = time.sleep) -> list[dict]:
    """The ledger's uploads joined by ref with Kaggle's submission list, newest first.

    Each row: time, ref, status, public_score, message, file, sha256 (None where unknown). Status
    is Kaggle's when `remote`, else the one recorded; an upload Kaggle no longer lists keeps its
    recorded status with " (not on Kaggle)".
    """
    from .submission import read_ledger

    ours = {e["ref"]: e for e in read_ledger(ledger) if e.get("kind") == "upload" and e.get("ref")}
    rows = []
    if remote:
        ledger_only = "Or pass --offline to see the ledger alone."
        creds = _credentials(ledger_only)
        api = _connect(creds, retry, sleep, ledger_only)
        for sub in _list(api, creds, competition, retry, sleep):
            mine = ours.pop(sub.ref, {})
            rows.append({"time": _iso(sub.date) or mine.get("time"), "ref": sub.ref,
                         "status": sub.status.name, "public_score": sub.public_score or None,
                         "message": sub.description, "file": mine.get("file"),
                         "sha256": mine.get("sha256")})
    for ref, mine in ours.items():
        rows.append({"time": mine.get("time"), "ref": ref,
                     "status": mine.get("status") + (" (not on Kaggle)" if remote else ""),
                     "public_score": mine.get("public_score"), "message": mine.get("message"),
                     "file": mine.get("file"), "sha256": mine.get("sha256")})
    rows.sort(key=lambda r: (r["time"] or "", r["ref"]), reverse=True)
    return rows


def _iso(date) -> str | None:
    return date.strftime("%Y-%m-%dT%H:%M:%SZ") if date is not None else None


def submissions_table(rows: list[dict]) -> str:
    """Rows of `list_submissions` as an aligned text table."""
    header = ("time", "ref", "status", "score", "sha256", "message")
    cells = [header] + [(r["time"] or "", str(r["ref"]), r["status"], r["public_score"] or "",
                         (r["sha256"] or "")[:12], r["message"] or "") for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
             for row in cells]
    return "\n".join(lines)
