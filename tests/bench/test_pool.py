"""bench.pool.run_jobs never waits without a bound: a killed pool process's job runs again, a failing
initializer or a hung job ends the run with one line, and results come back once each, in order when asked.

Real spawn pools of 2 processes running tiny jobs defined here (a spawned process imports this module,
and torch: the tests that wait for one to start are `slow`).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.pool import Bounds, run_jobs


def _env(root: str, threads: int) -> str:
    return root


def _failing_env(root: str, threads: int) -> str:
    raise ValueError(f"cannot read {root}/train-images-idx3-ubyte: truncated\nsecond line of the error")


def _square(x: int, env: str) -> int:
    return x * x


def _die_once(x: int, env: str) -> int:
    """x*x, but the first time job 3 runs its process is killed (-9) mid-job: the marker file says it has."""
    marker = Path(env) / f"died-{x}"
    if x == 3 and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def _always_die(x: int, env: str) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return x


def _hang(x: int, env: str) -> int:
    time.sleep(60)
    return x


@pytest.mark.slow  # spawned processes import torch: 15-60 s on 2 busy cores
def test_results_come_back_once_each_and_in_order_when_asked(tmp_path):
    got = list(run_jobs(_square, range(6), _env, (str(tmp_path),), 2, ordered=True))
    assert got == [(i, i * i) for i in range(6)]
    assert sorted(run_jobs(_square, range(6), _env, (str(tmp_path),), 1)) == [(i, i * i) for i in range(6)]


@pytest.mark.slow  # spawned processes import torch: 15-60 s on 2 busy cores
def test_a_job_lost_to_a_killed_process_runs_again_in_a_fresh_pool(tmp_path):
    got = list(run_jobs(_die_once, range(6), _env, (str(tmp_path),), 2))
    assert sorted(got) == [(i, i * i) for i in range(6)]  # every job once: none lost, none twice
    assert (tmp_path / "died-3").exists()  # the process running job 3 was killed


@pytest.mark.slow  # spawned processes import torch: 15-60 s on 2 busy cores
def test_a_process_that_always_dies_ends_the_run_after_the_retries(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(BenchError, match=r"1 job\(s\) lost: a pool process died 2 times") as err:
        list(run_jobs(_always_die, [7], _env, (str(tmp_path),), 2, Bounds(retries=1)))
    assert "\n" not in str(err.value) and time.monotonic() - t0 < 60


@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_failing_initializer_is_one_line_at_once(tmp_path, processes):
    t0 = time.monotonic()
    with pytest.raises(BenchError) as err:
        list(run_jobs(_square, range(4), _failing_env, ("/data/MNIST/raw",), processes))
    msg = str(err.value)
    assert "ValueError: cannot read /data/MNIST/raw/train-images-idx3-ubyte: truncated" in msg
    assert "\n" not in msg and "second line" not in msg
    assert time.monotonic() - t0 < 60  # multiprocessing.Pool restarted the initializer for ever


def test_no_result_within_the_bound_stops_the_pool(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(BenchError, match=r"no job finished within 2 s \(bench.pool.RESULT_TIMEOUT_S = 2\)"):
        list(run_jobs(_hang, [1, 2], _env, (str(tmp_path),), 2, Bounds(result_timeout_s=2)))
    assert time.monotonic() - t0 < 45  # the hung processes were killed, not waited for (each sleeps 60 s)
