"""From Optuna trials to configurations: a trial's searched fields suggested into the spec's configs,
a finished trial's configs rebuilt, the study's best trial and the trials it compares at each latent size.

The objective, the comparison and the seed replicates all read trials through these, so a
compared model or a replicate is built exactly as its trial was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FixedTrial, TrialState

from bench import tags as T
from bench.frontier import pick_by_elbo
from bench.spec import MODEL_FIELDS, SearchParam, StudySpec
from vae.model import ModelConfig
from vae.train import TrainConfig

SUGGEST: dict[str, Callable[[optuna.Trial, SearchParam], Any]] = {
    "categorical": lambda t, p: t.suggest_categorical(p.name, list(p.choices)),
    "int": lambda t, p: t.suggest_int(p.name, p.low, p.high, step=p.step or 1, log=p.log),
    "float": lambda t, p: t.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log),
}


def suggest_configs(trial: optuna.Trial, spec: StudySpec) -> tuple[ModelConfig, TrainConfig]:
    """Suggest every searched field, then build the configs (never inside a model constructor)."""
    model_kw: dict[str, Any] = {}
    train_kw: dict[str, Any] = {}
    for p in spec.search:
        (model_kw if p.name in MODEL_FIELDS else train_kw)[p.name] = SUGGEST[p.type](trial, p)
    return dataclasses.replace(spec.model, **model_kw), dataclasses.replace(spec.train, **train_kw)


def trial_configs(trial: optuna.trial.FrozenTrial, spec: StudySpec) -> tuple[ModelConfig, TrainConfig]:
    """Rebuild a trial's configs from its parameters, exactly as the objective built them."""
    return suggest_configs(FixedTrial(trial.params), spec)


def best_trial(study: optuna.Study, spec: StudySpec) -> optuna.trial.FrozenTrial | None:
    """The study's best trial; with several objectives, the highest ELBO on the Pareto front (bench.frontier)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    if spec.multi_objective:
        return pick_by_elbo(study.best_trials, spec.directions, spec.split)
    return study.best_trial


@dataclass(frozen=True)
class StudyBest:
    """The study's best trial and its best trial at each latent size, at one state of the study."""

    trial: optuna.trial.FrozenTrial | None  # best_trial
    per_latent: dict[int, optuna.trial.FrozenTrial]  # best_per_latent, by latent size ascending

    @classmethod
    def of(cls, study: optuna.Study, spec: StudySpec) -> StudyBest:
        return cls(best_trial(study, spec), best_per_latent(study, spec))


def best_per_latent(study: optuna.Study, spec: StudySpec) -> dict[int, optuna.trial.FrozenTrial]:
    """The best COMPLETE trial at each latent size, by the study's metric and direction.

    With several objectives (a rate-distortion study) there is no single best: at each latent
    size the trial compared is the one with the highest ELBO among that size's Pareto front
    (bench.frontier.pick_by_elbo), the point of the frontier a likelihood model would choose.
    """
    by_latent: dict[int, list[optuna.trial.FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if T.RUN_ID_ATTR in t.user_attrs:
            by_latent.setdefault(int(t.params.get("latent_dim", spec.model.latent_dim)), []).append(t)
    if spec.multi_objective:
        best = {latent: pick_by_elbo(ts, spec.directions, spec.split) for latent, ts in by_latent.items()}
    else:
        sign = 1 if spec.directions[0] == "maximize" else -1
        best = {latent: max(ts, key=lambda t: (sign * t.value, -t.number)) for latent, ts in by_latent.items()}
    return dict(sorted(best.items()))
