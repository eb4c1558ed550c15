"""Run configuration as frozen dataclasses, and every project path derived from one root.

The CLI builds these objects once from its options and passes them down; no other module reads
`sys.argv` or option parsing. Defaults here are the defaults users see in `--help` and the Makefile.
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


@dataclass(frozen=True)
class SplitConfig:
    dev_fraction: float = 0.1  # share of train.csv held out for measuring, stratified by label
    seed: int = 0  # seeds the shuffle; the same seed gives the same split
    max_train: int = 0  # keep at most this many training rows (stratified) for quick runs; 0 = all


@dataclass(frozen=True)
class TrainConfig:
    model: str = "cnn"  # cnn | mlp | seed
    epochs: int = 0  # 0 means the model's own default
    batch_size: int = 0  # 0 means the model's own default
    lr: float = 0.0  # peak learning rate; 0 means the model's own default
    optimizer: str = ""  # sgd | momentum | nesterov | adam | adamw; "" = model default
    schedule: str = ""  # constant | step | cosine | onecycle; "" = model default
    weight_decay: float = -1.0  # decoupled weight decay; negative = model default
    hidden: tuple[int, ...] = ()  # MLP hidden sizes; () = model default
    activation: str = ""  # relu | leaky_relu | tanh | sigmoid; "" = model default
    dropout: float = -1.0  # negative = model default
    label_smoothing: float = -1.0  # negative = model default
    augment: str = ""  # "none", "default" or "shift=2,rotate=10,zoom=0.1,elastic=0"; "" = default
    patience: int = 0  # early stopping patience in epochs; 0 = never stop early
    refit: bool = False  # after choosing the epoch count on dev, retrain on all labelled rows
    seed: int = 0  # seeds initialization, shuffling and augmentation
    ensemble: int = 1  # number of models trained with seeds seed, seed+1, ...

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class PredictConfig:
    batch_size: int = 1000  # rows per forward pass; affects speed and memory only
    tta: bool = False  # average predictions over a few shifted copies of each test image


def asdict(config) -> dict:
    """A dataclass as a plain JSON-able dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(config).items()}


__all__ = [
    "COMPETITION", "IMAGE_SIDE", "N_CLASSES", "N_PIXELS", "N_TEST", "Paths", "PredictConfig",
    "SplitConfig", "TrainConfig", "UserError", "ZIP_NAME", "asdict", "expected_test_rows",
]
