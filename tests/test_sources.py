"""A folder of the three CSVs as a data source (a Kaggle Notebook's input, or a mirror folder),
checked exactly like the zip; and a Kaggle Notebook's layout: submission.csv in /kaggle/working,
everything else out of it. The notebook's folders are simulated through KAGGLE_INPUT_DIR,
KAGGLE_WORKING_DIR and KAGGLE_TEMP_DIR."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import csv_text, make_competition_zip

from pipeline import data, stages
from pipeline.cli import cli
from pipeline.config import Paths, kaggle_input, kaggle_notebook
from pipeline.submission import validate_submission

QUICK = ["--model", "mlp", "--epochs", "1", "--hidden", "16", "--batch-size", "32",
         "--augment", "none", "--no-report"]
PIXELS = [f"pixel{i}" for i in range(784)]


def competition_folder(folder: Path, **kw) -> Path:
    """The synthetic competition's three CSVs unpacked into `folder` (as Kaggle mounts them)."""
    z = make_competition_zip(folder.parent / f".{folder.name}.zip", **kw)
    with zipfile.ZipFile(z) as f:
        f.extractall(folder)
    z.unlink()
    return folder


@pytest.fixture
def notebook(tmp_path, monkeypatch):
    """A simulated Kaggle Notebook: the competition attached under the input folder, an empty
    output folder as the current directory, a scratch folder; no DIGITS_ROOT."""
    inputs, working, temp = tmp_path / "input", tmp_path / "working", tmp_path / "temp"
    competition_folder(inputs / "digit-recognizer")
    working.mkdir()
    temp.mkdir()
    for name in ("DIGITS_ROOT", "KAGGLE_MIRROR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_INPUT_DIR", str(inputs))
    monkeypatch.setenv("KAGGLE_WORKING_DIR", str(working))
    monkeypatch.setenv("KAGGLE_TEMP_DIR", str(temp))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    monkeypatch.chdir(working)
    return {"input": inputs / "digit-recognizer", "working": working, "temp": temp}


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_folder_parses_to_the_same_arrays_as_the_zip(tmp_path):
    # the three CSVs in a folder (plus an unrelated README) give exactly the zip's arrays
    z = make_competition_zip(tmp_path / "src" / "digit-recognizer.zip")
    folder = tmp_path / "folder"
    with zipfile.ZipFile(z) as f:
        f.extractall(folder)
    (folder / "README.md").write_text("a mirror may hold notes too\n")
    from_zip, from_folder = data.read_competition(z), data.read_competition(folder)
    for name, array in from_zip.arrays().items():
        np.testing.assert_array_equal(from_folder.arrays()[name], array, err_msg=name)


BAD = {  # what is wrong -> (member, replacement text, what the message must say)
    "header": ("train.csv", csv_text(["label", *PIXELS[:-1], "pixelX"], np.zeros((2, 785), int)),
               "wrong columns"),
    "pixel above 255": ("test.csv", csv_text(PIXELS, np.full((2, 784), 256)), "outside 0-255"),
    "negative pixel": ("test.csv", csv_text(PIXELS, np.full((2, 784), -1)), "outside 0-255"),
    "decimal pixel": ("test.csv", csv_text(PIXELS, np.full((2, 784), 0.5)), "not an integer"),
    "label 10": ("train.csv", csv_text(["label", *PIXELS], np.column_stack(
        [[3, 10], np.zeros((2, 784), int)])), "label 10 is outside 0-9"),
    "row counts": ("sample_submission.csv", csv_text(["ImageId", "Label"], [[1, 0], [2, 0]]),
                   "sample_submission.csv has 2 rows but test.csv has 50"),
    "no rows": ("train.csv", csv_text(["label", *PIXELS], np.zeros((0, 785), int)),
                "header but no rows"),
}


@pytest.mark.parametrize("problem", sorted(BAD))
def test_folder_gets_the_same_checks_as_the_zip(tmp_path, problem):
    # each damaged CSV is refused with the same message from a folder as from a zip
    member, text, expected = BAD[problem]
    z = make_competition_zip(tmp_path / "z" / "digit-recognizer.zip",
                             members={member: text.encode()})
    folder = competition_folder(tmp_path / "folder")
    (folder / member).write_text(text)
    errors = []
    for source in (z, folder):
        with pytest.raises(data.DataError) as e:
            data.read_competition(source)
        errors.append(str(e.value))
        assert expected in str(e.value), str(e.value)
    # the same words, up to where the file is named (a member name, or a path in the folder)
    assert errors[1].replace(str(folder) + os.sep, "") == errors[0]


def test_folder_missing_a_csv_is_named(tmp_path):
    # a folder without test.csv is refused before parsing, naming what is missing
    folder = competition_folder(tmp_path / "folder")
    (folder / "test.csv").unlink()
    with pytest.raises(data.DataError, match=r"missing test\.csv"):
        data.read_competition(folder)


def test_mirror_folder_of_csvs_runs_the_pipeline(tmp_path):
    # `digits run --mirror DIR` with the CSVs (no zip) in DIR writes a valid submission
    mirror = competition_folder(tmp_path / "mirror")
    root = tmp_path / "project"
    result = invoke("--root", str(root), "run", "--mirror", str(mirror), *QUICK)
    assert result.exit_code == 0, result.output
    assert len(validate_submission(Paths(root).submission, np.arange(1, 51))) == 50
    assert not (root / "data" / "raw").exists()  # read in place, not copied


def test_mirror_folder_with_a_bad_csv_fails_in_one_line(tmp_path):
    # a damaged CSV in a mirror folder is one clear line and exit 1, not a traceback
    mirror = competition_folder(tmp_path / "mirror")
    (mirror / "test.csv").write_text(csv_text(PIXELS, np.full((3, 784), 300)))
    result = invoke("--root", str(tmp_path / "p"), "download", "--mirror", str(mirror))
    assert result.exit_code == 1
    assert "test.csv row 1, column pixel0: 300 is outside 0-255" in result.output
    assert "Traceback" not in result.output


def test_notebook_input_runs_and_leaves_only_submission_in_working(notebook):
    # in a (simulated) Kaggle Notebook, `digits run` reads the attached input, writes
    # /kaggle/working/submission.csv and keeps every cache and intermediate file out of it
    result = invoke("run", *QUICK)
    assert result.exit_code == 0, result.output
    assert "Kaggle Notebook input" in result.output
    assert sorted(os.listdir(notebook["working"])) == ["submission.csv"]
    assert len(validate_submission(notebook["working"] / "submission.csv",
                                   np.arange(1, 51))) == 50
    scratch = notebook["temp"] / "digits"
    assert (scratch / "data" / "interim" / "digits.npz").is_file()
    assert (scratch / "data" / "models" / "model.npz").is_file()
    again = invoke("validate")  # the default path is the notebook's submission too
    assert again.exit_code == 0 and str(notebook["working"] / "submission.csv") in again.output


def test_notebook_is_detected_by_its_output_folder_alone(notebook, monkeypatch):
    # without KAGGLE_KERNEL_RUN_TYPE, an existing /kaggle/working still means a notebook;
    # without either, the current directory is the project as before
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    assert kaggle_notebook() == notebook["working"]
    paths = Paths.default()
    assert paths.submission == notebook["working"] / "submission.csv"
    assert paths.root == notebook["temp"] / "digits"
    monkeypatch.setenv("KAGGLE_WORKING_DIR", str(notebook["working"] / "absent"))
    assert kaggle_notebook() is None and Paths.default() == Paths(notebook["working"])


def test_notebook_without_temp_folder_uses_the_system_temp(notebook, monkeypatch, tmp_path):
    # with no /kaggle/temp, scratch goes to the system's temp dir, never to /kaggle/working
    monkeypatch.setenv("KAGGLE_TEMP_DIR", str(tmp_path / "absent"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "systemp"))
    (tmp_path / "systemp").mkdir()
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)  # forget the cached value
    assert Paths.default().root == tmp_path / "systemp" / "digits"


def test_notebook_input_holding_the_zip_is_read_in_place(notebook, tmp_path):
    # a notebook input holding digit-recognizer.zip instead of the CSVs works, without a copy
    folder = notebook["input"]
    for name in data.MEMBERS:
        (folder / name).unlink()
    make_competition_zip(folder / "digit-recognizer.zip")
    paths = Paths.default()
    sources = stages.Sources(kaggle_input=folder, use_api=False)
    assert stages.locate_source(paths, sources) == folder / "digit-recognizer.zip"
    stages.download(paths, sources, progress=False)
    assert paths.parsed.is_file() and not paths.raw_zip.exists()


def test_notebook_input_one_level_down_is_found(tmp_path, monkeypatch):
    # the competition mounted as <input>/<group>/digit-recognizer is found as well as
    # <input>/digit-recognizer; the direct place wins when both exist
    monkeypatch.setenv("KAGGLE_INPUT_DIR", str(tmp_path))
    assert kaggle_input() == tmp_path / "digit-recognizer"  # nothing there: the usual place
    nested = competition_folder(tmp_path / "competitions" / "digit-recognizer")
    assert kaggle_input() == nested
    direct = competition_folder(tmp_path / "digit-recognizer")
    assert kaggle_input() == direct
