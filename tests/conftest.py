"""Shared fixtures: the real competition zip when a copy exists, and a tiny synthetic one."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

# The small synthetic zips below have fewer than the competition's 28000 test rows; this lets
# the data stage accept them (test.csv and sample_submission.csv must still agree). Tests of the
# 28000-row rule unset it (tests/test_reliability.py).
os.environ["DIGITS_ANY_TEST_ROWS"] = "1"


def find_real_zip() -> Path | None:
    """The competition zip: $KAGGLE_MIRROR, ../shared/data beside the checkout, or data/raw."""
    candidates = [Path(os.environ["KAGGLE_MIRROR"]) if os.environ.get("KAGGLE_MIRROR") else None,
                  REPO.parent / "shared" / "data", REPO / "data" / "raw"]
    for d in candidates:
        if d is not None and (d / "digit-recognizer.zip").is_file():
            return d / "digit-recognizer.zip"
    return None


@pytest.fixture(autouse=True)
def _not_under_make(monkeypatch):
    """Tests see the environment a user's shell gives, even when `make test` runs them."""
    for var in ("MAKELEVEL", "DIGITS_MAKE_VARS", "MAKEFLAGS", "MFLAGS"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def real_zip() -> Path:
    path = find_real_zip()
    if path is None:
        pytest.skip("the competition zip digit-recognizer.zip was not found in $KAGGLE_MIRROR, "
                    "../shared/data or data/raw")
    return path


def csv_text(header: list[str], rows: np.ndarray, newline: str = "\n") -> str:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    return newline.join(lines) + newline


def make_competition_zip(path: Path, n_train: int = 200, n_test: int = 50, seed: int = 0,
                         members: dict[str, bytes] | None = None) -> Path:
    """A small zip shaped like the competition's: digits drawn as class-dependent blobs."""
    rng = np.random.default_rng(seed)
    y = np.arange(n_train) % 10
    x = rng.integers(0, 30, size=(n_train, 784))
    for k in range(10):  # each class lights a different band of rows, so it is learnable
        x[y == k, k * 70:(k + 1) * 70] = 200
    # test rows drawn like the train rows (random digits), so a trained model's predictions
    # spread over the classes as on the real data and a submission is not degenerate
    test_y = rng.integers(0, 10, size=n_test)
    test = rng.integers(0, 30, size=(n_test, 784))
    for k in range(10):
        test[test_y == k, k * 70:(k + 1) * 70] = 200
    pixels = [f"pixel{i}" for i in range(784)]
    files = {
        "train.csv": csv_text(["label", *pixels], np.column_stack([y, x])).encode(),
        "test.csv": csv_text(pixels, test).encode(),
        "sample_submission.csv": csv_text(["ImageId", "Label"], np.column_stack(
            [np.arange(1, n_test + 1), np.zeros(n_test, int)])).encode(),
    }
    if members is not None:
        files = {**files, **members}
        files = {k: v for k, v in files.items() if v is not None}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, content in files.items():
            z.writestr(name, content)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture
def small_zip(tmp_path) -> Path:
    return make_competition_zip(tmp_path / "src" / "digit-recognizer.zip")
