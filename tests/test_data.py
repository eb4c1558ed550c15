"""The zip checks, the CSV parser and the stratified split."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from pipeline.data import DataError, check_zip, read_competition, stratified_split
from tests.conftest import make_competition_zip


def test_small_zip_parses_to_uint8(small_zip):
    # a well-formed zip parses into uint8 arrays of the right shapes, ids from the sample file
    d = read_competition(small_zip)
    assert d.train_x.shape == (200, 784) and d.train_x.dtype == np.uint8
    assert d.train_y.dtype == np.uint8 and set(d.train_y) == set(range(10))
    assert d.test_x.shape == (50, 784)
    assert d.test_ids.tolist() == list(range(1, 51))


def test_not_a_zip_is_refused(tmp_path):
    # a file that is not a zip gets a DataError that says how to recover
    p = tmp_path / "digit-recognizer.zip"
    p.write_bytes(b"this is not a zip")
    with pytest.raises(DataError, match="not a valid zip.*make data"):
        check_zip(p)


def test_missing_member_is_named(tmp_path):
    # a zip without test.csv is refused, naming the missing member
    p = make_competition_zip(tmp_path / "z.zip", members={"test.csv": None})
    with pytest.raises(DataError, match="missing test.csv"):
        check_zip(p)


@pytest.mark.parametrize("name", ["../evil.csv", "/etc/evil.csv", "nested/train.csv"])
def test_unsafe_or_extra_member_is_refused(tmp_path, name):
    # traversal, absolute and nested member names are refused before anything is extracted
    p = make_competition_zip(tmp_path / "z.zip", members={name: b"x"})
    with pytest.raises(DataError, match="unsafe path|unexpected members"):
        check_zip(p)


def test_crc_error_is_detected(tmp_path):
    # flipping a byte inside a stored member is caught by the CRC check
    p = tmp_path / "z.zip"
    good = make_competition_zip(tmp_path / "g.zip")
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    raw = bytearray(p.read_bytes())
    at = raw.index(b"label,pixel0") + 5000
    raw[at] = ord("7") if raw[at] != ord("7") else ord("8")
    p.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="CRC|corrupt|not a valid zip"):
        check_zip(p)


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"label," + ",".join(f"pixel{i}" for i in range(784)).encode() + b"\n", "no rows"),
    (b"label,pixel0\n1,2\n", "wrong columns"),
])
def test_bad_train_csv(tmp_path, content, message):
    # empty, header-only and wrong-column train.csv each get a message naming the problem
    p = make_competition_zip(tmp_path / "z.zip", members={"train.csv": content})
    with pytest.raises(DataError, match=message):
        read_competition(p)


def test_pixel_out_of_range_names_row_and_column(tmp_path):
    # a pixel of 256 is reported with its row and column
    header = "label," + ",".join(f"pixel{i}" for i in range(784))
    row = "3," + ",".join(["0"] * 783 + ["256"])
    content = f"{header}\n{row}\n".encode()
    p = make_competition_zip(tmp_path / "z.zip", members={"train.csv": content})
    with pytest.raises(DataError, match=r"row 1, column pixel783: 256 is outside 0-255"):
        read_competition(p)


def test_bom_and_crlf_simply_work(tmp_path):
    # a UTF-8 byte-order mark and CRLF line endings parse like plain files
    header = "label," + ",".join(f"pixel{i}" for i in range(784))
    rows = "\r\n".join(f"{k}," + ",".join(["7"] * 784) for k in range(10))
    content = ("\ufeff" + header + "\r\n" + rows + "\r\n").encode("utf-8")
    p = make_competition_zip(tmp_path / "z.zip", members={"train.csv": content})
    d = read_competition(p)
    assert d.train_y.tolist() == list(range(10)) and (d.train_x == 7).all()


def test_stratified_split_keeps_class_shares():
    # each class is split in the same proportion, the parts are disjoint and cover everything
    y = np.repeat(np.arange(10), [100, 200, 300, 100, 100, 100, 100, 100, 100, 1000])
    train, dev = stratified_split(y, 0.1, seed=0)
    assert len(np.intersect1d(train, dev)) == 0 and len(train) + len(dev) == len(y)
    assert np.bincount(y[dev]).tolist() == [10, 20, 30, 10, 10, 10, 10, 10, 10, 100]


def test_split_is_seeded():
    # the same seed gives the same split; another seed a different one
    y = np.arange(1000) % 10
    assert np.array_equal(stratified_split(y, 0.2, 1)[1], stratified_split(y, 0.2, 1)[1])
    assert not np.array_equal(stratified_split(y, 0.2, 1)[1], stratified_split(y, 0.2, 2)[1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 2.0])
def test_split_fraction_outside_open_interval(fraction):
    # a dev fraction outside (0, 1) is a ValueError naming the value
    with pytest.raises(ValueError, match="dev_fraction must be in"):
        stratified_split(np.arange(100) % 10, fraction, 0)


def test_real_zip_checks_and_parses(real_zip):
    # the real competition zip passes every check and has the documented shape
    d = read_competition(real_zip)
    assert d.train_x.shape == (42000, 784) and d.test_x.shape == (28000, 784)
    assert d.train_y.max() == 9 and d.test_ids[-1] == 28000
