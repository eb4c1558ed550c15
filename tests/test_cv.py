"""Cross-validation: the folds, the out-of-fold arithmetic and its interval, cv.json, the fold
ensemble as the submission, parallel training that does not change a byte, and a killed run
that resumes with its finished members."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import cvstages, stages
from pipeline.cli import cli
from pipeline.config import Paths, UserError
from pipeline.cv import (
    CVConfig,
    oof_summary,
    parse_grid,
    stratified_folds,
    stratified_rows,
    wilson_interval,
)
from pipeline.fileio import read_json
from pipeline.parallel import ParallelConfig
from pipeline.params import PredictConfig, SplitConfig, TrainConfig, resolve
from tests.conftest import REPO, make_competition_zip

TINY = TrainConfig(model="mlp", epochs=2, hidden=(32,), batch_size=32, augment="none")
FOLDS = CVConfig(folds=3, seed=1, max_rows=600)
ONE = ParallelConfig(jobs=1)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_competition_zip(tmp_path_factory.mktemp("src") / "digit-recognizer.zip",
                                n_train=700, n_test=60)


def prepared(root, source) -> Paths:
    paths = Paths(root)
    sources = stages.Sources(mirror=source.parent, use_api=False, kaggle_input=root / "none")
    stages.download(paths, sources, progress=False)
    stages.split(paths, SplitConfig())
    stages.normalize(paths)
    return paths


def without_seconds(d):
    if isinstance(d, dict):
        return {k: without_seconds(v) for k, v in d.items() if "seconds" not in k}
    if isinstance(d, list):
        return [without_seconds(v) for v in d]
    return d


def outputs(paths: Paths) -> dict:
    """What a fold submission wrote, as bytes: every npz array (not the zip's dates), the
    submission, and cv.json without its timings."""
    out = {"submission.csv": paths.submission.read_bytes()}
    for name in ("model.npz", "oof.npz"):
        with np.load(paths.models / name, allow_pickle=False) as z:
            out.update({f"{name}/{k}": z[k].tobytes() for k in z.files if k != "extra"})
    out["cv.json"] = without_seconds(read_json(paths.models / "cv.json"))
    return out


def submit(paths: Paths, par: ParallelConfig) -> dict:
    cvstages.train_folds(paths, TINY, FOLDS, par)
    stages.predict(paths, PredictConfig())
    return outputs(paths)


# ----------------------------------------------------------------------------------- folds


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(3, 40), min_size=2, max_size=10),
       k=st.integers(2, 3), seed=st.integers(0, 2**31))
def test_folds_are_stratified_disjoint_and_cover_every_row(counts, k, seed):
    # every row in exactly one fold; fold sizes and each class's share per fold within one row
    y = np.repeat(np.arange(len(counts)), counts)
    y = y[np.random.default_rng(seed).permutation(len(y))]
    fold = stratified_folds(y, k, seed)
    assert fold.shape == y.shape and set(np.unique(fold)) == set(range(k))
    sizes = np.bincount(fold, minlength=k)
    assert sizes.sum() == len(y) and sizes.max() - sizes.min() <= 1
    for c in range(len(counts)):
        per_fold = np.bincount(fold[y == c], minlength=k)
        assert per_fold.max() - per_fold.min() <= 1
    assert np.array_equal(fold, stratified_folds(y, k, seed))


def test_fold_seed_matters_and_bad_k_is_refused():
    # another seed deals other rows; k must lie in 2..smallest class count
    y = np.arange(300) % 10
    assert not np.array_equal(stratified_folds(y, 5, 0), stratified_folds(y, 5, 1))
    for k in (0, 1, 31):
        with pytest.raises(ValueError, match=f"folds must be between 2 and .*30.*got {k}"):
            stratified_folds(y, k, 0)


def test_row_subset_keeps_class_shares():
    # max_rows picks a sorted, class-proportional subset; 0 keeps every row
    y = np.array([0] * 600 + [1] * 300 + [2] * 100)
    rows = stratified_rows(y, 100, seed=3)
    assert list(np.bincount(y[rows])) == [60, 30, 10]
    assert np.all(np.diff(rows) > 0)
    assert len(stratified_rows(y, 0, 3)) == len(y)
    for n in (7, 77, 999):  # exactly n rows, each class within one row of its share
        counts = np.bincount(y[stratified_rows(y, n, 0)], minlength=3)
        assert counts.sum() == n and np.all(np.abs(counts - n * np.array([.6, .3, .1])) < 1)


# ------------------------------------------------------------------------- the OOF arithmetic


def test_oof_summary_matches_a_hand_computation():
    # six rows, two folds: accuracy, log loss, per fold and per class worked out by hand
    y = np.array([0, 1, 2, 0, 1, 2])
    fold = np.array([0, 0, 0, 1, 1, 1])
    p = np.full((6, 10), 0.0, np.float32)
    p[0, 0], p[0, 1] = 0.8, 0.2  # right (0)
    p[1, 1], p[1, 2] = 0.6, 0.4  # right (1)
    p[2, 0], p[2, 2] = 0.7, 0.3  # wrong: says 0
    p[3, 0], p[3, 2] = 0.9, 0.1  # right (0)
    p[4, 2], p[4, 1] = 0.5, 0.25  # wrong: says 2
    p[4, 0] = 0.25
    p[5, 2], p[5, 0] = 0.9, 0.1  # right (2)
    s = oof_summary(y, p, fold)
    assert s["oof_accuracy"] == pytest.approx(4 / 6)
    assert s["oof_errors"] == 2 and s["rows"] == 6
    want_loss = -(math.log(0.8) + math.log(0.6) + math.log(0.3) + math.log(0.9)
                  + math.log(0.25) + math.log(0.9)) / 6
    assert s["oof_loss"] == pytest.approx(want_loss, rel=1e-6)
    assert s["fold_accuracy"] == pytest.approx([2 / 3, 2 / 3])
    assert s["fold_loss"][0] == pytest.approx(-(math.log(.8) + math.log(.6) + math.log(.3)) / 3,
                                              rel=1e-6)
    pc = {c["class"]: c for c in s["per_class"]}
    # class 0 predicted for rows 0, 2, 3 (two right); class 2 predicted for rows 4, 5 (one right)
    assert pc[0]["precision"] == pytest.approx(2 / 3) and pc[0]["recall"] == 1.0
    assert pc[1]["precision"] == 1.0 and pc[1]["recall"] == pytest.approx(0.5)
    assert pc[2]["precision"] == pytest.approx(0.5) and pc[2]["recall"] == pytest.approx(0.5)
    assert pc[5] == {"class": 5, "support": 0, "precision": 0.0, "recall": 0.0}
    assert s["confusion"][2][0] == 1 and s["confusion"][1][2] == 1


@pytest.mark.parametrize("correct,n", [(81, 263), (4180, 4200), (41700, 42000), (0, 50),
                                       (50, 50), (1, 3)])
def test_wilson_bounds_solve_the_score_equation(correct, n):
    # each bound p solves |phat - p| = z sqrt(p(1-p)/n) (or is clamped at 0 or 1)
    z, phat = 1.959963984540054, correct / n
    lo, hi = wilson_interval(correct, n)
    assert 0 <= lo <= phat <= hi <= 1
    for p in (lo, hi):
        if 0 < p < 1:
            assert abs(phat - p) == pytest.approx(z * math.sqrt(p * (1 - p) / n), rel=1e-9)
    if correct == 0:
        assert lo == 0
    if correct == n:
        assert hi == 1


def test_wilson_interval_narrows_with_n_and_refuses_nonsense():
    # the same 99.3% on ten times the rows gives a narrower interval
    widths = [np.subtract(*wilson_interval(round(0.993 * n), n)[::-1]) for n in (420, 4200, 42000)]
    assert widths[0] > widths[1] > widths[2] > 0
    assert widths[1] / widths[2] == pytest.approx(math.sqrt(10), rel=0.05)
    for bad in ((5, 0), (-1, 10), (11, 10)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)


# -------------------------------------------------------------------- cv.json, and the members


def test_cv_json_holds_the_estimate_and_agrees_with_oof_npz(source, tmp_path):
    # the schema, and every figure recomputable from oof.npz and the labels
    paths = prepared(tmp_path / "p", source)
    summary = cvstages.cv(paths, TINY, FOLDS, ONE)
    cv = read_json(paths.models / "cv.json")
    assert cv == json.loads(json.dumps(summary))
    for key, kind in (("oof_accuracy", float), ("oof_loss", float), ("folds", int),
                      ("seconds", float), ("train_seconds", float), ("params", dict),
                      ("hyperparameters", dict), ("ci_method", str)):
        assert isinstance(cv[key], kind), key
    lo, hi = cv["oof_accuracy_ci95"]
    assert lo <= cv["oof_accuracy"] <= hi and cv["folds"] == 3 and cv["rows"] == 600
    assert len(cv["fold_accuracy"]) == len(cv["fold_loss"]) == 3 and sum(cv["fold_rows"]) == 600
    assert [c["class"] for c in cv["per_class"]] == list(range(10))
    assert [(m["fold"], m["seed"], m["epochs"]) for m in cv["members"]] == [(0, 0, 2), (1, 0, 2),
                                                                           (2, 0, 2)]
    assert cv["params"]["model"] == "mlp" and cv["params"]["epochs"] == 2
    with np.load(paths.models / "oof.npz") as z:
        proba, rows, fold = z["proba"], z["rows"], z["fold"]
    y = np.load(paths.parsed)["train_y"][rows]
    assert np.array_equal(fold, stratified_folds(y, 3, 1))
    assert cv["oof_accuracy"] == pytest.approx(np.mean(proba.argmax(1) == y))
    assert cv["fold_accuracy"][1] == pytest.approx(np.mean(proba[fold == 1].argmax(1)
                                                           == y[fold == 1]))


def test_fold_models_never_see_their_fold_and_keep_the_last_epoch(source, tmp_path):
    # each saved fold model reproduces its out-of-fold probabilities, and retraining it by hand
    # on the other folds alone (no dev rows, fixed epochs) gives the very same model
    from pipeline.cv import fit_member
    from pipeline.nn import load_models
    from pipeline.nn.losses import softmax
    from pipeline.preprocess import normalize
    paths = prepared(tmp_path / "p", source)
    cvstages.train_folds(paths, TINY, FOLDS, ONE)
    models = load_models(paths.model)
    parsed, norm = np.load(paths.parsed), read_json(paths.normalizer)
    from pipeline.predict import predict_proba
    with np.load(paths.models / "oof.npz") as z:
        proba, tta, rows, fold = z["proba"], z["proba_tta"], z["rows"], z["fold"]
    data = {"pixels": parsed["train_x"][rows], "labels": parsed["train_y"][rows],
            "normalizer": norm}
    for f, model in enumerate(models):
        x = normalize(parsed["train_x"][rows[fold == f]], norm)
        assert np.allclose(softmax(model.forward(x)), proba[fold == f], atol=1e-6)
        assert np.allclose(predict_proba([model], x, tta=True), tta[fold == f], atol=1e-6)
    hp = json.loads(json.dumps({**resolve(TINY), "folds": 3}, default=list))
    by_hand = fit_member(data, {"cfg": hp,
                                "train_rows": np.flatnonzero(fold != 2),
                                "eval_rows": np.flatnonzero(fold == 2)})
    assert all(np.array_equal(by_hand["model"].params[k], models[2].params[k])
               for k in models[2].params)
    history = read_json(paths.history)
    assert [len(h["epochs"]) for h in history] == [2, 2, 2]
    assert all(e["dev_acc"] is None for h in history for e in h["epochs"])


def test_dev_split_choices_are_refused_with_folds(source, tmp_path):
    # early stopping picks on dev rows, which a fold model must not: one line, exit 1 (--refit
    # is allowed: it refits after the CV, tests/test_refit.py)
    root = tmp_path / "p"
    prepared(root, source)
    r = CliRunner().invoke(cli, ["--root", str(root), "cv", "--model", "mlp", "--folds", "3",
                                 "--patience", "2"])
    assert r.exit_code == 1 and "with --folds every fold model trains the fixed" in r.output
    with pytest.raises(UserError, match="between 2 and"):
        cvstages.cv(Paths(root), TINY, CVConfig(folds=200, max_rows=600), ONE)


def test_fold_submission_averages_the_fold_models(source, tmp_path):
    # model.npz holds the K fold models; the submission is the argmax of their mean
    # probabilities; metrics.json, the ledger and `validate` carry the OOF estimate
    from pipeline.nn import load_models
    from pipeline.predict import predict_proba
    from pipeline.preprocess import normalize
    from pipeline.submission import read_ledger
    paths = prepared(tmp_path / "p", source)
    submit(paths, ONE)
    models = load_models(paths.model)
    assert len(models) == 3
    x = normalize(np.load(paths.parsed)["test_x"], read_json(paths.normalizer))
    mean = np.mean([predict_proba([m], x) for m in models], axis=0)
    labels = np.loadtxt(paths.submission, delimiter=",", skiprows=1, dtype=int)[:, 1]
    assert np.array_equal(labels, mean.argmax(1))
    assert np.allclose(predict_proba(models, x), mean, atol=1e-6)
    assert not np.allclose(predict_proba(models[:1], x), mean, atol=1e-3)  # distinct members
    metrics, cv = read_json(paths.metrics), read_json(paths.models / "cv.json")
    assert metrics["oof_accuracy"] == cv["oof_accuracy"] and metrics["dev_accuracy"] is None
    assert metrics["oof_accuracy_ci95"] == cv["oof_accuracy_ci95"] and metrics["folds"] == 3
    assert read_ledger(paths.ledger)[-1]["oof_accuracy"] == cv["oof_accuracy"]
    r = CliRunner().invoke(cli, ["--root", str(paths.root), "validate"])
    assert f"out-of-fold accuracy {100 * cv['oof_accuracy']:.2f}%" in r.output, r.output
    paths.ledger.unlink()  # (a ledger line is written per new file; TTA may not change it)
    stages.predict(paths, PredictConfig(tta=True))  # a TTA submission: the TTA estimate
    entry = read_ledger(paths.ledger)[-1]
    assert (entry["oof_accuracy"], entry["oof_tta"]) == (cv["tta"]["oof_accuracy"], True)


def test_two_workers_give_the_bytes_of_one(source, tmp_path):
    # the same seeds trained in one process and on two loky workers: identical outputs
    one = submit(prepared(tmp_path / "one", source), ONE)
    two = submit(prepared(tmp_path / "two", source), ParallelConfig(jobs=2))
    assert one.keys() == two.keys() and one == two


def test_members_are_cached_one_by_one(source, tmp_path, caplog):
    # a second ensemble seed reuses the first seed's fold members and trains only its own
    import logging
    paths = prepared(tmp_path / "p", source)
    cvstages.cv(paths, TINY, FOLDS, ONE)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        cvstages.cv(paths, TINY.replace(ensemble=2), FOLDS, ONE)
    logged = [r.getMessage() for r in caplog.records]
    assert "cv fold 1/3 seed 0: reused from cache" in logged
    assert "cv: training 3 of 6 member(s) on 1 local worker(s)" in logged


# ------------------------------------------------------------------------ a killed run resumes

SLOW = ["--model", "mlp", "--epochs", "25", "--hidden", "256", "--batch-size", "16",
        "--augment", "none", "--folds", "3", "--max-train", "600", "--split-seed", "1"]


def test_killed_run_resumes_with_finished_members(source, tmp_path):
    # SIGKILL after the first member is stored; the rerun reuses it and ends where a calm run ends
    paths = prepared(tmp_path / "p", source)
    env = {**os.environ, "DIGITS_ROOT": str(paths.root), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pipeline", "cv", *SLOW, "--jobs", "1"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, cwd=REPO)
    for line in proc.stderr:
        if "fold 1/3: done" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (paths.models / "cv.json").exists()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "cv fold 1/3: reused from cache" in again.stderr
    assert "cv: training 2 of 3 member(s)" in again.stderr
    calm = prepared(tmp_path / "calm", source)
    cvstages.cv(calm, TrainConfig(model="mlp", epochs=25, hidden=(256,), batch_size=16,
                                augment="none"), FOLDS, ParallelConfig(jobs=2))
    assert (without_seconds(read_json(paths.models / "cv.json"))
            == without_seconds(read_json(calm.models / "cv.json")))


# ------------------------------------------------------------------------------------- sweeps


def test_grid_is_every_combination_and_bad_terms_are_named():
    # two axes of two values: four points; typos and bad values name the term
    mlp = TrainConfig(model="mlp")
    pts = parse_grid("lr=1e-3,3e-3 epochs=15,20", mlp)
    assert pts == [{"lr": 1e-3, "epochs": 15}, {"lr": 1e-3, "epochs": 20},
                   {"lr": 3e-3, "epochs": 15}, {"lr": 3e-3, "epochs": 20}]
    assert parse_grid("hidden=512x256,64 optimizer=adam", mlp) == [
        {"hidden": (512, 256), "optimizer": "adam"}, {"hidden": (64,), "optimizer": "adam"}]
    for bad, said in (("lr", "not name=value"), ("lrate=1", "'lrate' is not one of"),
                      ("epochs=ten", "grid term 'epochs=ten': .*'ten'"),
                      ("lr=nan", "expected a finite number"), ("lr=1 lr=2", "twice"),
                      ("", "empty"), ("hidden=0x4", "sizes must be > 0"),
                      ("dropout=0.5,1.5", r"expected a value in \[0, 1\), got '1.5'"),
                      ("plan=32c5", "does not apply to --model mlp")):
        with pytest.raises(ValueError, match=said):
            parse_grid(bad, mlp)


def test_sweep_ranks_points_and_records_each(source, tmp_path):
    # a two-point sweep: a ranked table, sweep.json best first, one runs.jsonl line per point
    root = tmp_path / "p"
    paths = prepared(root, source)
    args = ["--root", str(root), "sweep", "--grid", "epochs=1,3", "--model", "mlp", "--hidden",
            "32", "--batch-size", "32", "--augment", "none", "--folds", "3", "--max-train",
            "600", "--jobs", "2"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    ranked = read_json(paths.models / "sweep.json")
    assert [p["point"] for p in ranked] in ([{"epochs": 3}, {"epochs": 1}],
                                            [{"epochs": 1}, {"epochs": 3}])
    assert ranked[0]["oof_accuracy"] >= ranked[1]["oof_accuracy"]
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["rank", "OOF", "accuracy"]
    assert lines[2].startswith("1 ") and ranked[0]["label"] in lines[2]
    runs = [json.loads(x) for x in paths.runs.read_text().splitlines()]
    assert [(x["kind"], x["params"]["epochs"]) for x in runs] == [("cv", 1), ("cv", 3)]
    bad = CliRunner().invoke(cli, [*args[:4], "epochs=1,x", *args[5:]])
    assert bad.exit_code == 2 and "grid term 'epochs=1,x'" in bad.output, bad.output


# ------------------------------------------------------------- dev-split ensembles in parallel


def test_parallel_ensemble_members_equal_single_models(source, tmp_path):
    # ENSEMBLE=2 on two workers: member k is, to the bit, the single model of seed k, and the
    # metrics match one worker's run
    from pipeline.nn import load_models
    cfg = TINY.replace(patience=1)
    one, two = prepared(tmp_path / "one", source), prepared(tmp_path / "two", source)
    m1 = stages.train(one, cfg.replace(ensemble=2), progress=None, par=ONE)
    m2 = stages.train(two, cfg.replace(ensemble=2), progress=None, par=ParallelConfig(jobs=2))
    assert without_seconds(m1) == without_seconds(m2) and len(m2["members"]) == 2
    ensemble = load_models(two.model)
    stages.train(two, cfg.replace(seed=1), progress=None)  # the single-model path
    [single] = load_models(two.model)
    assert all(np.array_equal(ensemble[1].params[k], single.params[k]) for k in single.params)


def test_a_killed_local_worker_stops_the_run_with_one_line(source, tmp_path):
    # SIGKILL one loky worker mid-member: exit 1, one line, no traceback, no cv.json
    paths = prepared(tmp_path / "p", source)
    env = {**os.environ, "DIGITS_ROOT": str(paths.root), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "cv", *SLOW, "--jobs", "2"],
                            env=env, stderr=subprocess.PIPE, text=True, cwd=REPO)
    for line in proc.stderr:
        if "training 3 of 3 member(s) on 2 local worker(s)" in line:
            break
    workers = []
    while not workers and proc.poll() is None:
        workers = [int(d) for d in os.listdir("/proc") if d.isdigit() and _is_worker(d, proc.pid)]
    os.kill(workers[0], signal.SIGKILL)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("digits: error: a worker process died while training (killed by "
                                "a signal"), err
    assert all(x.startswith("digits: cv fold") for x in lines[:-1]), err  # members done before
    assert not (paths.models / "cv.json").exists()


def _is_worker(pid: str, parent: int) -> bool:
    try:
        stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        cmd = open(f"/proc/{pid}/cmdline").read()
    except OSError:
        return False
    return int(stat[1]) == parent and "LokyProcess" in cmd
