"""A small MNIST/Fashion-MNIST classifier whose features define the Frechet distance of samples.

`load_classifier(data)` trains it once (fixed seed) and caches it on disk; `frechet_distance(a, b)`
compares two feature sets (N, F) in float64. Used by bench.scores for `test/sample_fd`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from annotated_types import Interval
from torch import nn

from vae.checks import check_fields
from vae.data import DataConfig, Datasets, load_data

CACHE_ENV = "VAEBENCH_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/vaebench")
# Bump when the architecture or the training code changes: old cache files are then ignored.
# (The recipe's fields are hashed into the file name as well.)
ARCH_VERSION = 1
ARCH_NAME = "mlp-784-256-128-10"
TRAIN_THREADS = 1  # torch threads while training the classifier (see train_classifier)


@dataclass(frozen=True)
class ClassifierRecipe:
    """How the feature classifier is trained; part of the cache key through ARCH_VERSION."""

    epochs: Annotated[int, Interval(ge=1, le=100_000)] = 3  # passes over the 60,000 training images
    batch_size: Annotated[int, Interval(ge=1, le=100_000)] = 256
    lr: Annotated[float, Interval(gt=0, le=10)] = 2e-3  # Adam
    seed: Annotated[int, Interval(ge=0, le=2**32 - 1)] = 0  # weights, shuffling and binarization draws
    binarize_prob: Annotated[float, Interval(ge=0, le=1)] = (
        0.5  # each training image is binarized with this probability, so that
    )
    # features are meaningful both for grayscale images and for binary (dynamically binarized) ones

    def __post_init__(self) -> None:
        check_fields(self)


class FeatureMLP(nn.Module):
    """MLP 784-256-128-10 with ReLU; `features` is the 128-unit penultimate layer (after ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 784) in [0, 1] -> class logits (B, 10)."""
        return self.head(self.body(x))


class FDClassifier:
    """A trained FeatureMLP with its cache metadata; `from_cache` says whether it was loaded, not trained."""

    def __init__(self, net: FeatureMLP, meta: dict, path: Path, from_cache: bool) -> None:
        self.net = net.eval()
        self.meta = meta  # dataset, digest, arch, version, recipe, test accuracies, train seconds
        self.path = path
        self.from_cache = from_cache

    @property
    def test_acc(self) -> float:
        """Accuracy on the 10,000 grayscale test images, measured right after training."""
        return float(self.meta["test_acc"])

    @torch.no_grad()
    def features(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """(N, 784) images in [0, 1] -> penultimate-layer features (N, 128), float32 on the CPU."""
        dev = next(self.net.parameters()).device
        return torch.cat([self.net.body(xb.to(dev).float()).cpu() for xb in x.split(batch_size)])

    def to(self, device: torch.device | str) -> FDClassifier:
        self.net.to(device)
        return self


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache folder: the argument, else $VAEBENCH_CACHE, else ~/.cache/vaebench."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE_DIR.expanduser()


def cache_path(
    dataset: str, digest: str, directory: str | os.PathLike | None = None, recipe: ClassifierRecipe = ClassifierRecipe()
) -> Path:
    """Where the classifier for one dataset, data digest, architecture version and recipe lives."""
    if not digest:
        raise ValueError("the data digest is empty; load the data with vae.data.load_data so it is set")
    # a non-default recipe (tests train a shorter one) must never be read back as the default
    recipe_key = hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True).encode()).hexdigest()[:8]
    name = f"{dataset}-{digest}-{ARCH_NAME}-v{ARCH_VERSION}-{recipe_key}.pt"
    return cache_dir(directory) / "fd_classifier" / name


def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        pred = torch.cat([net(xb).argmax(-1) for xb in x.split(4096)])
    return (pred == y).float().mean().item()


def train_classifier(x: torch.Tensor, y: torch.Tensor, recipe: ClassifierRecipe = ClassifierRecipe()) -> FeatureMLP:
    """Train a FeatureMLP on images (N, 784) in [0, 1] and labels (N,), on the CPU, deterministically.

    Uses its own generators and `torch.random.fork_rng`, so the caller's global RNG state is
    untouched; runs on TRAIN_THREADS torch threads and restores the caller's thread count.
    """
    threads = torch.get_num_threads()
    # one thread: on a shared 2-core machine two OpenMP threads competing with other processes
    # made an epoch 10-15x slower (45-75 s against 3-5 s, measured); idle, one thread costs ~30%
    torch.set_num_threads(TRAIN_THREADS)
    try:
        return _train(x, y, recipe)
    finally:
        torch.set_num_threads(threads)


def _train(x: torch.Tensor, y: torch.Tensor, recipe: ClassifierRecipe) -> FeatureMLP:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        net = FeatureMLP()
        g = torch.Generator().manual_seed(recipe.seed)
        opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
        loss_fn = nn.CrossEntropyLoss()
        net.train()
        for _ in range(recipe.epochs):
            order = torch.randperm(len(x), generator=g)
            for start in range(0, len(x), recipe.batch_size):
                idx = order[start : start + recipe.batch_size]
                xb = x[idx]
                # binarize a random half of the batch (per image), keep the rest grayscale
                flip = torch.rand(len(idx), 1, generator=g) < recipe.binarize_prob
                xb = torch.where(flip, torch.bernoulli(xb, generator=g), xb)
                loss = loss_fn(net(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return net.eval()


def _atomic_save(obj: object, path: Path) -> None:
    """torch.save to a temporary file, then rename: concurrent readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_classifier(
    data: Datasets,
    cache: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    recipe: ClassifierRecipe = ClassifierRecipe(),
) -> FDClassifier:
    """The feature classifier for `data`'s dataset, from the cache or trained now and cached.

    Keyed by dataset, `data.digest`, ARCH_VERSION and the recipe. It is trained on all 60,000
    training images of the dataset (independent of `data`'s split and limits, read
    again from `root` / $VAE_DATA_DIR) and its accuracy on the 10,000 test images,
    grayscale and binarized, goes into the metadata (also written beside it as JSON).
    """
    dataset = data.config.dataset
    path = cache_path(dataset, data.digest, cache, recipe)
    if path.exists():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        net = FeatureMLP()
        net.load_state_dict(blob["state_dict"])
        return FDClassifier(net, blob["meta"], path, from_cache=True)

    full = load_data(DataConfig(dataset=dataset, binarize="none", val_size=0), root)
    if full.digest != data.digest:
        raise ValueError(
            f"the {dataset} files under the data folder (digest {full.digest}) are not those of the "
            f"data passed in (digest {data.digest}); point VAE_DATA_DIR or root at the same files"
        )
    t0 = time.perf_counter()
    net = train_classifier(full.train.x, full.train.y, recipe)
    train_s = time.perf_counter() - t0
    x_bin = torch.bernoulli(full.test.x, generator=torch.Generator().manual_seed(recipe.seed + 1))
    meta = {
        "dataset": dataset,
        "digest": data.digest,
        "arch": ARCH_NAME,
        "arch_version": ARCH_VERSION,
        "recipe": asdict(recipe),
        "train_images": len(full.train),
        "test_acc": _accuracy(net, full.test.x, full.test.y),  # grayscale test images
        "test_acc_binarized": _accuracy(net, x_bin, full.test.y),  # one Bernoulli draw of them
        "train_seconds": round(train_s, 2),
        "torch": str(torch.__version__),
    }
    _atomic_save({"state_dict": net.state_dict(), "meta": meta}, path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return FDClassifier(net, meta, path, from_cache=False)


def gaussian_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F) of features (N, F), in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N, F) with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix by eigen-decomposition (negative eigenvalues -> 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_from_stats(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2), in float64.

    d^2 = |mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1 cov2)^(1/2)). The trace term is
    computed as tr((S cov2 S)^(1/2)) with S = cov1^(1/2): S cov2 S is symmetric PSD and has the
    same eigenvalues as cov1 cov2, so the result is real and stable even for singular covariances
    (ReLU features often have dead units), with no complex parts to discard as with sqrtm(cov1 cov2).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    s = _psd_sqrt(cov1)
    m = s @ cov2 @ s
    eig = np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)
    d2 = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * np.sum(np.sqrt(eig)))
    return max(d2, 0.0)


def frechet_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, F) and (M, F)."""
    return frechet_from_stats(*gaussian_stats(a), *gaussian_stats(b))
