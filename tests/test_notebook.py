"""notebooks/digit-recognizer.ipynb, executed with nbclient in a simulated Kaggle Notebook: the
competition attached under KAGGLE_INPUT_DIR, KAGGLE_WORKING_DIR as the current directory and
KAGGLE_TEMP_DIR as scratch. Its parameters cell is followed by one with fast values (a tiny MLP,
one epoch, no install: the package is already in this environment)."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from test_sources import competition_folder

from pipeline.submission import validate_submission

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "digit-recognizer.ipynb"
FAST = '''INSTALL_FROM = ""
MODEL = "mlp"
OPTIONS = ["--epochs", "1", "--hidden", "16", "--batch-size", "32", "--augment", "none",
           "--max-train", "150"]'''


def with_parameters(nb, source: str):
    """The notebook with a cell of `source` after the one tagged `parameters` (as papermill)."""
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(source))
    return nb


def test_notebook_runs_in_a_simulated_kaggle_notebook(tmp_path, monkeypatch):
    # the notebook runs the pipeline on the attached input, shows the report's figures inline,
    # and leaves submission.csv (and nothing else) in the output folder
    inputs, working, temp = tmp_path / "input", tmp_path / "working", tmp_path / "temp"
    competition_folder(inputs / "digit-recognizer", n_train=200, n_test=40)
    working.mkdir()
    temp.mkdir()
    for name in ("DIGITS_ROOT", "KAGGLE_MIRROR"):
        monkeypatch.delenv(name, raising=False)
    env = {"KAGGLE_INPUT_DIR": inputs, "KAGGLE_WORKING_DIR": working, "KAGGLE_TEMP_DIR": temp,
           "KAGGLE_KERNEL_RUN_TYPE": "Interactive", "IPYTHONDIR": tmp_path / "ipython",
           "JUPYTER_RUNTIME_DIR": tmp_path / "jupyter", "MPLBACKEND": "Agg"}
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    nb = with_parameters(nbformat.read(NOTEBOOK, as_version=4), FAST)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(working)}})
    client.execute()
    if os.environ.get("DIGITS_KEEP_NOTEBOOK"):  # to look at what a user would see
        nbformat.write(nb, os.environ["DIGITS_KEEP_NOTEBOOK"])

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs)
    assert "Kaggle Notebook input" in text and "valid, 40 rows" in text, text
    assert "epoch 1/1:" in text and "chunk/s" not in text and "\r" not in text  # lines, no bars
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # learning curves, confusion, mistakes, weights, class shares
    assert sorted(os.listdir(working)) == ["submission.csv"]
    assert len(validate_submission(working / "submission.csv", np.arange(1, 41))) == 40
    assert (temp / "digits" / "data" / "models" / "model.npz").is_file()


def test_notebook_without_the_wheel_dataset_says_what_to_attach(tmp_path, monkeypatch):
    # run as shipped but with no wheel in INSTALL_FROM, the install cell stops the notebook
    # with what to do, before anything else runs
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter"))
    (tmp_path / "empty").mkdir()
    nb = with_parameters(nbformat.read(NOTEBOOK, as_version=4),
                         f"INSTALL_FROM = {str(tmp_path / 'empty')!r}")
    client = nbclient.NotebookClient(nb, timeout=60, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(nbclient.exceptions.CellExecutionError) as err:
        client.execute()
    assert "no digits_pipeline-*.whl" in str(err.value) and "Add Input" in str(err.value)
    assert not (tmp_path / "submission.csv").exists()


def test_notebook_parameters_cell_is_tagged_and_defaults_to_the_real_run():
    # the parameters cell exists (papermill's tag) and, untouched, trains the default CNN and
    # installs from an attached dataset; every code cell compiles
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    values = {node.targets[0].id: ast.literal_eval(node.value)  # plain assignments only
              for node in ast.parse(params[0].source).body}
    assert values["MODEL"] == "cnn" and values["INSTALL_FROM"].startswith("/kaggle/input/")
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # saved clean
