"""How many threads BLAS (numpy's OpenBLAS here) uses, set at run time with threadpoolctl.

numpy has no such switch of its own; threadpoolctl finds the BLAS libraries loaded in this process
and calls their own setter. Why it matters: on a small machine shared with other processes, BLAS
worker threads that spin-wait between matrix products can make a batch-sized training step
several times slower than one thread (docs/bench-notes.md). Where a second core helps, the model
uses it with Python threads instead (`Model.forward(threads=)`, `batches.Batches`), each calling
one-threaded BLAS.
"""

from __future__ import annotations

import contextlib

from threadpoolctl import threadpool_limits


@contextlib.contextmanager
def blas_threads(n: int | None):
    """Run the block with BLAS using `n` threads (None or 0: leave it as it is)."""
    if n is not None and n < 0:
        raise ValueError(f"threads must be >= 0, got {n}")
    if not n:
        yield
        return
    with threadpool_limits(limits=int(n), user_api="blas"):
        yield
