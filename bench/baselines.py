"""What the baselines the VAE is compared with are made of: PCA with the VAE's interface, and the samplers of all three.

`PCAModel` (codes, decode -> logits, reconstruct -> means) and the samplers are used through the model-kind
registry bench.models (`fit_model`, `generate_images`); `training_images` is what PCA and the samplers fit on.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import nn

from vae.data import Datasets, binarize_once
from vae.evaluate import encode, eval_mode
from vae.model import INPUT_DIM

PCA_EPS = 1e-3  # PCA outputs are clipped into [eps, 1 - eps]: a pixel predicted wrong costs -log(eps) = 6.9 nats
SAMPLE_CHUNK = 2000  # images decoded at a time when sampling


def training_images(data: Datasets, seed: int, limit: int | None = None) -> torch.Tensor:
    """The first `limit` training images (N, 784) as the models see them, on the CPU.

    Under dynamic binarization that is one Bernoulli(pixel) draw per image, seeded with
    `seed` (the same draw every call); otherwise the grayscale images themselves.
    """
    x = data.train.x[:limit].cpu()
    return binarize_once(x, seed) if data.train.dynamic else x


class PCAModel(nn.Module):
    """PCA with the autoencoders' interface: linear codes, a linear decoder clipped into [eps, 1 - eps].

    Mean and components are frozen parameters (requires_grad=False) rather than buffers, so the
    helpers of vae.evaluate, which find the device from the parameters, work on it unchanged.
    """

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, explained_variance_ratio: torch.Tensor) -> None:
        super().__init__()
        self.mean = nn.Parameter(mean.float().reshape(INPUT_DIM), requires_grad=False)  # (784,)
        self.components = nn.Parameter(components.float(), requires_grad=False)  # (k, 784), orthonormal rows
        self.register_buffer("explained_variance_ratio", explained_variance_ratio.float())  # (k,)

    @classmethod
    def fit(cls, x: torch.Tensor, latent_dim: int, seed: int = 0) -> PCAModel:
        """Fit `latent_dim` components to training images x (N, 784) in [0, 1] with scikit-learn.

        The "covariance_eigh" solver (784 x 784 covariance, then eigh) is exact, fast for N >> 784
        and deterministic; scikit-learn fixes the sign of each component.
        """
        n, d = x.shape
        if d != INPUT_DIM:
            raise ValueError(f"PCA expects images of {INPUT_DIM} pixels, got shape {tuple(x.shape)}")
        if not 1 <= latent_dim <= min(n, d):
            raise ValueError(f"latent_dim must be in [1, {min(n, d)}] for {n} images, got {latent_dim}")
        pca = PCA(n_components=latent_dim, svd_solver="covariance_eigh", random_state=seed)
        pca.fit(x.detach().cpu().numpy().astype(np.float64))
        return cls(
            torch.from_numpy(pca.mean_),
            torch.from_numpy(pca.components_),
            torch.from_numpy(pca.explained_variance_ratio_),
        )

    @property
    def latent_dim(self) -> int:
        return self.components.shape[0]

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 784) -> coordinates in the principal subspace (B, k)."""
        return (x - self.mean) @ self.components.T

    def linear_decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, k) -> unclipped pixel values (B, 784): mean + z @ components."""
        return self.mean + z @ self.components

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, k) -> Bernoulli logits (B, 784) of the clipped output, like the other decoders."""
        return torch.logit(self.linear_decode(z).clamp(PCA_EPS, 1.0 - PCA_EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 784) -> logits of the reconstruction (B, 784), as Autoencoder.forward."""
        return self.decode(self.codes(x))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 784) -> reconstruction clipped into [eps, 1 - eps] (B, 784)."""
        return self.linear_decode(self.codes(x)).clamp(PCA_EPS, 1.0 - PCA_EPS)


class Sampler(Protocol):
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n generated images as Bernoulli means in [0, 1], (n, 784) on the CPU."""
        ...


class PriorSampler:
    """The VAE's own generative model: z ~ N(0, I), decoded (VAE.sample)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """`generator` must live on the model's device (VAE.sample draws z there)."""
        sizes = [min(SAMPLE_CHUNK, n - s) for s in range(0, n, SAMPLE_CHUNK)]
        return torch.cat([self.model.sample(m, generator=generator).float().cpu() for m in sizes])


class FittedGaussianSampler:
    """For models without a prior (AE, PCA): z ~ N(mean, cov) fitted to training codes, decoded.

    Mean and full covariance are estimated in float64 from the codes of the images given
    to `fit`; a relative jitter of 1e-6 * mean variance keeps the Cholesky factor defined
    when a code dimension is (nearly) constant.
    """

    def __init__(self, model: nn.Module, mean: torch.Tensor, cov: torch.Tensor) -> None:
        self.model = model
        self.mean = mean.double()  # (L,)
        self.cov = cov.double()  # (L, L)
        jitter = 1e-6 * max(float(torch.diagonal(self.cov).mean()), 1e-12)
        eye = torch.eye(len(self.mean), dtype=torch.float64)
        self.chol = torch.linalg.cholesky(self.cov + jitter * eye)  # (L, L), lower triangular

    @classmethod
    def fit(cls, model: nn.Module, x: torch.Tensor) -> FittedGaussianSampler:
        """Fit the Gaussian to the codes of training images x (N, 784), N >= 2."""
        z = encode(model, x).double()  # (N, L)
        if z.shape[0] < 2:
            raise ValueError(f"need at least 2 training images to fit a Gaussian, got {z.shape[0]}")
        return cls(model, z.mean(0), torch.cov(z.T).reshape(z.shape[1], z.shape[1]))

    def sample_codes(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """z = mean + chol @ eps, (n, L) float64 on the CPU; `generator` is a CPU generator."""
        eps = torch.randn(n, len(self.mean), generator=generator, dtype=torch.float64)  # (n, L)
        return self.mean + eps @ self.chol.T

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Decoded `sample_codes`: Bernoulli means (n, 784) on the CPU."""
        dev = next(self.model.parameters()).device
        z = self.sample_codes(n, generator).float()
        with eval_mode(self.model):
            return torch.cat(
                [torch.sigmoid(self.model.decode(zb.to(dev))).float().cpu() for zb in z.split(SAMPLE_CHUNK)]
            )
