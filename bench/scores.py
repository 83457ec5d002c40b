"""The scores on which the VAE, the autoencoder and PCA are compared, computed by the same code for all three.

`score_model(model, data, kind=..., classifier=load_classifier(data), seed=0)` returns `test/...`
metrics: reconstruction, denoising, linear-probe and kNN accuracy of the codes, and sample quality.
"""

from __future__ import annotations

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from bench.baselines import training_images
from bench.fd_classifier import FDClassifier, frechet_distance
from bench.metrics import COMPARED
from bench.models import generate_images, get
from bench.sample_quality import sample_quality
from vae.data import Corruption, Datasets, binarize_once, corrupt
from vae.evaluate import encode, eval_mode
from vae.loss import bernoulli_nll

FD_SAMPLES = 5000  # generated images per Frechet distance (fewer when the test set is smaller)
MAX_TRAIN_CODES = 10_000  # training images whose codes train the probes and fit the AE/PCA Gaussian
KNN_K = 5
PROBE_MAX_ITER = 1000

SCORE_NAMES = COMPARED  # declared, with their meanings, in bench.metrics


@torch.no_grad()
def reconstruction_errors(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, batch_size: int = 2000
) -> tuple[float, float]:
    """BCE and squared error of the reconstructions of x against target, each summed over pixels, per image.

    The reconstruction decodes the deterministic code (the posterior mean for a VAE):
    logits = decode(codes(x)). BCE is in nats per image (the cross-entropy when targets are
    grayscale); squared error is on the Bernoulli means sigmoid(logits), i.e. PCA's clipped output.
    """
    dev = next(model.parameters()).device
    bce = se = 0.0
    with eval_mode(model):
        for xb, tb in zip(x.split(batch_size), target.split(batch_size), strict=False):
            logits = model.decode(model.codes(xb.to(dev))).float()
            tb = tb.to(dev).float()
            bce += bernoulli_nll(logits, tb).sum().item()
            se += (torch.sigmoid(logits) - tb).pow(2).sum().item()
    n = x.shape[0]
    return bce / n, se / n


def probe_accuracies(
    train_codes: torch.Tensor, train_y: torch.Tensor, test_codes: torch.Tensor, test_y: torch.Tensor
) -> tuple[float, float]:
    """Test accuracy of a logistic-regression probe and of a k-nearest-neighbour classifier on codes.

    The logistic regression (lbfgs, L2, C = 1) sees standardised codes. kNN (k = KNN_K, Euclidean)
    uses the raw codes: standardising would blow a VAE's inactive units (posterior means that
    barely vary) up to unit variance and let their noise dominate the distances.
    """
    ztr, zte = train_codes.double().numpy(), test_codes.double().numpy()
    ytr, yte = train_y.cpu().numpy(), test_y.cpu().numpy()
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=PROBE_MAX_ITER))
    probe.fit(ztr, ytr)
    knn = KNeighborsClassifier(n_neighbors=KNN_K).fit(ztr, ytr)
    return float(probe.score(zte, yte)), float(knn.score(zte, yte))


def sample_features(
    kind: str,
    model: nn.Module,
    data: Datasets,
    train_x: torch.Tensor,
    classifier: FDClassifier,
    n: int = FD_SAMPLES,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classifier features of n generated images (n, F) and of all test images (N_test, F).

    Generated images are Bernoulli means; when the test images are binary (dynamic
    binarization) each sample is binarized with one seeded Bernoulli draw, so that both
    sets are images of the same kind. n = min(n, number of test images).
    """
    n = min(n, len(data.test))
    samples = generate_images(kind, model, train_x, n, seed)  # (n, 784) on the CPU
    if data.config.binarize == "dynamic":
        samples = binarize_once(samples, seed)
    return classifier.features(samples), classifier.features(data.test.x)


def score_model(
    model: nn.Module,
    data: Datasets,
    *,
    kind: str,
    classifier: FDClassifier,
    n_fd_samples: int = FD_SAMPLES,
    seed: int = 0,
    max_train_codes: int = MAX_TRAIN_CODES,
    corruption: Corruption = Corruption(),
    batch_size: int = 2000,
) -> dict[str, float]:
    """All comparison scores of one model ("vae", "ae" or "pca") on `data.test`, keys in SCORE_NAMES.

    - test/code_recon_bce, test/code_recon_mse: deterministic reconstruction of the test images as stored in
      data.test.x (binary under dynamic binarization, grayscale otherwise); nats per image
      and squared error summed over pixels per image (see `reconstruction_errors`).
    - test/denoise_bce, test/denoise_mse: the same for the reconstruction of
      vae.data.corrupt(test images, corruption), scored against the clean test images.
    - test/probe_acc, test/knn_acc: classifiers trained on the codes of the first
      `max_train_codes` training images (binarized once with `seed` under dynamic
      binarization), tested on the codes of the test images (see `probe_accuracies`).
    - test/sample_fd: Frechet distance of min(n_fd_samples, test size) generated images to the
      test images in the classifier's feature space (see `sample_features`); the AE and PCA sample
      a Gaussian fitted to the same training codes as the probes, the VAE its prior.
    - test/sample_kid (with test/sample_kid_se), test/sample_precision, test/sample_recall: the same
      generated images and features (bench.sample_quality.sample_quality).
    Deterministic for a given seed.
    """
    get(kind)  # ValueError for a kind the registry does not know, before any work
    if n_fd_samples < 2 or max_train_codes < 2:
        raise ValueError(f"n_fd_samples and max_train_codes must be >= 2, got {n_fd_samples}, {max_train_codes}")
    x, y = data.test.x, data.test.y
    recon_bce, recon_mse = reconstruction_errors(model, x, x, batch_size)
    denoise_bce, denoise_mse = reconstruction_errors(model, corrupt(x, corruption), x, batch_size)

    train_x = training_images(data, seed, limit=max_train_codes)
    train_y = data.train.y[: len(train_x)]
    probe_acc, knn_acc = probe_accuracies(encode(model, train_x, batch_size), train_y, encode(model, x, batch_size), y)
    gen, real = sample_features(kind, model, data, train_x, classifier, n_fd_samples, seed)
    return {
        "test/code_recon_bce": recon_bce,
        "test/code_recon_mse": recon_mse,
        "test/denoise_bce": denoise_bce,
        "test/denoise_mse": denoise_mse,
        "test/probe_acc": probe_acc,
        "test/knn_acc": knn_acc,
        "test/sample_fd": frechet_distance(gen, real),
        **sample_quality(gen.numpy(), real.numpy(), seed=seed),
    }
