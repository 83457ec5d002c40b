"""Independent jobs run in single-thread worker processes, one per core, or here when that is one.

`imap_jobs(fn, jobs, init, initargs, processes, clear)` is how the gate, the comparison and the
replicates use both cores, `pool_size` how many processes they (and the study's workers) get;
the caller logs each result in this process as it comes back.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Callable, Iterable, Iterator, TypeVar

import torch

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


def imap_jobs(
    fn: Callable[[J], R],
    jobs: Iterable[J],
    init: Callable[..., None],
    initargs: tuple,
    processes: int,
    clear: Callable[[], None],
    ordered: bool = False,
) -> Iterator[R]:
    """fn(job) for each job, as the results come (in job order when `ordered`).

    Each worker first runs init(*initargs, threads=1); with processes <= 1 this process runs
    init(*initargs, its own thread count), then the jobs, then clear() (the worker state it set).
    """
    if processes <= 1:
        init(*initargs, torch.get_num_threads())
        try:
            yield from map(fn, jobs)
        finally:
            clear()
        return
    # spawn, not fork: the caller holds OpenMP threads and database connections
    with mp.get_context("spawn").Pool(processes, initializer=init, initargs=(*initargs, 1)) as pool:
        yield from (pool.imap if ordered else pool.imap_unordered)(fn, jobs)
