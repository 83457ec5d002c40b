"""The unit of work after the search: one model of a kind, fitted with a config and a seed (or loaded from a trial),
scored.

The comparison, the replicates and the gate make `ModelJob`s; `compute(jobs, env, processes)` runs them through
bench.pool.run_jobs, and `log_model_run(ctx, result, ...)` is the one place a result becomes an MLflow run.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from bench import models
from bench.context import StudyContext
from bench.describe import dataset_inputs, model_name, run_params, run_tags
from bench.fd_classifier import FDClassifier
from bench.images import image_grids, log_final_grids
from bench.ood import OODScoring, ood_scores
from bench.pool import Bounds, pool_size, run_jobs
from bench.scores import reconstruction_errors, score_model
from vae.data import Corruption, Datasets
from vae.evaluate import elbo_metrics, final_metrics, iwae_nll
from vae.model import ModelConfig, build_model
from vae.train import TrainConfig, load_checkpoint, save_checkpoint

# what a job is scored for: the comparison's runs (every score, grids, the model), a seed replicate
# (every score with the seed's corruption noise, and a bound's test ELBO terms and NLL), the regression gate
Scoring = Literal["compare", "replicate", "gate"]
GATE_EVAL_SEED = 0  # the gate's z draws of the test ELBO and the IWAE bound: the same for every training seed


@dataclass(frozen=True)
class ModelJob:
    """One model to make and score: its kind, configs and seed, and what it is scored for."""

    kind: str  # a bench.models kind
    model_cfg: ModelConfig
    train_cfg: TrainConfig  # its seed seeds the model and every random draw of its scoring
    checkpoint: str | None = None  # score this trained model (a trial's) instead of fitting one
    scoring: Scoring = (
        "compare"  # what it is scored for; "compare" also draws grids and keeps the model of a kind that logs it
    )
    of_run: str = ""  # the MLflow run of the trial it is compared with or repeats
    of_trial: int = -1  # that trial's number

    @property
    def latent(self) -> int:
        return self.model_cfg.latent_dim

    @property
    def seed(self) -> int:
        return self.train_cfg.seed

    @property
    def name(self) -> str:
        """A replicate's run name, e.g. vae-latent2-seed1."""
        return f"{self.kind}-latent{self.latent}-seed{self.seed}"

    @property
    def key(self) -> tuple[str, int, int, str]:
        """(kind, latent size, seed, trial run): what a finished run of this job is found by."""
        return (self.kind, self.latent, self.seed, self.of_run)

    @property
    def cost(self) -> float:
        """A rough relative cost, to start the long jobs first: a loaded model is only scored."""
        return 0.5 if self.checkpoint else models.get(self.kind).cost(self.model_cfg)


@dataclass
class ModelResult:
    """Everything MLflow sees of one job, computed in a pool process and logged in the caller's."""

    job: ModelJob
    scores: dict[str, float]
    history: list[dict[str, float]]  # per-epoch metrics of a fit, [] for PCA and a loaded model
    step_images: dict[int, dict[str, torch.Tensor]]  # step -> image key -> grid (3, H, W), for log_image(key, step)
    grids: dict[str, torch.Tensor]  # the last grids, logged as files under grids/
    state: dict[str, torch.Tensor] | None = None  # the weights of a kind whose run logs its model
    seconds: float = 0.0  # wall time of the fit and the scores, in the process that ran them


@dataclass(frozen=True)
class JobEnv:
    """What every job of one computation shares, sent once to each pool process."""

    data: Datasets
    classifier: FDClassifier | None  # the Frechet-distance features (None for the gate, which has no sample scores)
    device: torch.device
    fd_samples: int  # generated images per sample-quality score
    iw_samples: int  # k of an IWAE NLL
    iw_images: int | None  # images it is computed on
    ood: OODScoring | None = None  # the [eval] ood_dataset's images: test/ood_auroc


def _prepare(env: JobEnv, threads: int) -> JobEnv:
    torch.set_num_threads(threads)
    return env


def _compare_scores(job: ModelJob, model: nn.Module, env: JobEnv) -> dict[str, float]:
    """bench.scores' comparison scores (the fixed corruption noise), the same code for every kind."""
    return score_model(
        model, env.data, kind=job.kind, classifier=env.classifier, n_fd_samples=env.fd_samples, seed=job.seed
    )


def _replicate_scores(job: ModelJob, model: nn.Module, env: JobEnv) -> dict[str, float]:
    """The comparison's scores with every random draw from the seed, and for a kind with a bound its test ELBO terms
    and NLL."""
    seed, x = job.seed, env.data.test.x
    scores = score_model(
        model,
        env.data,
        kind=job.kind,
        classifier=env.classifier,
        n_fd_samples=env.fd_samples,
        seed=seed,
        corruption=Corruption(seed=seed),
    )
    if models.get(job.kind).bound:
        scores |= {f"test/{k}": v for k, v in final_metrics(model, x, env.iw_samples, env.iw_images, seed=seed).items()}
    return scores


def _gate_scores(job: ModelJob, model: nn.Module, env: JobEnv) -> dict[str, float]:
    """The gated metrics (bench.gate.GATED), nats per image: a bound's test ELBO terms on every test image
    (one z per image) and IWAE NLL on the first iw_images with k = iw_samples, both drawn with GATE_EVAL_SEED;
    otherwise the BCE of the deterministic code's reconstruction."""
    x = env.data.test.x
    if not models.get(job.kind).bound:
        return {"test/code_recon_bce": reconstruction_errors(model, x, x)[0]}
    elbo = elbo_metrics(model, x, seed=GATE_EVAL_SEED)
    n_iw = min(env.iw_images or len(x), len(x))
    return {
        "test/elbo": elbo["elbo"],
        "test/recon_bce": elbo["recon_bce"],
        "test/kl": elbo["kl"],
        "test/nll_iw": iwae_nll(model, x[:n_iw], k=env.iw_samples, seed=GATE_EVAL_SEED),
    }


SCORERS: dict[str, Callable[[ModelJob, nn.Module, JobEnv], dict[str, float]]] = {
    "compare": _compare_scores,
    "replicate": _replicate_scores,
    "gate": _gate_scores,
}


def run_model_job(job: ModelJob, env: JobEnv) -> ModelResult:
    """Fit (or load) and score one model; everything MLflow sees comes back in the result."""
    t0 = time.perf_counter()
    kind, data, seed = models.get(job.kind), env.data, job.seed
    compared = job.scoring == "compare"
    history: list[dict[str, float]] = []
    steps: dict[int, dict[str, torch.Tensor]] = {}
    if job.checkpoint:
        model, _ = load_checkpoint(job.checkpoint, env.device)
    else:
        built: list[torch.nn.Module] = []
        draw = compared and kind.by_epochs

        def on_model(m) -> None:  # step 0: the untrained network, as the VAE's (the UI's image slider opens on 0)
            built.append(m)
            if draw:
                steps[0] = image_grids(job.kind, m, data, seed)

        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
            history.append(metrics)
            if draw:
                steps[epoch] = image_grids(job.kind, built[0], data, seed)

        model = models.fit_model(
            job.kind, job.model_cfg, job.train_cfg, data, env.device, on_epoch_end=on_epoch_end, on_model=on_model
        )
        if compared and not kind.by_epochs:  # fitted once: the same pictures at every step the networks have
            grids = image_grids(job.kind, model, data, seed)
            steps = {step: grids for step in range(job.train_cfg.epochs + 1)}
    scores = SCORERS[job.scoring](job, model, env) | ood_scores(model, job.kind, data.test.x, env.ood, seed)
    state = (
        {k: v.detach().cpu() for k, v in model.state_dict().items()}
        if kind.logs_model and compared and not job.checkpoint
        else None
    )
    return ModelResult(job, scores, history, steps, steps[max(steps)] if steps else {}, state, time.perf_counter() - t0)


def compute(
    jobs: list[ModelJob], env: JobEnv, processes: int | None = None, bounds: Bounds | None = None
) -> Iterator[ModelResult]:
    """Each job's result as it finishes, the jobs started in the given order: in `processes` single-thread
    processes (default: bench.pool.pool_size), or in this process with its threads when that is 1.
    Every job depends only on its seed, so the process count changes nothing but float rounding."""
    n_proc = processes or pool_size(len(jobs), env.device)
    for _, result in run_jobs(run_model_job, jobs, _prepare, (env,), n_proc, bounds):
        yield result


def log_model_run(ctx: StudyContext, r: ModelResult, name: str, tags: dict) -> str:
    """The child run under the study's parent that a result becomes: params, tags, datasets, each epoch's
    metrics and images, the scores, the last grids and (for a kind that logs it) the model. Returns its id."""
    spec, job = ctx.spec, r.job
    tags = {**run_tags(spec, ctx.data, ctx.device, job.kind, job.latent), **tags}
    with ctx.tracker.child_run(
        ctx.parent_run_id, name, run_params(job.model_cfg, job.train_cfg, spec, job.kind), tags
    ) as run:
        run.log_datasets(dataset_inputs(spec, ctx.data))
        for epoch, m in enumerate(r.history, start=1):
            run.log_metrics(m, step=epoch)
        for step, grids in sorted(r.step_images.items()):  # networks at their epochs, PCA at the same steps
            for key, grid in grids.items():
                run.log_image(grid, key, step)
        run.log_metrics(r.scores)
        log_final_grids(run, r.grids)
        if r.state is not None:
            model = build_model(job.kind, job.model_cfg)
            model.load_state_dict(r.state)
            with tempfile.TemporaryDirectory(prefix="vaebench-") as tmp:  # logged as code + weights: no pickle
                ckpt = save_checkpoint(Path(tmp) / "model.pt", model.eval(), job.kind, job.train_cfg)
                run.log_model(model_name(job.kind, job.latent), ckpt)
        return run.run_id
