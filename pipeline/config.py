"""Run configuration as frozen dataclasses, and every project path derived from one root.

The stage configs (SplitConfig, TrainConfig, PredictConfig) are derived from the parameter
declarations in `params.py`; the CLI builds them once and passes them down.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

COMPETITION = "digit-recognizer"
ZIP_NAME = f"{COMPETITION}.zip"
IMAGE_SIDE = 28
N_PIXELS = IMAGE_SIDE * IMAGE_SIDE
N_CLASSES = 10
N_TEST = 28000


def expected_test_rows() -> int | None:
    """The competition's N_TEST test rows; None (any count) with DIGITS_ANY_TEST_ROWS=1, which
    only the test suite sets, for its small synthetic zips."""
    return None if os.environ.get("DIGITS_ANY_TEST_ROWS") == "1" else N_TEST


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
    output: Path | None = None  # where submission.csv goes instead (a Kaggle Notebook's output)

    def relative(self, path: Path) -> str:
        """`path` as shown in messages: relative to the project root when it is inside it."""
        try:
            return str(Path(path).resolve().relative_to(self.root))
        except ValueError:
            return str(path)

    @classmethod
    def default(cls, root: Path | None = None) -> Paths:
        """The project root: `root`, else $DIGITS_ROOT, else the current directory.

        In a Kaggle Notebook (see `kaggle_notebook`) submission.csv goes to the notebook's
        output folder, /kaggle/working, where Kaggle looks for it, and everything else (caches,
        parsed arrays, models, reports: 125 MB and more) to a scratch folder that Kaggle does not
        keep, unless `root` or $DIGITS_ROOT name one.
        """
        working = kaggle_notebook()
        root = root or os.environ.get("DIGITS_ROOT") or (kaggle_scratch() if working else ".")
        return cls(Path(root).resolve(), output=working.resolve() if working else None)

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
        return (self.output or self.submissions) / "submission.csv"

    @property
    def submission_history(self) -> Path:
        return self.submissions / "history"

    @property
    def ledger(self) -> Path:
        return self.submissions / "ledger.jsonl"


def kaggle_notebook() -> Path | None:
    """The output folder of the Kaggle Notebook we run in, or None outside one.

    A notebook is recognized by $KAGGLE_KERNEL_RUN_TYPE (which Kaggle sets) or by its output
    folder existing: $KAGGLE_WORKING_DIR, by default /kaggle/working.
    """
    working = Path(os.environ.get("KAGGLE_WORKING_DIR") or "/kaggle/working")
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") or working.is_dir():
        return working
    return None


def kaggle_scratch() -> Path:
    """Where a notebook's caches and intermediate files go: $KAGGLE_TEMP_DIR (by default
    /kaggle/temp, which Kaggle discards after the session)/digits, else the system's temp dir."""
    temp = Path(os.environ.get("KAGGLE_TEMP_DIR") or "/kaggle/temp")
    return (temp if temp.is_dir() else Path(tempfile.gettempdir())) / "digits"


def kaggle_input() -> Path:
    """Where a Kaggle Notebook finds the attached competition: $KAGGLE_INPUT_DIR (by default
    /kaggle/input)/digit-recognizer, or one level further down (as in .../competitions/)."""
    base = Path(os.environ.get("KAGGLE_INPUT_DIR") or "/kaggle/input")
    direct = base / COMPETITION
    if direct.is_dir() or not base.is_dir():
        return direct
    nested = sorted(p for p in base.glob(f"*/{COMPETITION}") if p.is_dir())
    return nested[0] if nested else direct


MAKE_TARGET = {"download": "data"}  # make targets named differently from their digits command


def command_hint(target: str) -> str:
    """The command a user would type for a stage: the make target under make, else digits'."""
    if os.environ.get("MAKELEVEL"):
        return f"make {MAKE_TARGET.get(target, target)}"
    return f"digits {target}"


def for_user(message: str) -> str:
    """A message's `make <target>` hints as the command this user types: unchanged under make,
    `digits <command>` otherwise (messages are written once, with make's names)."""
    if os.environ.get("MAKELEVEL"):
        return message
    commands = {v: k for k, v in MAKE_TARGET.items()} | {"submit": "run"}
    return re.sub(r"`make (\w[\w-]*)`", lambda m: f"`digits {commands.get(m[1], m[1])}`",
                  message)


def asdict(config) -> dict:
    """A dataclass as a plain JSON-able dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(config).items()}


__all__ = [
    "COMPETITION", "IMAGE_SIDE", "N_CLASSES", "N_PIXELS", "N_TEST", "Paths", "UserError",
    "ZIP_NAME", "asdict", "expected_test_rows", "kaggle_input", "kaggle_notebook",
    "kaggle_scratch",
]
