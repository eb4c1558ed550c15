"""Parameters: one declaration each, and every place derived from it agrees; params.toml persists
what was set; make and digits pass values intact and never retrain a stage run alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import paramfile
from pipeline.cli import cli
from pipeline.params import BY_NAME, MODELS, PARAMS, ParamError, TrainConfig, coerce, resolve

REPO = Path(__file__).resolve().parent.parent


def invoke(root, *args, env=None):
    return CliRunner().invoke(cli, ["--root", str(root), *args], env=env)


def test_every_parameter_has_an_option_a_make_variable_and_a_file_entry(tmp_path):
    # the CLI options, `make help`, params.toml and `digits params` all come from PARAMS
    run_help = invoke(tmp_path, "run", "--help").output
    make_help = invoke(tmp_path, "params", "--make-help").output
    text = paramfile.render(paramfile.load(tmp_path / "none.toml"))
    table = invoke(tmp_path, "params", "--model", "mlp").output
    for p in PARAMS:
        assert p.option in run_help, p.name
        assert p.make_var in make_help, p.name
        assert f"{p.name} = " in text, p.name
        if p.section != "model" or "mlp" in p.models:
            assert p.make_var in table, p.name


def test_help_shows_each_models_real_default(tmp_path):
    # --help names the defaults of each model, e.g. the MLP's 512,256 hidden sizes
    from pipeline.nn.models import DEFAULTS
    out = " ".join(invoke(tmp_path, "train", "--help").output.split())
    hidden = ",".join(map(str, DEFAULTS["mlp"]["hidden"]))
    assert f"mlp {hidden}" in out
    assert f"cnn {DEFAULTS['cnn']['epochs']}" in out


def test_choices_come_from_the_registries(tmp_path, monkeypatch):
    # registering an optimizer is enough to put it in --help and make it valid
    from pipeline.nn import optim
    monkeypatch.setitem(optim.OPTIMIZERS, "lion", optim.OPTIMIZERS["sgd"])
    assert "lion" in invoke(tmp_path, "train", "--help").output
    assert coerce(BY_NAME["optimizer"], "lion") == "lion"


def test_option_that_does_not_apply_is_refused(tmp_path):
    # `--hidden` with the cnn is a usage error (exit 2) naming the option, before any work
    result = invoke(tmp_path, "train", "--model", "cnn", "--hidden", "64")
    assert result.exit_code == 2
    assert "--hidden" in result.output and "does not apply" in result.output
    assert not (tmp_path / "params.toml").exists()


def test_bad_values_are_named(tmp_path):
    # a bad value is refused (exit 2) naming the option and what is allowed
    for args, word in ((["--lr", "nan"], "finite"), (["--epochs", "0"], "[1, inf]"),
                       (["--dropout", "1"], "[0, 1)"), (["--augment", "spin=3"], "spin")):
        result = invoke(tmp_path, "train", "--model", "mlp", *args)
        assert result.exit_code == 2 and word in result.output, (args, result.output)


def test_params_file_round_trips_and_sticks_per_model(tmp_path):
    # a set value is written to its model's table; switching models keeps each one's settings
    assert invoke(tmp_path, "params", "--model", "mlp", "--epochs", "3").exit_code == 0
    assert invoke(tmp_path, "params", "--model", "cnn", "--epochs", "7").exit_code == 0
    values = paramfile.load(tmp_path / "params.toml")
    assert values["mlp"]["epochs"] == 3 and values["cnn"]["epochs"] == 7
    assert paramfile.load(tmp_path / "params.toml") == paramfile.load(tmp_path / "params.toml")
    _, train, _ = paramfile.configs(paramfile.apply(values, {"model": "mlp"}))
    assert resolve(train)["epochs"] == 3


@pytest.mark.parametrize("text,word", [
    ("[train]\nmodel = 'cnn'\nepoch = 3\n", "epoch"),
    ("[cnn]\nhidden = [64]\n", "hidden"),
    ("[mlp]\nlr = -1\n", "lr"),
    ("[trian]\n", "trian"),
    ("[train\n", "cannot be read"),
])
def test_a_bad_params_file_is_one_line(tmp_path, text, word):
    # a damaged or mistyped params.toml: exit 1, one line naming it, the file left as it was
    (tmp_path / "params.toml").write_text(text)
    result = invoke(tmp_path, "params")
    assert result.exit_code == 1 and "params.toml" in result.output and word in result.output
    assert "Traceback" not in result.output
    assert (tmp_path / "params.toml").read_text() == text


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from([p.name for p in PARAMS]),
       value=st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                       st.text(max_size=12), st.booleans()))
def test_coerce_accepts_or_names_the_parameter(name, value):
    # every value is either accepted as the declared type within its range, or refused by name
    p = BY_NAME[name]
    try:
        v = coerce(p, value)
    except ParamError as e:
        assert p.name in str(e)
        return
    assert coerce(p, v) == v  # what was accepted is accepted again unchanged


def test_resolve_fills_each_models_defaults():
    # resolved hyperparameters are the model's defaults unless set; they key the cache
    from pipeline.nn.models import DEFAULTS
    for model in MODELS:
        hp = resolve(TrainConfig(model=model))
        assert hp["epochs"] == DEFAULTS[model]["epochs"]
    same = DEFAULTS["mlp"]["epochs"]  # setting a default explicitly is the same run
    assert resolve(TrainConfig(model="mlp", epochs=same)) == resolve(TrainConfig(model="mlp"))


# ---------------------------------------------------------------- make, as a new user runs it


@pytest.fixture
def scratch(tmp_path, small_zip):
    """A copy of the repo's Makefile and package, using this interpreter instead of a venv."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(REPO / "pipeline", root / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Makefile", "setup.cfg", "pyproject.toml"):
        shutil.copy2(REPO / name, root / name)
    (root / ".installed").touch()
    return root, small_zip.parent


def make(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "DIGITS_MAKE_VARS", "DIGITS_ROOT")}
    cmd = ["make", "--no-print-directory", *args, f"PY={sys.executable}",
           "INSTALLED=.installed"]
    return subprocess.run(cmd, cwd=root, env=env, text=True, capture_output=True, timeout=300)


TINY = ["MODEL=mlp", "HIDDEN=16", "BATCH_SIZE=32", "AUGMENT=none"]


def test_stage_alone_uses_the_model_that_is_there(scratch):
    # after `make submit MODEL=mlp EPOCHS=2`, `make predict TTA=1` and `make validate` never train
    root, mirror = scratch
    first = make(root, "submit", *TINY, "EPOCHS=2", f"MIRROR={mirror}")
    assert first.returncode == 0, first.stderr
    for target in (["predict", "TTA=1"], ["validate"], ["report"]):
        out = make(root, *target)
        assert out.returncode == 0, out.stderr
        assert "-m pipeline train" not in out.stdout and "train: " not in out.stderr, \
            (target, out.stdout, out.stderr)


def test_make_and_digits_agree_on_the_current_submission(scratch):
    # `digits run` with 2 epochs, then `make submit ... EPOCHS=3 TTA=1`: the 3-epoch model is
    # trained and its submission is the one reported as current
    root, mirror = scratch
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-m", "pipeline", "--root", str(root), "run", "--mirror",
                    str(mirror), "--model", "mlp", "--hidden", "16", "--batch-size", "32",
                    "--augment", "none", "--epochs", "2", "--no-report"],
                   check=True, capture_output=True, env=env, cwd=root)
    out = make(root, "submit", *TINY, "EPOCHS=3", "TTA=1", f"MIRROR={mirror}")
    assert out.returncode == 0, out.stderr
    assert "train: recomputing (parameter epochs changed 2 -> 3)" in out.stderr
    assert "note:" not in out.stdout  # the submission is the current model's
    values = paramfile.load(root / "params.toml")
    assert values["mlp"]["epochs"] == 3 and values["predict"]["tta"] is True


def test_make_passes_values_intact(scratch):
    # quotes and spaces in a make variable reach digits unchanged, never through a shell line
    root, mirror = scratch
    spaced = root.parent / "mirror with space"
    shutil.copytree(mirror, spaced)
    out = make(root, "data", f"MIRROR={spaced}")
    assert out.returncode == 0, out.stderr
    out = make(root, "upload", "MESSAGE=it's \"quick\"; echo injected", "OFFLINE=1")
    assert "unexpected EOF" not in out.stderr and "injected\n" not in out.stdout


def test_unknown_make_variable_is_refused(scratch):
    # a typo such as EPOCH=3 is refused with the closest real name, not silently ignored
    root, _ = scratch
    out = make(root, "train", "EPOCH=3")
    assert out.returncode != 0 and "EPOCH" in out.stderr and "EPOCHS" in out.stderr


def test_committed_params_file_is_current():
    # the repo's params.toml sets nothing and shows today's defaults (regenerate it with
    # `python -c "from pipeline import paramfile as p; print(p.render(p.empty()), end='')"`)
    committed = (REPO / "params.toml").read_text(encoding="utf-8")
    assert committed == paramfile.render(paramfile.empty())
