"""Refit after cross-validation (`--folds K --refit`): the K-fold estimate as before, then one
model per ensemble seed trained on every cross-validated row for the same fixed epochs; those
models are the submission, cached one by one, byte-identical for 1 and 2 workers, and every
output says what the estimate is of."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import cvstages, stages
from pipeline.cli import cli
from pipeline.fileio import read_json
from pipeline.parallel import ParallelConfig
from pipeline.params import PredictConfig, TrainConfig, resolve
from tests.test_cv import FOLDS, ONE, TINY, outputs, prepared, without_seconds
from tests.test_params import scratch as scratch  # a fixture

REFIT = TINY.replace(refit=True, ensemble=2)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from tests.conftest import make_competition_zip
    return make_competition_zip(tmp_path_factory.mktemp("src") / "digit-recognizer.zip",
                                n_train=700, n_test=60)


def refit_submit(paths, par, cfg=REFIT) -> dict:
    cvstages.train_folds(paths, cfg, FOLDS, par)
    stages.predict(paths, PredictConfig())
    return outputs(paths)


def test_refit_models_train_on_every_row_for_the_cv_epochs(source, tmp_path):
    # model.npz holds one model per seed, each the very model train() makes on all 600
    # cross-validated rows for the fixed epochs; the estimate is the plain CV's, unchanged
    from pipeline.nn import load_models
    from pipeline.preprocess import normalize
    from pipeline.train import train
    paths = prepared(tmp_path / "p", source)
    plain = cvstages.cv(prepared(tmp_path / "plain", source), REFIT.replace(refit=False),
                        FOLDS, ONE)
    metrics = cvstages.train_folds(paths, REFIT, FOLDS, ONE)
    cv = read_json(paths.models / "cv.json")
    for key in ("oof_accuracy", "oof_loss", "fold_accuracy", "tta", "members"):
        assert without_seconds(cv[key]) == without_seconds(plain[key]), key
    models = load_models(paths.model)
    assert len(models) == 2
    assert metrics["submission_models"] == "refit" and metrics["refit"]["rows"] == 600
    assert [(m["seed"], m["train_rows"], m["best_epoch"]) for m in metrics["members"]] == [
        (0, 600, 2), (1, 600, 2)]
    assert len(metrics["fold_members"]) == 6
    history = read_json(paths.history)
    assert [(h["seed"], len(h["epochs"])) for h in history] == [(0, 2), (1, 2)]
    with np.load(paths.models / "oof.npz") as z:
        rows = z["rows"]
    parsed, norm = np.load(paths.parsed), read_json(paths.normalizer)
    hp = {**resolve(REFIT), "folds": 3, "ensemble": 1, "refit": False, "seed": 1}
    by_hand = train(TrainConfig(**json.loads(json.dumps(hp, default=list))),
                    normalize(parsed["train_x"][rows], norm),
                    parsed["train_y"][rows].astype(np.int64), progress=None)
    assert all(np.array_equal(by_hand.model.params[k], models[1].params[k])
               for k in models[1].params)


def test_submission_is_the_mean_of_the_refit_models(source, tmp_path):
    # the labels are the argmax of the refit models' mean probabilities (not the fold models');
    # metrics, the ledger line and `validate` say the models were refit
    from pipeline.nn import load_models
    from pipeline.predict import predict_proba
    from pipeline.preprocess import normalize
    from pipeline.submission import read_ledger
    paths = prepared(tmp_path / "p", source)
    refit_submit(paths, ONE)
    refit_models = load_models(paths.model)
    x = normalize(np.load(paths.parsed)["test_x"], read_json(paths.normalizer))
    mean = np.mean([predict_proba([m], x) for m in refit_models], axis=0)
    labels = np.loadtxt(paths.submission, delimiter=",", skiprows=1, dtype=int)[:, 1]
    assert np.array_equal(labels, mean.argmax(1))
    folds = prepared(tmp_path / "folds", source)
    cvstages.train_folds(folds, REFIT.replace(refit=False), FOLDS, ONE)
    fold_models = load_models(folds.model)
    assert len(fold_models) == 6
    assert not np.allclose(predict_proba(fold_models, x), mean, atol=1e-4)  # other models
    entry = read_ledger(paths.ledger)[-1]
    assert entry["submission_models"] == "refit"
    assert entry["oof_accuracy"] == read_json(paths.models / "cv.json")["oof_accuracy"]
    assert "transductive" not in entry and "transductive" not in read_json(paths.metrics)
    r = CliRunner().invoke(cli, ["--root", str(paths.root), "validate"])
    assert "out-of-fold accuracy" in r.output and "models refit on every row" in r.output
    assert read_json(folds.metrics)["submission_models"] == "folds"


def test_refit_members_are_cached_and_fold_members_shared(source, tmp_path, caplog):
    # `cv` first: the refit run trains only the two refit models; a rerun trains nothing and
    # writes no run-history line; the ledger-free outputs are the same bytes
    paths = prepared(tmp_path / "p", source)
    cvstages.cv(paths, REFIT, FOLDS, ONE)  # --refit does not change what cv trains
    with caplog.at_level(logging.INFO, logger="pipeline"):
        caplog.clear()
        first = refit_submit(paths, ONE)
    logged = [r.getMessage() for r in caplog.records]
    assert "cv: training 2 of 8 member(s) on 1 local worker(s)" in logged, logged
    assert "cv fold 3/3 seed 1: reused from cache" in logged
    runs = paths.runs.read_text().splitlines()
    assert json.loads(runs[-1])["submission_models"] == "refit"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline"):
        again = refit_submit(paths, ONE)
    logged = [r.getMessage() for r in caplog.records]
    assert {"refit seed 0: reused from cache", "refit seed 1: reused from cache"} <= set(logged)
    assert not any("training" in m for m in logged), logged
    assert paths.runs.read_text().splitlines() == runs and first == again


def test_two_workers_give_the_refit_bytes_of_one(source, tmp_path):
    # fold and refit members on two loky workers: the outputs of one process, to the byte
    one = refit_submit(prepared(tmp_path / "one", source), ONE)
    two = refit_submit(prepared(tmp_path / "two", source), ParallelConfig(jobs=2))
    assert one.keys() == two.keys() and one == two


def test_cli_says_what_the_estimate_is_of(source, tmp_path):
    # `digits train --folds 3 --refit` names the refit models and the fold models' estimate;
    # --patience is still refused with folds, --pseudo without folds is a usage error
    root = tmp_path / "p"
    prepared(root, source)
    base = ["--root", str(root), "train", "--model", "mlp", "--hidden", "32", "--batch-size",
            "32", "--augment", "none", "--epochs", "2"]
    r = CliRunner().invoke(cli, [*base, "--folds", "3", "--refit", "--jobs", "1"])
    assert r.exit_code == 0, r.output
    assert "(mlp, 1 model(s) refit on all 700 rows; out-of-fold accuracy " in r.output, r.output
    assert "3 folds; of the fold models, each on 2/3 of the rows)" in r.output, r.output
    r = CliRunner().invoke(cli, [*base, "--folds", "3", "--patience", "2"])
    assert r.exit_code == 1 and "with --folds every fold model trains the fixed" in r.output
    r = CliRunner().invoke(cli, [*base, "--folds", "0", "--pseudo", "0.99"])
    assert r.exit_code == 2 and "--pseudo (PSEUDO=) needs --folds" in r.output, r.output
    for bad in ("1", "-0.1", "x"):
        r = CliRunner().invoke(cli, [*base, "--folds", "3", "--pseudo", bad])
        assert r.exit_code == 2 and "pseudo" in r.output, r.output


@pytest.mark.parametrize("extra,said", [(["REFIT=1"], "models refit on every row"),
                                        (["REFIT=1", "PSEUDO=0.6"], "transductive")])
def test_make_stages_after_a_refit_submit_never_retrain(scratch, extra, said):
    # `make submit FOLDS=3 REFIT=1` (and with PSEUDO), then `make predict TTA=1`, validate,
    # report, upload: no stage trains again (the model's stamp holds only train parameters)
    from tests.test_params import TINY as MAKE_TINY
    from tests.test_params import make
    root, mirror = scratch
    first = make(root, "submit", *MAKE_TINY, "EPOCHS=2", "FOLDS=3", *extra, "JOBS=1",
                 f"MIRROR={mirror}")
    assert first.returncode == 0, first.stderr
    assert "model(s) refit on all 200 rows" in first.stdout, first.stdout
    assert said in first.stdout.splitlines()[-1]  # the validate line ending submit
    for target in (["predict", "TTA=1"], ["validate"], ["report"], ["upload", "OFFLINE=1"]):
        out = make(root, *target)  # (upload then fails: no Kaggle here; it must not train)
        assert out.returncode == 0 or target[0] == "upload", (target, out.stderr)
        assert "-m pipeline train" not in out.stdout and "training" not in out.stderr, \
            (target, out.stdout, out.stderr)
        assert "digits: refit" not in out.stderr and "cv fold" not in out.stderr, target
        assert "digits: pseudo" not in out.stderr, target
    metrics = read_json(root / "data" / "models" / "metrics.json")
    assert metrics["submission_models"] == "refit"
    assert metrics.get("transductive", False) == ("PSEUDO=0.6" in extra)


def test_sweep_keep_best_writes_the_winner_into_params_toml(source, tmp_path):
    # --keep-best stores the top-ranked point's values (per-model ones in the model's table);
    # without it the file keeps only the options given
    from pipeline import paramfile
    root = tmp_path / "p"
    paths = prepared(root, source)
    args = ["--root", str(root), "sweep", "--grid", "lr=0.0001,0.01 hidden=32x16", "--model",
            "mlp", "--epochs", "2", "--batch-size", "32", "--augment", "none", "--folds", "3",
            "--jobs", "1"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "lr" not in paramfile.load(paths.params)["mlp"]
    r = CliRunner().invoke(cli, [*args, "--keep-best"])
    assert r.exit_code == 0, r.output
    best = read_json(paths.models / "sweep.json")[0]
    kept = paramfile.load(paths.params)["mlp"]
    assert (kept["lr"], kept["hidden"], kept["epochs"]) == (best["point"]["lr"], (32, 16), 2)
    assert f"kept the best point, {best['label']}, in params.toml" in r.output


def test_killed_refit_resumes_with_its_finished_members(source, tmp_path):
    # SIGKILL right after the first refit model is stored: the rerun reuses every fold model
    # and that refit model, trains only the other, and ends with the refit models saved
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.test_cv import SLOW
    paths = prepared(tmp_path / "p", source)
    env = {**os.environ, "DIGITS_ROOT": str(paths.root), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pipeline", "run", "--no-report", "--mirror",
           str(source.parent), *SLOW, "--refit", "--ensemble", "2", "--jobs", "1"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, cwd=REPO)
    for line in proc.stderr:
        if "refit seed 0: done" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not paths.model.exists()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "refit seed 0: reused from cache" in again.stderr
    assert "cv: training 1 of 8 member(s)" in again.stderr, again.stderr
    assert read_json(paths.metrics)["submission_models"] == "refit"
