"""Optuna storages, samplers and pruners built from the study spec and the --storage flag.

The default storage is a journal file in the working directory that local processes share
safely; a database URL gives an RDB storage with heartbeats, so a killed worker's trial is retried.
"""

from __future__ import annotations

import copy
import random
import re
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

from bench.errors import BenchError
from bench.redact import mask
from bench.spec import StudySpec

DEFAULT_JOURNAL = "optuna.journal"
HEARTBEAT_INTERVAL_S = 5  # a live worker refreshes its trial's heartbeat this often
GRACE_PERIOD_S = 20  # a trial whose heartbeat is older than this is stale: its worker died
MAX_RETRY = 2  # a stale trial is re-queued at most this many times
DEAD_WORKER_ATTRS = ("worker", "mlflow_run_id", "fail_reason")  # trial user attrs a retry does not inherit
RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")


@dataclass(frozen=True)
class StorageTarget:
    """A parsed --storage value: a journal file path or a database URL."""

    kind: str  # "journal" | "rdb"
    location: str  # file path or URL

    @property
    def display(self) -> str:
        if self.kind == "journal":
            return f"journal file {self.location}"
        return mask(self.location)


def parse_storage(value: str | None) -> StorageTarget:
    """Validate --storage without touching anything: a DB URL, or a journal file path."""
    if not value:
        return StorageTarget("journal", DEFAULT_JOURNAL)
    if "://" in value:
        scheme = value.split("://", 1)[0].split("+", 1)[0].lower()
        if scheme not in RDB_SCHEMES:
            raise BenchError(
                f"--storage {mask(value)!r}: unsupported scheme {scheme!r}; use a journal file path or a database URL "
                "(sqlite:///file.db, postgresql://user@host/db)"
            )
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value)
        except (ArgumentError, ValueError) as exc:
            raise BenchError(f"--storage: cannot parse the database URL {mask(value)!r} ({mask(exc)})") from None
        return StorageTarget("rdb", value)
    folder = Path(value).parent
    if not folder.is_dir():
        raise BenchError(f"--storage {value!r}: the folder {folder} does not exist")
    return StorageTarget("journal", value)


def check_reachable(target: StorageTarget, timeout_s: int = 5) -> None:
    """Connect to a database storage once (writing nothing); BenchError when it cannot be reached."""
    if target.kind != "rdb" or target.location.startswith("sqlite"):
        if target.location.startswith("sqlite:///"):
            folder = Path(target.location[len("sqlite:///") :]).parent
            if not folder.is_dir():
                raise BenchError(f"--storage {target.display}: the folder {folder} does not exist")
        return
    import sqlalchemy

    args = {"connect_timeout": timeout_s} if target.location.startswith("postgres") else {}
    try:
        engine = sqlalchemy.create_engine(target.location, connect_args=args, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            pass
    except ModuleNotFoundError as exc:
        raise BenchError(f"--storage {target.display}: the database driver is not installed ({exc.name})") from None
    except Exception as exc:
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchError(f"cannot reach the Optuna storage {target.display} ({first}); start the database or fix --storage") from None


def database_url(server: str, name: str) -> str:
    """The URL of database `name` on the server at `server` (a URL without a database)."""
    return f"{server.rstrip('/')}/{name}"


def maintenance_url(server: str) -> str:
    """The server's own `postgres` database, as a URL libpq understands (postgresql+psycopg:// -> postgresql://)."""
    return database_url(re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", server), "postgres")


def create_database(server: str, prefix: str) -> str:
    """A new empty database prefix_<random> on the PostgreSQL server at `server`; returns its URL.

    For throwaway storages: the scale benchmark's runs and the scale-out tests; drop_database removes it.
    """
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(maintenance_url(server), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return database_url(server, name)


def drop_database(url: str) -> None:
    """Drop the database at `url`, even while a killed worker or a server still holds connections to it."""
    import psycopg

    server, name = url.rsplit("/", 1)
    with psycopg.connect(maintenance_url(server), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class StaleTrialHandler:
    """Called by Optuna when a dead worker's trial goes stale: re-queue it and run `on_stale`.

    `on_stale(trial)` is set once tracking is ready; it closes the trial's MLflow run.
    """

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY, inherit_intermediate_values=False)
        self.on_stale: Callable[[optuna.trial.FrozenTrial], None] | None = None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.on_stale is not None:
            self.on_stale(trial)
        # The retry copies the user attrs; it must not carry the dead worker's id (until its new
        # worker writes its own, recovery of dead local trials would fail it too) nor its closed run.
        retry = copy.copy(trial)
        retry.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in DEAD_WORKER_ATTRS}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry(study, retry)


def open_storage(target: StorageTarget, stale_handler: StaleTrialHandler | None = None) -> optuna.storages.BaseStorage:
    """The Optuna storage object (this creates the journal file or the tables)."""
    if target.kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(target.location))
    last: Exception | None = None
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                target.location,
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=HEARTBEAT_INTERVAL_S,
                grace_period=GRACE_PERIOD_S,
                heartbeat_stale_trial_callback=stale_handler,
            )
        except Exception as exc:  # workers creating the tables at once collide (UniqueViolation): retry
            last = exc
            time.sleep(0.5 * (attempt + 1) + random.random())
    raise BenchError(f"cannot open the Optuna storage {target.display}: {mask(str(last).splitlines()[0])}")


def optuna_sampler(spec: StudySpec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler; `seed_offset` keeps parallel workers from proposing the same trials."""
    s = spec.sampler
    seed = None if s.seed is None else s.seed + seed_offset
    factories: dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, spec.n_trials // 3))),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "grid": lambda: optuna.samplers.GridSampler({p.name: p.grid_values() for p in spec.search}, seed=seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed, n_startup_trials=max(2, min(10, spec.n_trials // 3))),
        # generations of a third of the study (at least 4): Optuna's 50 would never leave the first one here
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, spec.n_trials // 3))),
    }
    return factories[s.type]()


def optuna_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    factories: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.train.epochs),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    return factories[p.type]()

