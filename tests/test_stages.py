"""Stage caching: reuse when nothing changed, recompute with the reason when something did."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from pipeline import stages
from pipeline.config import Paths, UserError
from pipeline.params import PredictConfig, SplitConfig, TrainConfig
from pipeline.submission import read_ledger, validate_submission

QUICK = TrainConfig(model="mlp", epochs=1, hidden=(16,), batch_size=32, augment="none")


@pytest.fixture
def project(tmp_path, small_zip):
    paths = Paths(tmp_path / "project")
    sources = stages.Sources(mirror=small_zip.parent, use_api=False,
                             kaggle_input=tmp_path / "no-kaggle-input")
    return paths, sources


def run_all(paths, sources, train=QUICK, split=None, predict=None):
    split = split or SplitConfig()
    predict = predict or PredictConfig()
    stages.download(paths, sources, progress=False)
    stages.split(paths, split)
    stages.normalize(paths)
    stages.train(paths, train, progress=False)
    return stages.predict(paths, predict)


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pipeline"]


def test_second_run_reuses_every_stage(project, caplog):
    # with nothing changed, every stage logs that it reused its cached result
    run_all(*project)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline"):
        run_all(*project)
    logged = messages(caplog)
    for stage in ("parse", "split", "normalize", "train", "predict"):
        assert f"{stage}: reused from cache" in logged, logged


def test_parameter_change_is_named_and_reverting_reuses(project, caplog):
    # changing epochs retrains and says why; setting it back reuses the first result
    first = run_all(*project)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        run_all(*project, train=QUICK.replace(epochs=2))
    assert any("train: recomputing (parameter epochs changed 1 -> 2)" in m
               for m in messages(caplog)), messages(caplog)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline"):
        again = run_all(*project)
    assert "train: reused from cache" in messages(caplog)
    assert again["sha256"] == first["sha256"]


def test_predict_option_does_not_retrain(project, caplog):
    # a predict-time option (tta) recomputes predict only
    run_all(*project)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        run_all(*project, predict=PredictConfig(tta=True))
    logged = messages(caplog)
    assert "train: reused from cache" in logged
    assert any(m.startswith("predict: recomputing (parameter tta changed") for m in logged)


def test_code_change_in_a_helper_invalidates(project, caplog, monkeypatch):
    # an edit to any source file the stage depends on (not just the cached function) recomputes
    from pipeline import cache
    run_all(*project)
    real = cache.code_digests

    def edited(func):
        digests = real(func)
        if func is stages._normalize:
            digests["pipeline/preprocess.py"] = "edited"
        return digests

    monkeypatch.setattr(cache, "code_digests", edited)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        stages.normalize(project[0])
    assert "normalize: recomputing (code changed (pipeline/preprocess.py))" in messages(caplog)


def test_code_digest_is_derived_from_imports():
    # each stage's code digest covers every package module it imports, transitively, and the
    # helpers of its own module it calls; no list is kept by hand
    from pipeline.cache import code_digests
    split = code_digests(stages._split)
    assert {"pipeline/data.py", "pipeline/readers.py", "pipeline/config.py"} <= set(split)
    train = code_digests(stages._train)
    assert {"pipeline/train.py", "pipeline/nn/layers.py", "pipeline/preprocess.py",
            "pipeline/checkpoint.py", "pipeline/params.py"} <= set(train)
    assert "pipeline/kaggle_io.py" not in train and "pipeline/report.py" not in train


def test_caching_can_be_turned_off(tmp_path, small_zip, caplog):
    # Paths(use_cache=False): every stage computes, and nothing is written under data/cache
    paths = Paths(tmp_path / "p", use_cache=False)
    src = stages.Sources(mirror=small_zip.parent, use_api=False, kaggle_input=tmp_path / "none")
    with caplog.at_level(logging.INFO, logger="pipeline"):
        run_all(paths, src)
    assert "train: computing (caching is off)" in messages(caplog)
    assert not (paths.cache / "joblib").exists()


def test_same_inputs_give_byte_identical_submission(tmp_path, small_zip):
    # two fresh projects with the same data, parameters and seed write identical submissions
    outs = []
    for name in ("a", "b"):
        paths = Paths(tmp_path / name)
        src = stages.Sources(mirror=small_zip.parent, use_api=False,
                             kaggle_input=tmp_path / "none")
        run_all(paths, src)
        outs.append(paths.submission.read_bytes())
    assert outs[0] == outs[1]


def test_submission_is_validated_copied_and_ledgered(project):
    # predict writes a valid file, a timestamped copy and one ledger line per distinct file
    paths, sources = project
    out = run_all(paths, sources)
    ids = np.arange(1, 51)
    assert len(validate_submission(paths.submission, ids)) == 50
    run_all(paths, sources)  # same file again: no new ledger line
    written = [e for e in read_ledger(paths.ledger) if e["kind"] == "written"]
    assert len(written) == 1 and written[0]["sha256"] == out["sha256"]
    assert (paths.root / written[0]["file"]).read_bytes() == paths.submission.read_bytes()


def test_missing_input_says_which_command_to_run(tmp_path, monkeypatch):
    # running a stage before its inputs exist names what to run first, as the user runs it
    with pytest.raises(UserError, match="run `digits download` first"):
        stages.split(Paths(tmp_path), SplitConfig())
    monkeypatch.setenv("MAKELEVEL", "1")
    with pytest.raises(UserError, match="run `make data` first"):
        stages.split(Paths(tmp_path), SplitConfig())


def test_no_data_anywhere_explains_every_source(tmp_path):
    # with no zip, no mirror and no API, the message lists each way to provide the data
    src = stages.Sources(mirror=None, use_api=False, kaggle_input=tmp_path / "none")
    with pytest.raises(stages.data_mod.DataError) as e:
        stages.download(Paths(tmp_path), src)
    assert "data/raw" in str(e.value) and "KAGGLE_MIRROR" in str(e.value)
    assert "credentials" in str(e.value)


def test_temporary_files_of_a_killed_run_are_swept(tmp_path):
    # a `.NAME.*.tmp` left beside an output by a killed run is removed when the lock is next taken
    paths = Paths(tmp_path)
    orphan = paths.models / ".model.npz.abc123.tmp"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"half a model")
    keep = paths.models / "model.npz"
    keep.write_bytes(b"a finished model")
    with stages.project_lock(paths):
        pass
    assert not orphan.exists() and keep.read_bytes() == b"a finished model"
