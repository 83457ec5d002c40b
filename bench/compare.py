"""The comparison stage of a study: at each latent size, its best VAE against an autoencoder and PCA.

Trains the baselines with the VAE's configs, scores all three with bench.scores on the same
test images, and logs everything under the study's parent run. Safe to repeat: work already
logged for the same VAE run is skipped.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from tqdm.auto import tqdm

from bench import tags as T
from bench.baselines import train_baseline
from bench.describe import BEST_ALIAS, baseline_note, dataset_inputs, model_name, registered_name, run_params, run_tags
from bench.fd_classifier import load_classifier
from bench.context import StudyContext
from bench.ood import OOD_TAG, OODScoring, ood_scores
from bench.images import image_grids, log_final_grids
from bench.pool import imap_jobs, pool_size
from bench.scores import score_model
from bench.spec import StudySpec
from bench.tracking import Tracker
from bench.trials import best_per_latent, trial_configs
from vae.data import Datasets
from vae.model import ModelConfig, build_model
from vae.train import TrainConfig, load_checkpoint, save_checkpoint


def _baseline_done(tracker: Tracker, parent_run_id: str, kind: str, vae_run_id: str) -> bool:
    return bool(tracker.find_runs(parent_run_id, {T.MODEL: kind, T.VAE_RUN_ID: vae_run_id}, "FINISHED", max_results=1))


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
    step_images: dict[int, dict[str, torch.Tensor]]  # step -> image key -> grid (3, H, W), for log_image(key, step)
    grids: dict[str, torch.Tensor]  # the last grids, logged as files under grids/
    state: dict[str, torch.Tensor] | None = None  # the autoencoder's weights, for its logged model


# what a pool process holds for all its jobs: set once by _init_worker, never sent per job
_CTX: dict[str, object] = {}


def _init_worker(data: Datasets, classifier, device: str, fd_samples: int, ood: OODScoring | None, threads: int) -> None:
    torch.set_num_threads(threads)
    _CTX.update(data=data, classifier=classifier, device=torch.device(device), fd_samples=fd_samples, ood=ood)


def _run_job(job: Job) -> JobResult:
    """The computing part of one comparison step; everything MLflow sees comes back in the result."""
    data, classifier, device, ood = _CTX["data"], _CTX["classifier"], _CTX["device"], _CTX["ood"]
    seed = job.train_cfg.seed
    kw = dict(classifier=classifier, n_fd_samples=_CTX["fd_samples"], seed=seed)
    if job.kind == "vae":
        model, _ = load_checkpoint(job.checkpoint, device)
        return JobResult(job, score_model(model, data, kind="vae", **kw) | ood_scores(model, "vae", data.test.x, ood, seed), [], {}, {})
    history: list[dict[str, float]] = []
    steps: dict[int, dict[str, torch.Tensor]] = {}
    built: list[torch.nn.Module] = []

    def on_model(model) -> None:  # step 0: the untrained network, as the VAE's (the UI's image slider opens on 0)
        built.append(model)
        if job.kind != "pca":
            steps[0] = image_grids(job.kind, model, data, seed)

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        history.append(metrics)
        steps[epoch] = image_grids(job.kind, built[0], data, seed)

    model = train_baseline(job.kind, job.model_cfg, job.train_cfg, data, device, progress=False,
                           on_epoch_end=on_epoch_end, on_model=on_model)
    if job.kind == "pca":  # fitted once: the same pictures at every step the networks have
        grids = image_grids(job.kind, model, data, seed)
        steps = {step: grids for step in range(0, job.train_cfg.epochs + 1)}
    scores = score_model(model, data, kind=job.kind, **kw) | ood_scores(model, job.kind, data.test.x, ood, seed)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()} if job.kind == "ae" else None
    return JobResult(job, scores, history, steps, steps[max(steps)], state)


def compute_jobs(
    jobs: list[Job], data: Datasets, classifier, device: torch.device, fd_samples: int, processes: int | None = None,
    ood: OODScoring | None = None,
) -> Iterator[JobResult]:
    """Each job's result, longest jobs first, as they finish: in `processes` single-thread processes
    (default: bench.pool.pool_size), or in this process with its threads when that is 1."""
    jobs = sorted(jobs, key=lambda j: -j.cost)
    n_proc = processes or pool_size(len(jobs), device)
    init = (data, classifier, str(device), fd_samples, ood)
    yield from imap_jobs(_run_job, jobs, _init_worker, init, n_proc, _CTX.clear)


def run_comparison(ctx: StudyContext, processes: int | None = None, ood: OODScoring | None = None) -> int:
    """Score the best VAE at each latent size and train/score its baselines; returns runs written.

    The models are independent: on a CPU they are computed by `processes` single-thread processes
    (default: bench.pool.pool_size), longest first, and this process logs each result as it comes.
    Every model is computed from its own seed, so the results do not depend on the process count
    (beyond float rounding, which differs with the thread count).
    `ood`: the [eval] ood_dataset's test images (bench.ood.load_ood_scoring); each compared
    model then also gets test/ood_auroc and the tag ood_dataset.
    """
    spec, tracker, data = ctx.spec, ctx.tracker, ctx.data
    best = best_per_latent(ctx.study, spec)
    if not best:
        return 0
    _untag_superseded(tracker, ctx.parent_run_id, {t.user_attrs[T.RUN_ID_ATTR] for t in best.values()})
    classifier = load_classifier(data)  # trained and cached here, once, before any process needs it
    with tempfile.TemporaryDirectory(prefix="vaebench-") as tmp:
        jobs = []
        for latent, trial in best.items():
            vae_run = trial.user_attrs[T.RUN_ID_ATTR]
            model_cfg, train_cfg = trial_configs(trial, spec)
            for kind in ("vae", *spec.baselines.models):
                if kind == "vae":
                    if tracker.tags_of(vae_run).get(T.COMPARED) == "true":
                        continue
                    (Path(tmp) / vae_run).mkdir()
                    ckpt = str(tracker.download(vae_run, "checkpoint/model.pt", Path(tmp) / vae_run))
                    jobs.append(Job(latent, kind, vae_run, model_cfg, train_cfg, ckpt))
                elif not _baseline_done(tracker, ctx.parent_run_id, kind, vae_run):
                    jobs.append(Job(latent, kind, vae_run, model_cfg, train_cfg))
        bar = tqdm(total=len(jobs), desc="baselines", unit="model", disable=not ctx.progress)
        try:
            ood_tags = {} if ood is None else {OOD_TAG: ood.dataset}
            for r in compute_jobs(jobs, data, classifier, ctx.device, spec.baselines.fd_samples, processes, ood):
                _log_result(r, ctx, ood_tags)
                bar.update()
        finally:
            bar.close()
    return len(jobs)


def _log_result(r: JobResult, ctx: StudyContext, ood_tags: dict) -> None:
    """One comparison step's MLflow records: the VAE run's scores (and its registration), or a baseline
    child run with its epochs' metrics and images, its scores, grids and (AE) model."""
    spec, tracker, job = ctx.spec, ctx.tracker, r.job
    latent = job.model_cfg.latent_dim
    if job.kind == "vae":
        tracker.log_metrics(job.vae_run, r.scores)
        _register_best(tracker, spec, job.latent, job.vae_run, tracker.tags_of(job.vae_run))
        tracker.set_tags(job.vae_run, {T.COMPARED: "true", **ood_tags})
        return
    vae_name = f"trial-{int(tracker.tags_of(job.vae_run).get(T.TRIAL_NUMBER, -1)):03d}"
    tags = {T.ROLE: "baseline", T.VAE_RUN_ID: job.vae_run, T.COMPARED: "true",
            T.NOTE: baseline_note(job.kind, latent, job.vae_run, vae_name),
            **run_tags(spec, ctx.data, ctx.device, job.kind, latent), **ood_tags}
    params = run_params(job.model_cfg, job.train_cfg, spec, job.kind)
    with tracker.child_run(ctx.parent_run_id, f"{job.kind}-latent{latent}", params, tags) as run:
        run.log_datasets(dataset_inputs(spec, ctx.data))
        for epoch, m in enumerate(r.history, start=1):
            run.log_metrics(m, step=epoch)
        for step, grids in sorted(r.step_images.items()):  # VAE and AE at their epochs, PCA at the same steps
            for key, grid in grids.items():
                run.log_image(grid, key, step)
        run.log_metrics(r.scores)
        log_final_grids(run, r.grids)
        if job.kind == "ae" and r.state is not None:
            model = build_model("ae", job.model_cfg)
            model.load_state_dict(r.state)
            with tempfile.TemporaryDirectory(prefix="vaebench-") as tmp:
                ckpt = save_checkpoint(Path(tmp) / "model.pt", model, "ae", job.train_cfg)
                run.log_model(model_name(job.kind, latent), ckpt)


def _register_best(tracker: Tracker, spec: StudySpec, latent: int, vae_run: str, vae_tags: dict[str, str]) -> None:
    """The best VAE at this latent size becomes the registered model's version that the alias points at."""
    uri = vae_tags.get(T.MODEL_URI)
    if not uri:
        return  # logged by a version of the project that did not record it
    name = registered_name(spec.name, latent)
    desc = (f"The best VAE of study {spec.name} at latent size {latent} by {', '.join(spec.objectives)} "
            f"(trial {vae_tags.get(T.TRIAL_NUMBER)}); load it with mlflow.pyfunc.load_model('models:/{name}@{BEST_ALIAS}'), whose .unwrap_python_model().model is the VAE.")
    ref = tracker.register_model(uri, name, BEST_ALIAS, vae_run, desc)
    tracker.set_tags(vae_run, {T.REGISTERED_AS: ref})


def _untag_superseded(tracker: Tracker, parent_run_id: str, keep: set[str]) -> None:
    """A resumed study may find a better VAE at some size: the older comparison runs step aside."""
    for r in tracker.find_runs(parent_run_id, {T.COMPARED: "true"}):
        owner = r.info.run_id if r.data.tags.get(T.MODEL) == "vae" else r.data.tags.get(T.VAE_RUN_ID)
        if owner not in keep:
            tracker.set_tags(r.info.run_id, {T.COMPARED: "false"})

