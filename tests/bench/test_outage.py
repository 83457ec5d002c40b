"""The outage helper (bench.outage): what counts as a service being down, waiting it out, giving up with exit 3.

Failures come from the real libraries (MLflow's client, psycopg, SQLAlchemy) against closed loopback
ports; the CLI cases run `python -m bench.check` for real.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from bench import outage
from bench.errors import InfrastructureError
from bench.outage import Outage, transient
from tests.bench.test_run import truncated_data
from tests.helpers import REPO


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    """Backoff of 50 ms instead of 1 s; and a fresh process state (giving up is process-wide)."""
    monkeypatch.setattr(outage, "FIRST_DELAY_S", 0.05)
    outage._giving_up.clear()
    yield
    outage._giving_up.clear()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flaky(failures: int, exc: Exception):
    """A call that fails `failures` times with `exc`, then returns how many calls it took."""
    calls = []

    def call() -> int:
        calls.append(1)
        if len(calls) <= failures:
            raise exc
        return len(calls)

    return call


def test_an_outage_is_waited_out_with_one_line_at_its_start_and_one_at_its_end(capsys):
    o = Outage("the test service", timeout_s=30)
    assert o.call(flaky(3, ConnectionRefusedError(111, "Connection refused"))) == 4
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("outage: cannot reach the test service ([Errno 111] Connection refused); waiting")
    assert "up to 30 s (--outage-timeout)" in lines[0]
    assert lines[1].startswith("outage over: the test service answers again after ")
    assert o.call(flaky(0, ConnectionRefusedError())) == 1 and capsys.readouterr().err == ""  # no outage, no line


def test_past_the_window_it_gives_up_and_later_calls_fail_at_once():
    o = Outage("the test service", timeout_s=0.3)
    t0 = time.monotonic()
    with pytest.raises(
        InfrastructureError, match=r"^the test service has been unreachable for 0 s \(--outage-timeout 0\)"
    ):
        o.call(flaky(1000, TimeoutError("timed out")))
    assert 0.3 <= time.monotonic() - t0 < 2.0
    other = Outage("another service", timeout_s=60)  # the process is ending: nothing waits any more
    t0 = time.monotonic()
    with pytest.raises(InfrastructureError):
        other.call(flaky(1000, ConnectionResetError()))
    assert time.monotonic() - t0 < 0.5


def test_an_error_that_is_not_an_outage_is_raised_at_once():
    call = flaky(1, ValueError("no such experiment"))
    with pytest.raises(ValueError):
        Outage("svc", 60).call(call)
    assert call() == 2  # it was called once before


def test_a_failed_heartbeat_is_skipped_and_the_outage_said_once(capsys):
    o, beat = Outage("the storage", 60), flaky(2, ConnectionResetError(104, "Connection reset by peer"))
    for _ in range(3):  # two failed beats, skipped, then one that goes through
        o.beat(beat)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("outage: cannot reach the storage") and err[1].startswith("outage over")


def test_what_the_real_clients_raise_for_a_closed_port_is_an_outage_and_a_wrong_query_is_not(monkeypatch, tmp_path):
    import mlflow
    import psycopg
    import sqlalchemy

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(Exception) as mlflow_err:
        mlflow.MlflowClient(f"http://127.0.0.1:{closed_port()}").get_experiment("0")
    assert transient(mlflow_err.value), mlflow_err.value
    with pytest.raises(psycopg.OperationalError) as pg_err:
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{closed_port()}/x", connect_timeout=3)
    assert transient(pg_err.value)
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(sqlalchemy.exc.OperationalError) as sql_err, engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT * FROM no_such_table"))
    assert not transient(sql_err.value)  # a bug, not an outage: waiting would not help


def check_cli(cwd, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "bench.check", "--no-progress", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_gate_exits_3_not_1_when_the_tracking_server_is_unreachable(tmp_path):
    proc = check_cli(tmp_path, "--tracking-uri", f"http://127.0.0.1:{closed_port()}")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: cannot reach the MLflow tracking server")
    assert list(tmp_path.iterdir()) == []


def test_the_gate_refuses_truncated_data_in_one_line_before_its_pool_starts(tmp_path):
    data = truncated_data(tmp_path / "data")
    t0 = time.monotonic()
    proc = check_cli(tmp_path, "--data-dir", str(data), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "t10k-images-idx3-ubyte is truncated: 7839016 bytes" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()
    assert time.monotonic() - t0 < 120  # it hung before: the pool restarted the failing initializer forever


def test_a_gate_left_running_by_a_dead_gate_is_closed_as_infrastructure_by_the_next(tmp_path, restore_mlflow_uri):
    from bench import tags as T
    from bench.check import close_abandoned_gates
    from bench.tracking import Tracker
    from bench.workers import worker_id

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = worker_id().rsplit(":", 1)[0]
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "ci")
    gone = tracker.create_parent_run("ci", {}, {"vaebench.gate": "true", T.WORKER: f"{host}:{dead.pid}"}, {})
    child = tracker.client.create_run(tracker.experiment_id, tags={"mlflow.parentRunId": gone}).info.run_id
    alive = tracker.create_parent_run("ci", {}, {"vaebench.gate": "true", T.WORKER: worker_id()}, {})

    close_abandoned_gates(tracker)
    for rid in (gone, child):
        run = tracker.client.get_run(rid)
        assert run.info.status == "FAILED" and run.data.tags["vaebench.failure"] == "infrastructure"
    assert tracker.status(alive) == "RUNNING"  # a gate still running is left alone
