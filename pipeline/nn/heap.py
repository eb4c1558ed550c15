"""Keep the memory a training step frees inside the process, for the next step to reuse.

A step allocates a few dozen working arrays of 1-12 MB and frees them all at its end. With
glibc's default settings the freed block at the top of the heap is larger than its trim
threshold, so malloc hands it back to the kernel, and the next step takes every page of it again
as a page fault: in `digits train` (the stage; the bench's own train() calls did not show it)
about 6,300 faults a step, 10-11 s of system time in a 40-45 s epoch of the default cnn. Fixed
thresholds keep those pages: 1.9 million faults an epoch become 45 thousand, and the epoch went
from 44-45 s to 38-40 s with glibc's own variables set the same way (docs/bench-notes.md, fifth
round).

glibc only (Linux); elsewhere, or when the user has set glibc's own variables for this
(MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES), nothing is changed. Peak
memory is the same: the pages are reused, not added.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 << 20  # arrays below this come from the heap: glibc's largest on 64 bits
TRIM_THRESHOLD = 1 << 30  # the heap keeps up to this much free memory at its top
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


@functools.cache
def keep_freed_memory() -> bool:
    """Once per process: set glibc's mmap and trim thresholds (above) -> whether they were
    set (False on another C library or where the user set them)."""
    if not sys.platform.startswith("linux") or any(os.environ.get(v) for v in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # this process's C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)


__all__ = ["keep_freed_memory"]
