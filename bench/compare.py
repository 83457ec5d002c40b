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

from bench import tags as T
from bench.baselines import train_baseline
from bench.describe import BEST_ALIAS, baseline_note, dataset_inputs, model_name, registered_name
from bench.fd_classifier import load_classifier
from bench.images import log_epoch_images, log_final_grids
from bench.objective import run_params, run_tags, suggest_configs
from bench.scores import score_model
from bench.spec import StudySpec
from bench.tracking import Tracker
from vae.data import Datasets
from vae.model import ModelConfig
from vae.train import TrainConfig, load_checkpoint


def best_per_latent(study: optuna.Study, spec: StudySpec) -> dict[int, optuna.trial.FrozenTrial]:
    """The best COMPLETE trial at each latent size, by the study's metric and direction."""
    best: dict[int, optuna.trial.FrozenTrial] = {}
    sign = 1 if spec.direction == "maximize" else -1
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if T.RUN_ID_ATTR not in t.user_attrs:
            continue
        latent = int(t.params.get("latent_dim", spec.model.latent_dim))
        if latent not in best or sign * t.value > sign * best[latent].value:
            best[latent] = t
    return dict(sorted(best.items()))


def trial_configs(trial: optuna.trial.FrozenTrial, spec: StudySpec) -> tuple[ModelConfig, TrainConfig]:
    """Rebuild a trial's configs from its parameters, exactly as the objective built them."""
    return suggest_configs(FixedTrial(trial.params), spec)


def _baseline_done(tracker: Tracker, parent_run_id: str, kind: str, vae_run_id: str) -> bool:
    return bool(tracker.find_runs(parent_run_id, {T.MODEL: kind, T.VAE_RUN_ID: vae_run_id}, "FINISHED", max_results=1))


def run_comparison(
    study: optuna.Study,
    spec: StudySpec,
    tracker: Tracker,
    parent_run_id: str,
    data: Datasets,
    device: torch.device,
    progress: bool = True,
) -> int:
    """Score the best VAE at each latent size and train/score its baselines; returns runs written."""
    best = best_per_latent(study, spec)
    if not best:
        return 0
    _untag_superseded(tracker, parent_run_id, {t.user_attrs[T.RUN_ID_ATTR] for t in best.values()})
    classifier = load_classifier(data)
    written = 0
    steps = [(latent, kind) for latent in best for kind in ("vae", *spec.baselines.models)]
    for latent, kind in tqdm(steps, desc="baselines", unit="model", disable=not progress):
        trial = best[latent]
        vae_run = trial.user_attrs[T.RUN_ID_ATTR]
        model_cfg, train_cfg = trial_configs(trial, spec)
        if kind == "vae":
            vae_tags = tracker.tags_of(vae_run)
            if vae_tags.get(T.COMPARED) == "true":
                continue
            with tempfile.TemporaryDirectory(prefix="vaebench-") as tmp:
                model, _ = load_checkpoint(tracker.download(vae_run, "checkpoint/model.pt", tmp), device)
            scores = score_model(model, data, kind="vae", classifier=classifier,
                                 n_fd_samples=spec.baselines.fd_samples, seed=train_cfg.seed)
            tracker.log_metrics(vae_run, scores)
            _register_best(tracker, spec, latent, vae_run, vae_tags)
            tracker.set_tags(vae_run, {T.COMPARED: "true"})
            written += 1
            continue
        if _baseline_done(tracker, parent_run_id, kind, vae_run):
            continue
        _run_baseline(kind, model_cfg, train_cfg, spec, tracker, parent_run_id, vae_run, data, device, classifier)
        written += 1
    return written


def _register_best(tracker: Tracker, spec: StudySpec, latent: int, vae_run: str, vae_tags: dict[str, str]) -> None:
    """The best VAE at this latent size becomes the registered model's version that the alias points at."""
    uri = vae_tags.get(T.MODEL_URI)
    if not uri:
        return  # logged by a version of the project that did not record it
    name = registered_name(spec.name, latent)
    desc = (f"The best VAE of study {spec.name} at latent size {latent} by {spec.metric} "
            f"(trial {vae_tags.get(T.TRIAL_NUMBER)}); load it with mlflow.pytorch.load_model('models:/{name}@{BEST_ALIAS}').")
    ref = tracker.register_model(uri, name, BEST_ALIAS, vae_run, desc)
    tracker.set_tags(vae_run, {T.REGISTERED_AS: ref})


def _run_baseline(kind, model_cfg, train_cfg, spec, tracker, parent_run_id, vae_run, data, device, classifier) -> None:
    """One baseline child run: train (AE, images at each epoch) or fit (PCA, images at the same steps), score."""
    latent = model_cfg.latent_dim
    vae_name = f"trial-{int(tracker.tags_of(vae_run).get(T.TRIAL_NUMBER, -1)):03d}"
    tags = {T.ROLE: "baseline", T.VAE_RUN_ID: vae_run, T.COMPARED: "true",
            T.NOTE: baseline_note(kind, latent, vae_run, vae_name), **run_tags(spec, data, device, kind, latent)}
    grids: dict = {}
    built: list = []  # the model, once train_baseline has made it

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        run.log_metrics(metrics, step=epoch)
        grids.update(log_epoch_images(run, kind, built[0], data, train_cfg.seed, [epoch]))

    def on_model(model) -> None:
        built.append(model)
        if kind != "pca":  # step 0: the untrained network, as the VAE's (the UI's image slider opens on 0)
            log_epoch_images(run, kind, model, data, train_cfg.seed, [0])

    with tracker.child_run(parent_run_id, f"{kind}-latent{latent}", run_params(model_cfg, train_cfg, spec, kind), tags) as run:
        run.log_datasets(dataset_inputs(spec, data))
        model = train_baseline(kind, model_cfg, train_cfg, data, device, progress=False,
                               on_epoch_end=on_epoch_end, on_model=on_model)
        if kind == "pca":  # fitted once: the same pictures at every step the networks have
            grids = log_epoch_images(run, kind, model, data, train_cfg.seed, range(0, train_cfg.epochs + 1))
        scores = score_model(model, data, kind=kind, classifier=classifier,
                             n_fd_samples=spec.baselines.fd_samples, seed=train_cfg.seed)
        run.log_metrics(scores)
        log_final_grids(run, grids)
        if kind == "ae":
            run.log_model(model, model_name(kind, latent))


def _untag_superseded(tracker: Tracker, parent_run_id: str, keep: set[str]) -> None:
    """A resumed study may find a better VAE at some size: the older comparison runs step aside."""
    for r in tracker.find_runs(parent_run_id, {T.COMPARED: "true"}):
        owner = r.info.run_id if r.data.tags.get(T.MODEL) == "vae" else r.data.tags.get(T.VAE_RUN_ID)
        if owner not in keep:
            tracker.set_tags(r.info.run_id, {T.COMPARED: "false"})


def report_dir(spec: StudySpec, given: str | None) -> Path:
    return Path(given or f"reports/{spec.name}")
