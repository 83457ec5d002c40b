"""Tests of vae.evaluate: ELBO and IWAE numbers against float64 recomputations, active units, image grids.

Models are tiny and the images are the 500 validation images of small_mnist.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import TINY_MODEL
from vae.evaluate import (
    active_units,
    elbo_metrics,
    encode,
    final_metrics,
    image_grid,
    iwae_nll,
    iwae_nll_per_image,
    log_likelihood_bits,
    manifold_grid,
    reconstruct,
    reconstruction_grid,
    sample_grid,
)
from vae.model import VAE, Autoencoder, ModelConfig


def reference_terms(model: VAE, x: torch.Tensor, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Per-image recon, analytic KL and log q(z|x) - log p(z) in float64, with z drawn as elbo_metrics draws it:
    one (B, L) standard-normal tensor per batch from a CPU generator seeded with `seed`."""
    g = torch.Generator().manual_seed(seed)
    recon, kl, mc_kl = [], [], []
    with torch.no_grad():
        for xb in x.split(batch_size):
            mu, logvar = model.encode(xb)
            eps = torch.randn(mu.shape, generator=g)
            mu, logvar, eps = mu.double(), logvar.double(), eps.double()
            std = torch.exp(0.5 * logvar)
            z = mu + std * eps
            logits = model.decode(z.float()).double()
            xd = xb.double()
            recon.append((logits.clamp(min=0) - logits * xd + torch.log1p(torch.exp(-logits.abs()))).sum(-1))
            kl.append(0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1))
            log_q = torch.distributions.Normal(mu, std).log_prob(z).sum(-1)
            log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
            mc_kl.append(log_q - log_p)
    return {"recon": torch.cat(recon), "kl": torch.cat(kl), "mc_kl": torch.cat(mc_kl)}


@pytest.fixture
def val_x(small_mnist) -> torch.Tensor:
    return small_mnist.val.x


# ---------------------------------------------------------------- elbo_metrics


def test_elbo_metrics_match_a_float64_recomputation(trained_vae, val_x):
    got = elbo_metrics(trained_vae, val_x, batch_size=128, seed=11)
    ref = reference_terms(trained_vae, val_x, batch_size=128, seed=11)
    recon, kl = ref["recon"].mean().item(), ref["kl"].mean().item()
    assert set(got) == {"elbo", "recon_bce", "kl"}
    assert got["recon_bce"] == pytest.approx(recon, rel=1e-5)
    assert got["kl"] == pytest.approx(kl, rel=1e-5)
    assert got["elbo"] == pytest.approx(-(recon + kl), rel=1e-5)
    assert got["elbo"] == pytest.approx(-(got["recon_bce"] + got["kl"]), rel=1e-12)


def test_elbo_metrics_is_deterministic_for_a_seed(trained_vae, val_x):
    a = elbo_metrics(trained_vae, val_x, seed=3)
    b = elbo_metrics(trained_vae, val_x, seed=3)
    c = elbo_metrics(trained_vae, val_x, seed=4)
    assert a == b
    assert a["recon_bce"] != c["recon_bce"]  # z is sampled
    assert a["kl"] == pytest.approx(c["kl"], rel=1e-6)  # the KL is analytic
    # the global RNG is neither used nor disturbed
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    elbo_metrics(trained_vae, val_x, seed=3)
    assert torch.equal(torch.rand(1), before)


def test_elbo_metrics_of_beta_weighted_model_use_beta_one(trained_vae, val_x):
    heavy = VAE(ModelConfig(latent_dim=TINY_MODEL.latent_dim, hidden_width=TINY_MODEL.hidden_width, beta=8.0))
    heavy.load_state_dict(trained_vae.state_dict())
    a, b = elbo_metrics(heavy, val_x, seed=2), elbo_metrics(trained_vae, val_x, seed=2)
    assert a == b


def test_elbo_metrics_restores_the_training_mode(val_x):
    m = VAE(TINY_MODEL).train()
    elbo_metrics(m, val_x[:10])
    assert m.training
    m.eval()
    elbo_metrics(m, val_x[:10])
    assert not m.training


def test_elbo_metrics_of_an_autoencoder_is_only_recon_bce(val_x):
    torch.manual_seed(0)
    ae = Autoencoder(TINY_MODEL)
    got = elbo_metrics(ae, val_x, batch_size=77)
    assert set(got) == {"recon_bce"}
    with torch.no_grad():
        logits = ae(val_x).double()
    xd = val_x.double()
    ref = (logits.clamp(min=0) - logits * xd + torch.log1p(torch.exp(-logits.abs()))).sum(-1).mean().item()
    assert got["recon_bce"] == pytest.approx(ref, rel=1e-5)


# ---------------------------------------------------------------- iwae_nll


def test_iwae_with_one_sample_is_the_single_sample_elbo(trained_vae, val_x):
    # k = 1 draws the same eps as elbo_metrics (same seed and batch size): the reconstruction term is the same,
    # and the KL is its one-sample Monte Carlo estimate log q(z|x) - log p(z) instead of the closed form
    nll1 = iwae_nll(trained_vae, val_x, k=1, batch_size=100, seed=5)
    ref = reference_terms(trained_vae, val_x, batch_size=100, seed=5)
    em = elbo_metrics(trained_vae, val_x, batch_size=100, seed=5)
    assert em["recon_bce"] == pytest.approx(ref["recon"].mean().item(), rel=1e-5)
    assert nll1 == pytest.approx((ref["recon"] + ref["mc_kl"]).mean().item(), rel=1e-5)
    # on average over images the two KL estimates agree: within 4 standard errors
    diff = ref["mc_kl"] - ref["kl"]
    assert abs(diff.mean().item()) < 4 * diff.std().item() / math.sqrt(len(diff))
    assert nll1 == pytest.approx(-em["elbo"], abs=4 * diff.std().item() / math.sqrt(len(diff)) + 1e-3)


def test_iwae_bound_tightens_with_k(trained_vae, val_x):
    neg_elbo = -elbo_metrics(trained_vae, val_x, seed=0)["elbo"]
    nll = {k: iwae_nll(trained_vae, val_x, k=k, batch_size=250, chunk=20, seed=0) for k in (1, 5, 50)}
    # NLL_iw <= -ELBO averaged over images; the gap of a barely trained model is several nats
    assert nll[50] < neg_elbo - 2.0
    assert nll[50] < nll[5] < nll[1]
    assert all(v > 0 for v in nll.values())  # an NLL of binary images is positive


def test_iwae_nll_is_deterministic_and_chunk_only_bounds_memory(trained_vae, val_x):
    x = val_x[:200]
    a = iwae_nll(trained_vae, x, k=40, batch_size=50, chunk=40, seed=1)
    assert a == iwae_nll(trained_vae, x, k=40, batch_size=50, chunk=40, seed=1)
    assert a != iwae_nll(trained_vae, x, k=40, batch_size=50, chunk=40, seed=2)
    # the same estimator; whether the draws coincide across chunkings is up to torch's RNG, so allow
    # the Monte Carlo noise of a 200-image mean
    b = iwae_nll(trained_vae, x, k=40, batch_size=50, chunk=7, seed=1)
    assert b == pytest.approx(a, abs=1.0)


def test_iwae_per_image_values_average_to_the_nll_and_give_its_standard_error(trained_vae, val_x):
    x = val_x[:200]
    per = iwae_nll_per_image(trained_vae, x, k=20, batch_size=50, chunk=20, seed=3)
    assert per.shape == (200,) and per.dtype == torch.float64
    assert (per > 0).all()
    assert per.mean().item() == pytest.approx(
        iwae_nll(trained_vae, x, k=20, batch_size=50, chunk=20, seed=3), rel=1e-12
    )
    got = final_metrics(trained_vae, val_x, iw_samples=20, iw_images=200, seed=3)
    # final_metrics draws with its own batch size: the same estimator, a different draw of z
    assert got["nll_iw"] == pytest.approx(per.mean().item(), abs=1.0)
    # the standard error by hand in float64: sqrt(sum (v - mean)^2 / (n - 1)) / sqrt(n)
    ref = iwae_nll_per_image(trained_vae, val_x[:200], k=20, seed=3).tolist()
    mean = sum(ref) / 200
    se = math.sqrt(sum((v - mean) ** 2 for v in ref) / 199) / math.sqrt(200)
    assert got["nll_iw"] == pytest.approx(mean, rel=1e-9)
    assert got["nll_iw_se"] == pytest.approx(se, rel=1e-9)
    assert 0.1 < got["nll_iw_se"] < 5  # digits differ by tens of nats: a 200-image mean is uncertain by ~1


def test_iwae_nll_rejects_k_below_one(trained_vae, val_x):
    with pytest.raises(ValueError, match="k must be >= 1"):
        iwae_nll(trained_vae, val_x[:4], k=0)


# ---------------------------------------------------------------- active units


def test_active_units_counts_dims_whose_mean_varies(val_x):
    torch.manual_seed(0)
    m = VAE(ModelConfig(latent_dim=6, hidden_width=32))
    head = m.encoder[-1]  # Linear(32, 12): rows 0..5 are the mean, 6..11 the log-variance
    with torch.no_grad():
        for i in (1, 3, 5):  # the mean ignores the input: constant 0
            head.weight[i].zero_()
            head.bias[i].zero_()
        for i in (0, 2, 4):  # Var_x(mu_i) ~ 0.003 at init; x10 weights -> ~0.3
            head.weight[i].mul_(10.0)
    mu = encode(m, val_x).double()
    var = mu.var(0)
    assert (var[[1, 3, 5]] == 0).all() and (var[[0, 2, 4]] > 0.05).all()
    assert active_units(m, val_x) == 3
    assert active_units(m, val_x, threshold=0.0) == 3
    assert active_units(m, val_x, threshold=1e6) == 0


def test_active_units_match_a_float64_count(trained_vae, val_x):
    with torch.no_grad():
        mu = trained_vae.encode(val_x)[0].double()
    expected = int((mu.var(0) > 0.01).sum())
    assert active_units(trained_vae, val_x) == expected
    assert 1 <= expected <= TINY_MODEL.latent_dim


def test_active_units_of_an_autoencoder_use_its_codes(val_x):
    torch.manual_seed(0)
    ae = Autoencoder(ModelConfig(latent_dim=4, hidden_width=16))
    with torch.no_grad():
        ae.encoder[-1].weight[2].zero_()
        ae.encoder[-1].bias[2].zero_()
        ae.encoder[-1].weight[[0, 1, 3]] *= 10
    assert active_units(ae, val_x) == 3


# ---------------------------------------------------------------- encode / reconstruct helpers


def test_encode_and_reconstruct_do_not_depend_on_batch_size(trained_vae, val_x):
    x = val_x[:50]
    codes = encode(trained_vae, x, batch_size=7)
    assert codes.shape == (50, TINY_MODEL.latent_dim) and codes.device.type == "cpu"
    torch.testing.assert_close(codes, encode(trained_vae, x))
    r = reconstruct(trained_vae, x, batch_size=7)
    assert r.shape == (50, 784) and r.min() >= 0 and r.max() <= 1
    torch.testing.assert_close(r, reconstruct(trained_vae, x))


# ---------------------------------------------------------------- grids


def cell(grid: torch.Tensor, row: int, col: int, pad: int) -> torch.Tensor:
    """The 28x28 image at (row, col) of a make_grid image (first channel)."""
    top, left = pad + row * (28 + pad), pad + col * (28 + pad)
    return grid[0, top : top + 28, left : left + 28]


def test_sample_grid_shape_and_content(trained_vae):
    grid = sample_grid(trained_vae, n=64, seed=3, nrow=8)
    assert grid.shape == (3, 8 * 30 + 2, 8 * 30 + 2)
    assert grid.min() >= 0 and grid.max() <= 1
    assert torch.equal(grid, sample_grid(trained_vae, n=64, seed=3, nrow=8))
    samples = trained_vae.sample(64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(cell(grid, 0, 0, 2), samples[0].reshape(28, 28))
    torch.testing.assert_close(cell(grid, 7, 7, 2), samples[63].reshape(28, 28))
    assert sample_grid(trained_vae, n=12, nrow=4).shape == (3, 3 * 30 + 2, 4 * 30 + 2)


def test_reconstruction_grid_puts_originals_above_reconstructions(trained_vae, val_x):
    grid = reconstruction_grid(trained_vae, val_x, n=16)
    assert grid.shape == (3, 2 * 30 + 2, 16 * 30 + 2)
    recon = reconstruct(trained_vae, val_x[:16])
    for j in (0, 5, 15):
        torch.testing.assert_close(cell(grid, 0, j, 2), val_x[j].reshape(28, 28))
        torch.testing.assert_close(cell(grid, 1, j, 2), recon[j].reshape(28, 28))


def test_image_grid_of_an_autoencoder_reconstruction(val_x):
    ae = Autoencoder(ModelConfig(latent_dim=4, hidden_width=16))
    assert reconstruction_grid(ae, val_x, n=4).shape == (3, 62, 4 * 30 + 2)
    assert image_grid(val_x[:3], nrow=3, pad=0).shape == (3, 28, 84)


def test_manifold_grid_decodes_prior_quantiles(val_x):
    torch.manual_seed(0)
    m = VAE(ModelConfig(latent_dim=2, hidden_width=16))
    n, span = 5, 0.95
    grid = manifold_grid(m, n=n, span=span)
    assert grid.shape == (3, n * 28, n * 28)
    lo, hi = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor([1 - span, span]))
    with torch.no_grad():
        # top-left: smallest z1, largest z2; bottom-right: largest z1, smallest z2
        top_left = torch.sigmoid(m.decode(torch.tensor([[lo, hi]]))).reshape(28, 28)
        bottom_right = torch.sigmoid(m.decode(torch.tensor([[hi, lo]]))).reshape(28, 28)
    torch.testing.assert_close(cell(grid, 0, 0, 0), top_left)
    torch.testing.assert_close(cell(grid, n - 1, n - 1, 0), bottom_right)


def test_manifold_grid_needs_a_2d_latent(trained_vae):
    with pytest.raises(ValueError, match="latent_dim 2.*has 8"):
        manifold_grid(trained_vae)


def test_bits_per_dimension():
    assert log_likelihood_bits(784 * math.log(2)) == pytest.approx(1.0)
    assert log_likelihood_bits(0.0) == 0.0
