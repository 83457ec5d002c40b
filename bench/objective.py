"""The Optuna objective: a trial becomes configs, a trained VAE, and a tracked MLflow child run.

`TrialRunner(...)(trial)` suggests the configs (bench.trials.suggest_configs), trains, reports
each epoch for pruning, evaluates and logs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from bench import tags as T
from bench.describe import dataset_inputs, model_name, run_params, run_tags, trial_note, trial_run_name
from bench.images import log_epoch_images, log_final_grids
from bench.spec import StudySpec
from bench.tracking import Tracker
from bench.trials import suggest_configs
from bench.workers import worker_id
from vae.data import Datasets
from vae.evaluate import encode, final_metrics, manifold_grid
from vae.model import build_model
from vae.train import NonFiniteLossError, fit, save_checkpoint, seed_everything


class SurplusTrial(Exception):
    """Another worker already started the last trial the study needs; this one does not run."""


def log_latent_pictures(run, model: torch.nn.Module, data: Datasets) -> None:
    """For 2-D latents: the test codes coloured by class and the decoded manifold, as files under grids/."""
    from bench.plots import latent_scatter

    if model.latent_dim != 2:
        return
    n = min(5000, len(data.test))
    codes = encode(model, data.test.x[:n]).numpy()
    run.log_figure(latent_scatter(codes, data.test.y[:n].numpy()), T.grid_file(T.LATENT_SCATTER))
    run.log_grid(manifold_grid(model, 20), T.grid_file(T.LATENT_MANIFOLD))


@dataclass
class TrialRunner:
    """The objective: one call trains and logs one VAE trial."""

    spec: StudySpec
    data: Datasets
    device: torch.device
    tracker: Tracker
    parent_run_id: str
    epoch_progress: bool = False
    # a stratified study's next trial (bench.strata.Assignment.user_attrs): its stratum and index there
    assignment: dict | None = None

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        spec = self.spec
        if spec.strata_param is not None:
            self._claim_stratum(trial)
        else:
            self._check_budget(trial)
        model_cfg, train_cfg = suggest_configs(trial, spec)
        trial.set_user_attr(T.WORKER_ATTR, worker_id())
        stratum = trial.user_attrs.get(T.STRATUM_ATTR)
        covered = bool(trial.user_attrs.get(T.COVERAGE_ATTR))
        tags = {
            T.ROLE: "trial",
            T.TRIAL_NUMBER: trial.number,
            T.COVERAGE: str(covered).lower(),
            T.NOTE: trial_note(spec, trial.number, trial.params, covered),
            **run_tags(spec, self.data, self.device, "vae", model_cfg.latent_dim),
        }
        if stratum is not None:
            tags[T.STRATUM] = f"{spec.strata_param.name}={stratum}"
            tags[T.STRATUM_INDEX] = trial.user_attrs[T.STRATUM_INDEX_ATTR]
        with self.tracker.child_run(
            self.parent_run_id, trial_run_name(trial.number), run_params(model_cfg, train_cfg, spec), tags
        ) as run:
            trial.set_user_attr(T.RUN_ID_ATTR, run.run_id)
            run.log_datasets(dataset_inputs(spec, self.data))
            seed_everything(train_cfg.seed)  # the initial weights come from the seed too
            model = build_model("vae", model_cfg)
            # step 0 is the untrained network: the UI's image slider opens on step 0
            grids = log_epoch_images(run, "vae", model, self.data, train_cfg.seed, [0])

            def stop(status: str, reason: str) -> optuna.TrialPruned:
                run.outcome = (status, reason)
                run.set_tags({T.OPTUNA_STATE: "PRUNED"})
                run.set_note(trial_note(spec, trial.number, trial.params, covered, reason))
                run.rename(trial_run_name(trial.number, pruned=True))
                return optuna.TrialPruned(reason)

            def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
                run.log_metrics(metrics, step=epoch)
                if (
                    not spec.multi_objective
                ):  # Optuna neither records intermediate values nor prunes with several objectives
                    trial.report(metrics[spec.metric], epoch)
                    if not covered and trial.should_prune():
                        raise stop("KILLED", f"pruned by the {spec.pruner.type} pruner at epoch {epoch}")
                # images of the epochs the pruner let through, under keys the baselines share
                grids.update(log_epoch_images(run, "vae", model, self.data, train_cfg.seed, [epoch]))

            try:
                history = fit(model, self.data, train_cfg, self.device, on_epoch_end, progress=self.epoch_progress)
            except NonFiniteLossError as exc:
                # the trial is pruned (TPE learns the region is bad); the reason stays on both records
                trial.set_user_attr(T.FAIL_REASON_ATTR, str(exc))
                raise stop("FAILED", str(exc)) from None

            test = final_metrics(
                model, self.data.test.x, spec.eval.iw_samples, spec.eval.iw_images, seed=train_cfg.seed
            )
            test = {f"test/{k}": v for k, v in test.items()}
            run.log_metrics(test)
            log_final_grids(run, grids)
            log_latent_pictures(run, model, self.data)
            with tempfile.TemporaryDirectory(prefix="vaebench-") as tmp:
                ckpt = save_checkpoint(Path(tmp) / "model.pt", model, "vae", train_cfg)
                run.log_model(model_name("vae", model_cfg.latent_dim, trial.number), ckpt)
            run.set_tags({T.OPTUNA_STATE: "COMPLETE"})
            last = history[-1]
            outcome = (
                ", ".join(f"{k} = {last[k]:.2f}" for k in spec.objectives)
                + f" after {train_cfg.epochs} epochs; "
                + ", ".join(f"{k} = {v:.4g}" for k, v in test.items())
            )
            run.set_note(trial_note(spec, trial.number, trial.params, covered, outcome))
            trial.set_user_attr(T.TEST_METRICS_ATTR, test)
            # the whole last epoch: a multi-objective study picks its compared trial by the ELBO (bench.frontier)
            trial.set_user_attr("last_epoch", {k: v for k, v in last.items() if k.startswith(f"{spec.split}/")})
            values = tuple(last[k] for k in spec.objectives)
            return values if spec.multi_objective else values[0]

    def _claim_stratum(self, trial: optuna.Trial) -> None:
        """Run only if no other worker started this stratum's trial first (or finished it meanwhile).

        Trial numbers are handed out in order by the storage, so of two workers that start the same
        stratum at once, the later one always sees the earlier one's trial: exactly one runs.
        """
        from bench.strata import stratum_trials

        attrs = dict(self.assignment or {})
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        stratum, index = attrs.get(T.STRATUM_ATTR), attrs.get(T.STRATUM_INDEX_ATTR)
        running = stratum_trials(trial.study, stratum, states=(optuna.trial.TrialState.RUNNING,))
        first = any(t.number < trial.number for t in running)
        if first or len(stratum_trials(trial.study, stratum)) != index:
            trial.set_user_attr(T.SURPLUS_ATTR, True)
            raise SurplusTrial(f"trial {index} of stratum {stratum} is already another worker's; not run")

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
            trial.set_user_attr(T.SURPLUS_ATTR, True)
            raise SurplusTrial(f"trial {trial.number} is beyond n_trials={self.spec.n_trials}; not run")
