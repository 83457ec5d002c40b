"""Faults injected into real services mid-study: the study waits them out, or ends with exit 3 and a rerun finishes it.

A real `mlflow server` subprocess is stopped and started again; PostgreSQL is cut off through a TCP proxy
(tests/bench/services.py). Each test prints a `FAULT` line with what BENCHMARKS.md records (run with -s).
The truncated journal and the edited study file are in test_run.py's bad-input table and test_fingerprint.py.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.bench.helpers import TEST_STUDIES, cli_env
from tests.bench.services import (
    MlflowServer,
    TcpProxy,
    create_database,
    db_url,
    drop_database,
    postgres_available,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
STUDY = TEST_STUDIES / "outage.toml"
MLFLOW_DOWN_S = 20  # longer than the client's own retries here (3, with waits of 1, 2, 4 s: bench.tracking)
DB_DOWN_S = 30  # longer than the heartbeat's grace period (20 s): a waited-out trial must not be taken for dead


@pytest.fixture(autouse=True)
def postgres():
    if not postgres_available():
        pytest.skip("no PostgreSQL at 127.0.0.1:5432")


@pytest.fixture
def new_db():
    made = []

    def make() -> str:
        made.append(create_database("issue21a_faults"))
        return made[-1]

    yield make
    for name in made:
        drop_database(name)


@dataclass
class Cli:
    """`python -m bench.run` in the background, its stderr lines kept with the time each arrived."""

    args: list[str]
    cwd: Path
    lines: list[tuple[float, str]] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    def start(self) -> Cli:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.run", *self.args],
            cwd=self.cwd,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait(self, timeout: float = 900) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.stdout = self.proc.stdout.read()
        time.sleep(0.2)  # the reader's last lines
        return rc

    def said(self, prefix: str) -> list[tuple[float, str]]:
        return [(t, s) for t, s in self.lines if s.startswith(prefix)]

    @property
    def err(self) -> str:
        return "\n".join(s for _, s in self.lines)


def run_args(storage: str, tracking: str, *extra: str) -> list[str]:
    return [
        "--study",
        str(STUDY),
        "--storage",
        storage,
        "--tracking-uri",
        tracking,
        "--workers",
        "1",
        "--no-progress",
        "--no-baselines",
        *extra,
    ]


def load(storage: str):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = storage if "://" in storage else JournalStorage(JournalFileBackend(storage))
    return optuna.load_study(study_name="outage", storage=s)


def wait_for_running_trial(storage: str, cli: Cli, timeout_s: float = 300) -> None:
    """Until a trial is RUNNING with its MLflow run made: the fault then lands mid-trial."""
    from optuna.trial import TrialState

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert cli.proc.poll() is None, cli.err
        try:
            running = load(storage).get_trials(states=(TrialState.RUNNING,))
        except Exception:  # noqa: BLE001 - the study is not made yet
            running = []
        if any("mlflow_run_id" in t.user_attrs for t in running):
            time.sleep(2.0)  # into its first epochs
            return
        time.sleep(1.0)
    raise AssertionError(f"no trial started within {timeout_s} s:\n{cli.err}")


def runs_by_status(tracking: str) -> dict[str, list]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("outage")
    out: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        out.setdefault(r.info.status, []).append(r)
    return out


def assert_complete_and_nothing_running(storage: str, tracking: str) -> tuple[list, dict]:
    from optuna.trial import TrialState

    trials = load(storage).trials
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 3, [(t.number, t.state) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    runs = runs_by_status(tracking)
    assert "RUNNING" not in runs, [(r.info.run_name, r.data.tags) for r in runs["RUNNING"]]
    finished_trials = [r for r in runs.get("FINISHED", []) if r.data.tags.get("vaebench.role") == "trial"]
    assert sorted(int(r.data.tags["trial_number"]) for r in finished_trials) == sorted(t.number for t in done)
    return trials, runs


def test_an_mlflow_server_stopped_mid_trial_for_longer_than_the_clients_retries_is_waited_out(tmp_path, new_db):
    server = MlflowServer(db_url(new_db()), tmp_path / "artifacts").start()
    journal = str(tmp_path / "optuna.journal")
    cli = Cli(run_args(journal, server.url, "--outage-timeout", "600"), tmp_path).start()
    try:
        wait_for_running_trial(journal, cli)
        server.stop()
        down = time.monotonic()
        time.sleep(MLFLOW_DOWN_S)
        server = MlflowServer(server.backend_uri, server.artifacts, port=server.port).start()
        up = time.monotonic()
        assert cli.wait() == 0, cli.err
        trials, _ = assert_complete_and_nothing_running(journal, server.url)
        assert len(trials) == 3  # no trial failed, none requeued: waited out
        started, over = cli.said("outage: cannot reach the MLflow tracking store"), cli.said("outage over: the MLflow")
        assert len(started) == 1 and len(over) == 1, cli.err
        assert started[0][0] >= down and over[0][0] >= up
        print(
            f"\nFAULT mlflow-server-stopped: down {up - down:.0f} s (stopped {MLFLOW_DOWN_S} s + restart), "
            f"trials lost 0 of 3, runs lost 0, recovered {over[0][0] - up:.1f} s after it answered /health"
        )
    finally:
        if cli.proc.poll() is None:
            cli.proc.kill()
        server.stop()


@dataclass
class ProxiedStudy:
    """The outage study on a fresh PostgreSQL database reached through a TcpProxy, MLflow in a sqlite file."""

    proxy: TcpProxy
    direct: str  # the database's URL, bypassing the proxy: how the test reads it at any time
    proxied: str  # the URL the CLI is given
    tracking: str

    def cut_mid_trial(self, tmp_path: Path, outage_timeout_s: int) -> tuple[Cli, float]:
        """Start the CLI, cut the database off once a trial runs; the CLI and the time of the cut."""
        cli = Cli(run_args(self.proxied, self.tracking, "--outage-timeout", str(outage_timeout_s)), tmp_path).start()
        try:
            wait_for_running_trial(self.direct, cli)
        except BaseException:
            cli.proc.kill()
            raise
        self.proxy.drop()
        return cli, time.monotonic()


@pytest.fixture
def proxied(tmp_path, new_db):
    db = new_db()
    proxy = TcpProxy(("127.0.0.1", 5432)).start()
    yield ProxiedStudy(
        proxy, db_url(db), db_url(db).replace(":5432", f":{proxy.port}"), f"sqlite:///{tmp_path / 'mlflow.db'}"
    )
    proxy.stop()


def test_postgres_cut_off_mid_trial_is_waited_out_and_the_trial_not_taken_for_dead(tmp_path, proxied):
    proxy, direct, tracking = proxied.proxy, proxied.direct, proxied.tracking
    cli, down = proxied.cut_mid_trial(tmp_path, 600)
    try:
        time.sleep(DB_DOWN_S)
        proxy.restore()
        up = time.monotonic()
        assert cli.wait() == 0, cli.err
        trials, _ = assert_complete_and_nothing_running(direct, tracking)
        assert len(trials) == 3, [(t.number, t.state) for t in trials]  # none failed or requeued
        over = cli.said("outage over: the Optuna storage")
        assert len(cli.said("outage: cannot reach the Optuna storage")) == 1 and len(over) == 1, cli.err
        assert "postgres@127.0.0.1" in over[0][1]
        print(
            f"\nFAULT postgres-cut-off: down {up - down:.0f} s, trials lost 0 of 3, runs lost 0, "
            f"recovered {over[0][0] - up:.1f} s after the proxy took connections again"
        )
    finally:
        if cli.proc.poll() is None:
            cli.proc.kill()


def test_postgres_down_past_the_window_exits_3_and_the_rerun_requeues_the_trial_as_infrastructure(tmp_path, proxied):
    from optuna.trial import TrialState

    proxy, direct, tracking = proxied.proxy, proxied.direct, proxied.tracking
    cli, down = proxied.cut_mid_trial(tmp_path, 5)
    try:
        assert cli.wait(timeout=120) == 3, cli.err
        gave_up = time.monotonic() - down
        errors = [s for _, s in cli.lines if s.startswith("error: ")]
        assert len(errors) == 1 and "has been unreachable for" in errors[0] and "(--outage-timeout 5)" in errors[0], (
            cli.err
        )
        assert "Traceback" not in cli.err
        proxy.restore()
        up = time.monotonic()
        rerun = Cli(run_args(proxied.proxied, tracking), tmp_path).start()
        assert rerun.wait() == 0, rerun.err
        recovered = time.monotonic() - up
        trials, runs = assert_complete_and_nothing_running(direct, tracking)
        failed = [t for t in trials if t.state == TrialState.FAIL]
        assert len(failed) == 1, [(t.number, t.state) for t in trials]
        retry = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
        assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == failed[0].params
        run = next(r for r in runs["FAILED"] if r.data.tags.get("trial_number") == str(failed[0].number))
        assert run.data.tags["vaebench.failure"] == "infrastructure"  # never the model's failure
        print(
            f"\nFAULT postgres-down-past-window: gave up after {gave_up:.0f} s (--outage-timeout 5), exit 3; "
            f"rerun finished the study in {recovered:.0f} s; trials lost 0 (1 requeued as infrastructure), runs lost 0"
        )
    finally:
        for c in (cli, locals().get("rerun")):
            if c is not None and c.proc is not None and c.proc.poll() is None:
                c.proc.kill()
