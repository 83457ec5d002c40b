"""Independent jobs in worker processes where every wait has a bound: the one runner of the comparison, replicates
and gate.

`run_jobs(fn, jobs, init, initargs, processes)` yields (job, fn(job, env)) as each finishes, env being what
`init(*initargs, threads)` returned once per process; `pool_size` says how many processes (the study's workers too).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from bench.errors import BenchError

J = TypeVar("J")
R = TypeVar("R")


def pool_size(n_jobs: int, device: torch.device | str = "cpu", cpus: int | None = None) -> int:
    """Processes for n independent jobs: one single-thread process per CPU core, at most one per job,
    on a CPU; 1 (this process) on a GPU or a one-core machine.

    Two single-thread processes finished these small models faster than one two-thread process
    (BENCHMARKS.md): one step does not keep two cores busy. Processes sharing one GPU are not measured.
    """
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(cpus or os.cpu_count() or 1, n_jobs))


# The bounds of every wait of the runner, named here with their defaults (Bounds overrides them per call).
RESULT_TIMEOUT_S = (
    3600.0  # longest wait for the next result: the longest job of `latent` (an AE replicate) takes minutes
)
POOL_RETRIES = 2  # fresh pools started again for the jobs a dead pool process lost (kill -9, out of memory)


@dataclass(frozen=True)
class Bounds:
    """How long the runner waits, and how often it starts again, before it gives up with one line."""

    result_timeout_s: float = RESULT_TIMEOUT_S  # no result within this: the running jobs are declared hung
    retries: int = POOL_RETRIES  # a pool whose process died is replaced this many times, then the run fails


class InitError(Exception):
    """A pool process could not prepare its jobs (its initializer raised); carries that error as one line."""


# what a pool process holds for all its jobs: set once by _init, never sent per job
_ENV: dict[str, Any] = {}


def _init(init: Callable[..., Any], initargs: tuple, threads: int) -> None:
    """A pool process's initializer. It never raises: a raising initializer makes the pool start
    replacements forever (multiprocessing.Pool) or print a traceback per process; the error is kept
    and raised by the first job instead, as one InitError the runner turns into one line."""
    try:
        _ENV["env"] = init(*initargs, threads)
    except Exception as exc:  # noqa: BLE001 - reported once, as one line, by _call
        _ENV["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]


def _call(fn: Callable[[J, Any], R], job: J) -> R:
    if "error" in _ENV:
        raise InitError(_ENV["error"])
    return fn(job, _ENV["env"])


def _kill(ex: ProcessPoolExecutor) -> None:
    """Stop a pool now: its processes killed, pending jobs dropped (shutdown alone waits for running jobs)."""
    for p in list(getattr(ex, "_processes", {}).values()):  # no public handle before Python 3.14's terminate_workers
        if p.is_alive():
            p.kill()
    ex.shutdown(wait=True, cancel_futures=True)


def run_jobs(
    fn: Callable[[J, Any], R],
    jobs: Iterable[J],
    init: Callable[..., Any],
    initargs: tuple,
    processes: int,
    bounds: Bounds | None = None,
    ordered: bool = False,
) -> Iterator[tuple[J, R]]:
    """(job, fn(job, env)) for each job, as the results come (in job order when `ordered`).

    Each pool process first runs env = init(*initargs, 1) (one torch thread); with processes <= 1 this
    process runs init(*initargs, its own thread count) and the jobs. Jobs start in the given order.
    Never waits without a bound: a pool process that dies (kill -9) loses its jobs, which run again
    in a fresh pool up to `bounds.retries` times; no result for `bounds.result_timeout_s` stops the
    pool; a failing initializer stops everything at its first job. Each of these raises BenchError
    (one line). A job's own exception propagates unchanged.
    """
    jobs, bounds = list(jobs), bounds or Bounds()
    if processes <= 1:
        try:
            env = init(*initargs, torch.get_num_threads())
        except Exception as exc:  # noqa: BLE001 - the same one line as a pool process's
            raise BenchError(f"could not prepare the jobs: {type(exc).__name__}: {exc}".splitlines()[0]) from None
        for job in jobs:
            yield job, fn(job, env)
        return
    done: dict[int, R] = {}  # finished and not yet yielded (ordered: waiting for an earlier job)
    todo, next_out = list(range(len(jobs))), 0
    for _ in range(bounds.retries + 1):
        round_ = _pool_round(fn, jobs, todo, init, initargs, min(processes, len(todo)), bounds)
        try:
            while True:
                try:
                    i, result = next(round_)
                except StopIteration as stop:
                    todo = sorted(stop.value)  # the jobs a dead process lost
                    break
                if not ordered:
                    yield jobs[i], result
                    continue
                done[i] = result
                while next_out in done:
                    yield jobs[next_out], done.pop(next_out)
                    next_out += 1
        finally:
            round_.close()  # the caller stopped (its own error): the pool's processes go now, not at collection
        if not todo:
            return
    raise BenchError(
        f"{len(todo)} job(s) lost: a pool process died {bounds.retries + 1} times "
        f"(bench.pool.POOL_RETRIES = {bounds.retries} retries); see the log for what killed it"
    )


def _pool_round(fn, jobs: list, todo: list[int], init, initargs: tuple, processes: int, bounds: Bounds):
    """Run jobs[todo] in one fresh pool, yielding (index, result) as each comes; returns the indices lost
    to a dead pool process.
    Raises BenchError on an initializer failure or a hung pool."""
    ex = ProcessPoolExecutor(
        processes,
        mp_context=mp.get_context("spawn"),  # spawn: the caller holds threads and sockets
        initializer=_init,
        initargs=(init, initargs, 1),
    )
    killed = True
    try:
        futures = {ex.submit(_call, fn, jobs[i]): i for i in todo}
        pending = set(futures)
        lost: set[int] = set()
        while pending:
            t0 = time.monotonic()
            finished, pending = wait(pending, timeout=bounds.result_timeout_s, return_when=FIRST_COMPLETED)
            if not finished:
                raise BenchError(
                    f"no job finished within {time.monotonic() - t0:.0f} s "
                    f"(bench.pool.RESULT_TIMEOUT_S = {bounds.result_timeout_s:g}); stopped the pool"
                )
            for f in finished:
                exc = f.exception()
                if isinstance(exc, BrokenProcessPool):
                    lost.add(futures[f])
                elif isinstance(exc, InitError):
                    raise BenchError(f"a job process could not start: {exc}") from None
                elif exc is not None:
                    raise exc
                else:
                    yield futures[f], f.result()
        killed = bool(lost)
        return lost
    finally:
        if killed:
            _kill(ex)  # an error, an interrupt or a dead process: do not wait for the others' jobs
        else:
            ex.shutdown(wait=True)
