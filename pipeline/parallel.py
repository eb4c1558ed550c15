"""Run independent training members through joblib.Parallel: local worker processes (loky) by
default, or a dask.distributed cluster through joblib's own dask backend.

Each worker does its arithmetic on one BLAS thread (threadpoolctl), so two workers on two cores
train two members at once instead of fighting over both, and a member's result does not depend
on which worker, backend or thread count ran it. The shared data go to each worker once: loky
memory-maps large arrays, dask scatters them (broadcast) before the first task. Workers only
return results; storing them (the cache, the outputs) is the caller's job. A worker that dies
becomes one ClusterError line, after the results already yielded have been handed back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .config import UserError

BACKENDS = ("loky", "dask")


@dataclass(frozen=True)
class ParallelConfig:
    jobs: int = 0  # worker processes; 0 = the cores this process may use
    backend: str = "loky"  # loky: processes on this machine; dask: a dask.distributed cluster
    scheduler: str = ""  # the dask scheduler's address, e.g. tcp://127.0.0.1:8786
    progress: bool = False  # members log a line per epoch (on a dask worker: in its log)


def member_progress(task: dict, label: str = "") -> str | None:
    """Inside a member's worker: "lines" when the run shows progress (a bar per worker would
    garble a shared terminal), with the worker's logging set up to print them on stderr."""
    if not task.get("progress"):
        return None
    import logging
    import sys
    if not logging.getLogger().handlers:  # a fresh worker process
        logging.basicConfig(level=logging.INFO, format="digits: %(message)s", stream=sys.stderr)
    return "lines"


class ClusterError(UserError):
    """A worker died, or the dask cluster is missing or unreachable."""


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def workers(cfg: ParallelConfig) -> int:
    return cfg.jobs if cfg.jobs > 0 else available_cores()


def cores_per_task(cfg: ParallelConfig, n_tasks: int) -> int:
    """The cores each of n_tasks members may keep busy: all of this machine's cores shared among
    the workers running at once (1 on a dask cluster, whose workers run --nthreads 1)."""
    if cfg.backend == "dask":
        return 1
    return max(1, available_cores() // max(1, min(workers(cfg), n_tasks)))


def run(fn: Callable, shared, tasks: list, cfg: ParallelConfig) -> Iterator[tuple[int, object]]:
    """Yield (index, fn(shared, tasks[index])) for every task, as each finishes.

    `shared` is passed unchanged to every call (the data); tasks should be small.
    """
    if cfg.backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {cfg.backend!r}")
    if not tasks:
        return
    if cfg.backend == "dask":
        yield from _run_dask(fn, shared, tasks, cfg)
        return
    n = min(workers(cfg), len(tasks))
    if n == 1:  # in this process, one member after another
        for i, task in enumerate(tasks):
            yield pinned(fn, shared, task, i)
        return
    import joblib
    from joblib.externals.loky.process_executor import TerminatedWorkerError
    try:
        with joblib.parallel_config(backend="loky", inner_max_num_threads=1):
            calls = (joblib.delayed(pinned)(fn, shared, t, i) for i, t in enumerate(tasks))
            yield from joblib.Parallel(n_jobs=n, batch_size=1, pre_dispatch="n_jobs",
                                       return_as="generator_unordered")(calls)
    except TerminatedWorkerError:
        raise ClusterError("a worker process died while training (killed by a signal, a crash, "
                           "or the system ran out of memory); the members finished before it "
                           "are cached: rerun to continue (with fewer --jobs if memory ran "
                           "out).") from None


def pinned(fn: Callable, shared, task, index: int) -> tuple[int, object]:
    """fn(shared, task) on one BLAS/OpenMP thread; what every worker runs."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1):
        return index, fn(shared, task)


def _run_dask(fn, shared, tasks, cfg):
    try:
        import distributed
        import joblib
    except ImportError:
        raise ClusterError("--backend dask needs the dask extra: pip install -e '.[dask]' "
                           "(dask[distributed]).") from None
    if not cfg.scheduler:
        raise ClusterError("--backend dask needs the scheduler's address: --scheduler "
                           "tcp://HOST:8786 or DASK_SCHEDULER_ADDRESS (start one with "
                           "`dask scheduler`, see README 'Scaling out').")
    try:
        client = distributed.Client(cfg.scheduler, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise ClusterError(f"cannot reach the dask scheduler at {cfg.scheduler} "
                           f"({_first_line(e)}); start it with `dask scheduler` and workers "
                           f"with `dask worker {cfg.scheduler} --nthreads 1`.") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=30)
        except (TimeoutError, OSError):
            raise ClusterError(f"the dask scheduler at {cfg.scheduler} has no workers after "
                               f"30 s; start some with `dask worker {cfg.scheduler} "
                               f"--nthreads 1`.") from None
        _register_dask_backend()
        try:
            with joblib.parallel_config(backend=DASK, client=client, scatter=[shared]):
                calls = (joblib.delayed(pinned)(fn, shared, t, i) for i, t in enumerate(tasks))
                yield from joblib.Parallel(n_jobs=-1, batch_size=1,
                                           return_as="generator_unordered")(calls)
        except (distributed.KilledWorker, distributed.client.FutureCancelledError) as e:
            raise ClusterError(f"dask workers kept dying while training a member, more "
                               f"often than the scheduler retries it ({type(e).__name__}; "
                               f"see the workers' logs, e.g. for memory); the members "
                               f"finished before are cached: rerun to continue.") from None
        except (distributed.comm.CommClosedError, OSError) as e:
            raise ClusterError(f"lost the dask scheduler at {cfg.scheduler} "
                               f"({_first_line(e)}); finished members are cached: rerun to "
                               f"continue.") from None


DASK = "digits-dask"


def _register_dask_backend() -> None:
    """joblib's own dask backend, except that a cluster with one worker thread still gets the
    work: joblib runs n_jobs == 1 sequentially in the calling process, and its dask backend
    counts the cluster's threads as n_jobs."""
    import asyncio

    import joblib
    from joblib._dask import DaskDistributedBackend

    class ClusterBackend(DaskDistributedBackend):
        def effective_n_jobs(self, n_jobs):
            return max(2, super().effective_n_jobs(n_jobs))

        async def _collect(self):
            # joblib's own loop, plus the callback on a failed future (a KilledWorker): without
            # it joblib never hears of the failure and waits for ever.
            while self._continue:
                async for future, result in self.waiting_futures:
                    done, callback = self._results.pop(future), self._callbacks.pop(future)
                    if future.status == "error":
                        done.set_exception(result[1])
                        callback(result[1])
                    else:
                        done.set_result(result)
                        callback(result)
                await asyncio.sleep(0.01)

    joblib.register_parallel_backend(DASK, ClusterBackend)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


__all__ = ["BACKENDS", "ClusterError", "ParallelConfig", "available_cores", "cores_per_task",
           "run", "workers"]
