"""`python -m bench.perf.scale`: trials per hour with 1, 2, 4 local workers, and how fast a killed worker's trial
is retried.

Runs real `python -m bench.run` processes on fresh storages (databases under --storage-url are dropped after)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

from bench import tags as T
from bench.errors import BenchError, HelpFormatter, cli_main

DB_PREFIX = "vaebench_scale"
RUN_TIMEOUT_S = 3600.0  # one configuration's whole study
RECOVERY_TIMEOUT_S = 300.0  # from the kill to the retried trial starting


@dataclass(frozen=True)
class ScaleConfig:
    """What to measure and where."""

    study: str = "smoke"  # a shipped study or a .toml path; copied under a fresh name for each run
    workers: tuple[int, ...] = (1, 2, 4)  # local worker counts to measure throughput with
    n_trials: int = 12  # trials per throughput run
    epochs: int | None = None  # epochs per trial (None: the study's)
    storage_url: str | None = None  # a PostgreSQL server (no database): postgresql://user@host:port
    tracking_uri: str | None = None  # an MLflow server; None: a sqlite file per run
    data_dir: str | None = None
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)  # split between the workers as torch threads
    recovery: bool = True  # also measure SIGKILL -> retry
    recovery_trials: int = (
        200  # enough that the surviving worker stays busy: the heartbeat, not its idle pid check, finds the dead trial
    )

    def __post_init__(self) -> None:
        if not self.workers or any(w < 1 or w > 64 for w in self.workers):
            raise ValueError(f"--workers must be counts between 1 and 64, got {list(self.workers)}")
        if self.n_trials < 1:
            raise ValueError(f"--n-trials must be at least 1, got {self.n_trials}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}")
        if self.cores < 1:
            raise ValueError(f"--cores must be at least 1, got {self.cores}")
        if self.recovery_trials < 4:
            raise ValueError(f"--recovery-trials must be at least 4, got {self.recovery_trials}")
        if self.storage_url is not None and not re.match(r"^postgres(ql)?(\+\w+)?://[^/]*/?$", self.storage_url):
            raise ValueError(
                f"--storage-url must be a PostgreSQL server without a database, like "
                f"postgresql://postgres@127.0.0.1:5432, got {self.storage_url!r}"
            )

    def threads(self, workers: int) -> int:
        return max(1, self.cores // workers)


# ----------------------------------------------------------------- one run


def study_copy(study: str, folder: Path) -> Path:
    """The study file under a fresh name (the file's stem): its own Optuna study and MLflow experiment.

    Written from the validated spec's data with [study] name left out, so the name comes from the file.
    """
    from bench.perf.toml_writer import dumps
    from bench.spec import load_spec

    data = tomllib.loads(load_spec(study).text)
    data.get("study", {}).pop("name", None)
    path = folder / f"scale-{uuid.uuid4().hex[:8]}.toml"
    path.write_text(dumps(data), encoding="utf-8")
    return path


def run_argv(cfg: ScaleConfig, study: Path, storage: str | None, tracking: str, n_trials: int) -> list[str]:
    """The arguments of `python -m bench.run` for one measurement, but for --workers and --threads."""
    argv = [
        "--study",
        str(study),
        "--n-trials",
        str(n_trials),
        "--tracking-uri",
        tracking,
        "--no-baselines",
        "--no-progress",
    ]
    argv += ["--storage", storage] if storage else []
    argv += ["--epochs", str(cfg.epochs)] if cfg.epochs else []
    argv += ["--data-dir", cfg.data_dir] if cfg.data_dir else []
    return argv


def worker_env() -> dict[str, str]:
    """This checkout first on the path of the workers, which run in temporary folders."""
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def bench_run(argv: list[str], workers: int, threads: int, cwd: Path, log: Path) -> subprocess.Popen:
    """`python -m bench.run` in `cwd` (where the default journal file goes), output appended to `log`."""
    cmd = [sys.executable, "-m", "bench.run", *argv, "--workers", str(workers), "--threads", str(threads)]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=worker_env(), stdout=out, stderr=subprocess.STDOUT)


def open_reader(storage: str | None, cwd: Path):
    """The run's Optuna storage, to read trials from; a database is opened without creating its tables,
    which the workers may be creating at the same moment."""
    import optuna

    from bench.storage import DEFAULT_JOURNAL, StorageTarget, open_storage

    if storage is None:
        return open_storage(StorageTarget("journal", str(cwd / DEFAULT_JOURNAL)))
    return optuna.storages.RDBStorage(storage, skip_table_creation=True, skip_compatibility_check=True)


def trials(storage, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


@dataclass
class Throughput:
    workers: int
    threads: int
    n_trials: int
    complete: int
    pruned: int
    wall_s: float  # from starting the command to its exit: imports, data, trials, summary
    trial_span_s: float  # from the first trial's start to the last trial's end
    trials_per_hour_wall: float
    trials_per_hour_span: float


def measure_throughput(cfg: ScaleConfig, workers: int, tmp: Path) -> Throughput:
    from optuna.trial import TrialState

    from bench.storage import create_database, drop_database

    cwd = Path(tempfile.mkdtemp(prefix=f"w{workers}-", dir=tmp))
    study = study_copy(cfg.study, cwd)
    storage = create_database(cfg.storage_url, DB_PREFIX) if cfg.storage_url else None
    tracking = cfg.tracking_uri or f"sqlite:///{cwd / 'mlflow.db'}"
    try:
        t0 = time.monotonic()
        argv = run_argv(cfg, study, storage, tracking, cfg.n_trials)
        proc = bench_run(argv, workers, cfg.threads(workers), cwd, cwd / "run.log")
        rc = _wait(proc, RUN_TIMEOUT_S)
        wall = time.monotonic() - t0
        if rc != 0:
            raise BenchError(f"bench.run with {workers} workers exited {rc}; see {cwd / 'run.log'}")
        reader = open_reader(storage, cwd)
        ts = trials(reader, study.stem)
        done = [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
        _dispose(reader)
    finally:
        if storage:
            drop_database(storage)
    n = len(done)
    return Throughput(
        workers,
        cfg.threads(workers),
        cfg.n_trials,
        sum(t.state == TrialState.COMPLETE for t in done),
        sum(t.state == TrialState.PRUNED for t in done),
        round(wall, 1),
        round(span, 1),
        round(n / wall * 3600, 1),
        round(n / span * 3600, 1) if span > 0 else 0.0,
    )


@dataclass
class Recovery:
    storage: str  # "postgresql" or "sqlite"
    heartbeat_interval_s: int
    grace_period_s: int
    killed_trial: int
    retry_trial: int
    mechanism: str  # "heartbeat" (another worker saw no heartbeat) or "pid check" (same host, process gone)
    failed_after_s: float  # SIGKILL -> the killed trial marked FAIL
    retry_started_after_s: float  # SIGKILL -> its retry RUNNING


def measure_recovery(cfg: ScaleConfig, tmp: Path) -> Recovery:
    """Two workers on an RDB storage; SIGKILL one mid-trial; time until its trial is retried."""
    from optuna.trial import TrialState

    from bench.storage import GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, create_database, drop_database
    from bench.workers import spawn_workers

    cwd = Path(tempfile.mkdtemp(prefix="recovery-", dir=tmp))
    study = study_copy(cfg.study, cwd)
    storage = create_database(cfg.storage_url, DB_PREFIX) if cfg.storage_url else f"sqlite:///{cwd / 'optuna.db'}"
    tracking = cfg.tracking_uri or f"sqlite:///{cwd / 'mlflow.db'}"
    procs: list[subprocess.Popen] = []
    reader = None
    try:
        # the two workers of --workers 2, but both started here, so that one can be killed alone
        argv = run_argv(cfg, study, storage, tracking, cfg.recovery_trials)
        procs.append(bench_run(argv, 1, cfg.threads(2), cwd, cwd / "worker-0.log"))
        with open(cwd / "worker-1.log", "ab") as out:
            procs += spawn_workers(
                argv, 2, cfg.threads(2), cwd=cwd, env=worker_env(), stdout=out, stderr=subprocess.STDOUT
            )
        victim = procs[0]
        reader = _poll(lambda: _reader_when_ready(storage, cwd, study.stem), procs, cwd, "the study to be created")

        def victims_second_trial():
            # the second: the first one carries the warm-up costs
            mine = [
                t for t in trials(reader, study.stem) if t.user_attrs.get(T.WORKER_ATTR, "").endswith(f":{victim.pid}")
            ]
            running = [t for t in mine if t.state == TrialState.RUNNING and T.RUN_ID_ATTR in t.user_attrs]
            return running[0] if running and len(mine) >= 2 else None

        killed = _poll(victims_second_trial, procs, cwd, "the victim's second trial")
        victim.send_signal(signal.SIGKILL)
        killed_at = datetime.now()  # naive local time, like Optuna's trial timestamps
        victim.wait()

        def retry_started():
            return next(
                (
                    t
                    for t in trials(reader, study.stem)
                    if t.system_attrs.get("failed_trial") == killed.number and t.datetime_start
                ),
                None,
            )

        retry = _poll(retry_started, procs[1:], cwd, "the retried trial")
        dead = next(t for t in trials(reader, study.stem) if t.number == killed.number)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            _wait(p, 120)
        if reader is not None:
            _dispose(reader)
        if cfg.storage_url:
            drop_database(storage)
    return Recovery(
        "postgresql" if cfg.storage_url else "sqlite",
        HEARTBEAT_INTERVAL_S,
        GRACE_PERIOD_S,
        killed.number,
        retry.number,
        "pid check" if "died mid-trial" in dead.user_attrs.get(T.FAIL_REASON_ATTR, "") else "heartbeat",
        round((dead.datetime_complete - killed_at).total_seconds(), 1),
        round((retry.datetime_start - killed_at).total_seconds(), 1),
    )


def _reader_when_ready(storage: str, cwd: Path, name: str):
    reader = None
    try:
        reader = open_reader(storage, cwd)
        trials(reader, name)
        return reader
    except Exception:  # noqa: BLE001 - tables or study not created yet
        if reader is not None:
            _dispose(reader)
        return None


def _poll(fn, procs, cwd: Path, what: str, timeout_s: float = RECOVERY_TIMEOUT_S, every_s: float = 0.2):
    """fn() once it is truthy; BenchError if a worker exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise BenchError(f"a worker exited ({p.returncode}) while waiting for {what}; see the logs in {cwd}")
        value = fn()
        if value:
            return value
        time.sleep(every_s)
    raise BenchError(f"no {what} within {timeout_s:.0f} s; see the logs in {cwd}")


def _wait(proc: subprocess.Popen, timeout_s: float) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise BenchError(f"bench.run did not finish within {timeout_s:.0f} s") from None


def _dispose(reader) -> None:
    engine = getattr(reader, "engine", None)
    if engine is not None:
        engine.dispose()


# ----------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.perf.scale", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    p.add_argument(
        "--study",
        default="smoke",
        help="study to run, a shipped name or a .toml path; each run uses a fresh copy (default: smoke)",
    )
    p.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2, 4], help="local worker counts to measure (default: 1 2 4)"
    )
    p.add_argument("--n-trials", type=int, default=12, help="trials per throughput run (default: 12)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the study's)")
    p.add_argument(
        "--storage-url",
        default=None,
        help="PostgreSQL server on which to make, and afterwards drop, one Optuna database per run, "
        "e.g. postgresql://postgres@127.0.0.1:5432 (default: a journal file per throughput run "
        "and a sqlite file for the recovery run)",
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking server; each run leaves an experiment scale-<id> there (default: a sqlite file per run)",
    )
    p.add_argument("--data-dir", default=None, help="data folder (default: $VAE_DATA_DIR, else ./data)")
    p.add_argument(
        "--cores",
        type=int,
        default=os.cpu_count() or 1,
        help="CPU cores split between the workers as torch threads: cores // workers each "
        "(default: all, here %(default)s)",
    )
    p.add_argument(
        "--recovery-trials",
        type=int,
        default=200,
        help="trials in the recovery run: enough that the surviving worker stays busy, so that the heartbeat "
        "rather than its idle-time pid check finds the dead trial; the run stops once the retry starts (default: 200)",
    )
    p.add_argument("--no-recovery", action="store_true", help="skip the SIGKILL recovery measurement")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    return p


def validate(args: argparse.Namespace) -> ScaleConfig:
    from bench.spec import load_spec
    from bench.storage import StorageTarget, check_reachable, maintenance_url
    from bench.tracking import check_tracking_uri
    from vae.data import DataError, check_data

    try:
        cfg = ScaleConfig(
            study=args.study,
            workers=tuple(args.workers),
            n_trials=args.n_trials,
            epochs=args.epochs,
            storage_url=args.storage_url,
            tracking_uri=args.tracking_uri,
            data_dir=args.data_dir,
            cores=args.cores,
            recovery=not args.no_recovery,
            recovery_trials=args.recovery_trials,
        )
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    spec = load_spec(cfg.study).with_overrides(epochs=cfg.epochs)
    try:
        # resolved here: the workers run in temporary folders, where ./data is not
        cfg = replace(cfg, data_dir=str(Path(check_data(spec.data.dataset, cfg.data_dir)).resolve()))
    except DataError as exc:
        raise BenchError(str(exc)) from None
    if cfg.storage_url:
        check_reachable(StorageTarget("rdb", maintenance_url(cfg.storage_url)))
    if cfg.tracking_uri:
        check_tracking_uri(cfg.tracking_uri)
    return cfg


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = validate(args)
    load_before = os.getloadavg()
    out: dict = {
        "config": {**asdict(cfg), "workers": list(cfg.workers)},
        "load_avg_before": [round(x, 2) for x in load_before],
    }
    tmp = Path(tempfile.mkdtemp(prefix="vaebench-scale-"))  # kept when a run fails: its logs are there
    rows = []
    for w in cfg.workers:
        if not args.json:
            print(f"{w} worker(s), {cfg.threads(w)} thread(s) each: {cfg.n_trials} trials ...", flush=True)
        rows.append(measure_throughput(cfg, w, tmp))
    out["throughput"] = [asdict(r) for r in rows]
    if cfg.recovery:
        if not args.json:
            print("recovery: two workers, one killed with SIGKILL mid-trial ...", flush=True)
        out["recovery"] = asdict(measure_recovery(cfg, tmp))
    shutil.rmtree(tmp, ignore_errors=True)
    out["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"\n{'workers':>7} {'threads':>7} {'trials':>6} {'pruned':>6} {'wall s':>7} {'span s':>7} "
        f"{'trials/h wall':>13} {'trials/h span':>13}"
    )
    for r in rows:
        print(
            f"{r.workers:>7} {r.threads:>7} {r.complete + r.pruned:>6} {r.pruned:>6} {r.wall_s:>7.1f} "
            f"{r.trial_span_s:>7.1f} {r.trials_per_hour_wall:>13.0f} {r.trials_per_hour_span:>13.0f}"
        )
    if "recovery" in out:
        rec = out["recovery"]
        print(
            f"\nrecovery ({rec['storage']}, heartbeat {rec['heartbeat_interval_s']} s, "
            f"grace {rec['grace_period_s']} s): "
            f"trial {rec['killed_trial']} failed {rec['failed_after_s']} s after SIGKILL ({rec['mechanism']}), "
            f"retried as trial {rec['retry_trial']} {rec['retry_started_after_s']} s after it"
        )
    print(f"load average before {out['load_avg_before']}, after {out['load_avg_after']} (1, 5, 15 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
