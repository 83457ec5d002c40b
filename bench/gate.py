"""The regression gate's measurement: the gate study's VAE, autoencoder and PCA trained with several seeds.

`measure(spec, seeds, data_root, workers)` returns, per seed, the gated test metrics of the three
models; seeds run in parallel single-thread processes, so a seed's numbers never depend on the pool.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

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
EVAL_SEED = 0  # z draws of the test ELBO and the IWAE bound: the same for every training seed


@dataclass(frozen=True)
class SeedResult:
    """The gated metrics of one training seed, and how long it took."""

    seed: int
    values: dict[tuple[str, str], float]  # (model, metric) -> value
    seconds: float


def seed_metrics(spec: StudySpec, seed: int, data, device: torch.device | str = "cpu") -> SeedResult:
    """Train the VAE and autoencoder with `seed`, fit PCA on images binarized with it, score all three.

    The test ELBO terms are on every test image (single z per image, drawn with EVAL_SEED), the
    IWAE NLL on the first `iw_images` with k = `iw_samples`; reconstructions decode the deterministic
    code. Nats per image. The same seed gives the same numbers on the same machine and thread count.
    """
    from bench.models import fit_model
    from bench.scores import reconstruction_errors
    from vae.evaluate import elbo_metrics, iwae_nll

    t0 = time.perf_counter()
    train_cfg = dataclasses.replace(spec.train, seed=seed)
    vae = fit_model("vae", spec.model, train_cfg, data, device)
    x = data.test.x
    elbo = elbo_metrics(vae, x, seed=EVAL_SEED)
    n_iw = min(spec.eval.iw_images, len(x))
    values = {
        ("vae", "test/elbo"): elbo["elbo"],
        ("vae", "test/recon_bce"): elbo["recon_bce"],
        ("vae", "test/kl"): elbo["kl"],
        ("vae", "test/nll_iw"): iwae_nll(vae, x[:n_iw], k=spec.eval.iw_samples, seed=EVAL_SEED),
    }
    for kind in ("ae", "pca"):
        model = fit_model(kind, spec.model, train_cfg, data, device)
        values[(kind, "test/code_recon_bce")] = reconstruction_errors(model, x, x)[0]
    return SeedResult(seed, values, time.perf_counter() - t0)


def _load(spec: StudySpec, data_root: str, threads: int) -> tuple[StudySpec, object]:
    """A pool process's data, read once: a file that cannot be read fails here, as one line (bench.pool)."""
    torch.set_num_threads(threads)
    return spec, load_data(spec.data, data_root)


def _run_seed(seed: int, env: tuple[StudySpec, object]) -> SeedResult:
    spec, data = env
    return seed_metrics(spec, seed, data)  # type: ignore[arg-type]


def measure(spec: StudySpec, seeds: list[int], data_root: str, workers: int, on_seed=None) -> list[SeedResult]:
    """Every seed's SeedResult, in the order of `seeds`; `on_seed(result)` as each finishes.

    workers = 1 runs in this process with every core's thread; more run that many single-thread
    processes (2 single-thread processes beat one 2-thread process on these small models), through
    bench.pool.run_jobs: a lost process's seeds run again, a data file that cannot be read stops it in one line.
    """
    results = []
    for _, res in run_jobs(_run_seed, seeds, _load, (spec, data_root), workers, ordered=True):
        results.append(res)
        if on_seed is not None:
            on_seed(res)
    return results
