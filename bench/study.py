"""One worker's share of a study: open or join the Optuna study and its MLflow parent run, run trials.

Several workers (processes, machines) may run `run_worker` on the same storage at once;
together they finish exactly n_trials trials, under one parent run created exactly once.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from bench import tags as T
from bench.describe import experiment_note, parent_note
from bench.errors import BenchError
from bench.fingerprint import stamp_or_check
from bench.objective import SurplusTrial, TrialRunner
from bench.spec import StudySpec
from bench.storage import StaleTrialHandler, optuna_pruner, optuna_sampler
from bench.strata import DONE, WAIT, ProposalSampler, next_assignment
from bench.tracking import Tracker, git_commit
from bench.workers import dead_local_worker

PARENT_ATTR = T.PARENT_ATTR  # re-exported: tests and bench.perf.scale read them from here
UID_ATTR = T.UID_ATTR
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
ACTIVE_STATES = (TrialState.RUNNING, TrialState.WAITING)
PARENT_WAIT_S = 60  # how long a joining worker waits for the creator to make the parent run
POLL_S = 2.0
SETTLE_S = 2.0  # how long joiners that make a parent run together wait to see each other's


def open_study(
    spec: StudySpec, storage, seed_offset: int = 0, fingerprint: dict | None = None, where: str = "the storage"
) -> tuple[optuna.Study, bool]:
    """Create the study, or load it if it exists; also says whether this process created it.

    Creation is atomic in the storage, so exactly one of many simultaneous workers gets True.
    A `fingerprint` (bench.fingerprint) is stored on a new study and must match a resumed one's.
    """
    stratified = spec.strata_param is not None
    # a stratified study's proposals come from bench.strata, the same on every worker
    sampler = ProposalSampler() if stratified else optuna_sampler(spec, seed_offset)
    pruner = optuna_pruner(spec)
    try:
        study = optuna.create_study(
            storage=storage, study_name=spec.name, directions=list(spec.directions), sampler=sampler, pruner=pruner
        )
        if fingerprint is not None:
            stamp_or_check(study, fingerprint, True, where)
        enqueue_coverage(study, spec)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        # A joining or resuming worker seeded like the creator would propose the creator's
        # first configurations again: give it a seed of its own.
        if not stratified:
            sampler = optuna_sampler(spec, seed_offset + 1 + secrets.randbelow(2**20))
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
        stored = tuple(d.name.lower() for d in study.directions)
        if stored != spec.directions:
            raise BenchError(
                f"the stored study {spec.name!r} was created with direction {', '.join(stored)}, "
                f"the study file says {', '.join(spec.directions)}; use another --storage or study name"
            ) from None
        if fingerprint is not None:
            stamp_or_check(study, fingerprint, False, where)
        return study, False


def enqueue_coverage(study: optuna.Study, spec: StudySpec) -> None:
    """Queue one trial per choice of the covered parameter, so every choice is trained in full once.

    Only the creating worker calls this, once; the sampler fills in the other parameters,
    and the objective does not prune these trials (tags.COVERAGE_ATTR).
    """
    for params in spec.coverage_trials:
        study.enqueue_trial(params, user_attrs={T.COVERAGE_ATTR: True})


def study_params(spec: StudySpec) -> dict[str, object]:
    return {
        "metric": ",".join(spec.objectives),
        "direction": ",".join(spec.directions),
        "sampler": spec.sampler.type,
        "sampler_seed": spec.sampler.seed,
        "pruner": spec.pruner.type,
        "searched": ",".join(spec.searched) or "(none)",
        "covered": ",".join(p.name for p in spec.search if p.cover) or "(none)",
        "strata": spec.strata_param.name if spec.strata_param else "(none)",
        "epochs": spec.train.epochs,
        "dataset": spec.data.dataset,
        "binarize": spec.data.binarize,
        "baselines": ",".join(spec.baselines.models) or "(none)",
        "ood_dataset": spec.eval.ood_dataset or "(none)",
    }


def ensure_parent_run(study: optuna.Study, created: bool, spec: StudySpec, tracker: Tracker) -> str:
    """The study's one MLflow parent run: made by the creating worker, found by the others."""
    if created:
        uid = uuid.uuid4().hex
        study.set_user_attr(UID_ATTR, uid)
        return _new_parent(study, spec, tracker, uid)
    deadline = time.monotonic() + PARENT_WAIT_S
    while True:
        attrs = study.user_attrs
        uid = attrs.get(UID_ATTR)
        if tracker.run_exists(attrs.get(PARENT_ATTR)):
            return attrs[PARENT_ATTR]
        if uid and (found := tracker.find_parent_run(spec.name, uid)):
            study.set_user_attr(PARENT_ATTR, found)
            return found
        if (uid and attrs.get(PARENT_ATTR)) or time.monotonic() > deadline:
            # the study was tracked elsewhere (another tracking URI), or its creator died
            # before making the parent: the joiners make it, agreeing on one
            return _agreed_parent(study, spec, tracker, uid)
        time.sleep(0.5)


def _agreed_parent(study: optuna.Study, spec: StudySpec, tracker: Tracker, uid: str | None) -> str:
    """A parent run made by joiners that may get here together: each makes one, all keep the first."""
    if not uid:
        study.set_user_attr(UID_ATTR, uuid.uuid4().hex)
        time.sleep(SETTLE_S)
        uid = study.user_attrs[UID_ATTR]  # the last writer's, the same for all
    mine = _new_parent(study, spec, tracker, uid, publish=False)
    time.sleep(SETTLE_S)  # long enough for the others' runs to be visible
    first = tracker.find_parent_run(spec.name, uid) or mine
    if first != mine:
        tracker.delete_run(mine)
    study.set_user_attr(PARENT_ATTR, first)
    return first


def _new_parent(study: optuna.Study, spec: StudySpec, tracker: Tracker, uid: str, publish: bool = True) -> str:
    files = {f"study/{spec.path.name if spec.path else spec.name + '.toml'}": spec.text or ""}
    rid = tracker.create_parent_run(
        spec.name, study_params(spec), {T.STUDY_UID: uid, T.GIT_COMMIT: git_commit(), T.NOTE: parent_note(spec)}, files
    )
    tracker.describe_experiment(experiment_note(spec))
    if publish:
        study.set_user_attr(PARENT_ATTR, rid)
    return rid


def count(study: optuna.Study, states) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def recover_dead_local_trials(
    study: optuna.Study,
    tracker: Tracker,
    requeue: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> list[int]:
    """Fail RUNNING trials whose worker was a process on this host that no longer exists.

    This is the journal-file path's crash recovery (it has no heartbeats); database
    storages also get Optuna's heartbeat-based retry. Their MLflow runs are closed as FAILED,
    and `requeue` (the StaleTrialHandler) queues each again, as a heartbeat timeout would.
    """
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get(T.WORKER_ATTR, "")
        if not dead_local_worker(w):
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, T.FAIL_REASON_ATTR, f"worker {w} died mid-trial")
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            continue
        close_trial_run(tracker, t, f"worker {w} died mid-trial")
        if requeue is not None:
            requeue(study, study._storage.get_trial(t._trial_id))
        failed.append(t.number)
    return failed


def close_trial_run(tracker: Tracker, trial: optuna.trial.FrozenTrial, reason: str) -> None:
    run_id = trial.user_attrs.get(T.RUN_ID_ATTR)
    if run_id:
        tracker.close_if_running(run_id, "FAILED", reason)


@dataclass
class WorkerResult:
    finished: int  # COMPLETE + PRUNED trials in the study when this worker stopped
    ran: int  # trials this worker ran
    complete: bool  # the study has all its trials and none is running


def run_worker(
    spec: StudySpec,
    study: optuna.Study,
    runner: TrialRunner,
    stale: StaleTrialHandler | None,
    deadline: float | None,
    progress: bool = True,
    worker_index: int = 0,
) -> WorkerResult:
    """Run trials until the study has n_trials finished ones (or the deadline passes).

    A stratified study's worker takes a stratum that no other worker holds, starting at its own
    index round the strata, and runs that stratum's next trial; with more workers than strata the
    spare ones wait, ready to take over a stratum whose worker dies.
    """
    if stale is not None:
        stale.on_stale = lambda t: close_trial_run(runner.tracker, t, "worker stopped sending heartbeats")
    ran = 0
    stratified = spec.strata_param is not None
    bar = tqdm(
        total=spec.n_trials,
        initial=count(study, FINISHED_STATES),
        desc=f"study {spec.name}",
        unit="trial",
        disable=not progress,
    )
    try:
        while True:
            finished = count(study, FINISHED_STATES)
            bar.n = min(finished, spec.n_trials)
            bar.refresh()
            if finished >= spec.n_trials:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            if stratified:
                nxt = next_assignment(study, spec, start=worker_index)
                if nxt == DONE:
                    continue  # the count above ends the loop once it sees the last trial
                if nxt == WAIT:
                    _wait_for_others(study, runner, stale)
                    continue
                study.sampler.proposal = nxt.params
                runner.assignment = nxt.user_attrs
                study.optimize(runner, n_trials=1, catch=(SurplusTrial,), gc_after_trial=False)
                ran += 1
                continue
            waiting = count(study, (TrialState.WAITING,))
            running = count(study, (TrialState.RUNNING,))
            if finished + running >= spec.n_trials and not waiting:
                # others hold the last trials; stay to pick up a retry if one of them dies
                _wait_for_others(study, runner, stale)
                continue
            study.optimize(runner, n_trials=1, catch=(SurplusTrial,), gc_after_trial=False)
            ran += 1
    finally:
        bar.close()
    finished = count(study, FINISHED_STATES)
    return WorkerResult(finished, ran, finished >= spec.n_trials and count(study, ACTIVE_STATES) == 0)


def _wait_for_others(study: optuna.Study, runner: TrialRunner, stale: StaleTrialHandler | None) -> None:
    """Others hold the trials left: fail those whose worker died (a journal file has no heartbeats:
    only the pid check finds a dead local worker), then poll again."""
    recover_dead_local_trials(study, runner.tracker, stale)
    optuna.storages.fail_stale_trials(study)
    if count(study, (TrialState.RUNNING,)) or count(study, (TrialState.WAITING,)):
        time.sleep(POLL_S)
