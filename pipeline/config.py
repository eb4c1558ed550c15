"""Run configuration as frozen dataclasses, and every project path derived from one root.

The stage configs (SplitConfig, TrainConfig, PredictConfig) are derived from the parameter
declarations in `params.py`; the CLI builds them once and passes them down.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

COMPETITION = "digit-recognizer"
ZIP_NAME = f"{COMPETITION}.zip"
IMAGE_SIDE = 28
N_PIXELS = IMAGE_SIDE * IMAGE_SIDE
N_CLASSES = 10
N_TEST = 28000


class UserError(Exception):
    """A problem the user can fix (bad input, missing data, bad credential).

    The CLI prints `str(error)` as one line and exits with code 1; no traceback. Each module
    subclasses it where the error is raised (DataError, SubmissionError, KaggleError, ...).
    """


@dataclass(frozen=True)
class Paths:
    """Every file the pipeline reads or writes, derived from the project root."""

    root: Path
    use_cache: bool = True  # False: every stage computes (joblib.Memory with no location)

    @classmethod
    def default(cls) -> Paths:
        """The project root: $DIGITS_ROOT if set, else the current directory."""
        return cls(Path(os.environ.get("DIGITS_ROOT", ".")).resolve())

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def raw(self) -> Path:
        return self.data / "raw"

    @property
    def raw_zip(self) -> Path:
        return self.raw / ZIP_NAME

    @property
    def interim(self) -> Path:
        return self.data / "interim"

    @property
    def parsed(self) -> Path:
        """The competition CSVs parsed once into uint8 arrays."""
        return self.interim / "digits.npz"

    @property
    def split(self) -> Path:
        return self.interim / "split.npz"

    @property
    def processed(self) -> Path:
        return self.data / "processed"

    @property
    def normalizer(self) -> Path:
        return self.processed / "normalizer.json"

    @property
    def models(self) -> Path:
        return self.data / "models"

    @property
    def model(self) -> Path:
        """The trained model (or ensemble) used by predict."""
        return self.models / "model.npz"

    @property
    def history(self) -> Path:
        return self.models / "history.json"

    @property
    def metrics(self) -> Path:
        return self.models / "metrics.json"

    @property
    def checkpoints(self) -> Path:
        return self.models / "checkpoints"

    @property
    def reports(self) -> Path:
        return self.data / "reports"

    @property
    def runs(self) -> Path:
        """One JSON line per training run: the history behind `digits runs`."""
        return self.data / "runs.jsonl"

    @property
    def params(self) -> Path:
        """The persisted parameters: readable, editable, worth committing (params.toml)."""
        return self.root / "params.toml"

    @property
    def cache(self) -> Path:
        return self.data / "cache"

    @property
    def submissions(self) -> Path:
        return self.root / "submissions"

    @property
    def submission(self) -> Path:
        return self.submissions / "submission.csv"

    @property
    def submission_history(self) -> Path:
        return self.submissions / "history"

    @property
    def ledger(self) -> Path:
        return self.submissions / "ledger.jsonl"


MAKE_TARGET = {"download": "data"}  # make targets named differently from their digits command


def command_hint(target: str) -> str:
    """The command a user would type for a stage: the make target under make, else digits'."""
    if os.environ.get("MAKELEVEL"):
        return f"make {MAKE_TARGET.get(target, target)}"
    return f"digits {target}"


def asdict(config) -> dict:
    """A dataclass as a plain JSON-able dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(config).items()}


__all__ = [
    "COMPETITION", "IMAGE_SIDE", "N_CLASSES", "N_PIXELS", "N_TEST", "Paths", "UserError",
    "ZIP_NAME", "asdict",
]
