"""The comparison stage of a study: at each latent size, its best VAE against an autoencoder and PCA.

Trains the baselines with the VAE's configs, scores all three with bench.scores on the same
test images (bench.jobs), and logs everything under the study's parent run. Safe to repeat: work already
logged for the same VAE run is skipped.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

from bench import models
from bench import tags as T
from bench.context import StudyContext
from bench.describe import baseline_note, registered_name, trial_run_name
from bench.fd_classifier import load_classifier
from bench.jobs import JobEnv, ModelJob, ModelResult, compute, log_model_run
from bench.ood import OODScoring
from bench.spec import StudySpec
from bench.tracking import Tracker
from bench.trials import trial_configs


def _baseline_done(tracker: Tracker, parent_run_id: str, kind: str, vae_run: str) -> bool:
    return bool(tracker.find_runs(parent_run_id, {T.MODEL: kind, T.VAE_RUN_ID: vae_run}, "FINISHED", max_results=1))


def run_comparison(ctx: StudyContext, processes: int | None = None, ood: OODScoring | None = None) -> int:
    """Score the best VAE at each latent size and train/score its baselines; returns runs written.

    The models are independent ModelJobs (bench.jobs): on a CPU they are computed by `processes`
    single-thread processes (default: bench.pool.pool_size), longest first, and this process logs
    each result as it comes. Every model is computed from its own seed, so the results do not depend
    on the process count (beyond float rounding, which differs with the thread count).
    `ood`: the [eval] ood_dataset's test images (bench.ood.load_ood_scoring); each compared
    model then also gets test/ood_auroc and the tag ood_dataset.
    """
    spec, tracker, data = ctx.spec, ctx.tracker, ctx.data
    best = ctx.bests.per_latent
    if not best:
        return 0
    _untag_superseded(tracker, ctx.parent_run_id, {t.user_attrs[T.RUN_ID_ATTR] for t in best.values()})
    classifier = load_classifier(data)  # trained and cached here, once, before any process needs it
    with tempfile.TemporaryDirectory(prefix="vaebench-") as tmp:
        jobs = []
        for trial in best.values():
            vae_run = trial.user_attrs[T.RUN_ID_ATTR]
            model_cfg, train_cfg = trial_configs(trial, spec)
            job = ModelJob(
                models.SEARCHED, model_cfg, train_cfg, scoring="compare", of_run=vae_run, of_trial=trial.number
            )
            if tracker.tags_of(vae_run).get(T.COMPARED) != "true":
                (Path(tmp) / vae_run).mkdir()
                ckpt = str(tracker.download(vae_run, "checkpoint/model.pt", Path(tmp) / vae_run))
                jobs.append(dataclasses.replace(job, checkpoint=ckpt))
            jobs += [
                dataclasses.replace(job, kind=kind)
                for kind in spec.baselines.models
                if not _baseline_done(tracker, ctx.parent_run_id, kind, vae_run)
            ]
        jobs.sort(key=lambda j: -j.cost)
        env = JobEnv(
            data, classifier, ctx.device, spec.baselines.fd_samples, spec.eval.iw_samples, spec.eval.iw_images, ood
        )
        bar = tqdm(total=len(jobs), desc="baselines", unit="model", disable=not ctx.progress)
        try:
            ood_tags = {} if ood is None else {T.OOD_DATASET: ood.dataset}
            for r in compute(jobs, env, processes):
                _log_result(r, ctx, ood_tags)
                bar.update()
        finally:
            bar.close()
    return len(jobs)


def _log_result(r: ModelResult, ctx: StudyContext, ood_tags: dict) -> None:
    """One comparison step's MLflow records: the trial run's scores (and its registration), or a baseline
    child run (bench.jobs.log_model_run)."""
    spec, tracker, job = ctx.spec, ctx.tracker, r.job
    if job.checkpoint:  # the searched kind, scored on its own trial run
        tracker.log_metrics(job.of_run, r.scores)
        _register_best(tracker, spec, job.latent, job.of_run, tracker.tags_of(job.of_run))
        tracker.set_tags(job.of_run, {T.COMPARED: "true", **ood_tags})
        return
    tags = {
        T.ROLE: "baseline",
        T.VAE_RUN_ID: job.of_run,
        T.COMPARED: "true",
        T.NOTE: baseline_note(job.kind, job.latent, job.of_run, trial_run_name(job.of_trial)),
        **ood_tags,
    }
    log_model_run(ctx, r, f"{job.kind}-latent{job.latent}", tags)


def _register_best(tracker: Tracker, spec: StudySpec, latent: int, vae_run: str, vae_tags: dict[str, str]) -> None:
    """The best VAE at this latent size becomes the registered model's version that the alias points at."""
    uri = vae_tags.get(T.MODEL_URI)
    if not uri:
        return  # logged by a version of the project that did not record it
    name = registered_name(spec.name, latent)
    desc = (
        f"The best VAE of study {spec.name} at latent size {latent} by {', '.join(spec.objectives)} "
        f"(trial {vae_tags.get(T.TRIAL_NUMBER)}); "
        f"load it with mlflow.pyfunc.load_model('models:/{name}@{T.BEST_ALIAS}'), "
        "whose .unwrap_python_model().model is the VAE."
    )
    ref = tracker.register_model(uri, name, T.BEST_ALIAS, vae_run, desc)
    tracker.set_tags(vae_run, {T.REGISTERED_AS: ref})


def _untag_superseded(tracker: Tracker, parent_run_id: str, keep: set[str]) -> None:
    """A resumed study may find a better VAE at some size: the older comparison runs step aside."""
    for r in tracker.find_runs(parent_run_id, {T.COMPARED: "true"}):
        owner = r.info.run_id if r.data.tags.get(T.MODEL) == models.SEARCHED else r.data.tags.get(T.VAE_RUN_ID)
        if owner not in keep:
            tracker.set_tags(r.info.run_id, {T.COMPARED: "false"})
