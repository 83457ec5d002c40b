"""Tests of bench.scores and bench.fd_classifier: Frechet distance against hand values, the cached classifier,
and every comparison score of a VAE, an autoencoder and PCA on real MNIST (VAE_DATA_DIR); about 30 s.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from bench.baselines import PCAModel, training_images
from bench.fd_classifier import cache_path, frechet_distance, frechet_from_stats, load_classifier
from bench.models import fit_model as train_baseline
from bench.scores import FD_SAMPLES, SCORE_NAMES, probe_accuracies, reconstruction_errors, score_model
from vae.model import ModelConfig, build_model
from vae.train import TrainConfig, fit, seed_everything

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("vaebench-cache")


@pytest.fixture(scope="module")
def classifier(data, cache):
    return load_classifier(data, cache=cache)  # trained here: the cache folder is new


@pytest.fixture(scope="module")
def models(data):
    mc, tc = ModelConfig(latent_dim=8), TrainConfig(epochs=5, lr=3e-3, seed=0)
    seed_everything(tc.seed)
    vae = build_model("vae", mc)
    fit(vae, data, tc, progress=False)
    return {"vae": vae, "ae": train_baseline("ae", mc, tc, data), "pca": train_baseline("pca", mc, tc, data)}


@pytest.fixture(scope="module")
def scores(models, data, classifier):
    return {k: score_model(m, data, kind=k, classifier=classifier, seed=0) for k, m in models.items()}


def test_frechet_distance_of_diagonal_gaussians_by_hand():
    # |mu1 - mu2|^2 = 1; tr = (1 + 4) + (4 + 1); tr sqrt(cov1 cov2) = 2 + 2  ->  1 + 10 - 8 = 3
    d = frechet_from_stats(np.zeros(2), np.diag([1.0, 4.0]), np.array([1.0, 0.0]), np.diag([4.0, 1.0]))
    assert d == pytest.approx(3.0, abs=1e-12)


def test_frechet_distance_agrees_with_scipy_sqrtm_on_full_covariances():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    c1, c2 = a @ a.T, b @ b.T + 0.1 * np.eye(6)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    want = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2) - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2).real)
    assert frechet_from_stats(m1, c1, m2, c2) == pytest.approx(want, rel=1e-9)


def test_frechet_distance_is_zero_for_a_set_with_itself_and_grows_with_shift_and_noise():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(3000, 16)) @ rng.normal(size=(16, 16))  # correlated features
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-8)
    shift = np.full(16, 0.5)
    assert frechet_distance(f, f + shift) == pytest.approx(16 * 0.25, rel=1e-9)  # same covariance: |shift|^2
    noisy = [frechet_distance(f, f + rng.normal(scale=s, size=f.shape)) for s in (0.5, 1.0, 2.0)]
    assert 0 < noisy[0] < noisy[1] < noisy[2]


def test_classifier_is_accurate_and_reused_from_the_cache(data, cache, classifier):
    assert not classifier.from_cache
    assert classifier.test_acc > 0.9 and classifier.meta["test_acc_binarized"] > 0.9  # measured 0.974, 0.969
    assert classifier.path == cache_path("mnist", data.digest, cache)
    assert classifier.path.with_suffix(".json").exists()
    mtime = classifier.path.stat().st_mtime_ns
    again = load_classifier(data, cache=cache)
    assert again.from_cache and again.meta == classifier.meta
    assert classifier.path.stat().st_mtime_ns == mtime  # not rewritten
    x = data.test.x[:200]
    assert torch.equal(again.features(x), classifier.features(x))
    assert again.features(x).shape == (200, 128)


def test_cache_folder_comes_from_the_environment(data, monkeypatch, tmp_path):
    monkeypatch.setenv("VAEBENCH_CACHE", str(tmp_path))
    assert cache_path("mnist", data.digest).parent == tmp_path / "fd_classifier"


def test_probes_read_labels_from_separable_codes_and_not_from_noise():
    g = torch.Generator().manual_seed(0)
    y_tr, y_te = torch.randint(0, 10, (2000,), generator=g), torch.randint(0, 10, (500,), generator=g)
    sep = lambda y: torch.eye(10)[y] * 3 + 0.1 * torch.randn(len(y), 10, generator=g)  # noqa: E731
    assert probe_accuracies(sep(y_tr), y_tr, sep(y_te), y_te) == (1.0, 1.0)
    noise = lambda y: torch.randn(len(y), 10, generator=g)  # noqa: E731
    probe, knn = probe_accuracies(noise(y_tr), y_tr, noise(y_te), y_te)
    assert probe < 0.2 and knn < 0.2


def test_reconstruction_errors_match_a_float64_hand_computation(data):
    pca = PCAModel.fit(training_images(data, 0), 8)
    x = data.test.x[:300]
    bce, mse = reconstruction_errors(pca, x, x, batch_size=128)
    p, t = pca.reconstruct(x).double(), x.double()
    want_bce = -(t * p.log() + (1 - t) * (1 - p).log()).sum(1).mean().item()
    assert bce == pytest.approx(want_bce, rel=1e-4)
    assert mse == pytest.approx((p - t).pow(2).sum(1).mean().item(), rel=1e-4)


@pytest.mark.parametrize("kind", ["vae", "ae", "pca"])
def test_every_score_is_present_finite_and_in_range(scores, kind):
    s = scores[kind]
    assert tuple(s) == SCORE_NAMES
    assert all(math.isfinite(v) for v in s.values())
    assert 20 < s["test/code_recon_bce"] < 300 and 5 < s["test/code_recon_mse"] < 100  # nats, squared error per image
    assert 0.5 < s["test/probe_acc"] <= 1 and 0.5 < s["test/knn_acc"] <= 1  # chance is 0.1
    assert s["test/sample_fd"] > 0


@pytest.mark.parametrize("kind", ["vae", "ae", "pca"])
def test_denoising_scores_are_worse_than_clean_reconstruction(scores, kind):
    s = scores[kind]
    assert s["test/denoise_bce"] > s["test/code_recon_bce"]
    assert s["test/denoise_mse"] > s["test/code_recon_mse"]


def test_scores_repeat_for_a_seed_and_samples_depend_on_it(models, data, classifier, scores):
    again = score_model(models["ae"], data, kind="ae", classifier=classifier, seed=0)
    assert again == scores["ae"]
    other = score_model(models["ae"], data, kind="ae", classifier=classifier, seed=1)
    assert other["test/code_recon_bce"] == scores["ae"]["test/code_recon_bce"]  # the test images do not depend on it
    assert other["test/sample_fd"] != scores["ae"]["test/sample_fd"]


def reference_fd(data, classifier, n: int = FD_SAMPLES, seed: int = 0) -> float:
    """The Frechet distance of n real training images (binarized as the test set) to the test set:
    what a generator that reproduced the data would score, a floor for `test/sample_fd` at the same n."""
    x = training_images(data, seed, limit=min(n, len(data.test)))
    return frechet_distance(classifier.features(x), classifier.features(data.test.x))


def test_real_images_are_closer_to_the_test_set_than_any_model_samples(data, classifier, scores):
    floor = reference_fd(data, classifier)
    assert 0 < floor < min(s["test/sample_fd"] for s in scores.values())


def test_unknown_kind_is_refused(models, data, classifier):
    with pytest.raises(ValueError, match="kind must be one of"):
        score_model(models["pca"], data, kind="gan", classifier=classifier)
