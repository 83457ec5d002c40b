"""The regression gate's measurement: the gate study's VAE, autoencoder and PCA trained with several seeds.

`measure(spec, seeds, data_root, workers)` returns, per seed, the gated test metrics of the three
models, each a bench.jobs.ModelJob run in parallel single-thread processes (bench.pool.run_jobs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from bench import models
from bench.jobs import GATE_EVAL_SEED, JobEnv, ModelJob, run_model_job
from bench.pool import run_jobs
from bench.spec import StudySpec
from vae.data import load_data

# (model, metric) pairs the gate checks, each two-sided: a value worse than the calibrated band is a
# regression, one better than it an unexplained change (a metric bug inflates as often as it deflates).
GATED: tuple[tuple[str, str], ...] = (
    ("vae", "test/elbo"),
    ("vae", "test/recon_bce"),
    ("vae", "test/kl"),
    ("vae", "test/nll_iw"),
    ("ae", "test/code_recon_bce"),
    ("pca", "test/code_recon_bce"),
)
EVAL_SEED = GATE_EVAL_SEED  # z draws of the test ELBO and the IWAE bound: the same for every training seed


@dataclass(frozen=True)
class SeedResult:
    """The gated metrics of one training seed, and how long it took."""

    seed: int
    values: dict[tuple[str, str], float]  # (model, metric) -> value
    seconds: float  # the three models' fits and scores, summed


def seed_jobs(spec: StudySpec, seed: int) -> list[ModelJob]:
    """The VAE and autoencoder trained with `seed`, PCA fitted on images binarized with it, each scored
    for the gate (bench.jobs: test ELBO terms and IWAE NLL of the VAE, reconstruction BCE of the others)."""
    train_cfg = dataclasses.replace(spec.train, seed=seed)
    return [ModelJob(kind, spec.model, train_cfg, scoring="gate") for kind in models.KINDS]


def _load(spec: StudySpec, data_root: str, threads: int) -> JobEnv:
    """A pool process's data, read once: a file that cannot be read fails here, as one line (bench.pool)."""
    torch.set_num_threads(threads)
    return JobEnv(
        load_data(spec.data, data_root), None, torch.device("cpu"), 0, spec.eval.iw_samples, spec.eval.iw_images
    )


def measure(spec: StudySpec, seeds: list[int], data_root: str, workers: int, on_seed=None) -> list[SeedResult]:
    """Every seed's SeedResult, in the order of `seeds`; `on_seed(result)` as each finishes.

    workers = 1 runs in this process with every core's thread; more run that many single-thread
    processes (2 single-thread processes beat one 2-thread process on these small models), through
    bench.pool.run_jobs: a lost process's jobs run again, a data file that cannot be read stops it in one line.
    Every model depends only on its seed, so the numbers do not depend on the pool.
    """
    jobs = [job for seed in seeds for job in seed_jobs(spec, seed)]
    results, parts = [], []
    for job, r in run_jobs(run_model_job, jobs, _load, (spec, data_root), workers, ordered=True):
        parts.append(r)
        if len(parts) < len(models.KINDS):
            continue
        values = {(p.job.kind, metric): v for p in parts for metric, v in p.scores.items()}
        res = SeedResult(job.seed, values, sum(p.seconds for p in parts))
        parts = []
        results.append(res)
        if on_seed is not None:
            on_seed(res)
    return results
