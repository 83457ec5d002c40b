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

from bench import tags as T
from bench.baselines import train_baseline
from bench.context import StudyContext
from bench.describe import dataset_inputs, run_params, run_tags
from bench.fd_classifier import FDClassifier, load_classifier
from bench.pool import imap_jobs, pool_size
from bench.scores import score_model
from bench.metrics import OOD_AUROC
from bench.ood import OOD_TAG, OODScoring, ood_scores
from bench.spec import StudySpec
from bench.tracking import REPLICATE_OF_TAG, REPLICATE_ROLE, REPLICATE_TRIAL_TAG, ROLE_TAG, SEED_TAG, Tracker
from bench.trials import best_per_latent, trial_configs
from vae.data import Corruption, Datasets
from vae.evaluate import final_metrics
from vae.model import ModelConfig, build_model
from vae.train import TrainConfig, fit, seed_everything


@dataclass(frozen=True)
class Replicate:
    """One replicate run to make: a model of the best trial's configuration at a latent size, with one seed."""

    kind: str  # "vae", "ae" or "pca"
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


def train_replicate(
    kind: str, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int, data: Datasets, device: torch.device
) -> tuple[nn.Module, list[dict[str, float]]]:
    """The model `kind` with `train_cfg` but `seed`, and its per-epoch history (empty for PCA).

    Identical to `seed_everything(seed); build_model(kind, model_cfg); fit(...)`, which is how the
    trials and the autoencoder baselines are trained. This is the one place a faster trainer of
    several seeds at once (vae.stacked.fit_replicates) replaces.
    """
    cfg = dataclasses.replace(train_cfg, seed=seed)
    if kind == "pca":
        return train_baseline("pca", model_cfg, cfg, data, device), []
    seed_everything(seed)
    model = build_model(kind, model_cfg)
    history = fit(model, data, cfg, device, progress=False)
    return model.eval(), history


def replicate_scores(
    kind: str, model: nn.Module, data: Datasets, spec: StudySpec, classifier: FDClassifier, seed: int
) -> dict[str, float]:
    """The compared runs' scores with every random draw taken from `seed`; for the VAE also its test ELBO terms and NLL."""
    scores = score_model(model, data, kind=kind, classifier=classifier, n_fd_samples=spec.baselines.fd_samples,
                         seed=seed, corruption=Corruption(seed=seed))
    if kind == "vae":
        test = final_metrics(model, data.test.x, spec.eval.iw_samples, spec.eval.iw_images, seed=seed)
        scores |= {f"test/{k}": v for k, v in test.items()}
    return scores


def plan(best: dict[int, optuna.trial.FrozenTrial], spec: StudySpec) -> list[Replicate]:
    """Every replicate the study asks for, seed by seed (an interrupted run leaves whole seeds done)."""
    return [
        Replicate(kind, latent, seed, trial.user_attrs["mlflow_run_id"], trial.number)
        for seed in spec.replicate_seeds
        for latent, trial in best.items()
        for kind in ("vae", *spec.baselines.models)
    ]


def finished_replicates(tracker: Tracker, parent_run_id: str) -> set[tuple[str, int, int, str]]:
    """(kind, latent_dim, seed, replicated run id) of every FINISHED replicate run under the parent."""
    runs = tracker.find_runs(parent_run_id, {ROLE_TAG: REPLICATE_ROLE}, "FINISHED", max_results=50_000)
    return {
        (r.data.tags["model"], int(r.data.tags["latent_dim"]), int(r.data.tags[SEED_TAG]), r.data.tags[REPLICATE_OF_TAG])
        for r in runs
    }


def run_replicates(ctx: StudyContext, ood: OODScoring | None = None, processes: int | None = None) -> int:
    """Train and score every replicate not yet FINISHED under the parent; returns the runs written.

    The replicates are independent: on a CPU they are computed by `processes` single-thread
    processes (default: one per core, bench.pool.pool_size), this process logging
    each as it comes; every one depends only on its seed, so the process count changes nothing
    but float rounding. `ood`: the [eval] ood_dataset's test images (bench.ood.load_ood_scoring);
    each replicate then also gets test/ood_auroc.
    """
    spec = ctx.spec
    best = best_per_latent(ctx.study, spec)
    todo = plan(best, spec)
    if not todo:
        return 0
    done = finished_replicates(ctx.tracker, ctx.parent_run_id)
    todo = [r for r in todo if r.key not in done]
    if not todo:
        return 0
    classifier = load_classifier(ctx.data)  # trained and cached here, once, before any process needs it
    jobs = [ReplicateJob(rep, *trial_configs(best[rep.latent_dim], spec)) for rep in todo]
    n_proc = processes or pool_size(len(jobs), ctx.device)
    bar = tqdm(total=len(jobs), desc="replicates", unit="run", disable=not ctx.progress)
    try:
        for job, history, scores in _compute(jobs, spec, ctx.data, classifier, ctx.device, ood, n_proc):
            _log_replicate(job, history, scores, ctx)
            bar.update()
    finally:
        bar.close()
    return len(jobs)


@dataclass(frozen=True)
class ReplicateJob:
    rep: Replicate
    model_cfg: ModelConfig
    train_cfg: TrainConfig

    @property
    def cost(self) -> float:
        """Rough relative cost, to start the long jobs first: the networks train, PCA only fits."""
        return 0.0 if self.rep.kind == "pca" else float(self.model_cfg.hidden_width)


_CTX: dict[str, object] = {}  # what a pool process holds for all its jobs, set once by _init_worker


def _init_worker(spec, data, classifier, device: str, ood: OODScoring | None, threads: int) -> None:
    torch.set_num_threads(threads)
    _CTX.update(spec=spec, data=data, classifier=classifier, device=torch.device(device), ood=ood)


def _run_job(job: ReplicateJob) -> tuple[ReplicateJob, list[dict[str, float]], dict[str, float]]:
    """Train and score one replicate; everything MLflow sees comes back in the result."""
    spec, data, rep = _CTX["spec"], _CTX["data"], job.rep
    model, history = train_replicate(rep.kind, job.model_cfg, job.train_cfg, rep.seed, data, _CTX["device"])
    scores = replicate_scores(rep.kind, model, data, spec, _CTX["classifier"], rep.seed)
    scores |= ood_scores(model, rep.kind, data.test.x, _CTX["ood"], rep.seed)
    return job, history, scores


def _compute(jobs, spec, data, classifier, device, ood: OODScoring | None, processes: int):
    """Each job's result as it finishes, seed by seed and longest first within a seed (an interrupted
    run leaves whole seeds done): in `processes` single-thread processes, or here with every thread."""
    jobs = sorted(jobs, key=lambda j: (j.rep.seed, -j.cost))
    init = (spec, data, classifier, str(device), ood)
    yield from imap_jobs(_run_job, jobs, _init_worker, init, processes, _CTX.clear)


def _log_replicate(job: ReplicateJob, history, scores, ctx: StudyContext) -> None:
    spec, rep, model_cfg, train_cfg = ctx.spec, job.rep, job.model_cfg, job.train_cfg
    params = run_params(model_cfg, dataclasses.replace(train_cfg, seed=rep.seed), spec, rep.kind)
    note = (f"Seed replicate of the {rep.kind} compared at latent size {rep.latent_dim}: the configuration of "
            f"trial {rep.of_trial} (run {rep.of_run}) trained again with seed {rep.seed}; every random draw of its "
            "scoring comes from that seed too. The report's intervals and verdicts are made from these runs.")
    tags = {ROLE_TAG: REPLICATE_ROLE, SEED_TAG: rep.seed, REPLICATE_OF_TAG: rep.of_run,
            REPLICATE_TRIAL_TAG: rep.of_trial, T.NOTE: note, **run_tags(spec, ctx.data, ctx.device, rep.kind, rep.latent_dim)}
    if OOD_AUROC in scores:
        tags[OOD_TAG] = spec.eval.ood_dataset
    with ctx.tracker.child_run(ctx.parent_run_id, rep.name, params, tags) as run:
        run.log_datasets(dataset_inputs(spec, ctx.data))
        for epoch, metrics in enumerate(history, start=1):
            run.log_metrics(metrics, step=epoch)
        run.log_metrics(scores)
