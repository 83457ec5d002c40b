"""Optuna storages, samplers and pruners built from the study spec and the --storage flag.

The default storage is a journal file in the working directory that local processes share
safely; a database URL gives an RDB storage with heartbeats, so a killed worker's trial is retried.
"""

from __future__ import annotations

import copy
import functools
import json
import random
import re
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

from bench import tags as T
from bench.errors import BenchError, InfrastructureError
from bench.outage import DEFAULT_TIMEOUT_S as DEFAULT_OUTAGE_S
from bench.outage import Outage, transient
from bench.redact import mask
from bench.spec import StudySpec

DEFAULT_JOURNAL = "optuna.journal"
HEARTBEAT_INTERVAL_S = 5  # a live worker refreshes its trial's heartbeat this often
GRACE_PERIOD_S = 20  # a trial whose heartbeat is older than this is stale: its worker died
MAX_RETRY = 2  # a stale trial is re-queued at most this many times
# trial user attrs a retry does not inherit
DEAD_WORKER_ATTRS = (T.WORKER_ATTR, T.RUN_ID_ATTR, T.FAIL_REASON_ATTR, T.INFRA_FAILURE_ATTR)
CONNECT_TIMEOUT_S = 10  # a PostgreSQL connection attempt gives up after this long (libpq connect_timeout)
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
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]+):", value)  # two letters at least: C:\\ is a Windows path
    if scheme:
        name = scheme.group(1).split("+", 1)[0].lower()
        hint = (
            f"; did you mean {scheme.group(1)}:///{value[scheme.end() :].lstrip('/')}?" if name in RDB_SCHEMES else ""
        )
        raise BenchError(f"--storage {value!r} is neither a database URL (scheme://...) nor a journal file path{hint}")
    folder = Path(value).parent
    if not folder.is_dir():
        raise BenchError(f"--storage {value!r}: the folder {folder} does not exist")
    check_journal(Path(value))
    return StorageTarget("journal", value)


SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
JOURNAL_SETTLE_S = 1.0  # a last line without its newline may be another worker's write in flight


def check_journal(path: Path) -> None:
    """An existing --storage file must be a whole Optuna journal: one JSON object per line, the last one ended.

    Reads the file (a journal is small: one line per trial event); a BenchError names what it is instead.
    """
    if not path.exists() or path.stat().st_size == 0:
        return
    if path.is_dir():
        raise BenchError(f"--storage {path} is a folder; name a journal file in it (e.g. {path / DEFAULT_JOURNAL})")
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head == SQLITE_MAGIC:
        raise BenchError(
            f"--storage {path} is an SQLite database, not an Optuna journal file; "
            f"to use it as the Optuna storage pass sqlite:///{path}"
        )
    for attempt in range(2):
        data = path.read_bytes()
        bad = _journal_damage(data)
        if bad is None:
            return
        if attempt == 0 and bad[1] == "its last line is cut short":
            time.sleep(JOURNAL_SETTLE_S)  # a writer's append may be in flight: look again
    line, what = bad
    raise BenchError(
        f"--storage {path} is not a whole Optuna journal ({what}, line {line}): it was truncated or "
        "is another kind of file; restore it from a copy, or use another --storage"
    )


def _journal_damage(data: bytes) -> tuple[int, str] | None:
    """(line number, what is wrong) of the first bad line of a journal's bytes, or None."""
    lines = data.split(b"\n")
    for number, line in enumerate(lines[:-1], start=1):
        try:
            if not isinstance(json.loads(line), dict):
                return number, "a line is not a JSON object"
        except ValueError:
            return number, "a line is not JSON"
    if lines[-1]:
        return len(lines), "its last line is cut short"
    return None


def check_reachable(target: StorageTarget, timeout_s: int = 5) -> None:
    """Connect to a database storage once (writing nothing): InfrastructureError when it is down,
    BenchError when it refuses."""
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
        error = InfrastructureError if transient(exc) else BenchError  # down (exit 3), or refused us (exit 2)
        raise error(
            f"cannot reach the Optuna storage {target.display} ({first}); start the database or fix --storage"
        ) from None


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

    def __init__(self, requeue: bool = True) -> None:
        # a stratified study never requeues: the stratum's next worker proposes the same trial again (bench.strata)
        self.requeue = requeue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY, inherit_intermediate_values=False)
        self.on_stale: Callable[[optuna.trial.FrozenTrial], None] | None = None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if not self.requeue:
            if self.on_stale is not None:
                self.on_stale(trial)
            return
        # The retry copies the user attrs; it must not carry the dead worker's id (until its new
        # worker writes its own, recovery of dead local trials would fail it too) nor its closed run.
        retry = copy.copy(trial)
        retry.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in DEAD_WORKER_ATTRS}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry(study, retry)
        # after the retry is queued: with the tracking store down this raises, and a rerun closes the run
        if self.on_stale is not None:
            self.on_stale(trial)


class PatientRDBStorage(optuna.storages.RDBStorage):
    """An RDBStorage whose every read and write waits out a database outage (bench.outage), and whose
    heartbeat skips the beats that fail: a failover does not fail the trial or kill the heartbeat thread."""

    outage: Outage

    def record_heartbeat(self, trial_id: int) -> None:
        self.outage.beat(super().record_heartbeat, trial_id)


def _patient(name: str) -> Callable:
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def call(self: PatientRDBStorage, *args, **kwargs):
        return self.outage.call(method, self, *args, **kwargs)

    return call


# each is one transaction of its own, so calling it again after a lost connection is safe
for _name in (
    *optuna.storages.BaseStorage.__abstractmethods__,
    "get_best_trial",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_param",
    "get_trial_system_attrs",
    "get_trial_user_attrs",
    "_get_stale_trial_ids",
    "_get_trials",
):  # Optuna's cache (_CachedStorage) reads trials through this one
    setattr(PatientRDBStorage, _name, _patient(_name))


def load_existing_study(study_name: str, value: str) -> optuna.Study:
    """A study that must already exist, for commands that only read it (bench.strata, bench.perf.epoch_ranks):
    a journal or SQLite file that is not there is an error, not a new empty file."""
    target = parse_storage(value)
    path = target.location if target.kind == "journal" else None
    if target.location.startswith("sqlite:///"):
        path = target.location.removeprefix("sqlite:///")
    if path is not None and not Path(path).exists():
        raise BenchError(f"{target.display}: no such file; give the storage the study was run with")
    try:
        return optuna.load_study(study_name=study_name, storage=open_storage(target))
    except KeyError:
        raise BenchError(f"no study {study_name!r} in {target.display}") from None


def open_storage(
    target: StorageTarget, stale_handler: StaleTrialHandler | None = None, outage_timeout_s: float = DEFAULT_OUTAGE_S
) -> optuna.storages.BaseStorage:
    """The Optuna storage object (this creates the journal file or the tables).

    A database storage waits out outages of up to `outage_timeout_s` (then InfrastructureError).
    """
    if target.kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(target.location))
    # pre-ping: a connection the server dropped (a restart, a failover) is replaced, not used and failed;
    # connect_timeout: a connection attempt to an unreachable server ends, and the outage's retry decides
    engine = {"pool_pre_ping": True}
    if target.location.startswith("postgres"):
        engine["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    last: Exception | None = None
    for attempt in range(5):
        try:
            storage = PatientRDBStorage(
                target.location,
                engine_kwargs=engine,
                heartbeat_interval=HEARTBEAT_INTERVAL_S,
                grace_period=GRACE_PERIOD_S,
                heartbeat_stale_trial_callback=stale_handler,
            )
            storage.outage = Outage(f"the Optuna storage {target.display}", outage_timeout_s)
            return storage
        except Exception as exc:  # workers creating the tables at once collide (UniqueViolation): retry
            last = exc
            time.sleep(0.5 * (attempt + 1) + random.random())
    raise BenchError(f"cannot open the Optuna storage {target.display}: {mask(str(last).splitlines()[0])}")


def optuna_sampler(
    spec: StudySpec, seed_offset: int = 0, *, seed: int | None = None, params: list | None = None
) -> optuna.samplers.BaseSampler:
    """The study's sampler; `seed_offset` keeps parallel workers from proposing the same trials.

    bench.strata passes the `seed` of one stratum's trial and the `params` it searches (all but the strata).
    """
    s = spec.sampler
    if seed is None:
        seed = None if s.seed is None else s.seed + seed_offset
    params = spec.search if params is None else params
    budget = spec.trials_per_stratum or spec.n_trials  # the trials one sampler sees: a stratum's, or the study's
    startup = max(2, min(10, budget // 3))
    factories: dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "grid": lambda: optuna.samplers.GridSampler({p.name: p.grid_values() for p in params}, seed=seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup),
        # generations of a third of the budget (at least 4): Optuna's 50 would never leave the first one here
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, budget // 3))),
    }
    return factories[s.type]()


def optuna_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The study's pruner; in a stratified study it judges each trial against its own stratum (bench.strata)."""
    p = spec.pruner
    factories: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
        "median": lambda: optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        ),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.train.epochs),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    pruner = factories[p.type]()
    if spec.strata_param is not None and p.type != "none":
        from bench.strata import StratumPruner

        return StratumPruner(spec, pruner)
    return pruner
