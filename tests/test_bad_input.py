"""Bad input through the CLI: one clear line on stderr, exit code 1 (2 for usage), no traceback,
and nothing on disk changed. Plus hypothesis properties of the zip check, the CSV parser and the
submission validator. (The parser's basic cases live in test_data.py and test_submission.py.)"""

from __future__ import annotations

import functools
import hashlib
import io
import string
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cli import cli
from pipeline.data import DataError, check_zip, read_competition, read_csv
from pipeline.submission import SubmissionError, validate_submission
from tests.conftest import csv_text

PIXELS = [f"pixel{i}" for i in range(784)]
TRAIN_HEADER = ["label", *PIXELS]
FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------------ helpers


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path (the joblib cache and lock aside)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(("data/cache/", "data/.lock")):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def invoke(root: Path, *args: str):
    """Run `digits --root root -q ARGS` in process; unexpected exceptions propagate."""
    return CliRunner().invoke(cli, ["--root", str(root), "-q", *args], catch_exceptions=False)


def assert_one_line_error(result, exit_code: int = 1, match: str = "") -> str:
    """The command failed with `exit_code`, a single message line and no traceback."""
    assert result.exit_code == exit_code, result.output
    err = result.stderr.strip()
    assert "Traceback" not in result.output
    if exit_code == 1:
        assert len(err.splitlines()) == 1 and err.startswith("digits: error: "), err
    assert match.lower() in err.lower(), err
    return err


def competition_files(n_train: int = 20, n_test: int = 5) -> dict[str, bytes]:
    """The three members of a small valid zip, as bytes."""
    rng = np.random.default_rng(1)
    y = np.arange(n_train) % 10
    x = rng.integers(0, 256, size=(n_train, 784))
    test = rng.integers(0, 256, size=(n_test, 784))
    return {
        "train.csv": csv_text(TRAIN_HEADER, np.column_stack([y, x])).encode(),
        "test.csv": csv_text(PIXELS, test).encode(),
        "sample_submission.csv": csv_text(["ImageId", "Label"], np.column_stack(
            [np.arange(1, n_test + 1), np.zeros(n_test, int)])).encode(),
    }


def write_zip(path: Path, members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", method) as z:
        for name, content in members.items():
            z.writestr(name, content)
    return path


def raw_project(tmp_path: Path, zip_bytes: bytes) -> Path:
    """A project whose data/raw holds `zip_bytes` as the competition zip."""
    root = tmp_path / "project"
    (root / "data" / "raw").mkdir(parents=True)
    (root / "data" / "raw" / "digit-recognizer.zip").write_bytes(zip_bytes)
    return root


def download_fails(tmp_path: Path, zip_bytes: bytes, match: str) -> str:
    """`digits download` on a bad zip in data/raw: one line, exit 1, the tree unchanged."""
    root = raw_project(tmp_path, zip_bytes)
    before = tree_digest(root)
    err = assert_one_line_error(invoke(root, "download"), 1, match)
    assert tree_digest(root) == before
    assert not (root / "data" / "interim").exists()
    return err


def zip_with(**changes: bytes | None) -> bytes:
    members = {**competition_files(), **changes}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, content in members.items():
            if content is not None:
                z.writestr(name, content)
    return buf.getvalue()


# ----------------------------------------------------------------------------------- the zip


def test_valid_zip_downloads(tmp_path):
    # the control case: a valid small zip in data/raw parses, exit 0, one result line
    root = raw_project(tmp_path, zip_with())
    result = invoke(root, "download")
    assert result.exit_code == 0, result.output
    assert (root / "data" / "interim" / "digits.npz").is_file()


def test_not_a_zip(tmp_path):
    # a text file named digit-recognizer.zip is refused in one line
    download_fails(tmp_path, b"<html>Please log in</html>", "not a valid zip")


def test_truncated_zip(tmp_path):
    # a zip cut in half (an interrupted copy) is refused in one line
    good = zip_with()
    download_fails(tmp_path, good[: len(good) // 2], "not a valid zip")


def test_crc_error(tmp_path):
    # one flipped byte inside a stored member fails the CRC check
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, content in competition_files().items():
            z.writestr(name, content)
    raw = bytearray(buf.getvalue())
    at = raw.index(b"label,pixel0") + 4000
    raw[at] = ord("7") if raw[at] != ord("7") else ord("8")
    download_fails(tmp_path, bytes(raw), "CRC")


@pytest.mark.parametrize("member", ["train.csv", "test.csv"])
def test_missing_member(tmp_path, member):
    # a zip without train.csv or test.csv names the missing member
    download_fails(tmp_path, zip_with(**{member: None}), f"missing {member}")


@pytest.mark.parametrize("name, match", [
    ("extra.txt", "unexpected members"),
    ("nested/train.csv", "unexpected members"),
    ("digit-recognizer.zip", "unexpected members"),
    ("../../evil.csv", "unsafe path"),
    ("/tmp/evil.csv", "unsafe path"),
    ("..\\evil.csv", "unsafe path"),
    ("C:/evil.csv", "unsafe path"),
])
def test_extra_nested_or_unsafe_member(tmp_path, name, match):
    # extra, nested and traversal members are refused and nothing is extracted anywhere
    err = download_fails(tmp_path, zip_with(**{name: b"pwned"}), match)
    assert not list(tmp_path.parent.rglob("evil.csv")), err
    assert not Path("/tmp/evil.csv").exists()


def test_zip_bomb_declared_size(tmp_path):
    # a member whose central directory declares an absurd size is refused before reading it
    raw = bytearray(zip_with())
    cd = raw.index(b"PK\x01\x02")  # the first central directory entry; its size is at +24
    raw[cd + 24:cd + 28] = struct.pack("<I", 0xFFFFFFF0)
    download_fails(tmp_path, bytes(raw), "zip bomb")


def test_zip_bomb_real_ratio(tmp_path):
    # a real highly compressed member (64 MB of zeros in ~64 KB) is refused as a bomb
    download_fails(tmp_path, zip_with(**{"train.csv": bytes(64 << 20)}), "zip bomb")


def test_bad_zip_in_mirror_is_not_copied(tmp_path):
    # a bad zip in the mirror is refused before it is copied into data/raw
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "digit-recognizer.zip").write_bytes(b"PK\x03\x04 broken")
    root = tmp_path / "project"
    assert_one_line_error(invoke(root, "download", "--mirror", str(mirror)), 1, "not a valid zip")
    assert not (root / "data" / "raw" / "digit-recognizer.zip").exists()


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_only_raise_data_error(data):
    # random bytes never crash the zip check with anything but DataError
    path = Path("/tmp") / f"digits-hyp-{hashlib.sha1(data).hexdigest()}.zip"
    path.write_bytes(data)
    try:
        with pytest.raises(DataError):
            check_zip(path)
    finally:
        path.unlink()


@functools.cache
def good_zip_bytes() -> bytes:
    return zip_with()


@FAST
@given(st.data())
def test_damaged_zip_is_refused_or_parses_identically(tmp_path_factory, data):
    # truncating or overwriting bytes of a valid zip gives DataError, or the very same arrays
    raw = bytearray(good_zip_bytes())
    if data.draw(st.booleans(), "truncate"):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1), "cut")]
    else:
        for _ in range(data.draw(st.integers(1, 4), "flips")):
            at = data.draw(st.integers(0, len(raw) - 1), "at")
            raw[at] = data.draw(st.integers(0, 255), "byte")
    path = tmp_path_factory.mktemp("z") / "digit-recognizer.zip"
    path.write_bytes(bytes(raw))
    try:
        got = read_competition(path)
    except DataError:
        return
    want = read_competition(write_zip(path.with_name("good.zip"), competition_files()))
    for k, v in want.arrays().items():
        assert np.array_equal(got.arrays()[k], v), k


# ----------------------------------------------------------------------------------- the CSVs


def train_csv(rows: list[str], header: list[str] = TRAIN_HEADER) -> bytes:
    return (",".join(header) + "\n" + "".join(r + "\n" for r in rows)).encode()


def row(label="3", pixels=None) -> str:
    pixels = pixels or ["0"] * 784
    return ",".join(([label] if label is not None else []) + pixels)


def with_pixel(value: str, at: int = 100) -> list[str]:
    p = ["0"] * 784
    p[at] = value
    return p


@pytest.mark.parametrize("member, content, match", [
    ("train.csv", b"", "empty"),
    ("train.csv", b"\n\n", "empty"),
    ("train.csv", train_csv([]), "no rows"),
    ("test.csv", b"", "empty"),
    ("test.csv", (",".join(PIXELS) + "\r\n").encode(), "no rows"),
    ("train.csv", train_csv([row()], TRAIN_HEADER[:-1]), "missing ['pixel783']"),
    ("train.csv", train_csv([row()], ["label", *PIXELS[:-1], "pixel0"]), "duplicated ['pixel0']"),
    ("train.csv", train_csv([row()], ["Label", *PIXELS]), "wrong columns"),
    ("train.csv", train_csv([row()], [*PIXELS, "label"]), "out of order"),
    ("test.csv", train_csv([row()]), "unexpected ['label']"),
    ("train.csv", train_csv([row(pixels=with_pixel("3.5"))]), "'3.5' is not an integer"),
    ("train.csv", train_csv([row(pixels=with_pixel("3.0"))]), "not plain integers"),
    ("train.csv", train_csv([row(pixels=with_pixel("abc"))]), "'abc' is not an integer"),
    ("train.csv", train_csv([row(pixels=with_pixel("NaN"))]), "NaN"),
    ("train.csv", train_csv([row(pixels=with_pixel(""))]), "empty"),
    ("train.csv", train_csv([row(pixels=with_pixel("-1"))]), "-1 is outside 0-255"),
    ("train.csv", train_csv([row(pixels=with_pixel("256"))]), "256 is outside 0-255"),
    ("train.csv", train_csv([row(pixels=with_pixel("99999999999999999999"))]), "not"),
    ("train.csv", train_csv([row(label="10")]), "label 10 is outside 0-9"),
    ("train.csv", train_csv([row(label="-1")]), "-1 is outside"),
    ("train.csv", train_csv([row(), row()[:-2]]), "row 2"),
    ("train.csv", train_csv([row(), row() + ",0"]), "line 2, saw 786"),
    ("train.csv", train_csv([row() + ",0", row() + ",0"]), "786 values, expected 785"),
    ("train.csv", b"\xff\xfe" + train_csv([row()]), "not UTF-8"),
])
def test_bad_csv_through_download(tmp_path, member, content, match):
    # each malformed CSV is refused by `digits download` in one line naming the problem
    download_fails(tmp_path, zip_with(**{member: content}), match)


def test_bom_and_crlf_through_download(tmp_path):
    # a BOM and CRLF endings in every member simply work, with the same arrays as plain files
    files = competition_files()
    odd = {k: b"\xef\xbb\xbf" + v.replace(b"\n", b"\r\n") for k, v in files.items()}
    root = raw_project(tmp_path, zip_with(**odd))
    assert invoke(root, "download").exit_code == 0
    got = np.load(root / "data" / "interim" / "digits.npz")
    want = read_competition(write_zip(tmp_path / "plain.zip", files)).arrays()
    for k, v in want.items():
        assert np.array_equal(got[k], v), k


CELLS = st.one_of(st.integers(-300, 300).map(str),
                  st.sampled_from(["", "NaN", "1.5", "2.0", "1e3", "x", " 7", '"8"', "0x1",
                                   "99999999999999999999", "+3", "٣"]))


@FAST
@given(st.lists(st.lists(CELLS, min_size=2, max_size=4), min_size=1, max_size=6))
def test_csv_parser_property(tmp_path_factory, grid):
    # any grid of cells either parses to exactly its integer values (all in 0-255) or is a DataError
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    path.write_text("a,b,c\n" + "".join(",".join(r) + "\n" for r in grid), encoding="utf-8")
    try:
        got = read_csv(None, path, ("a", "b", "c"))
    except DataError:
        return
    assert got.dtype == np.uint8
    want = [[int(c.strip().strip('"')) for c in r] for r in grid if any(c != "" for c in r)]
    assert got.tolist() == want


def test_ten_times_larger_csv_has_bounded_memory(tmp_path):
    # parsing 10x the rows grows peak memory by about the uint8 output, never the whole text
    import subprocess
    import sys
    script = r"""
import resource, sys, numpy as np
from pathlib import Path
import pipeline.data
from pipeline.data import TRAIN_COLUMNS, read_csv
pipeline.data.CHUNK_ROWS = 500  # small chunks, so the fixed per-chunk working set stays small
path, n = Path(sys.argv[1]), int(sys.argv[2])
line = ("7," + ",".join(str(v) for v in np.random.default_rng(0).integers(0, 256, 784)) + "\n")
with open(path, "w") as f:  # streamed to disk, never held whole
    f.write(",".join(TRAIN_COLUMNS) + "\n")
    for _ in range(n):
        f.write(line)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
x = read_csv(None, path, TRAIN_COLUMNS)
assert x.shape == (n, 785) and (x[:, 0] == 7).all()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, path.stat().st_size)
"""
    growth = {}
    for n in (2000, 20000):
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{n}.csv"), str(n)],
                             capture_output=True, text=True, check=True).stdout.split()
        growth[n] = (int(out[0]) * 1024, int(out[1]))  # (peak growth, file size) in bytes
        (tmp_path / f"{n}.csv").unlink()
    extra_memory = growth[20000][0] - growth[2000][0]
    extra_text = growth[20000][1] - growth[2000][1]
    extra_output = 18000 * 785  # uint8
    # the output is held twice while chunks are joined; reading the whole file at once would
    # hold its text (~3.6 bytes a value) or an int64 frame (8 bytes a value)
    assert extra_memory < 3 * extra_output < extra_text, (extra_memory, extra_output, extra_text)


# ---------------------------------------------------------------------------------- submission

IDS = np.arange(1, 28001)


def good_submission() -> str:
    return "ImageId,Label\n" + "".join(f"{i},{i % 10}\n" for i in IDS)


@pytest.mark.parametrize("mutate, match", [
    (lambda t: t.replace("ImageId,Label", "ImageID,Label", 1), "header"),
    (lambda t: t.replace("ImageId,Label", "ImageId,Label,Extra", 1), "header"),
    (lambda t: t.replace("ImageId,Label\n", "", 1), "header"),
    (lambda t: t.rsplit("\n", 2)[0] + "\n", "27999 rows"),
    (lambda t: t + "28001,1\n", "28001 rows"),
    (lambda t: t.replace("\n3,3\n", "\n2,3\n", 1), "ImageId '2', expected 3"),
    (lambda t: t.replace("\n3,3\n", "\n", 1) + "28001,1\n", "ImageId '4', expected 3"),
    (lambda t: t.replace("\n3,3\n", "\n3,3.0\n", 1), "Label '3.0'"),
    (lambda t: t.replace("\n3,3\n", "\n3,three\n", 1), "Label 'three'"),
    (lambda t: t.replace("\n3,3\n", "\n3,10\n", 1), "Label '10'"),
    (lambda t: t.replace("\n3,3\n", "\n3,-3\n", 1), "Label '-3'"),
    (lambda t: t.replace("\n3,3\n", "\n3,\n", 1), "Label ''"),
    (lambda t: t.replace("\n3,3\n", "\n3,²\n", 1), "Label '²'"),
    (lambda t: t.replace("\n3,3\n", "\n3,٣\n", 1), "Label '٣'"),
    (lambda t: t.replace("\n3,3\n", "\n3,3,3\n", 1), "3 values"),
    (lambda t: t.replace("\n3,3\n", '\n3,"' + "9" * 200000 + "\n", 1), "not a plain CSV"),
    (lambda t: "\n".join(("," + ln if k == 0 else f"{k - 1},{ln}")
                         for k, ln in enumerate(t.splitlines())) + "\n", "header"),
    (lambda t: "", "empty"),
    (lambda t: "\ufeff" + t, "byte-order mark"),
])
def test_bad_submission_through_validate(tmp_path, mutate, match):
    # `digits validate PATH` refuses each malformed submission in one line, changing nothing
    path = tmp_path / "s.csv"
    path.write_text(mutate(good_submission()), encoding="utf-8")
    before = tree_digest(tmp_path)
    assert_one_line_error(invoke(tmp_path / "project", "validate", str(path)), 1, match)
    assert tree_digest(tmp_path) == before


def test_good_submission_through_validate(tmp_path):
    # the control case: a valid submission validates, exit 0
    path = tmp_path / "s.csv"
    path.write_text(good_submission())
    result = invoke(tmp_path, "validate", str(path))
    assert result.exit_code == 0 and "valid, 28000 rows" in result.output


SMALL_IDS = np.arange(1, 31)
SMALL = "ImageId,Label\n" + "".join(f"{i},{i % 10}\n" for i in SMALL_IDS)


@FAST
@given(st.integers(1, 30), st.text(string.printable + "²٣０\u2028", max_size=12))
def test_corrupt_row_validates_same_or_is_refused(tmp_path_factory, line, text):
    # any replacement of one row either validates to the same labels or is a SubmissionError
    lines = SMALL.splitlines()
    lines[line] = text
    path = tmp_path_factory.mktemp("sub") / "s.csv"
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    try:
        labels = validate_submission(path, SMALL_IDS)
    except SubmissionError:
        return
    assert labels.tolist() == (SMALL_IDS % 10).tolist()


# ---------------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("args, option", [
    (["train", "--lr", "-0.1"], "--lr"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--hidden", "0"], "--hidden"),
    (["train", "--hidden", "256,0"], "--hidden"),
    (["train", "--hidden", "many"], "--hidden"),
    (["train", "--model", "resnet"], "--model"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--dropout", "1"], "--dropout"),
    (["train", "--weight-decay", "inf"], "--weight-decay"),
    (["train", "--augment", "shift=banana"], "--augment"),
    (["split", "--dev-fraction", "0"], "--dev-fraction"),
    (["split", "--dev-fraction", "1"], "--dev-fraction"),
    (["split", "--dev-fraction", "-0.2"], "--dev-fraction"),
    (["split", "--dev-fraction", "nan"], "--dev-fraction"),
    (["run", "--dev-fraction", "1.5"], "--dev-fraction"),
    (["run", "--model", "transformer"], "--model"),
])
def test_bad_parameter_is_a_usage_error(tmp_path, args, option):
    # a bad option value is a click usage error (exit 2) naming the option; nothing is written
    result = invoke(tmp_path / "project", *args)
    assert_one_line_error(result, 2, option)
    assert "Error: Invalid value for" in result.stderr
    assert not (tmp_path / "project").exists() or tree_digest(tmp_path / "project") == {}
