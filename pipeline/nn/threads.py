"""How many threads OpenBLAS (numpy's BLAS here) uses, set at run time without threadpoolctl.

numpy exposes no such switch, so `blas_threads(n)` finds the loaded OpenBLAS library in this
process's memory map and calls its `*openblas_set_num_threads*` through ctypes. If no OpenBLAS is
found (another BLAS, another OS) it does nothing. Why it matters: on a small machine shared with
other processes, OpenBLAS worker threads that spin-wait between matrix products can make a
training step several times slower than one thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import re

_SUFFIXES = (
    "scipy_openblas_{}_num_threads64_",
    "openblas_{}_num_threads64_",
    "openblas_{}_num_threads",
)


def _openblas():
    """-> (get, set) ctypes functions of the loaded OpenBLAS, or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted(
                {line.split()[-1] for line in f if re.search(r"openblas[^/]*\.so", line)}
            )
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for pattern in _SUFFIXES:
            try:
                return getattr(lib, pattern.format("get")), getattr(lib, pattern.format("set"))
            except AttributeError:
                continue
    return None


@contextlib.contextmanager
def blas_threads(n: int | None):
    """Run the block with OpenBLAS using `n` threads (None or 0: leave it as it is)."""
    fns = _openblas() if n else None
    if fns is None:
        yield
        return
    if n < 0:
        raise ValueError(f"threads must be >= 0, got {n}")
    get, set_ = fns
    before = int(get())
    set_(int(n))
    try:
        yield
    finally:
        set_(before)
