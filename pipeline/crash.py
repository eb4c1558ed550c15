"""The last line of defence: an unexpected exception's traceback saved to a log file, so the
user sees one line naming that file instead of a traceback.

The log goes to data/logs/digits-<UTC time>.log under the project root, or to the system's
temporary directory when data/ cannot be written. Turning the exception into a message and an
exit code is `cli.py`'s job.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
import traceback
from pathlib import Path


def write_crash_log(data_dir: Path | None, exc: BaseException) -> Path | None:
    """Write the traceback of `exc` (with the command line) to a new log file; -> its path."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    text = (f"digits {' '.join(sys.argv[1:])}\n{stamp}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    candidates = [Path(data_dir) / "logs"] if data_dir is not None else []
    candidates.append(Path(tempfile.gettempdir()) / "digits-logs")
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"digits-{stamp}.log"
            with open(path, "x", encoding="utf-8") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return None


def one_line(exc: BaseException, limit: int = 160) -> str:
    """`Type: first line of the message`, shortened to about `limit` characters."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    msg = msg if len(msg) <= limit else msg[:limit] + "..."
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def shown_path(path: Path) -> str:
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
    except ValueError:
        return str(path)
