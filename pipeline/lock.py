"""The project lock: one digits run at a time writes a project's outputs; the next run first
removes the temporary files a killed one left."""

from __future__ import annotations

import contextlib
import fcntl
import logging

from .config import Paths, UserError

log = logging.getLogger("pipeline")


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
