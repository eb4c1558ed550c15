"""Check the competition zip, parse its CSVs into uint8 arrays, and split train/dev.

What it checks before anything downstream sees the data: the zip holds exactly the three
competition files (no traversal, no nested or extra members, no absurd declared sizes, CRCs
intact) and each CSV has the exact columns, integer pixels 0-255 and labels 0-9. CSVs are read
in chunks, so memory stays bounded however long the file. It never writes anything: caching and
file paths are the stages module's business.
"""

from __future__ import annotations

import contextlib
import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from .config import N_CLASSES, N_PIXELS, ZIP_NAME, UserError, expected_test_rows
from .readers import display

MEMBERS = ("train.csv", "test.csv", "sample_submission.csv")
PIXEL_COLUMNS = tuple(f"pixel{i}" for i in range(N_PIXELS))
TRAIN_COLUMNS = ("label", *PIXEL_COLUMNS)
TEST_COLUMNS = PIXEL_COLUMNS
SAMPLE_COLUMNS = ("ImageId", "Label")
MAX_MEMBER_BYTES = 4 << 30  # the real train.csv is 77 MB; a member declaring > 4 GiB is a bomb
MAX_RATIO = 1000  # deflate cannot compress better than ~1032:1; a higher declared ratio is forged
CHUNK_ROWS = 5000  # rows parsed at a time: 5000 x 785 int64 is about 31 MB

FIX_HINT = "Delete it and run `make data` again to fetch a fresh copy."


class DataError(UserError):
    """The competition data is missing, corrupt or not in the expected form."""


@dataclass(frozen=True)
class Digits:
    """The parsed competition: images as (N, 784) uint8 rows, pixel k at row k//28, col k%28."""

    train_x: np.ndarray  # (42000, 784) uint8
    train_y: np.ndarray  # (42000,) uint8
    test_x: np.ndarray  # (28000, 784) uint8
    test_ids: np.ndarray  # (28000,) int32, the ImageIds of sample_submission.csv

    def arrays(self) -> dict[str, np.ndarray]:
        return {"train_x": self.train_x, "train_y": self.train_y,
                "test_x": self.test_x, "test_ids": self.test_ids}


def check_zip(path: Path) -> None:
    """Raise DataError unless `path` is an intact competition zip; extract nothing."""
    path = Path(display(path))  # the same file, named relative to the current directory
    if not path.is_file():
        raise DataError(f"{path} does not exist.")
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            _check_members(path, infos)
            bad = z.testzip()
    except zipfile.BadZipFile as e:
        raise DataError(f"{path} is not a valid zip file ({e}). {FIX_HINT}") from None
    except (OSError, EOFError, zlib.error, zipfile.LargeZipFile, NotImplementedError) as e:
        raise DataError(f"{path} could not be read as a zip file ({e}). {FIX_HINT}") from None
    if bad is not None:
        raise DataError(f"{path}: member {bad} fails its CRC check (the file is corrupt). "
                        f"{FIX_HINT}")


def _check_members(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    names = [i.filename for i in infos]
    for name in names:
        p = PurePosixPath(name.replace("\\", "/"))
        if p.is_absolute() or ".." in p.parts or (name[1:2] == ":"):
            raise DataError(f"{path}: member {name!r} has an unsafe path (absolute or with '..'); "
                            f"refusing the zip. {FIX_HINT}")
    extra = sorted(set(names) - set(MEMBERS))
    if extra:
        raise DataError(f"{path}: unexpected members {extra}; a {ZIP_NAME} holds exactly "
                        f"{', '.join(MEMBERS)}. {FIX_HINT}")
    missing = [m for m in MEMBERS if m not in names]
    if missing:
        raise DataError(f"{path}: missing {', '.join(missing)}. {FIX_HINT}")
    if len(names) != len(set(names)):
        raise DataError(f"{path}: duplicated members. {FIX_HINT}")
    for i in infos:
        if i.flag_bits & 0x1:
            raise DataError(f"{path}: member {i.filename} is password-protected (encrypted); "
                            f"the competition zip is not. {FIX_HINT}")
        ratio = i.file_size / max(i.compress_size, 1)
        if i.file_size > MAX_MEMBER_BYTES or ratio > MAX_RATIO:
            raise DataError(f"{path}: member {i.filename} declares {i.file_size} bytes "
                            f"(compression ratio {ratio:.0f}:1), an absurd size; refusing a "
                            f"possible zip bomb. {FIX_HINT}")


def check_folder(path: Path) -> None:
    """Raise DataError unless the folder `path` holds the three competition CSVs as plain files.

    Other files beside them are ignored (a mirror may hold a README); a folder holding the zip
    instead is pointed at it. The CSVs' contents are checked as they are parsed, as in a zip.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path} does not exist or is not a folder.")
    missing = [m for m in MEMBERS if not (path / m).is_file()]
    if missing:
        hint = (f" It holds {ZIP_NAME}: use that instead." if (path / ZIP_NAME).is_file()
                else f" A source folder holds {', '.join(MEMBERS)} as downloaded from Kaggle.")
        raise DataError(f"{path}: missing {', '.join(missing)}.{hint}")
    for m in MEMBERS:
        size = (path / m).stat().st_size
        if size > MAX_MEMBER_BYTES:
            raise DataError(f"{path / m} is {size} bytes, an absurd size for the competition's "
                            f"CSV (train.csv is 77 MB); refusing it.")


def read_competition(path: Path, *, progress: bool = False) -> Digits:
    """Check the zip (or a folder of the three CSVs, such as a Kaggle Notebook's input) and
    parse its CSVs into a Digits. A folder gets the same content checks as a zip's members."""
    path = Path(path)
    if path.is_dir():
        check_folder(path)
        z, where = None, (lambda m: path / m)
    else:
        check_zip(path)
        z, where = zipfile.ZipFile(path), (lambda m: m)
    with z if z is not None else contextlib.nullcontext():
        train = read_csv(z, where("train.csv"), TRAIN_COLUMNS, progress=progress)
        test = read_csv(z, where("test.csv"), TEST_COLUMNS, progress=progress)
        sample = read_csv(z, where("sample_submission.csv"), SAMPLE_COLUMNS, max_value=None)
    labels = train[:, 0]
    if labels.max(initial=0) >= N_CLASSES:
        row = int(np.argmax(labels >= N_CLASSES))
        raise DataError(f"train.csv row {row + 1}: label {labels[row]} is outside 0-9.")
    ids = sample[:, 0]
    check_test_rows(len(test), ids)
    return Digits(train_x=np.ascontiguousarray(train[:, 1:], dtype=np.uint8),
                  train_y=labels.astype(np.uint8),
                  test_x=test.astype(np.uint8, copy=False),
                  test_ids=ids.astype(np.int32))


def check_test_rows(n_test: int, ids: np.ndarray) -> None:
    """test.csv and sample_submission.csv agree with each other and with the competition's
    28000 rows, and the ImageIds run 1..n in order: else no submission could be right."""
    expected = expected_test_rows()
    if len(ids) != n_test:
        raise DataError(f"sample_submission.csv has {len(ids)} rows but test.csv has {n_test}; "
                        f"they must match row for row. {FIX_HINT}")
    if expected is not None and n_test != expected:
        raise DataError(f"test.csv and sample_submission.csv have {n_test} rows, but the "
                        f"competition has {expected}; the data is incomplete. {FIX_HINT}")
    wrong = np.flatnonzero(ids != np.arange(1, len(ids) + 1))
    if len(wrong):
        raise DataError(f"sample_submission.csv row {wrong[0] + 1}: ImageId {ids[wrong[0]]}, "
                        f"expected {wrong[0] + 1} (ImageIds run 1..{len(ids)} in order). "
                        f"{FIX_HINT}")


def read_csv(z: zipfile.ZipFile | None, member: str | Path, columns: tuple[str, ...], *,
             max_value: int | None = 255, progress: bool = False) -> np.ndarray:
    """Parse one CSV (a zip member, or a plain file when z is None) into an int array.

    Checks the header is exactly `columns`, every value a non-negative integer (<= max_value),
    and no row ragged. Returns uint8 when max_value <= 255, else int64. Raises DataError.
    """
    name = str(member) if z is None else member
    opener = (lambda: z.open(member)) if z is not None else (lambda: open(member, "rb"))
    try:
        with opener() as raw:
            f = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
            header = f.readline().rstrip("\r\n")
            if not header:
                raise DataError(f"{name} is empty: expected a header line "
                                f"{_show_columns(columns)}.")
            _check_header(name, header.split(","), columns)
            dtype = np.uint8 if max_value is not None and max_value <= 255 else np.int64
            chunks = []
            # no names=: given names, pandas silently turns an extra leading value into an index
            reader = pd.read_csv(f, header=None, chunksize=CHUNK_ROWS, engine="c",
                                 skip_blank_lines=True)
            row0 = 0
            for chunk in _progress(reader, name, progress):
                if chunk.empty:
                    continue
                if chunk.shape[1] != len(columns):
                    raise DataError(f"{name} row {row0 + 1}: {chunk.shape[1]} values, expected "
                                    f"{len(columns)} (one per column of the header).")
                chunk.columns = list(columns)
                chunks.append(_check_chunk(name, chunk, row0, max_value).astype(dtype))
                row0 += len(chunk)
    except DataError:
        raise
    except pd.errors.EmptyDataError:  # a header and nothing after it
        chunks = []
    except pd.errors.ParserError as e:
        raise DataError(f"{name}: malformed CSV ({_first_line(e)}); every row must have "
                        f"{len(columns)} comma-separated values.") from None
    except UnicodeDecodeError:
        raise DataError(f"{name} is not UTF-8 text; is it really a competition CSV?") from None
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{name} could not be read ({e}). {FIX_HINT}") from None
    if not chunks:
        raise DataError(f"{name} has a header but no rows.")
    return np.concatenate(chunks)


def _check_header(name: str, got: list[str], expected: tuple[str, ...]) -> None:
    got = [c.strip().strip('"') for c in got]
    if tuple(got) == expected:
        return
    dupes = sorted({c for c in got if got.count(c) > 1})
    missing = [c for c in expected if c not in got]
    extra = [c for c in got if c not in expected]
    what = []
    if dupes:
        what.append(f"duplicated {dupes[:5]}")
    if missing:
        what.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if extra:
        what.append(f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    if not what:
        what.append("columns out of order")
    raise DataError(f"{name}: wrong columns ({'; '.join(what)}); expected "
                    f"{_show_columns(expected)}.")


def _show_columns(columns: tuple[str, ...]) -> str:
    return ",".join(columns) if len(columns) <= 3 else f"{','.join(columns[:3])},...,{columns[-1]}"


def _check_chunk(name: str, chunk: pd.DataFrame, row0: int, max_value: int | None) -> np.ndarray:
    """The chunk as int64 values, or DataError naming the first bad cell (1-based data row)."""
    bad_cols = [c for c in chunk.columns if not pd.api.types.is_integer_dtype(chunk[c].dtype)]
    if bad_cols:
        col = bad_cols[0]
        values = pd.to_numeric(chunk[col], errors="coerce")
        bad = ~(values.notna() & (values == values.round()))
        if not bad.any():  # only integral decimals like 3.0 or 1e2: the cell cannot be told apart
            raise DataError(f"{name} rows {row0 + 1}-{row0 + len(chunk)}, column {col}: values "
                            f"that are not plain integers (decimals like 3.0, or too large); "
                            f"expected integers.")
        row = int(np.argmax(bad.to_numpy()))
        cell = chunk[col].iloc[row]
        shown = "an empty or NaN cell (a short row?)" if pd.isna(cell) else repr(str(cell))
        raise DataError(f"{name} row {row0 + row + 1}, column {col}: {shown} is not an integer "
                        f"(empty, NaN, decimal or text).")
    values = chunk.to_numpy(dtype=np.int64)  # (rows, columns)
    low = values < 0
    high = values > max_value if max_value is not None else np.zeros_like(low)
    if low.any() or high.any():
        r, c = np.argwhere(low | high)[0]
        limit = f"0-{max_value}" if max_value is not None else ">= 0"
        raise DataError(f"{name} row {row0 + r + 1}, column {chunk.columns[c]}: {values[r, c]} "
                        f"is outside {limit}.")
    return values


def _progress(it, name: str, enabled: bool):
    if not enabled:
        return it
    from tqdm import tqdm
    return tqdm(it, desc=f"parse {name}", unit="chunk", leave=False)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def stratified_split(y: np.ndarray, dev_fraction: float, seed: int,
                     max_train: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, dev), sorted, with each class split in the same proportion.

    `max_train` > 0 keeps only that many training rows (again in the class proportions), for
    quick runs; the dev rows are the same as without it.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
    n_dev = sum(int(round(dev_fraction * np.sum(y == k))) for k in np.unique(y))
    if n_dev == 0 or n_dev == len(y):
        side = "no dev rows" if n_dev == 0 else "no train rows"
        raise DataError(f"--dev-fraction {dev_fraction:g} of the {len(y)} rows of train.csv "
                        f"(split per digit) leaves {side}; choose a fraction that keeps at least "
                        f"one row of some digit on each side (the default is 0.1).")
    if max_train < 0:
        raise ValueError(f"max_train must be >= 0, got {max_train}")
    rng = np.random.default_rng(seed)
    train, dev = [], []
    n_train = len(y) - sum(int(round(dev_fraction * np.sum(y == k))) for k in np.unique(y))
    keep = min(1.0, max_train / max(n_train, 1)) if max_train else 1.0
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))  # (n_label,)
        n_dev = int(round(dev_fraction * len(idx)))
        dev.append(idx[:n_dev])
        rest = idx[n_dev:]
        train.append(rest[:max(1, int(round(keep * len(rest))))])
    return (np.sort(np.concatenate(train)).astype(np.int64),
            np.sort(np.concatenate(dev)).astype(np.int64))
