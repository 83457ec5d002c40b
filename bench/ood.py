"""Out-of-distribution check: does a model find another dataset's images less likely than its own?

`load_ood_scoring(spec, root)` reads the other dataset's test images, prepared like the study's;
`ood_scores(model, kind, in_x, ood, seed)` is the test/ood_auroc that bench.compare and
bench.replicates log (`ood_auroc(model, kind, in_x, ood_x, ...)` computes it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from bench.errors import BenchError
from bench.metrics import OOD_AUROC
from bench.models import get
from vae.data import DataError, check_data, load_data
from vae.evaluate import iwae_nll_per_image, map_batches
from vae.loss import bernoulli_nll


@dataclass(frozen=True)
class OODScoring:
    """The OOD images and how test/ood_auroc is computed on them."""

    dataset: str  # the study's [eval] ood_dataset, the value of tags.OOD_DATASET
    x: torch.Tensor  # its test images (N, 784)
    iw_samples: int
    iw_images: int | None


def check_ood_data(spec, root) -> None:
    """BenchError (one line) when the study names an OOD dataset whose files are not under the data folder."""
    name = spec.eval.ood_dataset
    if name is None:
        return
    try:
        check_data(name, root, download=False)
    except DataError as exc:
        raise BenchError(f"[eval] ood_dataset = {name!r}: {exc}") from None


def load_ood_images(spec, root) -> torch.Tensor | None:
    """The OOD dataset's test images (N, 784), as the study's test images are prepared, or None.

    Same DataConfig but the dataset: the same test_limit, and under dynamic binarization the
    same fixed Bernoulli draw (vae.data.EVAL_BINARIZE_SEED), so both sets are images of one kind.
    """
    name = spec.eval.ood_dataset
    if name is None:
        return None
    cfg = dataclasses.replace(spec.data, dataset=name, val_size=0, limit=1)
    return load_data(cfg, root, download=False).test.x


def load_ood_scoring(spec, root) -> OODScoring | None:
    """The OOD images of the study and its [eval] settings, or None when it names no OOD dataset."""
    x = load_ood_images(spec, root)
    if x is None:
        return None
    return OODScoring(spec.eval.ood_dataset, x, spec.eval.iw_samples, spec.eval.iw_images)


@torch.no_grad()
def recon_bce_per_image(model: nn.Module, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """BCE of decode(codes(x)) against x for each image, summed over pixels: (N,) nats, on the CPU."""
    return map_batches(
        model, lambda xb: bernoulli_nll(model.decode(model.codes(xb)).float(), xb.float()), x, batch_size
    )


def novelty_scores(model: nn.Module, kind: str, x: torch.Tensor, iw_samples: int, seed: int = 0) -> torch.Tensor:
    """Per-image score, higher = less likely under the model: the VAE's IWAE NLL (k = iw_samples),
    the AE's and PCA's reconstruction BCE of the deterministic code. (N,) nats on the CPU."""
    if get(kind).bound:
        return iwae_nll_per_image(model, x, k=iw_samples, chunk=min(iw_samples, 500), seed=seed)
    return recon_bce_per_image(model, x)


def auroc(in_scores, ood_scores) -> float:
    """AUROC of the OOD images (positives) against the in-distribution ones (negatives) by score,
    sklearn's roc_auc_score (ties count one half)."""
    a, b = np.asarray(in_scores, np.float64), np.asarray(ood_scores, np.float64)
    labels = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    return float(roc_auc_score(labels, np.concatenate([a, b])))


def ood_auroc(
    model: nn.Module, kind: str, in_x: torch.Tensor, ood_x: torch.Tensor, iw_samples: int, n: int | None, seed: int = 0
) -> float:
    """test/ood_auroc: the first n images of each set (all when n is None), scored by `novelty_scores`.

    1 = every OOD image scores as less likely than every test image of the training dataset,
    0.5 = chance, below 0.5 = the model finds the OOD images *more* likely (Nalisnick et al. 2019).
    """
    in_x, ood_x = in_x[:n], ood_x[:n]
    return auroc(
        novelty_scores(model, kind, in_x, iw_samples, seed), novelty_scores(model, kind, ood_x, iw_samples, seed)
    )


def ood_scores(model: nn.Module, kind: str, in_x: torch.Tensor, ood: OODScoring | None, seed: int) -> dict[str, float]:
    """{test/ood_auroc: ...} of the model against the study's OOD images, or {} when there are none."""
    if ood is None:
        return {}
    return {OOD_AUROC: ood_auroc(model, kind, in_x, ood.x, ood.iw_samples, ood.iw_images, seed=seed)}
