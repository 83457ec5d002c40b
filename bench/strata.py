"""A stratified search: each choice of one categorical parameter (a stratum) is tuned on its own, with the same budget.

`next_assignment(study, spec, start)` says which stratum a worker runs next and the trial's index in it;
`propose` computes that trial's parameters from the stratum's own finished trials alone, with a sampler
seeded from (study seed, stratum, index); `ProposalSampler` hands them to the real study and `StratumPruner`
judges a trial against its own stratum only. The strata of one study run one trial at a time each, so the
proposals, the pruning decisions and the values do not depend on how many workers share the study.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from bench import tags as T
from bench.errors import HelpFormatter, cli_main
from bench.spec import StudySpec

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def stratum_seed(seed: int, stratum_index: int, k: int) -> int:
    """The sampler seed of trial k of a stratum: the same on every worker, different for every (stratum, k)."""
    return int(np.random.SeedSequence([seed, stratum_index, k]).generate_state(1)[0])


def stratum_of(trial: FrozenTrial) -> Any:
    return trial.user_attrs.get(T.STRATUM_ATTR)


def stratum_trials(study: optuna.Study, stratum: Any, states=FINISHED) -> list[FrozenTrial]:
    """The stratum's trials in the given states, in the order the stratum ran them
    (its index, not the study's number)."""
    found = [
        t
        for t in study.get_trials(deepcopy=False, states=states)
        if T.STRATUM_INDEX_ATTR in t.user_attrs and stratum_of(t) == stratum
    ]
    return sorted(found, key=lambda t: (t.user_attrs[T.STRATUM_INDEX_ATTR], t.number))


@dataclass(frozen=True)
class Assignment:
    """What a worker runs next: trial `index` (0-based) of `stratum`, with `params` proposed for it."""

    stratum: Any
    index: int
    params: dict[str, Any]

    @property
    def user_attrs(self) -> dict[str, Any]:
        return {T.STRATUM_ATTR: self.stratum, T.STRATUM_INDEX_ATTR: self.index}


WAIT = "wait"  # every unfinished stratum is held by another worker
DONE = "done"  # every stratum has its trials


def next_assignment(study: optuna.Study, spec: StudySpec, start: int = 0) -> Assignment | str:
    """The next trial this worker should run: the first stratum, from `start` round, that is neither
    finished nor held by a RUNNING trial; WAIT when the others hold all that are left, DONE when none are left."""
    finished: dict[Any, int] = {s: 0 for s in spec.strata}
    held: set[Any] = set()
    for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)):
        s = stratum_of(t)
        if s not in finished or T.STRATUM_INDEX_ATTR not in t.user_attrs:
            continue
        if t.state == TrialState.RUNNING:
            held.add(s)
        else:
            finished[s] += 1
    strata = list(spec.strata)
    order = strata[start % len(strata) :] + strata[: start % len(strata)]
    left = [s for s in order if finished[s] < spec.trials_per_stratum]
    if not left:
        return DONE
    for s in left:
        if s not in held:
            return Assignment(s, finished[s], propose(spec, study, s, finished[s]))
    return WAIT


def _shadow_trial(t: FrozenTrial, drop: str, number: int) -> FrozenTrial:
    """A finished trial as its stratum sees it: without the strata parameter, numbered by its index."""
    params = {k: v for k, v in t.params.items() if k != drop}
    dists = {k: v for k, v in t.distributions.items() if k != drop}
    return optuna.trial.create_trial(
        state=t.state,
        params=params,
        distributions=dists,
        values=t.values if t.state == TrialState.COMPLETE else None,
        intermediate_values=dict(t.intermediate_values),
        user_attrs={},
    )


def shadow_study(
    spec: StudySpec,
    stratum: Any,
    history: list[FrozenTrial],
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """An in-memory study holding just this stratum's finished trials, numbered 0, 1, ... in the stratum's order."""
    name = spec.strata_param.name
    study = optuna.create_study(
        study_name=f"{spec.name}/{name}={stratum}", directions=list(spec.directions), sampler=sampler, pruner=pruner
    )
    for i, t in enumerate(history):
        study.add_trial(_shadow_trial(t, name, i))
    return study


def propose(spec: StudySpec, study: optuna.Study, stratum: Any, index: int) -> dict[str, Any]:
    """Trial `index` of `stratum`: the strata value and the other searched parameters, proposed by the
    study's sampler type from this stratum's finished trials only, seeded from (seed, stratum, index)."""
    from bench.storage import optuna_sampler
    from bench.trials import SUGGEST

    history = stratum_trials(study, stratum)[:index]
    strata_index = list(spec.strata).index(stratum)
    seed = None if spec.sampler.seed is None else stratum_seed(spec.sampler.seed, strata_index, index)
    others = [p for p in spec.search if not p.strata]
    sampler = optuna_sampler(spec, seed=seed, params=others)
    shadow = shadow_study(spec, stratum, history, sampler=sampler)
    trial = shadow.ask()
    return {spec.strata_param.name: stratum, **{p.name: SUGGEST[p.type](trial, p) for p in others}}


class ProposalSampler(optuna.samplers.BaseSampler):
    """The real study's sampler in a stratified search: it hands out the parameters `propose` computed.

    A worker sets `proposal` before it asks for a trial; suggest_* then returns those values, recorded
    with the search's full distributions, so Optuna's plots and optuna-dashboard see one search space.
    """

    def __init__(self) -> None:
        self.proposal: dict[str, Any] = {}

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return {}

    def sample_independent(self, study, trial, param_name: str, param_distribution: BaseDistribution) -> Any:
        if param_name not in self.proposal:
            raise RuntimeError(
                f"no proposal for {param_name!r}: a stratified study's trials are asked through bench.strata"
            )
        return self.proposal[param_name]


class StratumPruner(optuna.pruners.BasePruner):
    """The study's pruner, judging a trial against the finished trials of its own stratum only."""

    def __init__(self, spec: StudySpec, inner: optuna.pruners.BasePruner) -> None:
        self.spec, self.inner = spec, inner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        stratum, index = stratum_of(trial), trial.user_attrs.get(T.STRATUM_INDEX_ATTR)
        if index is None:
            return False
        history = stratum_trials(study, stratum)[:index]
        shadow = shadow_study(self.spec, stratum, history)
        current = _shadow_trial(trial, self.spec.strata_param.name, index)
        current.number, current.state = index, TrialState.RUNNING
        return self.inner.prune(shadow, current)


def trial_record(study: optuna.Study) -> dict[tuple, tuple]:
    """(stratum, index) -> (params, state, value, intermediate values) of every finished trial: what must not
    depend on the worker count."""
    out = {}
    for t in study.get_trials(deepcopy=False, states=FINISHED):
        if T.STRATUM_INDEX_ATTR in t.user_attrs:
            out[(stratum_of(t), t.user_attrs[T.STRATUM_INDEX_ATTR])] = (
                t.params,
                t.state.name,
                t.value,
                dict(sorted(t.intermediate_values.items())),
            )
    return out


@cli_main
def main(argv: list[str] | None = None) -> int:
    """`python -m bench.strata --study NAME STORAGE STORAGE`: do two runs of a stratified study hold the same trials?"""
    from bench.storage import load_existing_study

    p = argparse.ArgumentParser(
        prog="python -m bench.strata",
        formatter_class=HelpFormatter,
        description="Compare the trials of one stratified study in two storages (e.g. run "
        "with --workers 1 and --workers 2): exit 0 when every trial's parameters, state, value "
        "and intermediate values are identical, 1 otherwise.",
    )
    p.add_argument("--study", required=True, help="the study's name in both storages")
    p.add_argument("storages", nargs=2, help="two Optuna storages: journal files or database URLs")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    a, b = (trial_record(load_existing_study(args.study, s)) for s in args.storages)
    for key in sorted(set(a) | set(b), key=str):
        same = "same" if a.get(key) == b.get(key) else "DIFFERENT"
        params, state, value, _ = a.get(key) or b.get(key)
        print(f"stratum {key[0]} trial {key[1]}: {state} value={value} params={params}  {same}")
    equal = a == b
    print(f"{len(a)} and {len(b)} trials: " + ("identical" if equal else "they differ"))
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
