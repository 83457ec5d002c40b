"""Seed replicates: each compared configuration trained again with other seeds and scored like the compared runs.

`run_replicates(ctx)` (a bench.context.StudyContext) runs after the comparison; every
replicate is its own nested MLflow run (role `replicate`), and a finished one is never trained again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import optuna
import torch
from torch import nn
from tqdm.auto import tqdm

from bench import models
from bench import tags as T
from bench.context import StudyContext
from bench.fd_classifier import load_classifier
from bench.jobs import JobEnv, ModelJob, compute, log_model_run
from bench.metrics import OOD_AUROC
from bench.ood import OODScoring
from bench.spec import StudySpec
from bench.tracking import Tracker
from bench.trials import trial_configs
from vae.data import Datasets
from vae.model import ModelConfig
from vae.train import TrainConfig


@dataclass(frozen=True)
class Replicate:
    """One replicate run the study asks for: a model of the best trial's configuration at a latent size,
    with one seed."""

    kind: str  # a bench.models kind
    latent_dim: int
    seed: int
    of_run: str  # the replicated trial's MLflow run id
    of_trial: int  # its trial number

    @property
    def name(self) -> str:
        return f"{self.kind}-latent{self.latent_dim}-seed{self.seed}"

    @property
    def key(self) -> tuple[str, int, int, str]:
        return (self.kind, self.latent_dim, self.seed, self.of_run)

    def job(self, model_cfg: ModelConfig, train_cfg: TrainConfig) -> ModelJob:
        """The unit of work that makes it: the trial's configs with this seed, scored as a replicate."""
        return ModelJob(
            self.kind,
            model_cfg,
            dataclasses.replace(train_cfg, seed=self.seed),
            scoring="replicate",
            of_run=self.of_run,
            of_trial=self.of_trial,
        )


def train_replicate(
    kind: str, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int, data: Datasets, device: torch.device
) -> tuple[nn.Module, list[dict[str, float]]]:
    """The model `kind` with `train_cfg` but `seed`, and its per-epoch history (empty for PCA):
    bench.models.fit_model, the recipe the trials and the baselines are made with."""
    history: list[dict[str, float]] = []
    model = models.fit_model(
        kind,
        model_cfg,
        dataclasses.replace(train_cfg, seed=seed),
        data,
        device,
        on_epoch_end=lambda epoch, metrics: history.append(metrics),
    )
    return model, history


def plan(best: dict[int, optuna.trial.FrozenTrial], spec: StudySpec) -> list[Replicate]:
    """Every replicate the study asks for, seed by seed (an interrupted run leaves whole seeds done)."""
    return [
        Replicate(kind, latent, seed, trial.user_attrs[T.RUN_ID_ATTR], trial.number)
        for seed in spec.replicate_seeds
        for latent, trial in best.items()
        for kind in (models.SEARCHED, *spec.baselines.models)
    ]


def finished_replicates(tracker: Tracker, parent_run_id: str) -> set[tuple[str, int, int, str]]:
    """(kind, latent_dim, seed, replicated run id) of every FINISHED replicate run under the parent."""
    runs = tracker.find_runs(parent_run_id, {T.ROLE: T.REPLICATE_ROLE}, "FINISHED", max_results=50_000)
    return {
        (r.data.tags[T.MODEL], int(r.data.tags[T.LATENT_DIM]), int(r.data.tags[T.SEED]), r.data.tags[T.REPLICATE_OF])
        for r in runs
    }


def run_replicates(ctx: StudyContext, ood: OODScoring | None = None, processes: int | None = None) -> int:
    """Train and score every replicate not yet FINISHED under the parent; returns the runs written.

    The replicates are independent ModelJobs (bench.jobs): on a CPU they are computed by `processes`
    single-thread processes (default: one per core, bench.pool.pool_size), seed by seed and longest
    first within a seed (an interrupted run leaves whole seeds done), this process logging each as it
    comes; every one depends only on its seed, so the process count changes nothing but float rounding.
    `ood`: the [eval] ood_dataset's test images (bench.ood.load_ood_scoring); each replicate then also
    gets test/ood_auroc.
    """
    spec = ctx.spec
    best = ctx.bests.per_latent
    todo = plan(best, spec)
    if not todo:
        return 0
    done = finished_replicates(ctx.tracker, ctx.parent_run_id)
    todo = [r for r in todo if r.key not in done]
    if not todo:
        return 0
    classifier = load_classifier(ctx.data)  # trained and cached here, once, before any process needs it
    jobs = sorted(
        (rep.job(*trial_configs(best[rep.latent_dim], spec)) for rep in todo), key=lambda j: (j.seed, -j.cost)
    )
    env = JobEnv(
        ctx.data, classifier, ctx.device, spec.baselines.fd_samples, spec.eval.iw_samples, spec.eval.iw_images, ood
    )
    bar = tqdm(total=len(jobs), desc="replicates", unit="run", disable=not ctx.progress)
    try:
        for r in compute(jobs, env, processes):
            _log_replicate(r, ctx)
            bar.update()
    finally:
        bar.close()
    return len(jobs)


def _log_replicate(r, ctx: StudyContext) -> None:
    job = r.job
    note = (
        f"Seed replicate of the {job.kind} compared at latent size {job.latent}: the configuration of "
        f"trial {job.of_trial} (run {job.of_run}) trained again with seed {job.seed}; every random draw of its "
        "scoring comes from that seed too. The report's intervals and verdicts are made from these runs."
    )
    tags = {
        T.ROLE: T.REPLICATE_ROLE,
        T.SEED: job.seed,
        T.REPLICATE_OF: job.of_run,
        T.REPLICATE_OF_TRIAL: job.of_trial,
        T.NOTE: note,
    }
    if OOD_AUROC in r.scores:
        tags[T.OOD_DATASET] = ctx.spec.eval.ood_dataset
    log_model_run(ctx, r, job.name, tags)
