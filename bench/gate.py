"""The regression gate's measurement: the gate study's VAE, autoencoder and PCA trained with several seeds.

`measure(spec, seeds, data_root, workers)` returns, per seed, the gated test metrics of the three
models; seeds run in parallel single-thread processes, so a seed's numbers never depend on the pool.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from bench.pool import imap_jobs
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
    from bench.baselines import train_baseline
    from bench.scores import reconstruction_errors
    from vae.evaluate import elbo_metrics, iwae_nll
    from vae.model import build_model
    from vae.train import fit, seed_everything

    t0 = time.perf_counter()
    train_cfg = dataclasses.replace(spec.train, seed=seed)
    seed_everything(seed)
    vae = build_model("vae", spec.model)
    fit(vae, data, train_cfg, device, progress=False)
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
        model = train_baseline(kind, spec.model, train_cfg, data, device)
        values[(kind, "test/code_recon_bce")] = reconstruction_errors(model, x, x)[0]
    return SeedResult(seed, values, time.perf_counter() - t0)


_WORKER: dict[str, object] = {}


def _init_worker(spec: StudySpec, data_root: str, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["spec"] = spec
    _WORKER["data"] = load_data(spec.data, data_root)


def _run_seed(seed: int) -> SeedResult:
    return seed_metrics(_WORKER["spec"], seed, _WORKER["data"])  # type: ignore[arg-type]


def measure(spec: StudySpec, seeds: list[int], data_root: str, workers: int, on_seed=None) -> list[SeedResult]:
    """Every seed's SeedResult, in the order of `seeds`; `on_seed(result)` as each finishes.

    workers = 1 runs in this process with every core's thread; more run that many single-thread
    processes (2 single-thread processes beat one 2-thread process on these small models).
    """
    results = []
    for res in imap_jobs(_run_seed, seeds, _init_worker, (spec, data_root), workers, _WORKER.clear, ordered=True):
        results.append(res)
        if on_seed is not None:
            on_seed(res)
    return results
