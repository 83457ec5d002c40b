"""Evaluation of trained models: ELBO terms, importance-weighted NLL, active units, image grids.

All scores are nats per image on a fixed image tensor (N, 784); every function
runs under no_grad in chunks so the full 10,000-image test set fits in memory.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from vae.loss import bernoulli_nll, gaussian_kl, gaussian_log_prob, iwae_bound, standard_normal_log_prob
from vae.model import IMAGE_SHAPE

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2015: Cov_x(E_q[z_i | x]) > 0.01


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def in_eval_mode(fn: Callable) -> Callable:
    """Decorator: run fn(model, ...) with the model in eval mode."""

    @functools.wraps(fn)
    def wrapped(model: nn.Module, *args, **kwargs):
        with eval_mode(model):
            return fn(model, *args, **kwargs)

    return wrapped


@torch.no_grad()
@in_eval_mode
def elbo_metrics(model: nn.Module, x: torch.Tensor, batch_size: int = 2000, seed: int = 0) -> dict[str, float]:
    """Single-sample ELBO, reconstruction BCE and KL (beta = 1), averaged over x, nats per image.

    For a model without a KL (the autoencoder) only `recon_bce` is returned.
    z is drawn from a generator seeded with `seed`, so the numbers repeat.
    """
    dev = _device(model)
    g = torch.Generator(device=dev).manual_seed(seed)
    recon = kl = 0.0
    n = x.shape[0]
    for xb in x.split(batch_size):
        xb = xb.to(dev)
        if hasattr(model, "reparameterize"):
            mu, logvar = model.encode(xb)
            z = model.reparameterize(mu, logvar, generator=g)
            recon += bernoulli_nll(model.decode(z), xb).sum().item()
            kl += gaussian_kl(mu, logvar).sum().item()
        else:
            recon += bernoulli_nll(model(xb), xb).sum().item()
    if not hasattr(model, "reparameterize"):
        return {"recon_bce": recon / n}
    return {"elbo": -(recon + kl) / n, "recon_bce": recon / n, "kl": kl / n}


@torch.no_grad()
@in_eval_mode
def iwae_nll_per_image(
    model: nn.Module,
    x: torch.Tensor,
    k: int = 5000,
    batch_size: int = 100,
    chunk: int = 500,
    seed: int = 0,
) -> torch.Tensor:
    """Importance-weighted estimate of -log p(x) for each image, nats, (N,) float64 on the CPU.

    log w = log p(x|z) + log p(z) - log q(z|x) for k samples z ~ q(z|x); the bound
    is logsumexp over k - log k (Burda et al. 2015). Samples are drawn `chunk` at
    a time for `batch_size` images, so memory is O(batch_size * chunk * 784).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    dev = _device(model)
    g = torch.Generator(device=dev).manual_seed(seed)
    out = []
    for xb in x.split(batch_size):
        xb = xb.to(dev)
        mu, logvar = model.encode(xb)  # (B, L)
        std = torch.exp(0.5 * logvar)
        log_ws = []
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            eps = torch.randn((m, *mu.shape), generator=g, device=dev)  # (m, B, L)
            z = mu + std * eps
            log_px = -bernoulli_nll(model.decode(z), xb.expand(m, *xb.shape))  # (m, B)
            log_ws.append(log_px + standard_normal_log_prob(z) - gaussian_log_prob(z, mu, logvar))
        out.append(-iwae_bound(torch.cat(log_ws), dim=0).double().cpu())  # (B,)
    return torch.cat(out)


def iwae_nll(
    model: nn.Module,
    x: torch.Tensor,
    k: int = 5000,
    batch_size: int = 100,
    chunk: int = 500,
    seed: int = 0,
) -> float:
    """The mean over x of `iwae_nll_per_image`: nats per image (lower is better).

    With k = 1 it is the negative single-sample ELBO with a Monte Carlo KL,
    log q(z|x) - log p(z): for the same seed and batch_size it draws the same z as
    `elbo_metrics`, whose closed-form KL makes the two equal in expectation only.
    """
    return iwae_nll_per_image(model, x, k, batch_size, chunk, seed).mean().item()


def mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean of per-image values and its standard error std / sqrt(n) (unbiased std; 0 for one value)."""
    v = values.double()
    se = v.std(unbiased=True).item() / math.sqrt(len(v)) if len(v) > 1 else 0.0
    return v.mean().item(), se


@torch.no_grad()
def map_batches(
    model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 2000
) -> torch.Tensor:
    """fn over x in batches on the model's device, in eval mode; the result as float32 on the CPU."""
    dev = _device(model)
    with eval_mode(model):
        return torch.cat([fn(xb.to(dev)).float().cpu() for xb in x.split(batch_size)])


def encode(model: nn.Module, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """Deterministic codes (posterior means for a VAE), (N, latent_dim), on the CPU."""
    return map_batches(model, model.codes, x, batch_size)


def active_units(model: nn.Module, x: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Latent dimensions whose posterior mean varies over the data: Var_x(mu_i(x)) > threshold."""
    mu = encode(model, x).double()
    return int((mu.var(dim=0, unbiased=True) > threshold).sum().item())


def reconstruct(model: nn.Module, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """Bernoulli means of the reconstruction of x, (N, 784), on the CPU."""
    return map_batches(model, model.reconstruct, x, batch_size)


def image_grid(images: torch.Tensor, nrow: int = 8, pad: int = 2) -> torch.Tensor:
    """(N, 784) in [0, 1] -> one (3, H, W) grid image (torchvision.utils.make_grid)."""
    from torchvision.utils import make_grid  # imported here: torchvision costs seconds at startup

    imgs = images.detach().float().cpu().clamp(0, 1).reshape(-1, *IMAGE_SHAPE)
    return make_grid(imgs, nrow=nrow, padding=pad, pad_value=1.0)


@torch.no_grad()
def sample_grid(model: nn.Module, n: int = 64, seed: int = 0, nrow: int = 8) -> torch.Tensor:
    """Grid of n samples from the VAE's prior, decoded to Bernoulli means."""
    g = torch.Generator(device=_device(model)).manual_seed(seed)
    return image_grid(model.sample(n, generator=g), nrow=nrow)


def reconstruction_grid(model: nn.Module, x: torch.Tensor, n: int = 16) -> torch.Tensor:
    """Two rows per block: originals above their reconstructions (n images per row)."""
    x = x[:n].cpu()
    return reconstruction_pairs_grid(x, reconstruct(model, x), n)


def reconstruction_pairs_grid(x: torch.Tensor, recon: torch.Tensor, n: int = 16) -> torch.Tensor:
    """Originals in the first row, their reconstructions in the second."""
    return image_grid(torch.cat([x[:n].cpu(), recon[:n].cpu()]), nrow=n)


@torch.no_grad()
def manifold_grid(model: nn.Module, n: int = 20, span: float = 0.95) -> torch.Tensor:
    """For a 2-D latent space: decode an n x n grid of prior quantiles (Kingma & Welling, Fig. 4)."""
    if model.latent_dim != 2:
        raise ValueError(f"the manifold grid needs latent_dim 2, the model has {model.latent_dim}")
    q = torch.linspace(1 - span, span, n, dtype=torch.float64)
    vals = torch.distributions.Normal(0.0, 1.0).icdf(q).float()
    # rows top to bottom: z2 decreasing, columns: z1 increasing
    zz = torch.stack(torch.meshgrid(vals, vals.flip(0), indexing="xy"), dim=-1).reshape(-1, 2)
    imgs = torch.sigmoid(model.decode(zz.to(_device(model))))
    return image_grid(imgs, nrow=n, pad=0)


def log_likelihood_bits(nll_nats: float) -> float:
    """Bits per dimension of an NLL in nats per 784-pixel image."""
    return nll_nats / (784 * math.log(2))


def final_metrics(
    model: nn.Module, x: torch.Tensor, iw_samples: int = 100, iw_images: int | None = None, seed: int = 0
) -> dict[str, float]:
    """The end-of-training scores of a VAE on test images (nats per image, higher ELBO is better).

    elbo, recon_bce, kl: single-sample, over all of x; nll_iw: IWAE bound with k =
    iw_samples over the first iw_images images, nll_iw_se its standard error across
    those images (how far the mean could move with other test images, not the Monte
    Carlo noise of k); active_units: a count, not nats.
    """
    out = elbo_metrics(model, x, seed=seed)
    xi = x if iw_images is None else x[:iw_images]
    out["nll_iw"], out["nll_iw_se"] = mean_and_se(iwae_nll_per_image(model, xi, k=iw_samples, seed=seed))
    out["active_units"] = float(active_units(model, x))
    return out
