"""Fixtures of the bench tests: the smoke study run once through the real CLI, MLflow's global URI, data.

`smoke` runs the smoke study once per session and records its MLflow runs and Optuna trials at
once, so later tests may resume it freely; the helpers it uses are in tests/bench/helpers.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest
from filelock import FileLock

from tests.bench.helpers import CLI_TIMEOUT_S, Smoke, StudyRun, run_cli


@pytest.fixture(scope="session")
def smoke(tmp_path_factory, data_root) -> Smoke:
    """The shipped smoke study (3 trials, 2 epochs), run once through the CLI for the whole session."""
    run = StudyRun(tmp_path_factory.mktemp("smoke"), "smoke")
    run.run("smoke")
    record = run.record()
    files = run.download(record.parent.info.run_id, tmp_path_factory.mktemp("smoke-parent"))
    return Smoke(run, record, files)


@pytest.fixture(scope="session")
def smoke_compared(tmp_path_factory, data_root) -> StudyRun:
    """The smoke study with its baselines and report (as `python -m bench.run --study smoke` runs it),
    once per test run: the first test process to need it runs it, the others (pytest-xdist) wait for
    it and read the same folder. Tests read it and must not resume it."""
    base = tmp_path_factory.getbasetemp()  # under pytest-xdist, <the test run's folder>/popen-gwN
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    run = StudyRun(shared / "compared", "smoke")
    # bounded: the process holding the lock runs the CLI with CLI_TIMEOUT_S; the OS frees the lock if it dies
    with FileLock(str(shared / "compared.lock"), timeout=CLI_TIMEOUT_S + 60):
        done = shared / "compared.json"
        if not done.exists():
            run.cwd.mkdir()
            args = [a for a in run.args("smoke") if a != "--no-baselines"]
            proc = run_cli(args, run.cwd)
            done.write_text(json.dumps({"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}))
    result = json.loads(done.read_text())
    proc = subprocess.CompletedProcess(args=["bench.run"], **result)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    run.proc = proc
    return run


@pytest.fixture
def restore_mlflow_uri() -> Iterator[None]:
    """For tests that let bench.tracking set MLflow's process-wide tracking URI."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    import mlflow

    mlflow.set_tracking_uri(before)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for in-process training: two OpenMP threads fighting other processes
    on a shared 2-core machine are 10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(data_root):
    """2,000 training, 500 validation and 1,000 test MNIST images (dynamic binarization)."""
    from vae.data import DataConfig, load_data

    return load_data(DataConfig(limit=2000, val_size=500, test_limit=1000), data_root)
