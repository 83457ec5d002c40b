"""Baselines the VAE is compared with at the same latent size: a plain autoencoder and PCA.

`train_baseline("ae" | "pca", model_config, train_config, data, device)` returns a model with the
VAE's interface (codes, decode -> logits, reconstruct -> means); `generate_images(kind, model, x, n, seed)`
draws images the way bench.scores and bench.images both do.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn
from sklearn.decomposition import PCA

from vae.data import Datasets, binarize_once
from vae.evaluate import encode, eval_mode
from vae.model import INPUT_DIM, ModelConfig, build_model
from vae.train import EpochCallback, TrainConfig, fit, seed_everything

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
    def fit(cls, x: torch.Tensor, latent_dim: int, seed: int = 0) -> "PCAModel":
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


Baseline = Callable[..., nn.Module]


def _train_autoencoder(
    model_config: ModelConfig,
    train_config: TrainConfig,
    data: Datasets,
    device: torch.device | str,
    progress: bool,
    on_epoch_end: EpochCallback | None,
    on_model: Callable[[nn.Module], None],
) -> nn.Module:
    # seed before building so the initial weights come from train_config.seed too (fit seeds only
    # shuffling, binarization and noise); the VAE it is compared with should be built the same way
    seed_everything(train_config.seed)
    model = build_model("ae", model_config)
    on_model(model)
    fit(model, data, train_config, device, on_epoch_end=on_epoch_end, progress=progress)
    return model


def _fit_pca(
    model_config: ModelConfig,
    train_config: TrainConfig,
    data: Datasets,
    device: torch.device | str,
    progress: bool,
    on_epoch_end: EpochCallback | None,
    on_model: Callable[[nn.Module], None],
) -> nn.Module:
    # all training images, binarized once with the training seed when the models see binary ones
    x = training_images(data, seed=train_config.seed)
    model = PCAModel.fit(x, model_config.latent_dim, seed=train_config.seed).to(device).eval()
    on_model(model)
    return model


BASELINES: dict[str, Baseline] = {"ae": _train_autoencoder, "pca": _fit_pca}


def train_baseline(
    kind: str,
    model_config: ModelConfig,
    train_config: TrainConfig,
    data: Datasets,
    device: torch.device | str = "cpu",
    progress: bool = False,
    on_epoch_end: EpochCallback | None = None,
    on_model: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """A baseline at `model_config.latent_dim`, in eval mode on `device`.

    "ae": vae.model.Autoencoder with the same ModelConfig (beta unused), trained by vae.train.fit
    with `train_config` (same data, epochs, optimizer, seed as the VAE) on reconstruction BCE alone;
    `on_epoch_end` receives its per-epoch metrics. "pca": scikit-learn PCA with latent_dim
    components fitted on the training images (no epochs; `train_config.seed` picks the binarization).
    `on_model(model)` is called once the model exists (the AE's before training), e.g. to draw it at each epoch.
    """
    if kind not in BASELINES:
        raise ValueError(f"baseline must be one of {sorted(BASELINES)}, got {kind!r}")
    return BASELINES[kind](model_config, train_config, data, device, progress, on_epoch_end, on_model or (lambda m: None))


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
    def fit(cls, model: nn.Module, x: torch.Tensor) -> "FittedGaussianSampler":
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
            return torch.cat([torch.sigmoid(self.model.decode(zb.to(dev))).float().cpu() for zb in z.split(SAMPLE_CHUNK)])


SAMPLERS: dict[str, Callable[[nn.Module, torch.Tensor], Sampler]] = {
    "vae": lambda model, x: PriorSampler(model),
    "ae": FittedGaussianSampler.fit,
    "pca": FittedGaussianSampler.fit,
}


def image_sampler(kind: str, model: nn.Module, train_x: torch.Tensor | None) -> Sampler:
    """How a model of `kind` generates: the prior for "vae" (train_x unused), a Gaussian fitted to the
    codes of train_x otherwise."""
    if kind not in SAMPLERS:
        raise ValueError(f"kind must be one of {sorted(SAMPLERS)}, got {kind!r}")
    return SAMPLERS[kind](model, train_x)


def sampler_generator(kind: str, model: nn.Module, seed: int) -> torch.Generator:
    """A generator seeded with `seed` on the device the sampler of `kind` draws on."""
    dev = next(model.parameters()).device if kind == "vae" else torch.device("cpu")
    return torch.Generator(device=dev).manual_seed(seed)


def generate_images(kind: str, model: nn.Module, train_x: torch.Tensor | None, n: int, seed: int) -> torch.Tensor:
    """n images generated by the model of `kind` with draws seeded by `seed`: Bernoulli means (n, 784) on the CPU."""
    return image_sampler(kind, model, train_x).sample(n, sampler_generator(kind, model, seed))
