"""The Optuna objective: a trial becomes configs, a trained VAE, and a tracked MLflow child run.

`suggest_configs(trial, spec)` fills the searched fields into copies of the spec's configs;
`TrialRunner(...)(trial)` trains, reports each epoch for pruning, evaluates and logs.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
import torch

from bench.spec import MODEL_FIELDS, SearchParam, StudySpec
from bench.storage import worker_id
from bench.tracking import ROLE_TAG, Tracker, git_commit
from vae.data import Datasets
from vae.evaluate import encode, final_metrics, manifold_grid, reconstruction_grid, sample_grid
from vae.model import ModelConfig, build_model
from vae.train import NonFiniteLossError, TrainConfig, fit, save_checkpoint, seed_everything

SUGGEST: dict[str, Callable[[optuna.Trial, SearchParam], Any]] = {
    "categorical": lambda t, p: t.suggest_categorical(p.name, list(p.choices)),
    "int": lambda t, p: t.suggest_int(p.name, p.low, p.high, step=p.step or 1, log=p.log),
    "float": lambda t, p: t.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log),
}


COVERAGE_ATTR = "coverage"  # user attr of the queued trials that cover a parameter's choices: never pruned


class SurplusTrial(Exception):
    """Another worker already started the last trial the study needs; this one does not run."""


def suggest_configs(trial: optuna.Trial, spec: StudySpec) -> tuple[ModelConfig, TrainConfig]:
    """Suggest every searched field, then build the configs (never inside a model constructor)."""
    model_kw: dict[str, Any] = {}
    train_kw: dict[str, Any] = {}
    for p in spec.search:
        (model_kw if p.name in MODEL_FIELDS else train_kw)[p.name] = SUGGEST[p.type](trial, p)
    return dataclasses.replace(spec.model, **model_kw), dataclasses.replace(spec.train, **train_kw)


def run_params(model_cfg: ModelConfig, train_cfg: TrainConfig, spec: StudySpec) -> dict[str, Any]:
    """Every model, training and data parameter of a run, under the same names for all models."""
    data = {f"data.{k}": v for k, v in asdict(spec.data).items()}
    return {**asdict(model_cfg), **asdict(train_cfg), **data, "iw_samples": spec.eval.iw_samples}


def run_tags(spec: StudySpec, data: Datasets, device: torch.device, model: str, latent_dim: int) -> dict[str, Any]:
    return {
        "model": model,
        "latent_dim": latent_dim,
        "study": spec.name,
        "git_commit": git_commit(),
        "dataset": spec.data.dataset,
        "dataset_digest": data.digest,
        "device": str(device),
        "torch_version": torch.__version__,
    }


def log_images(run, model: torch.nn.Module, data: Datasets, seed: int) -> None:
    """Prior samples, originals above reconstructions, and for 2-D latents the latent pictures."""
    from bench.plots import latent_scatter

    run.log_image(sample_grid(model, 64, seed=seed), "images/samples.png")
    run.log_image(reconstruction_grid(model, data.test.x, 16), "images/reconstructions.png")
    if model.latent_dim == 2:
        n = min(5000, len(data.test))
        codes = encode(model, data.test.x[:n]).numpy()
        run.log_figure(latent_scatter(codes, data.test.y[:n].numpy()), "images/latent_scatter.png")
        run.log_image(manifold_grid(model, 20), "images/latent_manifold.png")


@dataclass
class TrialRunner:
    """The objective: one call trains and logs one VAE trial."""

    spec: StudySpec
    data: Datasets
    device: torch.device
    tracker: Tracker
    parent_run_id: str
    epoch_progress: bool = False

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        spec = self.spec
        self._check_budget(trial)
        model_cfg, train_cfg = suggest_configs(trial, spec)
        trial.set_user_attr("worker", worker_id())
        covered = bool(trial.user_attrs.get(COVERAGE_ATTR))
        tags = {
            ROLE_TAG: "trial",
            "trial_number": trial.number,
            "coverage": str(covered).lower(),
            **run_tags(spec, self.data, self.device, "vae", model_cfg.latent_dim),
        }
        with self.tracker.child_run(
            self.parent_run_id, f"trial-{trial.number:03d}", run_params(model_cfg, train_cfg, spec), tags
        ) as run:
            trial.set_user_attr("mlflow_run_id", run.run_id)
            seed_everything(train_cfg.seed)  # the initial weights come from the seed too
            model = build_model("vae", model_cfg)

            def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
                run.log_metrics(metrics, step=epoch)
                if spec.multi_objective:
                    return  # Optuna neither records intermediate values nor prunes with several objectives
                trial.report(metrics[spec.metric], epoch)
                if not covered and trial.should_prune():
                    reason = f"pruned by the {spec.pruner.type} pruner at epoch {epoch}"
                    run.outcome = ("KILLED", reason)
                    run.set_tags({"optuna_state": "PRUNED"})
                    raise optuna.TrialPruned(reason)

            try:
                history = fit(model, self.data, train_cfg, self.device, on_epoch_end, progress=self.epoch_progress)
            except NonFiniteLossError as exc:
                # the trial is pruned (TPE learns the region is bad); the reason stays on both records
                trial.set_user_attr("fail_reason", str(exc))
                run.outcome = ("FAILED", str(exc))
                run.set_tags({"optuna_state": "PRUNED"})
                raise optuna.TrialPruned(str(exc)) from None

            test = final_metrics(model, self.data.test.x, spec.eval.iw_samples, spec.eval.iw_images, seed=train_cfg.seed)
            test = {f"test/{k}": v for k, v in test.items()}
            run.log_metrics(test)
            log_images(run, model, self.data, seed=train_cfg.seed)
            with tempfile.TemporaryDirectory(prefix="vaebench-") as tmp:
                ckpt = save_checkpoint(Path(tmp) / "model.pt", model, "vae", train_cfg)
                run.log_model(model, ckpt)
            run.set_tags({"optuna_state": "COMPLETE"})
            trial.set_user_attr("test_metrics", test)
            last = history[-1]
            # the whole last epoch: a multi-objective study picks its compared trial by the ELBO (bench.frontier)
            trial.set_user_attr("last_epoch", {k: v for k, v in last.items() if k.startswith(f"{spec.split}/")})
            values = tuple(last[k] for k in spec.objectives)
            return values if spec.multi_objective else values[0]

    def _check_budget(self, trial: optuna.Trial) -> None:
        """Run only if this trial is among the first n_trials live ones (workers race at the end)."""
        live = (
            optuna.trial.TrialState.COMPLETE,
            optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.RUNNING,
            optuna.trial.TrialState.WAITING,
        )
        numbers = sorted(t.number for t in trial.study.get_trials(deepcopy=False, states=live))
        if trial.number in numbers and numbers.index(trial.number) >= self.spec.n_trials:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"trial {trial.number} is beyond n_trials={self.spec.n_trials}; not run")
