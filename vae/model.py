"""MLP VAE and plain autoencoder for flattened 28x28 images, and the config that builds them.

`build_model("vae", ModelConfig(...))`; both models share `mlp`, so the autoencoder
is the VAE's encoder and decoder without the log-variance head and the KL term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from annotated_types import Interval
from torch import nn

from vae.checks import check_fields
from vae.loss import bernoulli_nll, elbo_terms

IMAGE_SHAPE = (1, 28, 28)
INPUT_DIM = 28 * 28

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "elu": nn.ELU}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and KL weight of one model."""

    latent_dim: Annotated[int, Interval(ge=1, le=4096)] = 20  # size of z
    hidden_width: Annotated[int, Interval(ge=1, le=65536)] = (
        400  # units in each hidden layer, encoder and decoder alike
    )
    hidden_layers: Annotated[int, Interval(ge=0, le=16)] = (
        1  # hidden layers in the encoder (and mirrored in the decoder)
    )
    beta: Annotated[float, Interval(ge=0, le=1000)] = 1.0  # KL weight in the training loss; reported ELBO always uses 1
    activation: Literal["relu", "tanh", "gelu", "elu"] = "relu"  # a key of ACTIVATIONS

    def __post_init__(self) -> None:
        check_fields(self)

    def matmul_flops_per_image(self) -> int:
        """Forward multiply-add FLOPs (2 per MAC) of encoder + decoder for one image."""
        dims = [INPUT_DIM] + [self.hidden_width] * self.hidden_layers
        enc = list(zip(dims, dims[1:] + [2 * self.latent_dim], strict=False))
        dec_dims = [self.latent_dim] + [self.hidden_width] * self.hidden_layers
        dec = list(zip(dec_dims, dec_dims[1:] + [INPUT_DIM], strict=False))
        return 2 * sum(a * b for a, b in enc + dec)


def mlp(in_dim: int, width: int, layers: int, out_dim: int, activation: str) -> nn.Sequential:
    """in_dim -> (Linear, act) x layers -> Linear(out_dim); no activation on the output."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers):
        mods += [nn.Linear(d, width), ACTIVATIONS[activation]()]
        d = width
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


class VAE(nn.Module):
    """Gaussian encoder q(z|x), standard-normal prior, Bernoulli decoder p(x|z) returning logits."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        # one head emits mean and log-variance together: (B, 2 * latent_dim)
        self.encoder = mlp(INPUT_DIM, c.hidden_width, c.hidden_layers, 2 * c.latent_dim, c.activation)
        self.decoder = mlp(c.latent_dim, c.hidden_width, c.hidden_layers, INPUT_DIM, c.activation)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 784) -> mean, log-variance, each (B, latent_dim)."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic code of each image: the posterior mean, (B, latent_dim)."""
        return self.encode(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(..., latent_dim) -> Bernoulli logits (..., 784)."""
        return self.decoder(z)

    def reparameterize(
        self, mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I): differentiable in mu and logvar."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 784) -> logits (B, 784), mu, logvar (B, latent_dim); z is sampled (from `generator`, else torch's)."""
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar, generator)), mu, logvar

    def loss(
        self, x: torch.Tensor, target: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Training loss recon + beta * KL and its terms (batch means, nats per image); z noise from `generator`."""
        logits, mu, logvar = self(x, generator)
        t = elbo_terms(logits, x if target is None else target, mu, logvar)
        return {"loss": t.loss(self.config.beta), "recon_bce": t.recon_bce, "kl": t.kl, "elbo": t.elbo}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images drawn from the prior, as Bernoulli means in [0, 1]: (n, 784)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        return torch.sigmoid(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean: (B, 784) -> Bernoulli means (B, 784)."""
        return torch.sigmoid(self.decode(self.codes(x)))


class Autoencoder(nn.Module):
    """The VAE's encoder and decoder without the variance head and KL: trained on BCE alone."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.encoder = mlp(INPUT_DIM, c.hidden_width, c.hidden_layers, c.latent_dim, c.activation)
        self.decoder = mlp(c.latent_dim, c.hidden_width, c.hidden_layers, INPUT_DIM, c.activation)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 784) -> (B, latent_dim)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.codes(x))

    def loss(
        self, x: torch.Tensor, target: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Reconstruction BCE (batch mean, nats per image) is the whole loss; draws nothing (`generator` unused)."""
        recon = bernoulli_nll(self(x), x if target is None else target).mean()
        return {"loss": recon, "recon_bce": recon}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(x))


MODELS: dict[str, type[nn.Module]] = {"vae": VAE, "ae": Autoencoder}


def build_model(kind: str, config: ModelConfig) -> nn.Module:
    """A fresh model of `kind` ("vae" or "ae") from `config`."""
    if kind not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {kind!r}")
    return MODELS[kind](config)
