"""The dask backend: a two-worker LocalCluster on 127.0.0.1 trains the same fold ensemble, to the
byte, as local worker processes; a worker killed mid-member is retried, or (retries off) the run
stops with one line and writes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline import cvstages
from pipeline.parallel import ClusterError, ParallelConfig
from tests.conftest import REPO, make_competition_zip
from tests.test_cv import FOLDS, TINY, prepared, submit, without_seconds

distributed = pytest.importorskip("distributed")



@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_competition_zip(tmp_path_factory.mktemp("src") / "digit-recognizer.zip",
                                n_train=700, n_test=60)


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=":0") as c:
        yield c


def test_dask_cluster_gives_the_local_bytes(cluster, source, tmp_path):
    # the same seeds on two dask workers and on two local processes: identical outputs
    local = submit(prepared(tmp_path / "local", source), ParallelConfig(jobs=2))
    on_dask = submit(prepared(tmp_path / "dask", source),
                     ParallelConfig(backend="dask", scheduler=cluster.scheduler_address))
    assert local.keys() == on_dask.keys()
    assert local == on_dask


def test_dask_refit_and_pseudo_rounds_give_the_local_bytes(cluster, source, tmp_path):
    # fold, refit and second-round members on the dask workers: the local bytes
    from pipeline import stages
    from pipeline.params import PredictConfig
    from tests.test_cv import outputs
    out, on_dask = [], ParallelConfig(backend="dask", scheduler=cluster.scheduler_address)
    for name, par in (("local", ParallelConfig(jobs=2)), ("dask", on_dask)):
        paths = prepared(tmp_path / name, source)
        cvstages.train_folds(paths, TINY.replace(refit=True, pseudo=0.6), FOLDS, par)
        stages.predict(paths, PredictConfig())
        out.append(outputs(paths))
    assert out[0] == out[1]


def test_unreachable_scheduler_is_one_clear_error(source, tmp_path):
    # nothing listening: a ClusterError naming the address and how to start a scheduler
    import dask
    paths = prepared(tmp_path / "p", source)
    unreachable = ParallelConfig(backend="dask", scheduler="tcp://127.0.0.1:9")
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        with pytest.raises(ClusterError, match="cannot reach the dask scheduler at "
                                               "tcp://127.0.0.1:9.*dask scheduler"):
            cvstages.cv(paths, TINY, FOLDS, unreachable)
    assert not (paths.models / "cv.json").exists()


# ------------------------------------------------------------------------ a worker dies mid-run

SLOW = ["--model", "mlp", "--epochs", "30", "--hidden", "256", "--batch-size", "16",
        "--augment", "none", "--folds", "2", "--max-train", "700"]


def _digits_cv(root, scheduler):
    env = {**os.environ, "DIGITS_ROOT": str(root), "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "pipeline", "cv", *SLOW, "--backend", "dask",
                             "--scheduler", scheduler], env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=REPO)


def _kill_a_busy_worker(client, proc):
    """Wait until the run dispatched its members, then SIGKILL one worker process."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        busy = [w for w, tasks in client.processing().items() if tasks]
        if busy:
            pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no member was running on a dask worker: {proc.communicate()}")


def test_killed_worker_member_is_retried(cluster, source, tmp_path):
    # dask reschedules the dead worker's member on a live one: same result as a calm run
    from pipeline.cv import CVConfig
    from pipeline.params import TrainConfig
    calm = prepared(tmp_path / "calm", source)  # the same members, two local processes
    cvstages.cv(calm, TrainConfig(model="mlp", epochs=30, hidden=(256,), batch_size=16,
                                augment="none"), CVConfig(folds=2, max_rows=700),
              ParallelConfig(jobs=2))
    hurt = prepared(tmp_path / "hurt", source)
    client = distributed.Client(cluster.scheduler_address)
    try:
        proc = _digits_cv(hurt.root, cluster.scheduler_address)
        _kill_a_busy_worker(client, proc)
        out, err = proc.communicate(timeout=180)
    finally:
        client.close()
    assert proc.returncode == 0, err
    assert outputs_cv(hurt) == outputs_cv(calm)


def outputs_cv(paths):
    from pipeline.fileio import read_json
    with np.load(paths.models / "oof.npz", allow_pickle=False) as z:
        oof = z["proba"].tobytes()
    return oof, without_seconds(read_json(paths.models / "cv.json"))


def test_worker_deaths_past_the_retries_stop_with_one_line(source, tmp_path):
    # with retries off, the first death ends the run: exit 1, one line, no cv.json
    import dask
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                      host="127.0.0.1", dashboard_address=":0") as c:
            paths = prepared(tmp_path / "p", source)
            client = distributed.Client(c.scheduler_address)
            try:
                proc = _digits_cv(paths.root, c.scheduler_address)
                _kill_a_busy_worker(client, proc)
                out, err = proc.communicate(timeout=120)
            finally:
                client.close()
    assert proc.returncode == 1, err
    lines = [x for x in err.splitlines() if not x.startswith("digits: ") or "error" in x]
    assert len(lines) == 1 and lines[0].startswith("digits: error: dask workers kept dying"), err
    assert "Traceback" not in err
    assert not (paths.models / "cv.json").exists()
