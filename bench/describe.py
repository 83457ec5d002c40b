"""What a person reads in the MLflow UI beside the numbers: descriptions, run names, dataset inputs,
and the parameters and tags every model's run carries.

The objective, the comparison, the replicates and the summary call these to write the text of the
experiment, the parent run and every child run (`mlflow.note.content`), their datasets, params and tags.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import torch

from bench import models
from bench import tags as T
from bench.spec import StudySpec
from bench.tracking import DatasetInfo, git_commit
from vae.data import DATASET_FOLDERS, Datasets
from vae.model import ModelConfig
from vae.train import TrainConfig

CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


def dataset_inputs(spec: StudySpec, data: Datasets) -> list[DatasetInfo]:
    """Train, validation and test splits as dataset inputs; the digest changes with any data setting."""
    out = []
    for split, context in CONTEXTS.items():
        part = getattr(data, split)
        if not len(part):
            continue  # val_size = 0
        key = json.dumps({"raw": data.digest, "split": split, **asdict(spec.data)}, sort_keys=True)
        targets = (
            "dynamic binarization"
            if part.dynamic
            else ("binarized once" if spec.data.binarize == "dynamic" else "grayscale")
        )
        out.append(
            DatasetInfo(
                name=f"{spec.data.dataset}-{split}",
                digest=hashlib.sha256(key.encode()).hexdigest()[:8],
                context=context,
                rows=len(part),
                source=f"torchvision.datasets.{DATASET_FOLDERS[spec.data.dataset]}",
                targets=targets,
            )
        )
    return out


def run_params(model_cfg: ModelConfig, train_cfg: TrainConfig, spec: StudySpec, kind: str = "vae") -> dict[str, Any]:
    """The model, training and data parameters that mean something for `kind` (bench.models),
    under the same names for all models."""
    data = {f"data.{k}": v for k, v in asdict(spec.data).items()}
    params = {**asdict(model_cfg), **asdict(train_cfg), **data, "iw_samples": spec.eval.iw_samples}
    carries = models.get(kind).carries
    return {k: v for k, v in params.items() if carries(k)}


def run_tags(spec: StudySpec, data: Datasets, device: torch.device, model: str, latent_dim: int) -> dict[str, Any]:
    return {
        T.MODEL: model,
        T.LATENT_DIM: latent_dim,
        T.STUDY: spec.name,
        T.GIT_COMMIT: git_commit(),
        T.DATASET: spec.data.dataset,
        T.DATASET_DIGEST: data.digest,
        T.DEVICE: str(device),
        T.TORCH_VERSION: torch.__version__,
    }


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} = {_fmt(v)}" for k, v in params.items())


def _goal(spec: StudySpec) -> str:
    """'maximizing val/elbo', or each objective of a multi-objective study."""
    return " and ".join(
        ("maximizing " if d == "maximize" else "minimizing ") + k
        for k, d in zip(spec.objectives, spec.directions, strict=False)
    )


def experiment_note(spec: StudySpec) -> str:
    searched = ", ".join(spec.searched) or "nothing (one configuration)"
    goal = _goal(spec)
    return (
        f"VAE study `{spec.name}` on {spec.data.dataset} ({spec.data.binarize} binarization): "
        f"an Optuna {spec.sampler.type} search over {searched}, {spec.n_trials} trials of {spec.train.epochs} epochs, "
        f"{goal}.\n\nThe run named after the study is the parent: the best trial, Optuna's plots and the comparison "
        "report. `trial-NNN` runs are the VAEs (a pruned one says so in its name); `ae-latentN` and `pca-latentN` "
        "are the baselines compared with the best VAE of each latent size. All numbers are nats per image."
    )


def parent_note(spec: StudySpec, best=None, report: str | None = None, under_tuned: list[int] | None = None) -> str:
    """The parent run's description: what was searched, the best trial, where the report is,
    which sizes are under-tuned."""
    budget = (
        f"{spec.trials_per_stratum} trials for each {spec.strata_param.name} ({spec.n_trials} in all)"
        if spec.strata_param is not None
        else f"{spec.n_trials} trials"
    )
    lines = [
        f"Study `{spec.name}`: {budget}, searching {', '.join(spec.searched) or 'nothing'} "
        f"({spec.sampler.type} sampler, {spec.pruner.type} pruner), {_goal(spec)}."
    ]
    if best is not None:
        lines.append(
            f"Best: trial {best.number} (run {best.user_attrs.get(T.RUN_ID_ATTR, '?')}), "
            + ", ".join(f"{k} = {v:.2f}" for k, v in zip(spec.objectives, best.values, strict=False))
            + f", {_params(best.params)}."
        )
    if report:
        lines.append(
            f"Comparison with the autoencoder and PCA: the `report/` artifacts "
            f"(comparison.md), also written to {report}."
        )
    if under_tuned:
        lines.append(
            f"Under-tuned: latent size {', '.join(map(str, under_tuned))} (the expected best of n trials still "
            "rises beyond its bootstrap band at the last doubling of n): more trials would likely help."
        )
    return "\n\n".join(lines)


def trial_note(
    spec: StudySpec, number: int, params: Mapping[str, Any], covered: bool = False, outcome: str = ""
) -> str:
    head = f"VAE trial {number} of study `{spec.name}`: {_params(params)}"
    head += " (queued to cover its latent size; never pruned)." if covered else "."
    if spec.strata_param is not None:
        head += (
            f" Its stratum is {spec.strata_param.name} = {params.get(spec.strata_param.name)}, tuned with "
            f"{spec.trials_per_stratum} trials like every other."
        )
    return head + (f"\n\n{outcome}" if outcome else "")


def baseline_note(kind: str, latent_dim: int, vae_run: str, vae_name: str) -> str:
    what = models.get(kind).description.format(latent_dim=latent_dim)
    return (
        f"{models.get(kind).title} baseline at latent size {latent_dim}: {what}. Compared with the best VAE "
        f"of that size, run `{vae_name}` ({vae_run}); samples come from a Gaussian fitted to its codes."
    )


def trial_run_name(number: int, pruned: bool = False) -> str:
    return f"trial-{number:03d}" + (T.PRUNED_SUFFIX if pruned else "")


def model_name(kind: str, latent_dim: int, trial: int | None = None) -> str:
    """The logged model's name: model, latent size and (for a VAE) trial, e.g. vae-latent4-trial002."""
    return f"{kind}-latent{latent_dim}" + (f"-trial{trial:03d}" if trial is not None else "")


def registered_name(study: str, latent_dim: int) -> str:
    """The registry's name for the best VAE of a study at a latent size; its alias is tags.BEST_ALIAS."""
    return f"{study}-vae-latent{latent_dim}"
