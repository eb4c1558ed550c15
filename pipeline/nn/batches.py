"""The mini-batches of one training epoch, gathered and augmented on a background thread while
the current step runs.

`Batches(x, y, perm, batch_size, ...)` iterates over (xb, yb): rows `perm[i*B:(i+1)*B]` of x and
y, augmented per `aug` (augment.py). With prefetch=True a worker thread prepares batch i+1 while
the caller trains on batch i; numpy releases the GIL in the gather and in most of the
augmentation's ufuncs, so on two cores that work leaves the training step's path.

Determinism: the worker draws only from its own generator, `aug_rng`, and the batches come out in
order, so the same inputs give the same batches with or without the thread. The caller's main
generator (shuffling, dropout) is never touched here. `epoch_aug_rng` derives that generator
from the main one in the main thread, once per epoch, and only when there is augmentation (a run
without it draws exactly what it drew before this module existed).
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from pipeline.nn.augment import augment_batch, is_identity

RING = 3  # gather buffers: one in the caller's step, one queued, one being filled


def epoch_aug_rng(rng, aug):
    """-> the augmentation generator of one epoch, seeded by one draw from `rng` (None when
    `aug` is the identity, and then nothing is drawn)."""
    if is_identity(aug):
        return None
    return np.random.default_rng(int(rng.integers(2**63)))


class Batches:
    """Iterate over the (xb, yb) of one epoch; see the module docstring."""

    def __init__(self, x, y, perm, batch_size, aug, aug_rng, fill, prefetch=True):
        self.x, self.y, self.perm, self.B = x, y, perm, int(batch_size)
        self.aug, self.aug_rng, self.fill, self.prefetch = aug, aug_rng, fill, prefetch
        n = x.shape[0] if perm is None else len(perm)
        self.steps = -(-n // self.B)
        self._bufs = [np.empty((min(self.B, n), *x.shape[1:]), dtype=x.dtype) for _ in range(RING)]

    def __len__(self):
        return self.steps

    def _make(self, i):
        """Batch i: gather, then augment (from aug_rng only)."""
        if self.perm is None:
            xb, yb = self.x[i * self.B : (i + 1) * self.B], self.y[i * self.B : (i + 1) * self.B]
        else:
            idx = self.perm[i * self.B : (i + 1) * self.B]
            # mode="clip": the indices are a permutation's, always in range; with the default
            # "raise" and an `out`, numpy gathers into a temporary and copies it over (so a bad
            # index leaves `out` untouched): 45 -> 33 us for 128 rows not in cache
            # (scripts/experiments/mlp_step_kernels.py, 2026-12-02)
            xb = np.take(self.x, idx, axis=0, out=self._bufs[i % RING][: len(idx)], mode="clip")
            yb = self.y[idx]  # (B,)
        if self.aug_rng is not None:
            xb = augment_batch(xb, self.aug, self.aug_rng, self.fill)
        return xb, yb

    def __iter__(self):
        if not self.prefetch or self.steps <= 1:
            for i in range(self.steps):
                yield self._make(i)
            return
        q, stop = queue.Queue(maxsize=1), threading.Event()

        def put(item):  # -> False once the caller has stopped listening
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work():
            try:
                for i in range(self.steps):
                    if not put(("ok", self._make(i))):
                        return
            except BaseException as e:  # handed to the caller, raised there
                put(("error", e))

        worker = threading.Thread(target=work, name="batches", daemon=True)
        worker.start()
        try:
            for _ in range(self.steps):
                kind, item = q.get()
                if kind == "error":
                    raise item
                yield item
        finally:
            stop.set()
            worker.join()
