"""heap.keep_freed_memory: the pages a training step frees stay in the process, so the next step
does not take them again as page faults; train() and predict_proba set it up."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pipeline import predict, train
from pipeline.nn import heap
from pipeline.params import TrainConfig

# a step's pattern: eight 4 MB working arrays, then all freed, twenty times over; prints the
# minor page faults it took (20 x 8 x 1024 pages allocated in all)
STEPS = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from pipeline.nn.heap import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "keep" else None
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        arrays = [np.ones(1 << 20, np.float32) for _ in range(8)]
        del arrays
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
""")


def faults(mode, **settings):
    """Run STEPS in a fresh process with none of glibc's malloc variables but `settings` (a
    dask nanny, for one, leaves MALLOC_TRIM_THRESHOLD_ in this process's environment)."""
    env = {k: v for k, v in os.environ.items() if k not in heap.USER_SETTINGS} | settings
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_freed_working_arrays_are_reused_not_faulted_in_again(monkeypatch):
    # a fresh process each: without the setting glibc trims the freed 32 MB back to the kernel
    # every time (the control: if it does not, this C library keeps them anyway: skip)
    _, off = faults("default")
    if off < 40_000:
        pytest.skip(f"this C library keeps freed memory by itself ({off} faults)")
    applied, on = faults("keep")
    assert applied == "True"
    assert on < off / 5, (on, off)


def test_the_users_own_malloc_settings_are_left_alone():
    applied, _ = faults("keep", MALLOC_TRIM_THRESHOLD_="0")  # trim everything: the user's wish
    assert applied == "False"


def test_train_and_predict_set_it_up(monkeypatch):
    calls = []
    monkeypatch.setattr(train, "keep_freed_memory", lambda: calls.append("train"))
    monkeypatch.setattr(predict, "keep_freed_memory", lambda: calls.append("predict"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    cfg = TrainConfig(model="mlp", epochs=1, hidden=(8,), augment="none")
    result = train.train(cfg, x, y, progress=False)
    predict.predict_proba([result.model], x)
    assert calls == ["train", "predict"]
    assert heap.keep_freed_memory.cache_info().maxsize is None  # once per process
