"""Matmul FLOPs of one training step of an MLP VAE: every GEMM of forward and backward, by shape.

The floor of `python -m bench.perf` is these FLOPs at a measured GEMM rate (bench.perf.probe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from vae.model import ModelConfig, build_model


@dataclass(frozen=True)
class Gemm:
    """One product (m, k) @ (k, n) of a training step; `role` says which pass it belongs to."""

    m: int
    k: int
    n: int
    role: Literal["forward", "weight-grad", "input-grad"]

    @property
    def flops(self) -> int:
        """Multiply-adds counted as 2 FLOPs."""
        return 2 * self.m * self.k * self.n


def linear_layers(config: ModelConfig) -> list[tuple[int, int]]:
    """(in_features, out_features) of every Linear of the VAE that `config` builds, in forward order."""
    model = build_model("vae", config)
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


def training_gemms(config: ModelConfig, batch: int) -> list[Gemm]:
    """The GEMMs of one forward + backward step on `batch` images.

    Each Linear has a forward product and a weight-gradient product; all but the
    first also need the gradient of their input. The first Linear's input is the
    images, which need no gradient, so autograd skips that product and so do we.
    """
    out: list[Gemm] = []
    for i, (d_in, d_out) in enumerate(linear_layers(config)):
        out.append(Gemm(batch, d_in, d_out, "forward"))  # x (B, in) @ W^T (in, out)
        out.append(Gemm(d_out, batch, d_in, "weight-grad"))  # g^T (out, B) @ x (B, in)
        if i > 0:
            out.append(Gemm(batch, d_out, d_in, "input-grad"))  # g (B, out) @ W (out, in)
    return out


def epoch_matmul_flops(config: ModelConfig, n_images: int, batch: int) -> int:
    """Forward + backward matmul FLOPs of one pass over n_images in batches of `batch` (last one smaller)."""
    forward = sum(g.flops for g in training_gemms(config, 1) if g.role == "forward")
    if forward != config.matmul_flops_per_image():  # the layer list and ModelConfig's count must agree
        raise AssertionError(
            f"forward FLOPs {forward} != ModelConfig.matmul_flops_per_image() {config.matmul_flops_per_image()}"
        )
    full, rest = divmod(n_images, batch)
    flops = full * sum(g.flops for g in training_gemms(config, batch))
    return flops + (sum(g.flops for g in training_gemms(config, rest)) if rest else 0)
