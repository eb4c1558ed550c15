"""One test per reliability class of issue 12, through the real CLI on a tiny project: damaged
state refused in one line with files unchanged, no silently wrong submission, one rule for
validate and upload, bounded resources, append-only files that survive damage, the last line
of defence, and every numeric option fuzzed across its range."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import config, stages
from pipeline.data import DataError, read_competition
from pipeline.fileio import write_text
from pipeline.submission import DegenerateSubmission, check_submission, degenerate
from tests.conftest import make_competition_zip
from tests.test_bad_input import assert_one_line_error, invoke, tree_digest

TRAIN = ["--model", "mlp", "--epochs", "5", "--hidden", "32"]
SUB = Path("submissions/submission.csv")
LEDGER = Path("submissions/ledger.jsonl")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A finished tiny project (200 train rows, 50 test rows, an mlp trained 5 epochs)."""
    base = tmp_path_factory.mktemp("reliability")
    make_competition_zip(base / "src" / "digit-recognizer.zip")
    root = base / "project"
    for args in (["download", "--mirror", str(base / "src")], ["split"], ["normalize"],
                 ["train", *TRAIN], ["predict"]):
        result = invoke(root, *args)
        assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def project(built, tmp_path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(built, root, symlinks=True)
    return root


def submission_text(labels) -> str:
    return "ImageId,Label\n" + "".join(f"{i},{k}\n" for i, k in enumerate(labels, 1))


# ---------------------------------------------------------------- 1. damaged state, one line


@pytest.mark.parametrize("rel, content, args, match", [
    ("data/interim/digits.npz", b"PK\x03\x04 truncated", ["split", "--split-seed", "5"],
     "truncated"),
    ("data/interim/split.npz", None, ["normalize"], "split.npz"),
    ("data/processed/normalizer.json", b'{"mean": 0.1, "std": 0}', ["predict", "--tta"], "std"),
    ("data/processed/normalizer.json", b'"hello"', ["show", "1"], "string"),
    ("data/models/model.npz", b"garbage", ["predict", "--tta"], "model.npz"),
    ("data/models/history.json", b"[1]", ["report"], "history.json"),
    ("data/raw/digit-recognizer.zip", b"", ["download"], "digit-recognizer.zip"),
])
def test_damaged_state_file_is_one_line_and_changes_nothing(project, rel, content, args, match):
    # each damaged state file: exit 1, one line naming it, every other file byte-identical
    path = project / rel
    if content is None:  # an index out of range, written as a valid npz
        np.savez(path, train_idx=np.arange(0, 150), dev_idx=np.arange(150, 10**6, 10**5))
    else:
        path.write_bytes(content)
    before = tree_digest(project)
    assert_one_line_error(invoke(project, *args), 1, match)
    assert {k: v for k, v in tree_digest(project).items() if not k.startswith("data/logs")} \
        == before


def test_raw_zip_folder_device_and_encrypted(project):
    # data/raw's zip as a folder, a symlink to a device, or with the encrypted flag set
    raw = project / "data" / "raw" / "digit-recognizer.zip"
    good = raw.read_bytes()
    raw.unlink()
    raw.mkdir()
    assert_one_line_error(invoke(project, "download"), 1, "directory")
    raw.rmdir()
    raw.symlink_to("/dev/zero")
    assert_one_line_error(invoke(project, "download"), 1, "character device")
    raw.unlink()
    forged = bytearray(good)
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = forged.find(sig)
        while i >= 0:
            forged[i + off] |= 1
            i = forged.find(sig, i + 4)
    raw.write_bytes(bytes(forged))
    assert_one_line_error(invoke(project, "download"), 1, "password-protected")


# ------------------------------------------------------------ 2. no silently wrong submission


def test_nonfinite_model_writes_no_submission(project):
    # NaN weights (a diverged run): predict refuses; the old submission stays
    model = project / "data" / "models" / "model.npz"
    with np.load(model) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["m0/fc1.w"] = np.full_like(arrays["m0/fc1.w"], np.nan)
    np.savez(model, **arrays)
    before = (project / SUB).read_bytes()
    assert_one_line_error(invoke(project, "predict", "--tta"), 1, "NaN")
    assert (project / SUB).read_bytes() == before


def test_degenerate_submission_flagged_by_validate_refused_by_upload(project):
    # one label on every row: validate exits 1; upload refuses before any Kaggle call unless
    # --force (which then gets as far as asking for credentials)
    (project / SUB).write_text(submission_text([3] * 50))
    assert_one_line_error(invoke(project, "validate"), 1, "degenerate")
    assert_one_line_error(invoke(project, "upload", "-m", "x"), 1, "degenerate")
    forced = invoke(project, "upload", "-m", "x", "--force")
    assert "but degenerate" not in forced.stderr and forced.exit_code == 1


def test_degenerate_threshold_spares_real_shares():
    # a 28000-row file with train-like shares and 3% of its rows moved passes, and so do the
    # shares of a nearly untrained model; one label on half the rows, or 5 digits never
    # predicted, do not
    rng = np.random.default_rng(0)
    train = rng.integers(0, 10, 42000)
    real = rng.integers(0, 10, 28000)
    real[:840] = 1  # 3% of the rows pushed to one label
    assert degenerate(real, train) is None
    half = np.where(np.arange(28000) % 2 == 0, 4, real)
    assert "label 4" in degenerate(half, train)
    weak = np.where(np.arange(28000) % 2 == 0, real % 5, real)  # TV 0.26, as a 23% model
    assert degenerate(weak, train) is None
    assert degenerate(real % 5, train) is not None
    assert degenerate(np.zeros(50, int), train) is not None  # small files too


# --------------------------------------------------------------------- 3. one rule per question


def test_validate_and_upload_share_the_rule(project):
    # a file one row short: validate and upload refuse it with the same message
    (project / SUB).write_text(submission_text(np.arange(49) % 10))
    v = assert_one_line_error(invoke(project, "validate"), 1, "49 rows")
    u = assert_one_line_error(invoke(project, "upload", "-m", "x"), 1, "49 rows")
    assert v == u


def test_data_stage_refuses_wrong_test_rows(tmp_path, monkeypatch):
    # test.csv and sample_submission.csv that disagree, or do not have the competition's rows
    make_competition_zip(tmp_path / "ok.zip", n_test=5)
    monkeypatch.delenv("DIGITS_ANY_TEST_ROWS")
    monkeypatch.setattr(config, "N_TEST", 6)
    with pytest.raises(DataError, match="competition has 6"):
        read_competition(tmp_path / "ok.zip")
    monkeypatch.setattr(config, "N_TEST", 5)
    read_competition(tmp_path / "ok.zip")
    import zipfile
    with zipfile.ZipFile(tmp_path / "ok.zip") as z:
        sample = z.read("sample_submission.csv")
    make_competition_zip(tmp_path / "bad.zip", n_test=5, members={
        "sample_submission.csv": sample.rsplit(b"\n", 2)[0] + b"\n"})
    with pytest.raises(DataError, match="4 rows but test.csv has 5"):
        read_competition(tmp_path / "bad.zip")


# --------------------------------------------------------------------- 4. bounded resources


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds almost nothing."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


def test_image_and_submission_bounded_before_reading(project):
    # a PNG declaring 14000x14000 and a 2 GB submission are refused without decoding/reading
    (project / "big.png").write_bytes(png_header(14000, 14000))
    t0 = time.perf_counter()
    assert_one_line_error(invoke(project, "predict-image", str(project / "big.png")), 1,
                          "14000x14000")
    big = project / "big.csv"
    big.touch()
    os.truncate(big, 2 << 30)  # sparse: no disk used
    assert_one_line_error(invoke(project, "validate", str(big)), 1, "bytes")
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize("args, match", [
    (["train", "--model", "mlp", "--hidden", "100000000"], "GB of memory"),
    (["split", "--dev-fraction", "0.0001"], "no dev rows"),
    (["split", "--dev-fraction", "0.99999"], "no train rows"),
])
def test_unfit_parameters_refused_up_front(project, args, match):
    # memory that cannot fit and splits with an empty side: one line, nothing written
    before = tree_digest(project)
    assert_one_line_error(invoke(project, *args), 1, match)
    assert tree_digest(project) == before


def test_five_row_train_csv_refused_at_split(tmp_path):
    # a 5-row train.csv downloads, then the split says it leaves no dev rows
    make_competition_zip(tmp_path / "src" / "digit-recognizer.zip", n_train=5)
    assert invoke(tmp_path / "p", "download", "--mirror", str(tmp_path / "src")).exit_code == 0
    assert_one_line_error(invoke(tmp_path / "p", "split"), 1, "no dev rows")


# -------------------------------------------------------------- 5. append-only files survive


@pytest.mark.parametrize("line", [b"\xff\xfe not utf-8", b"{{ not json", b"[1, 2]",
                                  b'{"kind": 5, "ref": [1]}'])
def test_damaged_ledger_line_is_skipped_and_new_entry_kept(project, line):
    # predict, submissions and runs survive one damaged line with one warning; predict's new
    # ledger line is appended
    with open(project / LEDGER, "ab") as f:
        f.write(line + b"\n")
    with open(project / "data" / "runs.jsonl", "ab") as f:
        f.write(line + b"\n")
    result = invoke(project, "predict", "--tta")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("skipped 1 damaged line") == 1
    last = json.loads((project / LEDGER).read_bytes().splitlines()[-1])
    assert last["kind"] == "written"
    for args in (["submissions", "--offline"], ["runs"]):
        out = invoke(project, *args)
        assert out.exit_code == 0 and out.stderr.count("damaged line") == 1, out.output


def test_ledger_line_written_before_what_can_fail_after_replace(project):
    # the history copy (last step) fails: submission.csv is new and its ledger line is there
    history = project / "submissions" / "history"
    shutil.rmtree(history)
    history.write_text("not a folder")
    assert_one_line_error(invoke(project, "predict", "--tta"), 1)
    last = json.loads((project / LEDGER).read_bytes().splitlines()[-1])
    assert last["kind"] == "written" and last["params"]["predict"]["tta"] is True


# -------------------------------------------------------------- 6. the last line of defence


def test_unexpected_exception_is_one_line_with_a_log(project, monkeypatch):
    # a bug anywhere: one line naming a log that holds the traceback; exit 1
    def boom(*a, **k):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(stages, "split", boom)
    err = assert_one_line_error(invoke(project, "split"), 1, "ZeroDivisionError")
    logs = list((project / "data" / "logs").glob("digits-*.log"))
    assert len(logs) == 1 and "Traceback" in logs[0].read_text() and logs[0].name in err


def test_crash_log_falls_back_to_a_temporary_directory(tmp_path, monkeypatch):
    # data/logs cannot be made (a file is in the way): the log goes to the temp directory
    from pipeline.crash import write_crash_log
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "logs").write_text("in the way")
    try:
        raise ValueError("x")
    except ValueError as e:
        log = write_crash_log(tmp_path / "data", e)
    assert log.parent == tmp_path / "tmp" / "digits-logs" and "ValueError" in log.read_text()


def test_rewritten_files_keep_their_mode(tmp_path):
    # atomic rewrites keep 0644/0640/0600; a new file gets the umask's default, not 0600
    path = tmp_path / "f.txt"
    old = os.umask(0o022)
    try:
        write_text(path, "a")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        for mode in (0o640, 0o600, 0o664):
            os.chmod(path, mode)
            write_text(path, "b")
            assert stat.S_IMODE(path.stat().st_mode) == mode
    finally:
        os.umask(old)


# ---------------------------------------------------------- 7. numeric options across range

NUMERIC = {("train", "--lr"): st.floats(allow_nan=True, allow_infinity=True),
           ("train", "--dropout"): st.floats(-2, 2),
           ("train", "--weight-decay"): st.floats(-1, 1e6),
           ("train", "--label-smoothing"): st.floats(-1, 2),
           ("train", "--epochs"): st.integers(-5, 10**12),
           ("train", "--batch-size"): st.integers(-5, 10**12),
           ("train", "--ensemble"): st.integers(-5, 10**9),
           ("train", "--patience"): st.integers(-5, 10**9),
           ("train", "--hidden"): st.integers(-5, 10**10),
           ("train", "--seed"): st.integers(-(2**70), 2**70),
           ("predict", "--predict-batch-size"): st.integers(-5, 10**12),
           ("split", "--split-seed"): st.integers(-(2**70), 2**70),
           ("upload", "--timeout"): st.floats(allow_nan=True, allow_infinity=True)}


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(sorted(NUMERIC)), data=st.data())
def test_numeric_options_never_trace(tmp_path, option, data):
    # any value of any numeric option, on a project with no data yet: a usage error (2) naming
    # the option, or a one-line refusal (1: memory, or the missing input), never a traceback
    command, name = option
    value = data.draw(NUMERIC[option])
    extra = ["--model", "mlp"] if command == "train" else ["-m", "x"] if command == "upload" else []
    result = invoke(tmp_path / "empty", command, *extra, name, str(value))
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output and "No such option" not in result.output
    if result.exit_code == 1:
        assert_one_line_error(result, 1)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(allow_nan=True, allow_infinity=True) | st.floats(0, 1),
       max_train=st.integers(-3, 10**12))
def test_split_options_across_range(built, fraction, max_train):
    # --dev-fraction and --max-train anywhere: a split with both sides, or a one-line refusal
    root = built.parent / "split-fuzz"
    if not root.exists():
        shutil.copytree(built, root, symlinks=True)
    result = invoke(root, "split", "--dev-fraction", str(fraction), "--max-train",
                    str(max_train))
    assert result.exit_code in (0, 1, 2) and "Traceback" not in result.output
    if result.exit_code == 0:
        with np.load(root / "data" / "interim" / "split.npz") as z:
            assert len(z["train_idx"]) and len(z["dev_idx"])
    elif result.exit_code == 1:
        assert_one_line_error(result, 1)


def test_check_submission_is_what_validate_uses(tmp_path):
    # the shared rule accepts a spread file and names a degenerate one
    path = tmp_path / "s.csv"
    path.write_text(submission_text(np.arange(50) % 10))
    assert len(check_submission(path, np.arange(1, 51))) == 50
    path.write_text(submission_text([1] * 50))
    with pytest.raises(DegenerateSubmission, match="label 1"):
        check_submission(path, np.arange(1, 51))
