"""The comparison stage of a study: at each latent size, its best VAE against an autoencoder and PCA.

Trains the baselines with the VAE's configs, scores all three with bench.scores on the same
test images, and logs everything under the study's parent run. Safe to repeat: work already
logged for the same VAE run is skipped.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import optuna
import torch
from optuna.trial import FixedTrial, TrialState
from tqdm.auto import tqdm

from bench.baselines import make_sampler, sampler_generator, train_baseline, training_images
from bench.fd_classifier import load_classifier
from bench.frontier import pick_by_elbo
from bench.metrics import OOD_AUROC
from bench.ood import OOD_TAG, ood_auroc
from bench.objective import run_params, run_tags, suggest_configs
from bench.scores import score_model
from bench.spec import StudySpec
from bench.tracking import ROLE_TAG, Tracker
from vae.data import Datasets
from vae.evaluate import image_grid, reconstruction_grid
from vae.model import ModelConfig
from vae.train import TrainConfig, load_checkpoint


def best_per_latent(study: optuna.Study, spec: StudySpec) -> dict[int, optuna.trial.FrozenTrial]:
    """The best COMPLETE trial at each latent size, by the study's metric and direction.

    With several objectives (a rate-distortion study) there is no single best: at each latent
    size the trial compared is the one with the highest ELBO among that size's Pareto front
    (bench.frontier.pick_by_elbo), the point of the frontier a likelihood model would choose.
    """
    by_latent: dict[int, list[optuna.trial.FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "mlflow_run_id" in t.user_attrs:
            by_latent.setdefault(int(t.params.get("latent_dim", spec.model.latent_dim)), []).append(t)
    if spec.multi_objective:
        best = {latent: pick_by_elbo(ts, spec.directions, spec.split) for latent, ts in by_latent.items()}
    else:
        sign = 1 if spec.directions[0] == "maximize" else -1
        best = {latent: max(ts, key=lambda t: (sign * t.value, -t.number)) for latent, ts in by_latent.items()}
    return dict(sorted(best.items()))


def trial_configs(trial: optuna.trial.FrozenTrial, spec: StudySpec) -> tuple[ModelConfig, TrainConfig]:
    """Rebuild a trial's configs from its parameters, exactly as the objective built them."""
    return suggest_configs(FixedTrial(trial.params), spec)


def _baseline_done(tracker: Tracker, parent_run_id: str, kind: str, vae_run_id: str) -> bool:
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=(f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.model = '{kind}' "
                       f"and tags.vae_run_id = '{vae_run_id}' and attributes.status = 'FINISHED'"),
        max_results=1,
    )
    return bool(runs)


@dataclass(frozen=True)
class Job:
    """One model of the comparison: score a trial's VAE, or train/fit and score a baseline."""

    latent: int
    kind: str  # "vae", or a baseline kind
    vae_run: str
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    checkpoint: str | None = None  # the VAE's downloaded checkpoint (kind "vae")

    @property
    def cost(self) -> float:
        """A rough relative cost, to start the long jobs first: the autoencoder trains, the rest only score."""
        return (1000.0 + self.model_cfg.hidden_width) if self.kind == "ae" else float(self.kind == "vae")


@dataclass
class JobResult:
    job: Job
    scores: dict[str, float]
    history: list[dict[str, float]]  # per-epoch metrics of a trained baseline
    images: dict[str, torch.Tensor]  # artifact name -> image grid (3, H, W)


@dataclass(frozen=True)
class OODScoring:
    """The OOD images and how test/ood_auroc is computed on them (bench.ood)."""

    x: torch.Tensor  # the other dataset's test images
    iw_samples: int
    iw_images: int | None


# what a pool process holds for all its jobs: set once by _init_worker, never sent per job
_CTX: dict[str, object] = {}


def _init_worker(data: Datasets, classifier, device: str, fd_samples: int, ood: OODScoring | None, threads: int) -> None:
    torch.set_num_threads(threads)
    _CTX.update(data=data, classifier=classifier, device=torch.device(device), fd_samples=fd_samples, ood=ood)


def _ood_scores(model, kind: str, seed: int) -> dict[str, float]:
    ood = _CTX.get("ood")
    if ood is None:
        return {}
    return {OOD_AUROC: ood_auroc(model, kind, _CTX["data"].test.x, ood.x, ood.iw_samples, ood.iw_images, seed=seed)}


def _run_job(job: Job) -> JobResult:
    """The computing part of one comparison step; everything MLflow sees comes back in the result."""
    data, classifier, device = _CTX["data"], _CTX["classifier"], _CTX["device"]
    kw = dict(classifier=classifier, n_fd_samples=_CTX["fd_samples"], seed=job.train_cfg.seed)
    if job.kind == "vae":
        model, _ = load_checkpoint(job.checkpoint, device)
        return JobResult(job, score_model(model, data, kind="vae", **kw) | _ood_scores(model, "vae", job.train_cfg.seed), [], {})
    history: list[dict[str, float]] = []
    model = train_baseline(job.kind, job.model_cfg, job.train_cfg, data, device, progress=False,
                           on_epoch_end=lambda epoch, m: history.append(m))
    scores = score_model(model, data, kind=job.kind, **kw) | _ood_scores(model, job.kind, job.train_cfg.seed)
    sampler = make_sampler(job.kind, model, training_images(data, job.train_cfg.seed, limit=10_000))
    samples = sampler.sample(64, sampler_generator(job.kind, model, job.train_cfg.seed))
    images = {"images/samples.png": image_grid(samples),
              "images/reconstructions.png": reconstruction_grid(model, data.test.x, 16)}
    return JobResult(job, scores, history, images)


def comparison_processes(n_jobs: int, device: torch.device, cpus: int | None = None) -> int:
    """Processes for the comparison: one single-thread process per CPU core (at most one per job) on a CPU;
    1 (this process) on a GPU or a one-core machine."""
    cpus = cpus or os.cpu_count() or 1
    return 1 if device.type != "cpu" else max(1, min(cpus, n_jobs))


def compute_jobs(
    jobs: list[Job], data: Datasets, classifier, device: torch.device, fd_samples: int, processes: int | None = None,
    ood: OODScoring | None = None,
) -> Iterator[JobResult]:
    """Each job's result, longest jobs first, as they finish: in `processes` single-thread processes
    (default: comparison_processes), or in this process with its threads when that is 1."""
    jobs = sorted(jobs, key=lambda j: -j.cost)
    n_proc = processes or comparison_processes(len(jobs), device)
    init = (data, classifier, str(device), fd_samples, ood)
    if n_proc <= 1:
        _init_worker(*init, torch.get_num_threads())
        try:
            yield from map(_run_job, jobs)
        finally:
            _CTX.clear()
        return
    # spawn, not fork: this process holds OpenMP threads and database connections
    with mp.get_context("spawn").Pool(n_proc, initializer=_init_worker, initargs=(*init, 1)) as pool:
        yield from pool.imap_unordered(_run_job, jobs)


def run_comparison(
    study: optuna.Study,
    spec: StudySpec,
    tracker: Tracker,
    parent_run_id: str,
    data: Datasets,
    device: torch.device,
    progress: bool = True,
    processes: int | None = None,
    ood_x: torch.Tensor | None = None,
) -> int:
    """Score the best VAE at each latent size and train/score its baselines; returns runs written.

    The models are independent: on a CPU they are computed by `processes` single-thread processes
    (default: comparison_processes), longest first, and this process logs each result as it comes.
    Every model is computed from its own seed, so the results do not depend on the process count
    (beyond float rounding, which differs with the thread count).
    `ood_x`: the [eval] ood_dataset's test images (bench.ood.load_ood_images); each compared
    model then also gets test/ood_auroc and the tag ood_dataset.
    """
    best = best_per_latent(study, spec)
    if not best:
        return 0
    _untag_superseded(tracker, parent_run_id, {t.user_attrs["mlflow_run_id"] for t in best.values()})
    classifier = load_classifier(data)  # trained and cached here, once, before any process needs it
    with tempfile.TemporaryDirectory(prefix="vaebench-") as tmp:
        jobs = []
        for latent, trial in best.items():
            vae_run = trial.user_attrs["mlflow_run_id"]
            model_cfg, train_cfg = trial_configs(trial, spec)
            for kind in ("vae", *spec.baselines.models):
                if kind == "vae":
                    if tracker.client.get_run(vae_run).data.tags.get("compared") == "true":
                        continue
                    (Path(tmp) / vae_run).mkdir()
                    ckpt = str(tracker.download(vae_run, "checkpoint/model.pt", Path(tmp) / vae_run))
                    jobs.append(Job(latent, kind, vae_run, model_cfg, train_cfg, ckpt))
                elif not _baseline_done(tracker, parent_run_id, kind, vae_run):
                    jobs.append(Job(latent, kind, vae_run, model_cfg, train_cfg))
        bar = tqdm(total=len(jobs), desc="baselines", unit="model", disable=not progress)
        try:
            ood = None if ood_x is None else OODScoring(ood_x, spec.eval.iw_samples, spec.eval.iw_images)
            ood_tags = {} if ood_x is None else {OOD_TAG: spec.eval.ood_dataset}
            for r in compute_jobs(jobs, data, classifier, device, spec.baselines.fd_samples, processes, ood):
                _log_result(r, spec, tracker, parent_run_id, data, device, ood_tags)
                bar.update()
        finally:
            bar.close()
    return len(jobs)


def _log_result(r: JobResult, spec, tracker: Tracker, parent_run_id: str, data: Datasets, device, ood_tags: dict) -> None:
    """One comparison step's MLflow records: the VAE run's scores, or a baseline child run."""
    job = r.job
    if job.kind == "vae":
        tracker.log_metrics(job.vae_run, r.scores)
        tracker.set_tags(job.vae_run, {"compared": "true", **ood_tags})
        return
    params = run_params(job.model_cfg, job.train_cfg, spec)
    if job.kind == "pca":  # PCA has no network: keep what defines it
        params = {k: v for k, v in params.items() if k in ("latent_dim", "seed") or k.startswith("data.")}
    tags = {ROLE_TAG: "baseline", "vae_run_id": job.vae_run, "compared": "true",
            **run_tags(spec, data, device, job.kind, job.model_cfg.latent_dim), **ood_tags}
    with tracker.child_run(parent_run_id, f"{job.kind}-latent{job.model_cfg.latent_dim}", params, tags) as run:
        for epoch, m in enumerate(r.history, start=1):
            run.log_metrics(m, step=epoch)
        run.log_metrics(r.scores)
        for name, grid in r.images.items():
            run.log_image(grid, name)


def _untag_superseded(tracker: Tracker, parent_run_id: str, keep: set[str]) -> None:
    """A resumed study may find a better VAE at some size: the older comparison runs step aside."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.compared = 'true'"
    )
    for r in runs:
        owner = r.info.run_id if r.data.tags.get("model") == "vae" else r.data.tags.get("vae_run_id")
        if owner not in keep:
            tracker.set_tags(r.info.run_id, {"compared": "false"})


def report_dir(spec: StudySpec, given: str | None) -> Path:
    return Path(given or f"reports/{spec.name}")
