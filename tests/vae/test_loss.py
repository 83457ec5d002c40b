"""Tests of vae.loss against values computed by hand or in float64.

Units everywhere are nats per image (summed over pixels/latents, averaged over the batch).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vae.loss import (
    ELBOTerms,
    bernoulli_nll,
    elbo_terms,
    gaussian_kl,
    gaussian_log_prob,
    iwae_bound,
    standard_normal_log_prob,
)


def bce_float64(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-[x log sigmoid(l) + (1 - x) log sigmoid(-l)] in the stable form, float64, summed over the last dim."""
    z, x = logits.double(), x.double()
    return (z.clamp(min=0) - z * x + torch.log1p(torch.exp(-z.abs()))).sum(-1)


def kl_float64(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) summed over the last dim, from torch.distributions in float64."""
    q = torch.distributions.Normal(mu.double(), torch.exp(0.5 * logvar.double()))
    p = torch.distributions.Normal(torch.zeros_like(mu, dtype=torch.float64), torch.ones_like(mu, dtype=torch.float64))
    return torch.distributions.kl_divergence(q, p).sum(-1)


# ---------------------------------------------------------------- KL


def test_kl_of_standard_normal_is_zero():
    kl = gaussian_kl(torch.zeros(4, 20), torch.zeros(4, 20))
    assert kl.shape == (4,)
    assert torch.equal(kl, torch.zeros(4))


def test_kl_of_unit_shift_is_half_a_nat_per_dim():
    latent = 7
    kl = gaussian_kl(torch.ones(3, latent), torch.zeros(3, latent))
    torch.testing.assert_close(kl, torch.full((3,), 0.5 * latent))


def test_kl_of_variance_change_by_hand():
    # KL(N(0, s^2) || N(0, 1)) = 0.5 (s^2 - 1 - log s^2); s^2 = e: 0.5 (e - 2)
    kl = gaussian_kl(torch.zeros(1, 1), torch.ones(1, 1))
    assert kl.item() == pytest.approx(0.5 * (math.e - 2.0), rel=1e-6)


def test_kl_matches_torch_distributions_in_float64(cpu_generator):
    mu = torch.randn(5, 3, 16, generator=cpu_generator, dtype=torch.float64) * 2
    logvar = torch.randn(5, 3, 16, generator=cpu_generator, dtype=torch.float64) * 3
    kl = gaussian_kl(mu, logvar)
    assert kl.shape == (5, 3)
    assert kl.dtype == torch.float64
    torch.testing.assert_close(kl, kl_float64(mu, logvar), rtol=1e-12, atol=1e-12)
    # fp32 inputs agree to fp32 precision
    torch.testing.assert_close(gaussian_kl(mu.float(), logvar.float()).double(), kl, rtol=1e-5, atol=1e-4)


def test_kl_keeps_float64_precision_near_the_prior():
    # KL per dim for logvar = 1e-4 is ~ logvar^2 / 4 = 2.5e-9; fp32 exp(lv) - 1 - lv cannot resolve it,
    # so float64 inputs must not be cast down (they were: the result was 3x too large)
    logvar = torch.full((1, 1), 1e-4, dtype=torch.float64)
    kl = gaussian_kl(torch.zeros_like(logvar), logvar)
    assert kl.item() == pytest.approx(0.5 * (math.expm1(1e-4) - 1e-4), rel=1e-6)


def test_kl_upcasts_bf16_to_fp32():
    mu = torch.ones(2, 4, dtype=torch.bfloat16)
    kl = gaussian_kl(mu, torch.zeros_like(mu))
    assert kl.dtype == torch.float32
    torch.testing.assert_close(kl, torch.full((2,), 2.0))


def test_kl_gradient_matches_closed_form(cpu_generator):
    # d KL / d mu = mu, d KL / d logvar = 0.5 (exp(logvar) - 1)
    mu = torch.randn(3, 5, generator=cpu_generator, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(3, 5, generator=cpu_generator, dtype=torch.float64, requires_grad=True)
    gaussian_kl(mu, logvar).sum().backward()
    torch.testing.assert_close(mu.grad, mu.detach())
    torch.testing.assert_close(logvar.grad, 0.5 * (logvar.detach().exp() - 1))


# ---------------------------------------------------------------- BCE


def test_bce_by_hand():
    # one image of 2 pixels: logit 0 -> p = 0.5 whatever x; logit log 3 -> p = 0.75, x = 1
    logits = torch.tensor([[0.0, math.log(3.0)]])
    x = torch.tensor([[0.0, 1.0]])
    assert bernoulli_nll(logits, x).item() == pytest.approx(math.log(2.0) - math.log(0.75), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bce_is_stable_for_extreme_logits(dtype):
    logits = torch.tensor([[100.0, 100.0, -100.0, -100.0]], dtype=dtype, requires_grad=True)
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=dtype)
    nll = bernoulli_nll(logits, x)
    # exact: log(1 + e^-100) ~ 3.7e-44 for the right answers, 100 + that for the wrong ones
    assert nll.item() == pytest.approx(200.0, rel=1e-12)
    per_pixel = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
    assert per_pixel[0, 0].item() < 1e-40 and per_pixel[0, 3].item() < 1e-40
    nll.sum().backward()
    assert torch.isfinite(logits.grad).all()
    torch.testing.assert_close(logits.grad, torch.tensor([[0.0, 1.0, -1.0, 0.0]], dtype=dtype))


def test_bce_matches_float64_formula_for_binary_and_grayscale(cpu_generator):
    logits = torch.randn(6, 784, generator=cpu_generator) * 8
    grey = torch.rand(6, 784, generator=cpu_generator)
    binary = torch.bernoulli(grey, generator=cpu_generator)
    for x in (binary, grey):
        nll = bernoulli_nll(logits, x)
        assert nll.shape == (6,)
        torch.testing.assert_close(nll.double(), bce_float64(logits, x), rtol=1e-5, atol=1e-3)
    # float64 inputs stay float64 and match to float64 precision
    nll64 = bernoulli_nll(logits.double(), grey.double())
    assert nll64.dtype == torch.float64
    torch.testing.assert_close(nll64, bce_float64(logits, grey), rtol=1e-12, atol=1e-10)


def test_bce_is_minus_bernoulli_log_prob(cpu_generator):
    logits = torch.randn(4, 784, generator=cpu_generator, dtype=torch.float64) * 3
    x = torch.bernoulli(torch.full((4, 784), 0.3, dtype=torch.float64), generator=cpu_generator)
    ref = -torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(bernoulli_nll(logits, x), ref)


def test_bce_gradients_pass_gradcheck_for_logits_and_targets(cpu_generator):
    # the backward is written by hand: check both inputs against finite differences in float64
    logits = (torch.randn(3, 20, generator=cpu_generator, dtype=torch.float64) * 4).requires_grad_()
    x = torch.rand(3, 20, generator=cpu_generator, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(bernoulli_nll, (logits, x))


def test_bce_gradients_match_torchs_kernel_with_broadcast_targets(cpu_generator):
    # IWAE decodes k samples per image: logits (k, B, D) against targets (B, D)
    logits = torch.randn(5, 4, 784, generator=cpu_generator) * 6
    x = torch.rand(4, 784, generator=cpu_generator)
    mine, ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    weights = torch.rand(5, 4, generator=cpu_generator)
    (bernoulli_nll(mine, x) * weights).sum().backward()
    (F.binary_cross_entropy_with_logits(ref, x.expand_as(ref), reduction="none").sum(-1) * weights).sum().backward()
    torch.testing.assert_close(mine.grad, ref.grad)


# ---------------------------------------------------------------- Gaussian log densities


def test_gaussian_log_probs_match_torch_distributions(cpu_generator):
    z = torch.randn(7, 5, generator=cpu_generator, dtype=torch.float64)
    mu = torch.randn(7, 5, generator=cpu_generator, dtype=torch.float64)
    logvar = torch.randn(7, 5, generator=cpu_generator, dtype=torch.float64)
    ref_q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    ref_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(z, mu, logvar), ref_q)
    torch.testing.assert_close(standard_normal_log_prob(z), ref_p)


# ---------------------------------------------------------------- ELBO terms


def test_elbo_terms_sum_over_pixels_and_average_over_batch(cpu_generator):
    b, d, latent = 3, 784, 4
    logits = torch.randn(b, d, generator=cpu_generator, dtype=torch.float64)
    x = torch.bernoulli(torch.full((b, d), 0.5, dtype=torch.float64), generator=cpu_generator)
    mu = torch.randn(b, latent, generator=cpu_generator, dtype=torch.float64)
    logvar = torch.randn(b, latent, generator=cpu_generator, dtype=torch.float64)
    t = elbo_terms(logits, x, mu, logvar)
    assert isinstance(t, ELBOTerms)
    # by hand: per-image sums, then the mean of the three images
    recon = sum(bce_float64(logits[i : i + 1], x[i : i + 1]).item() for i in range(b)) / b
    kl = sum(kl_float64(mu[i : i + 1], logvar[i : i + 1]).item() for i in range(b)) / b
    assert t.recon_bce.item() == pytest.approx(recon, rel=1e-12)
    assert t.kl.item() == pytest.approx(kl, rel=1e-12)
    assert t.elbo.item() == pytest.approx(-(recon + kl), rel=1e-12)
    # one image's recon alone is hundreds of nats (784 pixels), so a per-pixel mean would be off by 784x
    assert t.recon_bce.item() > 100


def test_beta_weights_only_the_training_loss():
    logits = torch.zeros(2, 784)
    x = torch.ones(2, 784)
    mu, logvar = torch.ones(2, 10), torch.zeros(2, 10)
    t = elbo_terms(logits, x, mu, logvar)
    recon, kl = 784 * math.log(2.0), 5.0  # p = 0.5 per pixel; 0.5 nat per shifted dim
    # recon is an fp32 sum of 784 equal terms; its rounding error is systematic, and how large depends on
    # the order the CPU kernel adds them in (its vector width and accumulators): 1.9e-7 here, 1.4e-6 for
    # 4 sequential accumulators. Any order of n positive terms is within (n - 1) u of their sum (u = 2**-24);
    # with a u each for the terms themselves and the few operations after the sum, 800 u = 4.8e-5 bounds
    # every order, still 750 times finer than what beta = 4 adds (4 * kl / recon = 3.7e-2)
    rel = 800 * 2.0**-24
    assert t.recon_bce.item() == pytest.approx(recon, rel=rel)
    assert t.kl.item() == pytest.approx(kl, rel=1e-6)
    assert t.elbo.item() == pytest.approx(-(recon + kl), rel=rel)
    assert t.loss().item() == pytest.approx(recon + kl, rel=rel)
    assert t.loss(0.0).item() == pytest.approx(recon, rel=rel)
    assert t.loss(4.0).item() == pytest.approx(recon + 4 * kl, rel=rel)
    # the reported ELBO does not depend on beta
    assert elbo_terms(logits, x, mu, logvar).elbo.item() == t.elbo.item()


# ---------------------------------------------------------------- IWAE bound


def test_iwae_bound_of_identical_log_weights_is_that_value():
    for k in (1, 2, 50, 5000):
        log_w = torch.full((k, 3), -87.25, dtype=torch.float64)
        torch.testing.assert_close(iwae_bound(log_w), torch.full((3,), -87.25, dtype=torch.float64))


def test_iwae_bound_with_one_sample_is_the_log_weight(cpu_generator):
    log_w = torch.randn(1, 6, generator=cpu_generator) * 100
    torch.testing.assert_close(iwae_bound(log_w), log_w[0])


def test_iwae_bound_by_hand_and_along_another_dim():
    # log((1 + 3) / 2) = log 2
    log_w = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    assert iwae_bound(log_w, dim=1).item() == pytest.approx(math.log(2.0), rel=1e-12)
    assert iwae_bound(log_w.T, dim=0).item() == pytest.approx(math.log(2.0), rel=1e-12)


def test_iwae_bound_is_stable_for_very_negative_log_weights():
    # per-image log-weights of MNIST are around -100 nats, exp of which is 0 in fp32
    log_w = torch.tensor([[-1000.0], [-1000.0 + math.log(3.0)]])
    assert iwae_bound(log_w).item() == pytest.approx(-1000.0 + math.log(2.0), rel=1e-6)


def test_iwae_bound_is_at_least_the_mean_log_weight(cpu_generator):
    # Jensen: log mean exp >= mean log, strictly unless the weights are equal
    log_w = torch.randn(50, 20, generator=cpu_generator, dtype=torch.float64) * 5 - 100
    bound = iwae_bound(log_w)
    assert (bound > log_w.mean(0)).all()
    assert (bound <= log_w.max(0).values).all()
