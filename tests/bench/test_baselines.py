"""Tests of bench.baselines: PCA against hand-made data, the autoencoder against PCA, the code-space sampler.

Real MNIST through VAE_DATA_DIR (2,000 training images); about 10 s on 2 CPU cores.
"""

from __future__ import annotations

import math

import pytest
import torch

from bench.baselines import PCA_EPS, FittedGaussianSampler, PCAModel, PriorSampler, training_images
from bench.models import fit_model as train_baseline
from bench.models import image_sampler
from bench.scores import reconstruction_errors
from vae.data import DataConfig, load_data
from vae.model import VAE, Autoencoder, ModelConfig
from vae.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_pca_reconstructs_a_line_exactly_and_codes_are_orthonormal_projections():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(784, generator=g, dtype=torch.float64)
    u /= u.norm()
    t = torch.rand(200, 1, generator=g, dtype=torch.float64) - 0.5  # |t| <= 0.5, so |t * u_i| < 0.3
    x = (0.5 + t * u).float()  # (200, 784) on a line through 0.5, all pixels inside (0.2, 0.8)
    pca = PCAModel.fit(x, 1)
    assert torch.allclose(pca.reconstruct(x), x, atol=1e-5)
    assert abs(pca.components[0].double() @ u) == pytest.approx(1.0, abs=1e-6)  # found the direction
    codes = pca.codes(x).double().squeeze(1)
    assert torch.allclose(codes.abs(), (t.squeeze(1) - t.mean()).abs(), atol=1e-5)  # distance along the line


def test_pca_outputs_are_clipped_and_decode_gives_their_logits(data):
    x = data.test.x
    pca = PCAModel.fit(training_images(data, 0), 8)
    r = pca.reconstruct(x)
    assert r.min().item() == pytest.approx(PCA_EPS) and r.max().item() <= 1 - PCA_EPS + 1e-7
    assert pca.linear_decode(pca.codes(x)).min().item() < 0  # so the clip did something
    assert torch.allclose(torch.sigmoid(pca.decode(pca.codes(x))), r, atol=1e-6)
    c = pca.components.double()
    assert torch.allclose(c @ c.T, torch.eye(8, dtype=torch.float64), atol=1e-5)


def test_pca_error_falls_as_components_grow(data):
    x = training_images(data, 0)
    mse = {k: reconstruction_errors(PCAModel.fit(x, k), data.test.x, data.test.x)[1] for k in (2, 8, 32)}
    assert mse[2] > mse[8] > mse[32] > 0
    assert mse[32] < 0.6 * mse[2]  # measured 56.8 -> 42.9 -> 25.6 (squared error per image)


def test_pca_rejects_more_components_than_images():
    with pytest.raises(ValueError, match="latent_dim"):
        PCAModel.fit(torch.rand(5, 784), 6)


def test_autoencoder_reconstructs_training_images_better_than_pca_at_equal_latent_size(data):
    mc, tc = ModelConfig(latent_dim=8), TrainConfig(epochs=10, lr=3e-3, seed=0)
    ae = train_baseline("ae", mc, tc, data)
    pca = train_baseline("pca", mc, tc, data)
    assert isinstance(ae, Autoencoder) and not ae.training
    assert ae.latent_dim == pca.latent_dim == 8
    x = training_images(data, 0)
    ae_mse, pca_mse = reconstruction_errors(ae, x, x)[1], reconstruction_errors(pca, x, x)[1]
    assert ae_mse <= pca_mse  # measured 34.6 against 42.8 (squared error per image)


def test_autoencoder_shares_the_vae_architecture_and_is_seeded(data, data_root):
    mc, tc = ModelConfig(latent_dim=4, hidden_width=64), TrainConfig(epochs=1, seed=3)
    small = load_data(DataConfig(limit=300, val_size=0, test_limit=10), data_root)
    a, b = train_baseline("ae", mc, tc, small), train_baseline("ae", mc, tc, small)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=False):
        assert torch.equal(pa, pb), name  # same seed, same weights after training
    c = train_baseline("ae", mc, TrainConfig(epochs=1, seed=4), small)
    assert not torch.equal(a.decoder[0].weight, c.decoder[0].weight)
    vae = VAE(mc)
    assert [p.shape for p in a.decoder.parameters()] == [p.shape for p in vae.decoder.parameters()]
    enc_a, enc_v = list(a.encoder.parameters()), list(vae.encoder.parameters())
    assert [p.shape for p in enc_a[:-2]] == [p.shape for p in enc_v[:-2]]
    assert enc_a[-1].shape == (4,) and enc_v[-1].shape == (8,)  # the VAE's head adds the log-variance


def test_unknown_baseline_is_refused(data):
    with pytest.raises(ValueError, match="baseline must be one of"):
        train_baseline("ica", ModelConfig(), TrainConfig(), data)


def test_fitted_gaussian_matches_the_codes_and_repeats_for_a_seed(data):
    x = training_images(data, 0)
    pca = PCAModel.fit(x, 4)
    sampler = image_sampler("pca", pca, x)
    assert isinstance(sampler, FittedGaussianSampler)
    z = pca.codes(x).double()
    assert torch.allclose(sampler.mean, z.mean(0), atol=1e-6)
    draws = sampler.sample_codes(50_000, torch.Generator().manual_seed(0))
    assert torch.allclose(draws.mean(0), z.mean(0), atol=0.05)
    rel = (torch.cov(draws.T) - torch.cov(z.T)).abs().max() / torch.cov(z.T).abs().max()
    assert rel.item() < 0.03
    a = sampler.sample(64, torch.Generator().manual_seed(1))
    b = sampler.sample(64, torch.Generator().manual_seed(1))
    c = sampler.sample(64, torch.Generator().manual_seed(2))
    assert a.shape == (64, 784) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min().item() >= PCA_EPS - 1e-7 and a.max().item() <= 1 - PCA_EPS + 1e-7


def test_vae_samples_from_its_prior():
    torch.manual_seed(0)
    vae = VAE(ModelConfig(latent_dim=3, hidden_width=16)).eval()
    sampler = image_sampler("vae", vae, torch.rand(10, 784))
    assert isinstance(sampler, PriorSampler)
    got = sampler.sample(5, torch.Generator().manual_seed(7))
    want = vae.sample(5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(got, want)
    assert math.isfinite(got.sum().item()) and got.min() >= 0 and got.max() <= 1
