"""The comparison stage of a study: at each latent size, its best VAE against an autoencoder and PCA.

Trains the baselines with the VAE's configs, scores all three with bench.scores on the same
test images, and logs everything under the study's parent run. Safe to repeat: work already
logged for the same VAE run is skipped.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

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


def run_comparison(
    study: optuna.Study,
    spec: StudySpec,
    tracker: Tracker,
    parent_run_id: str,
    data: Datasets,
    device: torch.device,
    progress: bool = True,
    ood_x: torch.Tensor | None = None,
) -> int:
    """Score the best VAE at each latent size and train/score its baselines; returns runs written.

    `ood_x`: the [eval] ood_dataset's test images (bench.ood.load_ood_images); each compared
    model then also gets test/ood_auroc and the tag ood_dataset.
    """
    ood = _OOD(ood_x, spec) if ood_x is not None else None
    best = best_per_latent(study, spec)
    if not best:
        return 0
    _untag_superseded(tracker, parent_run_id, {t.user_attrs["mlflow_run_id"] for t in best.values()})
    classifier = load_classifier(data)
    written = 0
    steps = [(latent, kind) for latent in best for kind in ("vae", *spec.baselines.models)]
    for latent, kind in tqdm(steps, desc="baselines", unit="model", disable=not progress):
        trial = best[latent]
        vae_run = trial.user_attrs["mlflow_run_id"]
        model_cfg, train_cfg = trial_configs(trial, spec)
        if kind == "vae":
            if tracker.client.get_run(vae_run).data.tags.get("compared") == "true":
                continue
            with tempfile.TemporaryDirectory(prefix="vaebench-") as tmp:
                model, _ = load_checkpoint(tracker.download(vae_run, "checkpoint/model.pt", tmp), device)
            scores = score_model(model, data, kind="vae", classifier=classifier,
                                 n_fd_samples=spec.baselines.fd_samples, seed=train_cfg.seed)
            tracker.log_metrics(vae_run, scores | (ood.scores(model, "vae", data, train_cfg.seed) if ood else {}))
            tracker.set_tags(vae_run, {"compared": "true", **(ood.tags if ood else {})})
            written += 1
            continue
        if _baseline_done(tracker, parent_run_id, kind, vae_run):
            continue
        _run_baseline(kind, model_cfg, train_cfg, spec, tracker, parent_run_id, vae_run, data, device, classifier, ood)
        written += 1
    return written


class _OOD:
    """The OOD images and how the comparison scores them (bench.ood)."""

    def __init__(self, x: torch.Tensor, spec: StudySpec) -> None:
        self.x, self.spec = x, spec
        self.tags = {OOD_TAG: spec.eval.ood_dataset}

    def scores(self, model, kind: str, data: Datasets, seed: int) -> dict[str, float]:
        e = self.spec.eval
        return {OOD_AUROC: ood_auroc(model, kind, data.test.x, self.x, e.iw_samples, e.iw_images, seed=seed)}


def _run_baseline(kind, model_cfg, train_cfg, spec, tracker, parent_run_id, vae_run, data, device, classifier, ood=None) -> None:
    """One baseline child run: train (AE) or fit (PCA), score, and log images."""
    params = run_params(model_cfg, train_cfg, spec)
    if kind == "pca":  # PCA has no network: keep what defines it
        params = {k: v for k, v in params.items() if k in ("latent_dim", "seed") or k.startswith("data.")}
    tags = {ROLE_TAG: "baseline", "vae_run_id": vae_run, "compared": "true",
            **run_tags(spec, data, device, kind, model_cfg.latent_dim), **(ood.tags if ood else {})}
    with tracker.child_run(parent_run_id, f"{kind}-latent{model_cfg.latent_dim}", params, tags) as run:
        model = train_baseline(kind, model_cfg, train_cfg, data, device, progress=False,
                               on_epoch_end=lambda epoch, m: run.log_metrics(m, step=epoch))
        scores = score_model(model, data, kind=kind, classifier=classifier,
                             n_fd_samples=spec.baselines.fd_samples, seed=train_cfg.seed)
        run.log_metrics(scores | (ood.scores(model, kind, data, train_cfg.seed) if ood else {}))
        sampler = make_sampler(kind, model, training_images(data, train_cfg.seed, limit=10_000))
        samples = sampler.sample(64, sampler_generator(kind, model, train_cfg.seed))
        run.log_image(image_grid(samples), "images/samples.png")
        run.log_image(reconstruction_grid(model, data.test.x, 16), "images/reconstructions.png")


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
