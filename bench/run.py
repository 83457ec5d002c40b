"""`python -m bench.run --study latent`: an Optuna study of VAEs, every trial tracked in MLflow.

Validates everything first (exit 2, nothing written), then runs this worker's share of trials,
and at the end summarizes the study, trains the baselines and writes the report.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.errors import BenchError, HelpFormatter, InfrastructureError, cli_main
from bench.outage import DEFAULT_TIMEOUT_S as DEFAULT_OUTAGE_S

if TYPE_CHECKING:  # at run time these are imported where used, so --help stays fast (no torch)
    import torch

    from bench.context import StudyContext
    from bench.spec import StudySpec
    from bench.storage import StorageTarget

DEFAULT_STUDY = "latent"


def _shipped_studies() -> list[str]:
    """The names in studies/, read without importing bench.spec (and torch), so --help stays fast."""
    from pathlib import Path

    return sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "studies").glob("*.toml"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Run (or resume) a VAE study: an Optuna search whose trials are tracked in MLflow, "
        "then the baselines (autoencoder, PCA) and a comparison report.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--study",
        default=DEFAULT_STUDY,
        help=f"a study shipped in studies/ ({', '.join(_shipped_studies())}) or a path to a .toml file",
    )
    p.add_argument(
        "--n-trials",
        type=int,
        default=None,
        help="trials in total across all workers and resumes, for a study without strata (default: the study file's)",
    )
    p.add_argument(
        "--trials-per-stratum",
        type=int,
        default=None,
        help="trials of each stratum (each latent size in latent), for a study with strata = true "
        "(default: the study file's)",
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the study file's)")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds after which no new trial starts (default: the study file's, else none)",
    )
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage: a database URL (postgresql://..., sqlite:///optuna.db) or a journal file path "
        "(default: ./optuna.journal)",
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else MLflow's default sqlite:///mlflow.db "
        "in the working directory)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with MNIST/raw and FashionMNIST/raw "
        "(default: $VAE_DATA_DIR, else ./data, downloaded there if missing)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="where to train")
    p.add_argument(
        "--seed", type=int, default=None, help="overrides the training and sampler seeds (default: the study file's)"
    )
    p.add_argument(
        "--replicates",
        type=int,
        default=None,
        help="seed replicates of each compared configuration, seeds train.seed+1 .. train.seed+N; "
        "0: none (default: the study file's [replicates], else none)",
    )
    p.add_argument(
        "--search-seeds",
        type=int,
        default=1,
        help="run the whole search this many times with sampler seeds seed, seed+1, ... (studies <study>, "
        "<study>-search1, ... in the same storage and MLflow experiment; only the first gets the baselines, "
        "replicates and report, which then gives the spread of each size's best val/elbo across the searches)",
    )
    p.add_argument("--search-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument(
        "--workers",
        type=workers_arg,
        default="auto",
        help="local worker processes sharing the study, or auto: on a CPU one single-thread worker "
        "per core, at most one per trial (measured faster than one worker using all cores); "
        "on a GPU 1",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: CPU cores / workers)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--epoch-progress", action="store_true", help="also show a progress bar per epoch")
    p.add_argument(
        "--outage-timeout",
        type=float,
        default=DEFAULT_OUTAGE_S,
        metavar="SECONDS",
        help="how long to wait out an unreachable Optuna storage or MLflow tracking store mid-study "
        "before ending with exit code 3",
    )
    p.add_argument(
        "--no-baselines",
        action="store_true",
        help="skip everything after the search: baselines, seed replicates, the paper-protocol NLL and the report",
    )
    p.add_argument(
        "--report-dir", default=None, help="where the comparison report is written (default: reports/<study>)"
    )
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--no-finalize", action="store_true", help=argparse.SUPPRESS)
    return p


def workers_arg(value: str) -> int | str:
    """--workers: a count, or "auto"."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {value!r}") from None


def auto_workers(n_trials: int, device_type: str, cpus: int | None = None) -> int:
    """Workers for --workers auto: one per CPU core on a CPU (each with one thread), capped by the trials.

    Two single-thread workers finished the smoke study's trials faster than one two-thread worker
    (BENCHMARKS.md): these models are too small for one step to keep two cores busy. On a GPU the
    workers would share one device, which is not measured yet: 1.
    """
    from bench.pool import pool_size  # imported here: it imports torch, and --help stays fast

    return min(pool_size(n_trials, device_type, cpus), 64)


@dataclass(frozen=True)
class Validated:
    """The command line checked and resolved, before anything is written."""

    spec: StudySpec  # the study file with the command line's overrides
    device: torch.device
    tracking_uri: str
    storage: StorageTarget
    data_root: str  # the folder with the dataset's files
    threads: int  # torch threads per worker
    workers: int = 1  # local worker processes, this one included


def validate(args: argparse.Namespace) -> Validated:
    """Every check that needs no writing: raises BenchError with one line on the first problem."""
    from bench.ood import check_ood_data
    from bench.spec import load_spec
    from bench.storage import check_reachable, parse_storage
    from bench.tracking import check_tracking_uri, resolve_tracking_uri
    from vae.data import DataError, check_data
    from vae.train import resolve_device

    if args.search_seeds < 1 or args.search_seeds > 100:
        raise BenchError(f"--search-seeds must be between 1 and 100, got {args.search_seeds}")
    spec = (
        load_spec(args.study)
        .with_overrides(
            n_trials=args.n_trials,
            trials_per_stratum=args.trials_per_stratum,
            epochs=args.epochs,
            timeout_s=args.timeout,
            seed=args.seed,
            replicates=args.replicates,
        )
        .for_search(args.search_index)
    )
    if args.workers != "auto" and (args.workers < 1 or args.workers > 64):
        raise BenchError(f"--workers must be between 1 and 64, got {args.workers} (or auto)")
    if not args.outage_timeout >= 0:
        raise BenchError(f"--outage-timeout must be at least 0 seconds, got {args.outage_timeout}")
    if args.threads is not None and args.threads < 1:
        raise BenchError(f"--threads must be at least 1, got {args.threads}")
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    try:
        root = check_data(spec.data.dataset, args.data_dir)
    except DataError as exc:
        raise BenchError(str(exc)) from None
    check_ood_data(spec, root)
    uri = resolve_tracking_uri(args.tracking_uri)
    storage = parse_storage(args.storage)
    if storage.kind == "rdb" and storage.location.split("?")[0] == uri.split("?")[0]:
        raise BenchError("--storage and --tracking-uri name the same database; Optuna and MLflow need separate ones")
    check_tracking_uri(uri)
    check_reachable(storage)
    workers = auto_workers(spec.n_trials, device.type) if args.workers == "auto" else args.workers
    threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
    return Validated(spec, device, uri, storage, str(root), threads, workers)


def _raise_interrupt(signum, frame):  # SIGTERM ends the current trial like Ctrl-C
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass(frozen=True)
class Outcome:
    """What one worker's run of a study left behind."""

    rc: int  # 0 done, 130 interrupted
    ctx: StudyContext  # the study, its tracking and data, as every stage saw them
    ran: int  # trials this process ran
    seconds: float  # wall time of this process's trials
    finalize_seconds: float = 0.0  # wall time of the summary, baselines and report, when this process wrote them


def execute(args: argparse.Namespace, argv: list[str], v: Validated) -> Outcome:
    """Run this worker's share of the validated study, then (if it is the finalizer) its ending."""
    import optuna
    import torch

    from bench import tags as T
    from bench.context import StudyContext
    from bench.finalize import finalize
    from bench.fingerprint import fingerprint
    from bench.objective import TrialRunner
    from bench.storage import StaleTrialHandler, open_storage
    from bench.study import FINISHED_STATES, count, ensure_parent_run, open_study, recover_dead_local_trials, run_worker
    from bench.tracking import Tracker
    from bench.workers import abandon_finalizer, claim_finalizer, release_finalizer, spawn_workers, strip_flags
    from vae.data import load_data

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    torch.set_num_threads(v.threads)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    spec = v.spec
    progress = not args.no_progress

    # resident on the training device for the whole study: no trial copies the data again
    data = load_data(spec.data, v.data_root).to(v.device)
    stale = StaleTrialHandler(requeue=spec.strata_param is None)
    storage = open_storage(v.storage, stale, args.outage_timeout)
    fields = fingerprint(spec, data.digest)  # a resumed study must have been run with the same
    study, created = open_study(spec, storage, args.worker_index, fields, v.storage.display)
    tracker = Tracker(v.tracking_uri, spec.experiment_name, args.outage_timeout)
    parent = ensure_parent_run(study, created, spec, tracker)
    budget = {
        T.N_TRIALS: spec.n_trials,
        **({T.TRIALS_PER_STRATUM: spec.trials_per_stratum} if spec.trials_per_stratum else {}),
    }
    tracker.set_tags(parent, budget)  # the one setting a resume may raise: a tag, params are write-once
    ctx = StudyContext(study, spec, tracker, parent, data, v.device, v.data_root, progress)
    recovered = recover_dead_local_trials(study, tracker, stale)
    if recovered:
        again = "their strata go on with the same proposals" if spec.strata_param else "queued them again"
        print(f"marked trials {recovered} as failed ({again}): their worker process is gone", file=sys.stderr)
    close_orphan_runs(study, tracker, parent)
    swept = tracker.sweep_dead_runs(parent)
    if swept:
        print(f"closed {len(swept)} runs left RUNNING by a worker process that is gone", file=sys.stderr)
    tracker.set_status(parent, "RUNNING")
    children = []
    if v.workers > 1:
        children = spawn_workers(strip_flags(argv, {"--workers": True, "--threads": True}), v.workers, v.threads)

    runner = TrialRunner(spec, data, v.device, tracker, parent, epoch_progress=args.epoch_progress)
    deadline = None if spec.timeout_s is None else time.monotonic() + spec.timeout_s
    t0 = time.monotonic()
    running = (optuna.trial.TrialState.RUNNING,)
    try:
        result = run_worker(spec, study, runner, stale, deadline, progress=progress, worker_index=args.worker_index)
        for c in children:
            c.wait()
    except KeyboardInterrupt:
        for c in children:
            c.send_signal(signal.SIGTERM)
        for c in children:
            c.wait()
        if count(study, running) == 0:
            tracker.set_status(parent, "KILLED")
        print(
            f"\ninterrupted; {count(study, FINISHED_STATES)} finished trials are kept. "
            "Re-run the same command to resume.",
            file=sys.stderr,
        )
        return Outcome(130, ctx, 0, time.monotonic() - t0)
    except InfrastructureError as exc:
        for c in children:  # each waits out the same outage in vain: end them with this one
            c.send_signal(signal.SIGTERM)
        for c in children:
            c.wait()
        requeue_interrupted(study, tracker, stale, str(exc))
        raise

    trials_s = time.monotonic() - t0
    t1 = time.monotonic()
    if not args.no_finalize:
        finished = count(study, FINISHED_STATES)
        complete = finished >= spec.n_trials
        # more replicate seeds than last time (--replicates) are a new ending to write, for a study that did not grow
        seeds = spec.replicate_seeds if complete and not args.no_baselines else ()
        claim = claim_finalizer(study, finished, stage="+seeds" + ",".join(map(str, seeds)) if seeds else "")
        if claim:
            # every run the ending opens closes itself (Tracker.child_run); this closes the parent and
            # frees the claim, so a rerun (or another worker) writes the ending again, skipping what is done
            try:
                finalize(ctx, run_baselines=complete and not args.no_baselines, report_dir=args.report_dir)
            except KeyboardInterrupt:
                abandon_finalizer(study, claim)
                tracker.set_status(parent, "KILLED")
                print("\ninterrupted while finishing the study; re-run the same command to finish it.", file=sys.stderr)
                return Outcome(130, ctx, result.ran, trials_s, time.monotonic() - t1)
            except BaseException as exc:
                abandon_finalizer(study, claim)
                tracker.close_if_running(parent, "FAILED", f"{type(exc).__name__}: {exc}"[:4000])
                raise
            release_finalizer(study, claim)
        if count(study, running) == 0:
            tracker.set_status(parent, "FINISHED")
    return Outcome(0, ctx, result.ran, trials_s, time.monotonic() - t1)


def close_orphan_runs(study, tracker, parent: str) -> None:
    """Close the trial runs still RUNNING whose trial has ended: the tracking store was down when it ended
    (an outage past --outage-timeout), so the run could not be closed then. One query."""
    from bench import tags as T

    state = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    for run in tracker.find_runs(parent=parent, tags={T.ROLE: "trial"}, status="RUNNING"):
        number = int(run.data.tags.get(T.TRIAL_NUMBER, -1))
        if number in state and state[number].is_finished():
            tracker.close_if_running(
                run.info.run_id, "FAILED", "the tracking store was unreachable when the trial ended"
            )


def requeue_interrupted(study, tracker, stale, reason: str) -> None:
    """Fail this process's RUNNING trials as infrastructure failures and queue them again, as far as the
    services still answer (each is tried once): what they refuse, the rerun's recovery does (heartbeat
    or dead-worker check), with the same marks."""
    import optuna

    from bench import tags as T
    from bench.workers import worker_id

    me, store = worker_id(), study._storage
    try:
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for t in (t for t in running if t.user_attrs.get(T.WORKER_ATTR) == me):
            store.set_trial_user_attr(t._trial_id, T.INFRA_FAILURE_ATTR, reason[:4000])
            store.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
            stale(study, store.get_trial(t._trial_id))  # queued again, its MLflow run closed as infrastructure
    except (InfrastructureError, Exception):  # noqa: BLE001 - best effort: the error being raised says what happened
        pass


def print_summary(out: Outcome, uri: str) -> None:
    from bench import tags as T
    from bench.redact import mask
    from bench.study import FINISHED_STATES, count
    from bench.tracking import runs_link, ui_command
    from bench.trials import best_trial

    spec, study = out.ctx.spec, out.ctx.study
    best = best_trial(study, spec)
    # finishing: the parent run's summary, and the baselines and report when the study has them
    after = f", then {out.finalize_seconds:.0f} s to finish the study" if out.finalize_seconds >= 0.5 else ""
    print(
        f"\nstudy {spec.name}: {count(study, FINISHED_STATES)}/{spec.n_trials} trials finished "
        f"({out.ran} run by this process in {out.seconds:.0f} s{after})"
    )
    if best is not None:
        values = ", ".join(f"{k} = {v:.2f}" for k, v in zip(spec.objectives, best.values, strict=False))
        if spec.multi_objective:
            print(f"Pareto front: {len(study.best_trials)} trials; the highest {spec.split}/elbo among them:")
        print(f"best trial {best.number}: {values}")
        print("  params: " + ", ".join(f"{k}={_fmt(val)}" for k, val in best.params.items()))
        tm = best.user_attrs.get(T.TEST_METRICS_ATTR, {})
        if tm:
            print("  test:   " + ", ".join(f"{k}={_fmt(val)}" for k, val in tm.items()))
    print(f"MLflow: experiment {spec.experiment_name!r}, parent run {out.ctx.parent_run_id} at {mask(uri)}")
    print(f"open the UI: {ui_command(uri)}")
    trials = f"tags.`{T.ROLE}` = 'trial'"  # the trials, best first; README shows more filters
    order = f"metrics.`{spec.objectives[0]}` " + ("DESC" if spec.directions[0] == "maximize" else "ASC")
    print(f"  trials, best first: {runs_link(uri, out.ctx.tracker.experiment_id, trials, order)}")


@cli_main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # from the start: SIGTERM is a clean stop
    args = build_parser().parse_args(argv)
    v = validate(args)
    if args.search_index == 0 and args.worker_index == 0:  # local workers it spawns join one search each
        for i in range(1, args.search_seeds):  # the other searches first: the first one's report compares them
            sub = strip_search_seeds(argv) + ["--search-index", str(i), "--no-baselines"]
            sub_args = build_parser().parse_args(sub)
            sub_out = execute(sub_args, sub, validate(sub_args))
            if sub_out.rc != 0:
                return sub_out.rc
            print(
                f"search {i} of {args.search_seeds} ({sub_out.ctx.spec.name}, sampler seed "
                f"{sub_out.ctx.spec.sampler.seed}): {sub_out.ran} trials run in {sub_out.seconds:.0f} s"
            )
    out = execute(args, argv, v)
    if out.rc == 0 and not args.no_finalize:
        print_summary(out, v.tracking_uri)
    return out.rc


def strip_search_seeds(argv: list[str]) -> list[str]:
    from bench.workers import strip_flags

    return strip_flags(argv, {"--search-seeds": True, "--search-index": True})


def _fmt(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


if __name__ == "__main__":
    sys.exit(main())
