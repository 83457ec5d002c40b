"""Many workers on one study, against real services: PostgreSQL for Optuna, an `mlflow server` for tracking.

Each test makes its own databases (dropped afterwards) and its own study name; the server is
started once for the module. Workers are real `python -m bench.run` processes.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from bench.storage import StorageTarget, open_storage
from tests.bench.services import (
    MlflowServer,
    create_database,
    db_url,
    drop_database,
    free_port,
    postgres_available,
)
from tests.helpers import REPO

SMOKE = REPO / "studies" / "smoke.toml"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
DB_PREFIX = "vaebench_scale"
WORKER_TIMEOUT_S = 300  # one worker's whole run on a loaded 2-core machine, with margin

needs_postgres = pytest.mark.postgres


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pg() -> None:
    if not postgres_available():
        pytest.skip("no PostgreSQL server at 127.0.0.1:5432 (trust auth, user postgres)")


@pytest.fixture
def new_db(pg):
    """A factory of empty PostgreSQL databases, all dropped (WITH FORCE) after the test."""
    made: list[str] = []

    def make() -> str:
        made.append(create_database(DB_PREFIX))
        return db_url(made[-1])

    yield make
    for name in made:
        if (r := _READERS.pop(db_url(name), None)) is not None:
            r.engine.dispose()
        drop_database(name)


@pytest.fixture(scope="module")
def mlflow_server(pg, tmp_path_factory):
    """One `mlflow server` for the module, its backend store a database of its own."""
    name = create_database(DB_PREFIX + "_mlflow")
    server = MlflowServer(db_url(name), tmp_path_factory.mktemp("mlflow") / "artifacts")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        drop_database(name)


# ----------------------------------------------------------------- helpers


def study_file(tmp_path: Path, epochs: int = 1, limit: int = 1000, prune: bool = True) -> Path:
    """studies/smoke.toml under a unique name (its own MLflow experiment), made smaller.

    prune=False keeps every trial at full length, for tests that need workers to overlap.
    """
    name = f"scale-{uuid.uuid4().hex[:8]}"
    text = SMOKE.read_text()
    pruner = 'pruner = { type = "median", n_warmup_steps = 1, n_startup_trials = 2 }'
    for old, new in (
        ('name = "smoke"', f'name = "{name}"'),
        ("epochs = 2", f"epochs = {epochs}"),
        ("limit = 2000", f"limit = {limit}"),
        (pruner, pruner if prune else 'pruner = { type = "none" }'),
    ):
        assert old in text, f"studies/smoke.toml changed: no {old!r}"
        text = text.replace(old, new)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


class Worker:
    """One `python -m bench.run` process, its output in files under the test's folder."""

    count = 0

    def __init__(self, cwd: Path, args: list[str], data_dir: Path) -> None:
        Worker.count += 1
        self.out = cwd / f"worker-{Worker.count}.out"
        self.err = cwd / f"worker-{Worker.count}.err"
        env = {**os.environ, "PYTHONPATH": str(REPO), "VAE_DATA_DIR": str(data_dir)}
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.run", *args], cwd=cwd, env=env, stdout=out, stderr=err
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float = WORKER_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"worker {self.pid} still running after {timeout:.0f} s:\n{self.stderr()}") from None

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def workers():
    """Start workers with `workers(cwd, args, data_dir)`; any still running at the end are killed."""
    started: list[Worker] = []

    def start(cwd: Path, args: list[str], data_dir: Path) -> Worker:
        started.append(Worker(cwd, args, data_dir))
        return started[-1]

    yield start
    for w in started:
        w.kill()


def run_args(study: Path, storage: str | None, tracking: str, n_trials: int, *extra: str) -> list[str]:
    args = [
        "--study",
        str(study),
        "--tracking-uri",
        tracking,
        "--n-trials",
        str(n_trials),
        "--workers",
        "1",
        "--threads",
        "1",
        "--no-baselines",
        "--no-progress",
        *extra,
    ]
    return args + (["--storage", storage] if storage else [])


def study_name(path: Path) -> str:
    return path.stem


_READERS: dict[str, optuna.storages.RDBStorage] = {}


def reader(url: str) -> optuna.storages.RDBStorage:
    """A storage that reads the workers' database without creating its tables (one per URL)."""
    if url not in _READERS:
        _READERS[url] = optuna.storages.RDBStorage(url, skip_table_creation=True, skip_compatibility_check=True)
    return _READERS[url]


def load(storage) -> optuna.Study:
    """The one study in a storage (a database URL or a storage object)."""
    if isinstance(storage, str):
        storage = reader(storage)
    summaries = optuna.get_all_study_summaries(storage)
    assert len(summaries) == 1, [s.study_name for s in summaries]
    return optuna.load_study(study_name=summaries[0].study_name, storage=storage)


def wait_for_running_trial(storage, timeout_s: float = 180.0, worker: Worker | None = None) -> optuna.trial.FrozenTrial:
    """Poll until a trial is RUNNING and has its MLflow run (so killing now leaves a run to close)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker is not None and worker.proc.poll() is not None:
            raise AssertionError(f"worker exited with {worker.proc.returncode} before a trial ran:\n{worker.stderr()}")
        try:
            study = load(storage)
        except Exception:  # noqa: BLE001 - no tables or no study yet
            time.sleep(0.5)
            continue
        running = [t for t in study.get_trials(states=(TrialState.RUNNING,)) if "mlflow_run_id" in t.user_attrs]
        if running:
            return running[0]
        time.sleep(0.5)
    raise AssertionError(f"no RUNNING trial with an MLflow run within {timeout_s:.0f} s")


def mlflow_runs(tracking: str, experiment: str):
    """(parent runs, trial runs, all runs) of the study's experiment."""
    import mlflow

    client = mlflow.MlflowClient(tracking)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} at {tracking}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("vaebench.role") == "study"]
    trials = [r for r in runs if r.data.tags.get("vaebench.role") == "trial"]
    return parents, trials, runs


def check_study(storage, tracking: str, name: str, n_trials: int) -> tuple[optuna.Study, list]:
    """What every shared study must look like at the end; returns the study and its trial runs."""
    import mlflow

    study = load(storage)
    assert study.study_name == name
    finished = study.get_trials(states=FINISHED)
    assert len(finished) == n_trials, [(t.number, t.state.name) for t in study.trials]
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    # different workers sample with different seeds: no configuration is trained twice
    configs = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(configs)) == n_trials, configs

    parents, trial_runs, runs = mlflow_runs(tracking, name)
    assert len(parents) == 1, [r.info.run_id for r in parents]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    # finalized once: the summary's metrics were logged by one worker only
    history = mlflow.MlflowClient(tracking).get_metric_history(parent.info.run_id, "trials/complete")
    assert len(history) == 1, history
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    for r in trial_runs:
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id, r.info.run_name
    # one MLflow run per trial that started one, and each finished trial's run says how it ended
    numbers = [int(r.data.tags["trial_number"]) for r in trial_runs]
    assert len(numbers) == len(set(numbers)), sorted(numbers)
    by_id = {r.info.run_id: r for r in trial_runs}
    for t in finished:
        run = by_id[t.user_attrs["mlflow_run_id"]]
        assert int(run.data.tags["trial_number"]) == t.number
        assert run.info.status == ("FINISHED" if t.state == TrialState.COMPLETE else "KILLED"), (
            t.number,
            run.info.status,
        )
    return study, trial_runs


# ----------------------------------------------------------------- tests without a worker process


def run_in_threads(fn: Callable[[], None], n: int) -> list[Exception]:
    """Run fn in n threads at once and wait for all; the exceptions they raised."""
    errors: list[Exception] = []

    def guarded() -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - collected and asserted on
            errors.append(exc)

    threads = [threading.Thread(target=guarded) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@needs_postgres
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_workers_opening_an_empty_database_together_all_get_the_storage(new_db):
    """Every worker creates Optuna's tables on a fresh database; the racing ones must not fail."""
    for _ in range(2):
        url = new_db()
        barrier = threading.Barrier(4)

        def open_it(barrier: threading.Barrier = barrier, url: str = url) -> None:
            barrier.wait()
            open_storage(StorageTarget("rdb", url))

        assert run_in_threads(open_it, 4) == []
        assert optuna.get_all_study_summaries(url) == []


def test_a_joining_worker_does_not_propose_the_creators_configurations(tmp_path):
    """Two workers seeded alike would train the same first configurations twice."""
    from bench.spec import load_spec
    from bench.study import open_study
    from bench.trials import suggest_configs

    spec = load_spec(str(study_file(tmp_path)))
    storage = open_storage(StorageTarget("journal", str(tmp_path / "optuna.journal")))
    creator, created = open_study(spec, storage)
    joiner, joined_created = open_study(spec, storage)
    assert (created, joined_created) == (True, False)
    first = [suggest_configs(s.ask(), spec) for s in (creator, joiner, creator, joiner)]
    assert len({(m, t) for m, t in first}) == 4, first
    # the creator alone stays reproducible: a fresh study with the same seed proposes the same first trial
    again, _ = open_study(dataclasses.replace(spec, name=spec.name + "-again"), storage)
    assert suggest_configs(again.ask(), spec) == first[0]


# ----------------------------------------------------------------- stopping workers


@needs_postgres
@pytest.mark.slow  # a crash or multi-worker run: 80-95 s on an idle 2-core AMD EPYC
def test_sigterm_ends_the_trial_as_killed_and_a_rerun_completes(tmp_path, data_root, new_db, mlflow_server, workers):
    study, storage, url = study_file(tmp_path), new_db(), mlflow_server.url
    name = study_name(study)
    # long enough to be caught running; the rerun must use the same epochs (a resume with others is refused)
    a = workers(tmp_path, run_args(study, storage, url, 1, "--epochs", "100"), data_root)
    trial = wait_for_running_trial(storage, worker=a)
    a.proc.send_signal(signal.SIGTERM)
    assert a.wait(timeout=120) == 130, a.stderr()
    assert "interrupted" in a.stderr()

    stopped = load(storage).trials[trial.number]
    assert stopped.state == TrialState.FAIL
    parents, trial_runs, _ = mlflow_runs(url, name)
    run = {r.info.run_id: r for r in trial_runs}[trial.user_attrs["mlflow_run_id"]]
    assert run.info.status == "KILLED"
    assert "KeyboardInterrupt" in run.data.tags["fail_reason"]
    assert [p.info.status for p in parents] == ["KILLED"]

    b = workers(tmp_path, run_args(study, storage, url, 1, "--epochs", "100"), data_root)
    assert b.wait() == 0, b.stderr()
    study_obj, _ = check_study(storage, url, name, 1)
    assert [t.state for t in study_obj.trials] == [TrialState.FAIL, TrialState.COMPLETE]


# ----------------------------------------------------------------- recovering a dead worker's trial


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory) -> str:
    """One sqlite MLflow store for the in-process tests (each study is its own experiment)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow-sqlite') / 'mlflow.db'}"


@pytest.fixture
def local_study(tmp_path, sqlite_store):
    """A journal-file study with its parent run in a sqlite MLflow store, as one worker opens it."""
    from bench.spec import load_spec
    from bench.study import ensure_parent_run, open_study
    from bench.tracking import Tracker

    spec = load_spec(str(study_file(tmp_path)))
    study, created = open_study(spec, open_storage(StorageTarget("journal", str(tmp_path / "optuna.journal"))))
    tracker = Tracker(sqlite_store, spec.name)
    parent = ensure_parent_run(study, created, spec, tracker)
    return spec, study, tracker, parent


def start_trial(spec, study, tracker, parent: str, worker: str) -> optuna.trial.Trial:
    """A RUNNING trial as a worker leaves it mid-training: its params, its worker, an open MLflow run."""
    from bench.trials import suggest_configs

    trial = study.ask()
    suggest_configs(trial, spec)
    run = tracker.client.create_run(tracker.experiment_id, tags={"mlflow.parentRunId": parent})
    trial.set_user_attr("worker", worker)
    trial.set_user_attr("mlflow_run_id", run.info.run_id)
    return trial


def test_only_trials_of_dead_workers_in_this_pid_namespace_are_recovered(local_study):
    from bench.study import recover_dead_local_trials
    from bench.workers import worker_id

    spec, study, tracker, parent = local_study
    host = worker_id().rsplit(":", 1)[0]
    if Path("/proc/self/ns/pid").exists():
        assert host == f"{socket.gethostname()}/{os.stat('/proc/self/ns/pid').st_ino}"
    pid = dead_pid()
    here = start_trial(spec, study, tracker, parent, f"{host}:{pid}")
    # same hostname, another container's pid namespace: its pid means nothing here
    other_ns = start_trial(spec, study, tracker, parent, f"{socket.gethostname()}/1:{pid}")
    alive = start_trial(spec, study, tracker, parent, worker_id())

    assert recover_dead_local_trials(study, tracker) == [here.number]
    states = {t.number: t.state for t in study.trials}
    assert states[here.number] == TrialState.FAIL
    assert states[other_ns.number] == states[alive.number] == TrialState.RUNNING
    run = tracker.client.get_run(study.trials[here.number].user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert f"{host}:{pid}" in run.data.tags["fail_reason"]
    assert tracker.status(study.trials[other_ns.number].user_attrs["mlflow_run_id"]) == "RUNNING"


def retries(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The queued retries of failed trials (the study also queues its coverage trials at creation)."""
    return [t for t in study.get_trials(states=(TrialState.WAITING,)) if "failed_trial" in t.system_attrs]


def test_a_retried_trial_keeps_the_params_but_not_the_dead_workers_run(local_study):
    from bench.storage import StaleTrialHandler

    spec, study, tracker, parent = local_study
    dead = start_trial(spec, study, tracker, parent, f"elsewhere:{dead_pid()}")
    study._storage.set_trial_state_values(dead._trial_id, TrialState.FAIL)
    failed = study._storage.get_trial(dead._trial_id)
    StaleTrialHandler()(study, failed)

    (retry,) = retries(study)
    assert retry.params == failed.params and retry.params
    assert retry.user_attrs.get("coverage") is True  # the smoke study queues coverage trials first: ask() took one
    assert retry.system_attrs["failed_trial"] == dead.number
    assert "worker" not in retry.user_attrs and "mlflow_run_id" not in retry.user_attrs
    assert study.trials[dead.number].user_attrs["worker"].startswith("elsewhere:")


def test_a_dead_local_workers_trial_is_queued_again(local_study):
    from bench.storage import StaleTrialHandler
    from bench.study import recover_dead_local_trials
    from bench.workers import worker_id

    spec, study, tracker, parent = local_study
    dead = start_trial(spec, study, tracker, parent, f"{worker_id().rsplit(':', 1)[0]}:{dead_pid()}")
    assert recover_dead_local_trials(study, tracker, StaleTrialHandler()) == [dead.number]
    assert recover_dead_local_trials(study, tracker, StaleTrialHandler()) == []  # once only
    (retry,) = retries(study)
    assert retry.system_attrs["failed_trial"] == dead.number
    assert retry.params == study.trials[dead.number].params
    assert "died mid-trial" in study.trials[dead.number].user_attrs["fail_reason"]
    assert "fail_reason" not in retry.user_attrs


def journal(path: Path):
    return open_storage(StorageTarget("journal", str(path)))


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


@pytest.mark.slow  # ~40-50 s
def test_a_waiting_worker_recovers_a_local_worker_killed_mid_trial(tmp_path, data_root, workers):
    """Journal file, no heartbeats: B has run its share and waits on A's trial when A is SIGKILLed."""
    study, tracking = study_file(tmp_path), f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = tmp_path / "optuna.journal"
    # both with the same settings (a worker joining with others is refused); A is stopped (SIGSTOP) mid-trial,
    # so it is still RUNNING when B has run its share
    args = run_args(study, str(path), tracking, 2, "--epochs", "20")
    a = workers(tmp_path, args, data_root)
    killed = wait_for_running_trial(journal(path), worker=a)
    a.proc.send_signal(signal.SIGSTOP)
    b = workers(tmp_path, args, data_root)
    # B ran the other trial while A is stopped: now it only waits for A's
    wait_for(lambda: load(journal(path)).get_trials(states=FINISHED), 180, "B's trial")
    assert a.proc.poll() is None
    a.kill()
    assert b.wait(timeout=120) == 0, b.stderr()

    study_obj, _ = check_study(journal(path), tracking, study_name(study), 2)
    dead = study_obj.trials[killed.number]
    assert dead.state == TrialState.FAIL
    assert f":{a.pid} died mid-trial" in dead.user_attrs["fail_reason"]
    (retry,) = [t for t in study_obj.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state in FINISHED and retry.params == dead.params
    assert retry.user_attrs["worker"].endswith(f":{b.pid}")
    _, trial_runs, _ = mlflow_runs(tracking, study_name(study))
    run = {r.info.run_id: r for r in trial_runs}[killed.user_attrs["mlflow_run_id"]]
    assert run.info.status == "FAILED" and "died mid-trial" in run.data.tags["fail_reason"]


@needs_postgres
@pytest.mark.slow  # a crash or multi-worker run: ~85 s on an idle 2-core AMD EPYC
def test_a_worker_killed_mid_trial_is_retried_and_its_run_closed(tmp_path, data_root, new_db, mlflow_server, workers):
    study, storage, url = study_file(tmp_path), new_db(), mlflow_server.url
    a = workers(tmp_path, run_args(study, storage, url, 2, "--epochs", "100"), data_root)
    killed = wait_for_running_trial(storage, worker=a)
    a.proc.send_signal(signal.SIGKILL)
    assert a.wait(timeout=30) == -signal.SIGKILL
    b = workers(tmp_path, run_args(study, storage, url, 2, "--epochs", "100"), data_root)  # the same settings
    assert b.wait() == 0, b.stderr()

    study_obj, trial_runs = check_study(storage, url, study_name(study), 2)
    dead = study_obj.trials[killed.number]
    assert dead.state == TrialState.FAIL
    (retry,) = [t for t in study_obj.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state in FINISHED and retry.params == dead.params
    run = {r.info.run_id: r for r in trial_runs}[killed.user_attrs["mlflow_run_id"]]
    assert run.info.status == "FAILED"
    assert f":{a.pid} died mid-trial" in run.data.tags["fail_reason"]


def open_transactions(dbname: str) -> list[str]:
    """States of the sessions on a database that are inside a transaction."""
    import psycopg

    from tests.bench.services import PG_URL

    with psycopg.connect(db_url("postgres", PG_URL), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT state FROM pg_stat_activity WHERE datname = %s AND state <> 'idle' AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchall()
    return [r[0] for r in rows]


def freeze(worker: Worker, dbname: str) -> None:
    """SIGSTOP the worker at a moment it holds no open transaction (no row lock the others would wait on)."""
    for _ in range(50):
        worker.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.3)
        if not open_transactions(dbname):
            return
        worker.proc.send_signal(signal.SIGCONT)
        time.sleep(0.1)
    raise AssertionError("could not stop the worker outside a transaction")


@needs_postgres
@pytest.mark.slow  # ~40-50 s
def test_a_hung_worker_loses_its_trial_to_the_heartbeat(tmp_path, data_root, new_db, mlflow_server, workers):
    """A frozen worker (SIGSTOP: its pid lives, so only the heartbeat can tell) is failed after the grace period."""
    from bench.storage import GRACE_PERIOD_S

    study, storage, url = study_file(tmp_path), new_db(), mlflow_server.url
    args = run_args(study, storage, url, 2, "--epochs", "20")  # the same for both: a joiner with others is refused
    a = workers(tmp_path, args, data_root)
    hung = wait_for_running_trial(storage, worker=a)
    freeze(a, storage.rsplit("/", 1)[1])
    frozen_at = time.monotonic()
    b = workers(tmp_path, args, data_root)
    try:
        assert b.wait() == 0, b.stderr()
    finally:
        a.kill()
    assert time.monotonic() - frozen_at > GRACE_PERIOD_S

    study_obj, trial_runs = check_study(storage, url, study_name(study), 2)
    assert study_obj.trials[hung.number].state == TrialState.FAIL
    (retry,) = [t for t in study_obj.trials if t.system_attrs.get("failed_trial") == hung.number]
    assert retry.state in FINISHED and retry.params == hung.params
    assert retry.user_attrs["worker"].endswith(f":{b.pid}")
    run = {r.info.run_id: r for r in trial_runs}[hung.user_attrs["mlflow_run_id"]]
    assert run.info.status == "FAILED"
    assert run.data.tags["fail_reason"] == "worker stopped sending heartbeats"


# ----------------------------------------------------------------- sharing a study


def start_together(workers, n: int, cwd: Path, args: list[str], data_dir: Path) -> list[Worker]:
    return [workers(cwd, args, data_dir) for _ in range(n)]


@needs_postgres
@pytest.mark.slow  # two workers and a study on one core each: ~90 s on an idle 2-core AMD EPYC
def test_two_workers_share_a_study_on_postgres_and_an_mlflow_server(
    tmp_path, data_root, new_db, mlflow_server, workers
):
    study, storage, url = study_file(tmp_path, epochs=20, limit=2000, prune=False), new_db(), mlflow_server.url
    ws = start_together(workers, 2, tmp_path, run_args(study, storage, url, 4), data_root)
    for w in ws:
        assert w.wait() == 0, w.stderr()
    study_obj, trial_runs = check_study(storage, url, study_name(study), 4)
    ran_by = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in study_obj.trials if "worker" in t.user_attrs}
    assert ran_by == {str(w.pid) for w in ws}
    assert "study " + study_name(study) + ": 4/4 trials finished" in "".join(w.out.read_text() for w in ws)


@needs_postgres
@pytest.mark.slow  # ~40-50 s
def test_four_workers_started_at_once_make_one_parent_run(tmp_path, data_root, new_db, mlflow_server, workers):
    """Four processes race to create the study, its tables and its parent run; nothing is made twice."""
    study, storage, url = study_file(tmp_path), new_db(), mlflow_server.url
    ws = start_together(workers, 4, tmp_path, run_args(study, storage, url, 6), data_root)
    for w in ws:
        assert w.wait() == 0, w.stderr()
    check_study(storage, url, study_name(study), 6)


@pytest.mark.slow  # a crash or multi-worker run: ~65 s on an idle 2-core AMD EPYC
def test_local_workers_share_the_default_journal_and_a_sqlite_store(tmp_path, data_root, workers):
    """`--workers 2` with no --storage: two processes on ./optuna.journal in the working directory."""
    # trials long enough that worker 0 is still busy when worker 1 has imported torch and loaded the data
    study, tracking = study_file(tmp_path, epochs=40, limit=2000, prune=False), f"sqlite:///{tmp_path / 'mlflow.db'}"
    w = workers(tmp_path, run_args(study, None, tracking, 4, "--workers", "2"), data_root)
    assert w.wait() == 0, w.stderr()
    study_obj, _ = check_study(journal(tmp_path / "optuna.journal"), tracking, study_name(study), 4)
    ran_by = {t.user_attrs["worker"] for t in study_obj.trials if "worker" in t.user_attrs}
    assert len(ran_by) == 2, ran_by


# ----------------------------------------------------------------- services that are not there


def closed_port_url(scheme: str) -> str:
    return f"{scheme}://127.0.0.1:{free_port()}"  # nothing listens there: connection refused


def assert_one_line_error(w: Worker, needle: str, code: int = 2) -> None:
    assert w.wait(timeout=120) == code
    err = w.err.read_text().strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    assert w.out.read_text() == ""


@needs_postgres
def test_an_unreachable_database_is_one_line_and_exit_3(tmp_path, data_root, mlflow_server, workers):
    study = study_file(tmp_path)
    storage = closed_port_url("postgresql").replace("://", "://postgres@") + "/optuna"
    w = workers(tmp_path, run_args(study, storage, mlflow_server.url, 2), data_root)
    assert_one_line_error(w, "cannot reach the Optuna storage", 3)  # infrastructure, not bad input
    import mlflow

    assert mlflow.MlflowClient(mlflow_server.url).get_experiment_by_name(study_name(study)) is None


@needs_postgres
def test_an_unreachable_tracking_server_is_one_line_and_exit_3(tmp_path, data_root, new_db, workers):
    study, storage = study_file(tmp_path), new_db()
    w = workers(tmp_path, run_args(study, storage, closed_port_url("http"), 2), data_root)
    assert_one_line_error(w, "cannot reach the MLflow tracking server", 3)
    import psycopg

    with psycopg.connect(storage) as conn:  # nothing was written: not even Optuna's tables
        assert conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone() == (0,)


@needs_postgres
def test_workers_resuming_a_study_tracked_elsewhere_agree_on_one_new_parent(tmp_path, mlflow_server):
    """The stored parent run id is unknown to this server: joiners that start together make one parent, not four."""
    from bench.spec import load_spec
    from bench.study import PARENT_ATTR, UID_ATTR, ensure_parent_run, open_study
    from bench.tracking import Tracker

    spec = load_spec(str(study_file(tmp_path)))
    path = tmp_path / "optuna.journal"
    study, _ = open_study(spec, journal(path))
    study.set_user_attr(UID_ATTR, uuid.uuid4().hex)
    study.set_user_attr(PARENT_ATTR, uuid.uuid4().hex)  # a run on another tracking server
    barrier, parents = threading.Barrier(4), []

    def join() -> None:
        joined, created = open_study(spec, journal(path))
        tracker = Tracker(mlflow_server.url, spec.name)
        barrier.wait()
        parents.append((created, ensure_parent_run(joined, created, spec, tracker)))

    assert run_in_threads(join, 4) == []
    assert {p for _, p in parents} == {load(journal(path)).user_attrs[PARENT_ATTR]}
    assert [created for created, _ in parents] == [False] * 4
    active, _, _ = mlflow_runs(mlflow_server.url, spec.name)
    assert [r.info.run_id for r in active] == [parents[0][1]]


OPEN_TRACKER_ON_GO = """
import pathlib, sys, time
from bench.tracking import Tracker  # imports mlflow: the slow part, done before the barrier
folder = pathlib.Path(sys.argv[2])
(folder / f"ready-{sys.argv[3]}").touch()
deadline = time.monotonic() + 120
while not (folder / "go").exists():
    if time.monotonic() > deadline:
        sys.exit("no go within 120 s")
    time.sleep(0.002)
Tracker(sys.argv[1], "race")
print("ok")
"""


def test_workers_starting_together_on_a_new_sqlite_store_all_open_it(tmp_path):
    """Two `python -m bench.run` in one folder share ./mlflow.db: creating its tables must not race."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    uri, barrier = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_TRACKER_ON_GO, uri, str(barrier), str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    # released together once every process has imported mlflow, however long that takes on this machine
    # (a fixed start time assumed a speed: a late process would open the store alone and test no race)
    wait_for(
        lambda: len(list(barrier.glob("ready-*"))) == 3 or any(p.poll() is not None for p in procs),
        120,
        "3 processes importing mlflow",
        poll_s=0.05,
    )
    (barrier / "go").touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-600:] for _, err in outs]
    assert [out.strip() for out, _ in outs] == ["ok"] * 3
