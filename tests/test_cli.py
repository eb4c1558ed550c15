"""The `digits` command: help, exit codes, and the real pipeline end to end on the real zip."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.submission import validate_submission

COMMANDS = ["download", "split", "normalize", "train", "predict", "validate", "run"]


def invoke(*args, root=None):
    base = ["--root", str(root)] if root else []
    return CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    # each stage command documents itself and its options
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output and "--help" in result.output


@pytest.mark.parametrize("args, option", [
    (["train", "--lr", "-0.1"], "--lr"),
    (["train", "--hidden", "0"], "--hidden"),
    (["train", "--model", "resnet"], "--model"),
    (["split", "--dev-fraction", "1.5"], "--dev-fraction"),
])
def test_bad_parameters_are_usage_errors_naming_the_option(args, option, tmp_path):
    # a bad option value is a click usage error (exit 2) that names the option
    result = invoke(*args, root=tmp_path)
    assert result.exit_code == 2 and option in result.output


def test_user_error_is_one_line_exit_1(tmp_path):
    # a missing input is one clear line on stderr, exit code 1, no traceback
    result = invoke("split", root=tmp_path)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("digits: error:")


def test_python_m_pipeline_is_the_digits_command():
    # `python -m pipeline` runs the same click group as the `digits` console script
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in COMMANDS:
        assert command in out


def test_end_to_end_on_the_real_zip(tmp_path, real_zip):
    # the real pipeline on the real zip, trained briefly on a slice, writes a valid submission
    result = invoke("run", "--mirror", str(real_zip.parent), "--model", "mlp", "--epochs", "1",
                    "--max-train", "3000", root=tmp_path)
    assert result.exit_code == 0, result.output
    labels = validate_submission(tmp_path / "submissions" / "submission.csv")
    assert labels.shape == (28000,) and len(np.unique(labels)) == 10
    assert "valid, 28000 rows (made by mlp, dev-split accuracy" in result.output
    again = invoke("validate", root=tmp_path)
    assert again.exit_code == 0 and "valid, 28000 rows" in again.output
