"""Progress of long work, wherever the output goes: a bar in a terminal, a line per epoch in a log.

In a terminal (`mode="bar"`) a tqdm bar names the epoch (`cnn epoch 3/20`) and each finished
epoch leaves a line behind it. Under `make | tee`, CI or a notebook (`mode="lines"`) there is no
bar, only that line per epoch: loss, dev accuracy, learning rate, time elapsed and the estimate
to the end. Lines go to the "pipeline" logger, so `-q` silences them with the rest.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("pipeline")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else \
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class EpochProgress:
    """Reports one fit: `start`, `step(loss)` per batch, `epoch(row)` per epoch, `close`."""

    def __init__(self, desc: str, bar: bool):
        self.desc, self.use_bar = desc, bar
        self.bar = None
        self.total = self.steps = self.first = 0
        self.t0 = time.perf_counter()
        self.loss = None

    @classmethod
    def make(cls, mode, desc: str):
        """An EpochProgress for mode "bar" or "lines"; None for anything else (no output)."""
        if mode in ("bar", True):
            return cls(desc, bar=True)
        if mode == "lines":
            return cls(desc, bar=False)
        return None

    def start(self, epochs: int, steps: int, done: int = 0) -> None:
        self.total, self.steps, self.first = epochs, steps, done
        self.t0 = time.perf_counter()
        if self.use_bar:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=epochs * steps, initial=done * steps, unit="batch",
                            leave=False, desc=self._desc(done + 1))

    def _desc(self, epoch: int) -> str:
        return f"{self.desc} epoch {min(epoch, self.total)}/{self.total}"

    def step(self, loss: float) -> None:
        self.loss = loss
        if self.bar is not None:
            self.bar.update(1)
            if self.bar.n % 20 == 0:
                self.bar.set_postfix(loss=f"{loss:.4f}")

    def epoch(self, row: dict) -> None:
        k = row["epoch"]
        elapsed = time.perf_counter() - self.t0
        per = elapsed / max(k - self.first, 1)
        dev = "" if row.get("dev_acc") is None else \
            f", dev loss {row['dev_loss']:.4f}, dev acc {100 * row['dev_acc']:.2f}%"
        line = (f"{self.desc}: epoch {k}/{self.total}: loss {row['train_loss']:.4f}{dev}, "
                f"lr {row['lr']:.3g}, {_clock(elapsed)} elapsed, "
                f"~{_clock(per * (self.total - k))} to go")
        if self.bar is not None:
            self.bar.write(f"digits: {line}", file=sys.stderr)
            self.bar.set_description(self._desc(k + 1))
        else:
            log.info("%s", line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


__all__ = ["EpochProgress"]
