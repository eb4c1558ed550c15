"""The checked readers under fuzzing: every state file, valid then damaged (bytes flipped,
truncated, values swapped for other JSON types), is either read as something its schema
accepts or refused with one StateFileError line. Nothing else may escape."""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import readers as R
from pipeline import schemas as S
from pipeline.nn import Model, save_models
from pipeline.nn.models import build_spec
from pipeline.params import TrainConfig
from pipeline.train import hyperparameters

FUZZ = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=5), lambda kids: st.lists(kids, max_size=3)
                    | st.dictionaries(st.text(max_size=5), kids, max_size=3), max_leaves=8)


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def digits_arrays(n=30, m=8):
    rng = np.random.default_rng(0)
    return {"train_x": rng.integers(0, 256, (n, 784)).astype(np.uint8),
            "train_y": (np.arange(n) % 10).astype(np.uint8),
            "test_x": rng.integers(0, 256, (m, 784)).astype(np.uint8),
            "test_ids": np.arange(1, m + 1, dtype=np.int32)}


def model_bytes(tmp_path) -> bytes:
    hp = hyperparameters(TrainConfig(model="mlp", hidden=(8,)))
    path = tmp_path / "m.npz"
    save_models(path, [Model(build_spec("mlp", hp))])
    return path.read_bytes()


def damage(raw: bytes, data) -> bytes:
    """Flip a few bytes, or truncate, or both."""
    raw = bytearray(raw)
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    return bytes(raw)


READERS = {
    "digits.npz": (lambda p: R.read_digits(p), lambda tmp: npz_bytes(**digits_arrays())),
    "split.npz": (lambda p: R.read_split(p, 30), lambda tmp: npz_bytes(
        train_idx=np.arange(0, 27), dev_idx=np.arange(27, 30))),
    "model.npz": (R.read_model, model_bytes),
}


@pytest.mark.parametrize("name", sorted(READERS))
@FUZZ
@given(data=st.data())
def test_damaged_npz_is_read_or_refused(tmp_path, name, data):
    # flipped bytes or a truncation in an .npz state file: a schema-valid read or StateFileError
    read, make = READERS[name]
    path = tmp_path / name
    path.write_bytes(damage(make(tmp_path), data))
    try:
        read(path)
    except R.StateFileError as e:
        assert "\n" not in str(e) and name in str(e)


@FUZZ
@given(data=st.data())
def test_npz_arrays_swapped_for_other_types(tmp_path, data):
    # any array of digits.npz or split.npz replaced by another dtype, shape or range: a read
    # whose arrays fit the schema, or StateFileError
    which = data.draw(st.sampled_from(["digits", "split"]))
    arrays = digits_arrays() if which == "digits" else {"train_idx": np.arange(0, 27),
                                                        "dev_idx": np.arange(27, 30)}
    name = data.draw(st.sampled_from(sorted(arrays)))
    dtype = data.draw(st.sampled_from([np.uint8, np.int32, np.int64, np.float32, np.float64,
                                       np.bool_]))
    shape = data.draw(st.sampled_from([arrays[name].shape, (0,), (3,), (30, 784), (8, 2, 2)]))
    arrays[name] = (np.random.default_rng(0).normal(0, 300, shape)).astype(dtype)
    path = tmp_path / f"{which}.npz"
    path.write_bytes(npz_bytes(**arrays))
    try:
        got = R.read_digits(path) if which == "digits" else R.read_split(path, 30)
    except R.StateFileError as e:
        assert "\n" not in str(e)
    else:
        assert set(got) == set(arrays)


@pytest.mark.parametrize("change, match", [
    (lambda a: {k: v for k, v in a.items() if k != "test_x"}, "has no array test_x"),
    (lambda a: {**a, "train_x": a["train_x"].astype(np.float32)}, "dtype float32"),
    (lambda a: {**a, "train_y": a["train_y"][:-1]}, "shape"),
    (lambda a: {**a, "train_y": a["train_y"] + 5}, "above the largest"),
    (lambda a: {**a, "test_ids": a["test_ids"][::-1].copy()}, "in order"),
    (lambda a: {**a, "train_x": a["train_x"][:0], "train_y": a["train_y"][:0]}, "at least 1"),
])
def test_digits_schema_names_the_problem(tmp_path, change, match):
    # wrong keys, dtypes, shapes, ranges and orders of digits.npz are each named
    path = tmp_path / "digits.npz"
    path.write_bytes(npz_bytes(**change(digits_arrays())))
    with pytest.raises(R.StateFileError, match=match):
        R.read_digits(path)


@pytest.mark.parametrize("train, dev, match", [
    (np.arange(0, 27), np.arange(27, 31), "above the largest"),
    (np.arange(0, 28), np.arange(27, 30), "sorted|both"),
    (np.arange(0, 30), np.arange(0, 0), "at least 1"),
    (np.arange(-1, 27), np.arange(27, 30), "below the smallest"),
    (np.arange(0, 27.0), np.arange(27, 30), "dtype"),
])
def test_split_schema_names_the_problem(tmp_path, train, dev, match):
    # split.npz: indices out of range, overlapping, an empty side, floats
    path = tmp_path / "split.npz"
    path.write_bytes(npz_bytes(train_idx=train, dev_idx=dev))
    with pytest.raises(R.StateFileError, match=match):
        R.read_split(path, 30)


def test_forged_npy_header_is_refused_before_allocation(tmp_path):
    # a member that declares 10^12 elements in a small file is refused from its header
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
        z.writestr("train_x.npy", b"\x93NUMPY\x01\x00"[:0] + header.getvalue() + b"\0" * 64)
    path = tmp_path / "digits.npz"
    path.write_bytes(buf.getvalue())
    with pytest.raises(R.StateFileError, match="declares shape"):
        R.read_digits(path)


JSON_FILES = {"normalizer": (S.NORMALIZER, {"mean": 0.13, "std": 0.31}),
              "metrics": (S.METRICS, {"model": "mlp", "dev_accuracy": 0.97, "params": {},
                                      "members": [{"seed": 0, "dev_accuracy": 0.97}]}),
              "history": (S.HISTORY, [{"seed": 0, "best_epoch": 1, "epochs": [{}]}]),
              "kaggle": (S.KAGGLE_JSON, {"username": "me", "key": "abc"})}


def swap_values(doc, data):
    """`doc` with a few values (at any depth) replaced by arbitrary JSON."""
    if isinstance(doc, dict) and doc and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(doc)))
        return {**doc, key: swap_values(doc[key], data)}
    if isinstance(doc, list) and doc and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(doc) - 1))
        return [*doc[:i], swap_values(doc[i], data), *doc[i + 1:]]
    return data.draw(JSON)


@pytest.mark.parametrize("name", sorted(JSON_FILES))
@FUZZ
@given(data=st.data())
def test_damaged_json_is_read_or_refused(tmp_path, name, data):
    # values swapped for other types, or bytes flipped/truncated: schema-valid or StateFileError
    schema, good = JSON_FILES[name]
    raw = json.dumps(swap_values(good, data) if data.draw(st.booleans()) else good).encode()
    if data.draw(st.booleans()):
        raw = damage(raw, data)
    path = tmp_path / f"{name}.json"
    path.write_bytes(raw)
    try:
        value = R.read_json(path, schema)
    except R.StateFileError as e:
        assert "\n" not in str(e)
    else:
        assert S.check(value, schema.root) is None


@pytest.mark.parametrize("text, match", [
    ('{"mean": 0.1, "std": 0}', "expected >= 1e-06"), ('{"mean": 0.1, "std": -1}', "std"),
    ('{"mean": NaN, "std": 0.3}', "not valid JSON"), ('"a string"', "is a string"),
    ('{"mean": 0.1, "std":', "not valid JSON"), ("", "not valid JSON"),
])
def test_normalizer_problems_are_named(tmp_path, text, match):
    # the normalizer cases: std 0 or negative, NaN, a string, malformed, empty
    path = tmp_path / "normalizer.json"
    path.write_text(text)
    with pytest.raises(R.StateFileError, match=match):
        R.read_normalizer(path)


@pytest.mark.parametrize("schema", [S.LEDGER, S.RUNS], ids=["ledger", "runs"])
@FUZZ
@given(lines=st.lists(st.binary(max_size=30) | JSON.map(lambda v: json.dumps(v).encode()),
                      max_size=6))
def test_jsonl_never_fails_and_warns_once(tmp_path, caplog, schema, lines):
    # any damaged lines in an append-only file: the good records, at most one warning
    good = {"kind": "written", "time": "t", "sha256": "ab"} if schema is S.LEDGER else {
        "time": "2026-01-01T00:00:00+00:00", "dev_accuracy": 0.5}
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"\n".join([json.dumps(good).encode(), *lines, json.dumps(good).encode()]))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        records = R.read_jsonl(path, schema)
    assert records[0] == good and records[-1] == good
    assert all(S.check(r, schema.record) is None for r in records)
    assert len(caplog.records) <= 1


@pytest.mark.parametrize("kind", ["dir", "fifo", "device"])
def test_non_regular_files_are_refused_without_reading(tmp_path, kind):
    # a folder, a FIFO (which would block a reader) or /dev/zero (endless) in a file's place
    path = tmp_path / "normalizer.json"
    {"dir": path.mkdir, "fifo": lambda: os.mkfifo(path),
     "device": lambda: path.symlink_to("/dev/zero")}[kind]()
    with pytest.raises(R.StateFileError, match="not a regular file"):
        R.read_normalizer(path)
