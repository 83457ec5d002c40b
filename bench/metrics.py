"""The one vocabulary of metric keys: each key the project writes, with its meaning, unit and direction.

Tracking, the study spec, the report and the gate read keys, directions and units from here;
`METRICS["test/elbo"].better` says which way is better. A key never gets a second meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NATS = "nats/image"  # summed over the 784 pixels, averaged over images
ALL_MODELS = frozenset({"vae", "ae", "pca"})
STUDY_RUN = frozenset({"study"})  # the parent run of a study (it has no model); it also carries the
# best trial's metrics under the trials' own keys (its study metric and its test/* metrics): same meaning,
# the best VAE's value
NETWORKS = frozenset({"vae", "ae"})
VAE_ONLY = frozenset({"vae"})


@dataclass(frozen=True)
class Metric:
    """One metric key and what it means."""

    key: str  # "split/name", as logged to MLflow
    meaning: str  # one sentence: what is measured, on what, how
    unit: str  # NATS, "fraction", "units", "squared error/image", "feature distance", ...
    better: Literal["higher", "lower", "none"]  # which direction is an improvement
    models: frozenset[str]  # the models whose runs carry it

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        """Optuna's word for `better` (only for metrics that have one)."""
        if self.better == "none":
            raise ValueError(f"{self.key} has no better direction")
        return "maximize" if self.better == "higher" else "minimize"


def _m(key: str, meaning: str, unit: str, better: str, models: frozenset[str]) -> Metric:
    return Metric(key, meaning, unit, better, models)  # type: ignore[arg-type]


_EPOCH = [
    # per-epoch curves (step = epoch). For the autoencoder "recon_bce" is the same term with a point-mass encoder.
    _m("{split}/elbo", "single-sample ELBO (beta = 1) on the {what}: -(recon_bce + kl)", NATS, "higher", VAE_ONLY),
    _m(
        "{split}/recon_bce",
        "reconstruction term -E_q[log p(x|z)] on the {what} (z sampled; the code itself for the autoencoder)",
        NATS,
        "lower",
        NETWORKS,
    ),
    _m("{split}/kl", "KL(q(z|x) || N(0, I)), closed form, on the {what}", NATS, "lower", VAE_ONLY),
]
_SPLITS = {
    "train": "training batches as trained (averaged over the epoch)",
    "val": "validation split",
    "test": "test split",
}

_DEFS: list[Metric] = [
    # only the VAE trials evaluate the test split's ELBO terms;
    # the autoencoder's test reconstruction is test/code_recon_bce
    _m(
        t.key.format(split=s),
        t.meaning.format(what=what),
        t.unit,
        t.better,
        t.models & VAE_ONLY if s == "test" else t.models,
    )
    for s, what in _SPLITS.items()
    for t in _EPOCH
] + [
    _m(
        "test/nll_iw",
        "importance-weighted estimate of -log p(x) (IWAE bound, k = [eval] iw_samples) "
        "on the first iw_images test images",
        NATS,
        "lower",
        VAE_ONLY,
    ),
    _m(
        "test/nll_iw_se",
        "standard error of test/nll_iw across the test images it averages (std / sqrt(n))",
        NATS,
        "none",
        VAE_ONLY,
    ),
    _m(
        "test/nll_iw_k5000",
        "the literature's protocol: IWAE bound with k = 5000 on the full 10,000-image test set",
        NATS,
        "lower",
        VAE_ONLY,
    ),
    _m("test/nll_iw_k5000_se", "standard error of test/nll_iw_k5000 across the test images", NATS, "none", VAE_ONLY),
    _m(
        "test/active_units",
        "latent dimensions with Cov_x(E_q[z_i|x]) > 0.01 (Burda et al. 2015)",
        "units",
        "none",
        VAE_ONLY,
    ),
    # the comparison's scores, computed by one function for all three models (bench.scores)
    _m(
        "test/code_recon_bce",
        "BCE of decode(code(x)) against the test images, "
        "code = posterior mean (VAE), the code (AE), the projection (PCA)",
        NATS,
        "lower",
        ALL_MODELS,
    ),
    _m(
        "test/code_recon_mse",
        "squared error of sigmoid(decode(code(x))) against the test images, summed over pixels",
        "squared error/image",
        "lower",
        ALL_MODELS,
    ),
    _m(
        "test/denoise_bce",
        "BCE of the deterministic reconstruction of corrupted test images against the clean ones",
        NATS,
        "lower",
        ALL_MODELS,
    ),
    _m(
        "test/denoise_mse",
        "squared error of the deterministic reconstruction of corrupted test images against the clean ones",
        "squared error/image",
        "lower",
        ALL_MODELS,
    ),
    _m(
        "test/probe_acc",
        "test accuracy of a logistic-regression probe trained on the codes of training images",
        "fraction",
        "higher",
        ALL_MODELS,
    ),
    _m(
        "test/knn_acc",
        "test accuracy of a 5-nearest-neighbour classifier on the codes",
        "fraction",
        "higher",
        ALL_MODELS,
    ),
    _m(
        "test/sample_fd",
        "Frechet distance of generated images to the test images in the FD classifier's features "
        "(VAE: prior; AE, PCA: a Gaussian fitted to their codes)",
        "feature distance",
        "lower",
        ALL_MODELS,
    ),
    # the same generated images and features as test/sample_fd (bench.sample_quality)
    _m(
        "test/sample_kid",
        "kernel inception distance: unbiased squared MMD, kernel (x.y/d + 1)^3, of generated images to test images "
        "in the FD classifier's features, averaged over disjoint subsets (Binkowski et al. 2018)",
        "squared feature distance",
        "lower",
        ALL_MODELS,
    ),
    _m(
        "test/sample_kid_se",
        "standard error of test/sample_kid: std of the disjoint subsets' estimates / sqrt(subsets)",
        "squared feature distance",
        "none",
        ALL_MODELS,
    ),
    _m(
        "test/sample_precision",
        "fraction of generated images inside the k-NN manifold (k = 3) of as many test images, "
        "in the FD classifier's features: fidelity (Kynkaanniemi et al. 2019)",
        "fraction",
        "higher",
        ALL_MODELS,
    ),
    _m(
        "test/sample_recall",
        "fraction of test images inside the k-NN manifold (k = 3) of as many generated images, "
        "in the FD classifier's features: diversity (Kynkaanniemi et al. 2019)",
        "fraction",
        "higher",
        ALL_MODELS,
    ),
    # only when the study names [eval] ood_dataset (tag ood_dataset on the run says which)
    _m(
        "test/ood_auroc",
        "AUROC of telling the OOD dataset's test images (positives) from the training dataset's by a per-image score "
        "that is higher when the model finds the image less likely "
        "(VAE: IWAE NLL; AE, PCA: BCE of the deterministic reconstruction); "
        "0.5 = chance, below 0.5 = the model prefers the OOD images",
        "fraction",
        "higher",
        ALL_MODELS,
    ),
    # the parent run's count of the study's trials by final Optuna state
    _m("trials/complete", "trials of the study that completed", "trials", "none", STUDY_RUN),
    _m("trials/pruned", "trials stopped by the pruner or by a non-finite loss", "trials", "none", STUDY_RUN),
    _m("trials/fail", "trials that failed (their worker died or raised)", "trials", "none", STUDY_RUN),
]

METRICS: dict[str, Metric] = {m.key: m for m in _DEFS}
assert len(METRICS) == len(_DEFS), "a metric key is declared twice"

# the columns of the comparison table, in the order it shows them: every model has them
COMPARED = (
    "test/code_recon_bce",
    "test/code_recon_mse",
    "test/denoise_bce",
    "test/denoise_mse",
    "test/probe_acc",
    "test/knn_acc",
    "test/sample_fd",
    "test/sample_kid",
    "test/sample_kid_se",
    "test/sample_precision",
    "test/sample_recall",
)
# the out-of-distribution score: a comparison column of studies that name [eval] ood_dataset
OOD_AUROC = "test/ood_auroc"
COMPARISON = (*COMPARED, OOD_AUROC)
# the VAE's own test metrics, in the report's VAE table
VAE_TEST = ("test/elbo", "test/recon_bce", "test/kl", "test/nll_iw", "test/nll_iw_se", "test/active_units")


def metric(key: str) -> Metric:
    """The declaration of `key`; KeyError names the known keys when it is not declared."""
    try:
        return METRICS[key]
    except KeyError:
        raise KeyError(
            f"metric {key!r} is not declared in bench.metrics; known: {', '.join(sorted(METRICS))}"
        ) from None


def better(key: str) -> str:
    """'higher', 'lower' or 'none' for a declared key."""
    return metric(key).better


def optimizable(split: str) -> dict[str, str]:
    """The keys of `split` a study may optimize, with their Optuna direction."""
    return {k: m.direction for k, m in METRICS.items() if k.startswith(f"{split}/") and m.better != "none"}
