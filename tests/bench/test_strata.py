"""A stratified search (bench.strata): the same budget for every latent size, the same answer at any worker count.

The spec rules and the proposal and pruning logic in-process on in-memory Optuna studies; the worker-count
guarantee through the real CLI (1 and 2 workers, journal storage, MLflow sqlite store in tmp_path).
"""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from bench import tags as T
from bench.errors import BenchError
from bench.spec import load_spec, parse_spec
from bench.storage import optuna_pruner
from bench.strata import DONE, WAIT, Assignment, StratumPruner, next_assignment, propose, stratum_seed, stratum_trials
from tests.bench.helpers import TEST_STUDIES, StudyRun

optuna.logging.set_verbosity(optuna.logging.WARNING)

SEARCH = {
    "latent_dim": {"type": "categorical", "choices": [2, 8], "strata": True},
    "hidden_width": {"type": "int", "low": 16, "high": 48},
    "beta": {"type": "float", "low": 0.5, "high": 2.0, "log": True},
}


def spec_of(tps: int = 3, pruner: dict | None = None, **study):
    raw = {
        "study": {
            "trials_per_stratum": tps,
            **study,
            "pruner": pruner or {"type": "median", "n_warmup_steps": 0, "n_startup_trials": 1},
        },
        "search": SEARCH,
    }
    return parse_spec(raw, default_name="s")


# ------------------------------------------------------------------ the study file


def test_latent_study_tunes_every_size_with_the_same_budget():
    spec = load_spec("latent")
    assert spec.strata_param.name == "latent_dim" and spec.strata == (2, 4, 8, 16, 32, 64)
    assert spec.trials_per_stratum >= 5  # at least 5 configurations per size reach the pruner's first decision
    assert spec.n_trials == spec.trials_per_stratum * 6
    assert spec.coverage_trials == []


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"study": {}, "search": SEARCH}, "strata = true needs study.trials_per_stratum"),
        (
            {"study": {"trials_per_stratum": 2}, "search": {"hidden_width": SEARCH["hidden_width"]}},
            "needs a categorical search parameter with strata = true",
        ),
        (
            {"study": {"trials_per_stratum": 2, "n_trials": 6}, "search": SEARCH},
            "gives n_trials and trials_per_stratum",
        ),
        (
            {
                "study": {"trials_per_stratum": 2},
                "search": {**SEARCH, "hidden_width": {**SEARCH["hidden_width"], "strata": True}},
            },
            "strata = true needs type = 'categorical'",
        ),
        (
            {
                "study": {"trials_per_stratum": 2},
                "search": {**SEARCH, "latent_dim": {**SEARCH["latent_dim"], "cover": True}},
            },
            "drop cover",
        ),
        (
            {"study": {"trials_per_stratum": 2, "pruner": {"type": "hyperband"}}, "search": SEARCH},
            "use the median pruner or none",
        ),
    ],
)
def test_inconsistent_strata_are_refused(raw, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(raw, default_name="s")


def test_the_budget_is_per_stratum_on_the_command_line_too():
    spec = spec_of(tps=3)
    assert spec.n_trials == 6
    assert spec.with_overrides(trials_per_stratum=5).n_trials == 10
    with pytest.raises(BenchError, match="use --trials-per-stratum"):
        spec.with_overrides(n_trials=8)
    with pytest.raises(BenchError, match="has no search parameter with strata"):
        load_spec("smoke").with_overrides(trials_per_stratum=2)


# ------------------------------------------------------------------ proposals and pruning


def finish(study: optuna.Study, a: Assignment, values: list[float], pruned: bool = False) -> None:
    """Record trial a as finished in `study`, with per-epoch values, the way the objective would."""
    study.sampler.proposal = a.params
    t = study.ask()
    for k, v in a.user_attrs.items():
        t.set_user_attr(k, v)
    for name, choice in a.params.items():  # through the search's full distributions
        p = next(p for p in SEARCH_SPEC.search if p.name == name)
        from bench.trials import SUGGEST

        assert SUGGEST[p.type](t, p) == choice
    for step, v in enumerate(values):
        t.report(v, step)
    study.tell(t, state=TrialState.PRUNED) if pruned else study.tell(t, values[-1])


SEARCH_SPEC = spec_of()


def real_study() -> optuna.Study:
    from bench.strata import ProposalSampler

    return optuna.create_study(direction="maximize", sampler=ProposalSampler(), pruner=optuna_pruner(SEARCH_SPEC))


def test_a_strata_proposals_depend_only_on_its_own_trials_not_on_the_others_or_their_order():
    spec = SEARCH_SPEC
    a, b = real_study(), real_study()
    # study a runs stratum 2 first, then 8; study b interleaves them and adds an unrelated value for 8
    for study, order in ((a, [2, 2, 8, 8]), (b, [8, 2, 8, 2])):
        for s in order:
            nxt = next_assignment(study, spec, start=spec.strata.index(s))
            assert isinstance(nxt, Assignment) and nxt.stratum == s
            score = -100.0 - nxt.params["hidden_width"] if s == 2 else -50.0 - 7 * nxt.index
            finish(study, nxt, [score - 5, score])
    for s in spec.strata:
        pa = [t.params for t in stratum_trials(a, s)]
        pb = [t.params for t in stratum_trials(b, s)]
        assert pa == pb  # the same proposals in the same order, whichever way the strata interleaved
    # the next proposal of stratum 2 is the same in both, and differs from stratum 8's
    assert propose(spec, a, 2, 2) == propose(spec, b, 2, 2)
    assert (
        propose(spec, a, 2, 2)["hidden_width"] != propose(spec, a, 8, 2)["hidden_width"]
        or propose(spec, a, 2, 2)["beta"] != propose(spec, a, 8, 2)["beta"]
    )


def test_seeds_differ_per_stratum_and_index():
    seeds = {stratum_seed(0, s, k) for s in range(6) for k in range(10)}
    assert len(seeds) == 60
    assert stratum_seed(0, 1, 2) == stratum_seed(0, 1, 2) != stratum_seed(1, 1, 2)


def test_a_worker_takes_a_stratum_no_one_holds_and_waits_when_all_are_held():
    spec = SEARCH_SPEC
    study = real_study()
    first = next_assignment(study, spec, start=0)
    assert (first.stratum, first.index) == (2, 0)
    study.sampler.proposal = first.params
    held = study.ask()  # RUNNING: stratum 2 is taken
    for k, v in first.user_attrs.items():
        held.set_user_attr(k, v)
    held.suggest_categorical("latent_dim", [2, 8])
    other = next_assignment(study, spec, start=0)
    assert (other.stratum, other.index) == (8, 0)  # the next free stratum, not a second trial of 2
    study.sampler.proposal = other.params
    t = study.ask()
    for k, v in other.user_attrs.items():
        t.set_user_attr(k, v)
    assert next_assignment(study, spec, start=1) == WAIT
    study.tell(held, -100.0)
    study.tell(t, -90.0)
    for _ in range(4):
        nxt = next_assignment(study, spec)
        finish(study, nxt, [-80.0])
    assert next_assignment(study, spec) == DONE


def test_the_pruner_judges_a_trial_against_its_own_stratum_only():
    spec = SEARCH_SPEC
    study = real_study()
    # stratum 8 has a much better finished trial; stratum 2's first trial is poor
    finish(study, next_assignment(study, spec, start=1), [-50.0, -40.0])
    finish(study, next_assignment(study, spec, start=0), [-200.0, -190.0])
    nxt = next_assignment(study, spec, start=0)
    assert (nxt.stratum, nxt.index) == (2, 1)
    study.sampler.proposal = nxt.params
    t = study.ask()
    for k, v in nxt.user_attrs.items():
        t.set_user_attr(k, v)
    t.suggest_categorical("latent_dim", [2, 8])
    t.report(-150.0, 0)  # far below stratum 8's -50, above stratum 2's -200 at step 0
    assert isinstance(study.pruner, StratumPruner)
    assert not t.should_prune()  # judged against stratum 2 only
    t.report(-195.0, 1)
    assert not t.should_prune()  # best-so-far (-150) is still above stratum 2's median at step 1 (-190)
    plain = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    assert plain.prune(study, study.trials[-1])  # the unstratified pruner would have stopped it
    study.tell(t, -195.0)
    worse = next_assignment(study, spec, start=0)
    study.sampler.proposal = worse.params
    w = study.ask()
    for k, v in worse.user_attrs.items():
        w.set_user_attr(k, v)
    w.suggest_categorical("latent_dim", [2, 8])
    w.report(-300.0, 0)  # below its own stratum's median (-200, -150 at step 0)
    assert w.should_prune()


# ------------------------------------------------------------------ the CLI at 1 and 2 workers


def trial_table(run: StudyRun) -> dict[tuple, tuple]:
    """(stratum, index) -> (params, state, value, intermediate values), checking no trial of a stratum ran twice."""
    from bench.strata import trial_record

    study = run.optuna_study()
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    keys = [(t.user_attrs[T.STRATUM_ATTR], t.user_attrs[T.STRATUM_INDEX_ATTR]) for t in finished]
    assert len(set(keys)) == len(keys), f"a stratum ran one of its trials twice: {sorted(keys)}"
    return trial_record(study)


@pytest.mark.slow  # two studies of 6 trials through the CLI: a minute on idle cores
def test_one_and_two_workers_log_the_same_trials(tmp_path, data_root):
    """Same study file and seed: the same proposals, pruning decisions and values with 1 and 2 workers."""
    runs = {}
    for workers in (1, 2):
        run = StudyRun(tmp_path / f"w{workers}", "strata")
        run.cwd.mkdir()
        run.run(TEST_STUDIES / "strata.toml", "--workers", str(workers), "--threads", "1")
        runs[workers] = run
    one, two = trial_table(runs[1]), trial_table(runs[2])
    assert sorted(one) == [(s, k) for s in (2, 8) for k in range(3)]  # 3 trials in each stratum
    assert one == two
    assert any(state == "PRUNED" for _, state, _, _ in one.values())  # the pruning decisions were compared too
    rec = runs[2].record()
    assert {c.data.tags[T.STRATUM] for c in rec.children} == {"latent_dim=2", "latent_dim=8"}
    assert rec.parent.data.tags["trials_per_stratum"] == "3" and rec.parent.data.tags["n_trials"] == "6"
    assert rec.parent.data.params["strata"] == "latent_dim"


@pytest.mark.slow  # three studies of 6 trials through the CLI
@pytest.mark.postgres
def test_two_processes_sharing_postgres_log_the_same_trials_as_one_worker(tmp_path, data_root):
    """Two `bench.run` processes started together on one PostgreSQL study: the trials of a single worker."""
    import subprocess
    import sys

    from tests.bench.helpers import cli_env
    from tests.bench.services import create_database, db_url, drop_database, postgres_available

    if not postgres_available():
        pytest.skip("no PostgreSQL server at 127.0.0.1:5432 (trust auth, user postgres)")
    single = StudyRun(tmp_path / "one", "strata")
    single.cwd.mkdir()
    single.run(TEST_STUDIES / "strata.toml", "--threads", "1")
    name = create_database("vaebench_strata")
    try:
        url = db_url(name)
        shared = tmp_path / "pg"
        shared.mkdir()
        args = [
            sys.executable,
            "-m",
            "bench.run",
            "--study",
            str(TEST_STUDIES / "strata.toml"),
            "--storage",
            url,
            "--tracking-uri",
            f"sqlite:///{shared / 'mlflow.db'}",
            "--workers",
            "1",
            "--threads",
            "1",
            "--no-baselines",
            "--no-progress",
        ]
        procs = [
            subprocess.Popen(
                [*args, "--worker-index", str(i)],
                cwd=shared,
                env=cli_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        for p in procs:
            out, err = p.communicate(timeout=900)
            assert p.returncode == 0, err[-3000:]
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True, skip_compatibility_check=True)
        try:
            from bench.strata import trial_record

            pg_trials = trial_record(optuna.load_study(study_name="strata", storage=storage))
        finally:
            storage.engine.dispose()
        assert pg_trials == trial_table(single)
    finally:
        drop_database(name)


def test_the_compare_command_says_identical_different_or_missing(tmp_path, capfd, monkeypatch):
    """`python -m bench.strata --study NAME A B`, the README's check, on two real journal storages."""
    from bench.storage import open_storage, parse_storage
    from tests.bench.helpers import main_in_process

    def journal(name: str, value: float) -> str:
        path = str(tmp_path / name)
        study = optuna.create_study(study_name="s", storage=open_storage(parse_storage(path)), direction="maximize")
        attrs = {T.STRATUM_ATTR: 2, T.STRATUM_INDEX_ATTR: 0}
        dist = {"beta": optuna.distributions.FloatDistribution(0.25, 4.0)}
        study.add_trial(
            optuna.trial.create_trial(params={"beta": 1.0}, distributions=dist, value=value, user_attrs=attrs)
        )
        return path

    a, b, c = journal("a.journal", -100.0), journal("b.journal", -100.0), journal("c.journal", -101.0)
    assert main_in_process("bench.strata", ["--study", "s", a, b], capfd, monkeypatch)[0] == 0
    code, out, _ = main_in_process("bench.strata", ["--study", "s", a, c], capfd, monkeypatch)
    assert code == 1 and "DIFFERENT" in out and "they differ" in out
    code, _, err = main_in_process("bench.strata", ["--study", "s", a, str(tmp_path / "x.journal")], capfd, monkeypatch)
    assert code == 2 and "no such file" in err and not (tmp_path / "x.journal").exists()
