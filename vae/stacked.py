"""Train K same-shaped models, one per seed, as one stacked model: weights (K, in, out), batched matmuls.

`fit_replicates("vae", model_cfg, train_cfg, seeds, data, device)` returns, per seed, an ordinary model
from vae.model.build_model and its per-epoch history, as `fit` would give them one after the other.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import torch
from torch import nn

from vae.data import Datasets
from vae.denormal import denormals_flushed
from vae.evaluate import elbo_metrics
from vae.fused import FusedStep
from vae.loss import bernoulli_nll, gaussian_kl
from vae.model import INPUT_DIM, ModelConfig, build_model
from vae.train import (
    NONFINITE_CHECK_EVERY,
    NonFiniteLossError,
    TrainConfig,
    fit,
    fused_step_applies,
    make_optimizer,
    noise_generator,
    seed_everything,
)

Strategy = Literal["auto", "stacked", "sequential"]
STRATEGIES: tuple[str, ...] = ("auto", "stacked", "sequential")
PROBE_STEPS = 4  # timed steps of each way per probe round (after 2 untimed)
PROBE_ROUNDS = 3  # the probe keeps the best round of each way
_PROBED: dict[tuple, bool] = {}  # (kind, widths, K, batch, threads, device) -> stacking won


class StackedMLP:
    """K copies of one nn.Sequential of Linear layers and activations, with the K weights stacked.

    Linear i of model k becomes weight[i][k] = W_k^T, (in, out), and bias[i][k], (1, out);
    h (K, B, in) -> baddbmm(bias, h, weight) (K, B, out), so each model sees only its own batch.
    """

    def __init__(self, seqs: Sequence[nn.Sequential], device: torch.device) -> None:
        self.ops: list[tuple[torch.Tensor, torch.Tensor] | nn.Module] = []
        for i, layer in enumerate(seqs[0]):
            if isinstance(layer, nn.Linear):
                w = torch.stack([s[i].weight.detach().t() for s in seqs]).to(device).contiguous()  # (K, in, out)
                b = torch.stack([s[i].bias.detach() for s in seqs]).unsqueeze(1).to(device).contiguous()  # (K, 1, out)
                self.ops.append((w.requires_grad_(), b.requires_grad_()))
            else:
                self.ops.append(layer)  # an activation: elementwise, any shape

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            h = torch.baddbmm(op[1], h, op[0]) if isinstance(op, tuple) else op(h)
        return h

    def parameters(self) -> list[torch.Tensor]:
        return [t for op in self.ops if isinstance(op, tuple) for t in op]

    @torch.no_grad()
    def write_to(self, seqs: Sequence[nn.Sequential]) -> None:
        """Copy model k's weights back into seqs[k] (ordinary nn.Linear layers)."""
        for i, op in enumerate(self.ops):
            if isinstance(op, tuple):
                for k, s in enumerate(seqs):
                    s[i].weight.copy_(op[0][k].t())
                    s[i].bias.copy_(op[1][k, 0])

    def grads(self, k: int) -> list[torch.Tensor]:
        """Model k's gradients in nn.Sequential.parameters() order (weight (out, in), bias (out,))."""
        out = []
        for op in self.ops:
            if isinstance(op, tuple):
                out += [op[0].grad[k].t(), op[1].grad[k, 0]]
        return out


class StackedModels:
    """K VAEs or autoencoders of one ModelConfig trained as one: the loss is the sum of the K batch-mean losses.

    Summing makes model k's gradient exactly that of its own loss; Adam is elementwise, so one
    Adam over the stacks steps every model as its own Adam would.
    """

    def __init__(self, kind: str, models: Sequence[nn.Module], device: torch.device) -> None:
        if kind not in ("vae", "ae"):
            raise ValueError(f"kind must be 'vae' or 'ae', got {kind!r}")
        self.kind, self.models = kind, list(models)
        self.beta = float(models[0].config.beta)
        self.encoder = StackedMLP([m.encoder for m in models], device)
        self.decoder = StackedMLP([m.decoder for m in models], device)

    def parameters(self) -> list[torch.Tensor]:
        return self.encoder.parameters() + self.decoder.parameters()

    def loss(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> dict[str, torch.Tensor]:
        """x (K, B, 784) -> "loss" (scalar, the sum over models) and each term per model, (K,), nats per image.

        Model k's z noise is drawn from generators[k], (B, latent_dim), exactly as VAE.loss draws it.
        """
        h = self.encoder(x)  # (K, B, 2 * latent) for a VAE, (K, B, latent) for an autoencoder
        if self.kind == "ae":
            recon = bernoulli_nll(self.decoder(h), x).mean(-1)  # (K,)
            return {"loss": recon.sum(), "recon_bce": recon}
        mu, logvar = h.chunk(2, dim=-1)  # (K, B, latent) each
        eps = torch.stack(
            [torch.randn(mu.shape[1:], generator=g, device=mu.device, dtype=mu.dtype) for g in generators]
        )
        z = mu + torch.exp(0.5 * logvar) * eps
        recon = bernoulli_nll(self.decoder(z), x).mean(-1)  # (K,)
        kl = gaussian_kl(mu, logvar).mean(-1)  # (K,)
        return {"loss": (recon + self.beta * kl).sum(), "recon_bce": recon, "kl": kl, "elbo": -(recon + kl)}

    def write_back(self) -> None:
        """Put the trained stacks into the K ordinary models."""
        self.encoder.write_to([m.encoder for m in self.models])
        self.decoder.write_to([m.decoder for m in self.models])

    def grads(self, k: int) -> list[torch.Tensor]:
        """Model k's gradients in the order of models[k].parameters()."""
        return self.encoder.grads(k) + self.decoder.grads(k)


def stackable(train_cfg: TrainConfig) -> bool:
    """Stacking covers fp32 eager autograd training; bf16 autocast, torch.compile and a forced fused step
    (TrainConfig.step = "fused") train one model at a time."""
    return train_cfg.precision == "fp32" and not train_cfg.compile and train_cfg.step != "fused"


def fit_replicates(
    kind: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    seeds: list[int],
    data: Datasets,
    device: torch.device | str = "cpu",
    *,
    strategy: Strategy = "auto",
    progress: bool = False,
    eval_batch_size: int = 2000,
) -> list[tuple[nn.Module, list[dict[str, float]]]]:
    """For each seed s: the model `seed_everything(s); build_model(kind, model_cfg)` trained as
    `fit(model, data, replace(train_cfg, seed=s), device)` would, and its per-epoch history.

    strategy "stacked" trains all models at once (StackedModels): the same random draws per
    model, results equal to fit's within float tolerance (batched matmuls round differently).
    "sequential" calls fit once per seed. "auto" stacks on a GPU (launch-bound: K models cost
    about one) and on a CPU lets a short timing probe of both ways at these shapes decide,
    once per shape and thread count, against the step fit would take (vae.fused's where it applies);
    bf16, compiled or forced-fused training is always sequential.
    Models come back in eval mode on `device`.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must not be empty")
    device = torch.device(device)
    models = []
    for s in seeds:
        seed_everything(s)  # the initial weights come from the seed, as callers of fit do it
        models.append(build_model(kind, model_cfg))
    if strategy == "auto":
        fused = train_cfg.step != "autograd" and fused_step_applies(models[0], train_cfg, device)
        strategy = (
            "stacked"
            if stackable(train_cfg)
            and len(seeds) > 1
            and stacking_wins(kind, model_cfg, len(seeds), train_cfg.batch_size, device, fused)
            else "sequential"
        )
    if strategy == "sequential" or not stackable(train_cfg):
        return [
            (m, fit(m, data, replace(train_cfg, seed=s), device, progress=progress, eval_batch_size=eval_batch_size))
            for m, s in zip(models, seeds, strict=False)
        ]
    histories = _fit_stacked(kind, models, seeds, train_cfg, data, device, eval_batch_size)
    return list(zip(models, histories, strict=False))


def _fit_stacked(
    kind: str,
    models: list[nn.Module],
    seeds: list[int],
    config: TrainConfig,
    data: Datasets,
    device: torch.device,
    eval_batch_size: int,
) -> list[list[dict[str, float]]]:
    """fit's loop, K models at a time: per-model shuffling, binarization and noise generators."""
    K = len(models)
    for m in models:
        m.to(device).train()
    stack = StackedModels(kind, models, device)
    train, val = data.train.to(device), data.val.to(device)
    opt = make_optimizer(stack.parameters(), config.lr)
    shuffle_gens = [torch.Generator().manual_seed(s) for s in seeds]
    noise_gens = [noise_generator(s, device) for s in seeds]
    n, bs = len(train), config.batch_size
    n_batches = math.ceil(n / bs)
    histories: list[list[dict[str, float]]] = [[] for _ in models]

    with denormals_flushed(config.flush_denormal and device.type == "cpu"):
        for epoch in range(1, config.epochs + 1):
            orders = torch.stack([torch.randperm(n, generator=g, device="cpu") for g in shuffle_gens]).to(
                device
            )  # (K, n)
            keys: list[str] = []
            sums: torch.Tensor | None = None  # (K, len(keys))
            for step, start in enumerate(range(0, n, bs)):
                idx = orders[:, start : start + bs]  # (K, B)
                xb = train.x.index_select(0, idx.reshape(-1)).view(K, idx.shape[1], -1)  # (K, B, 784): one gather
                if train.dynamic:  # each model's binarization from its own generator, in fit's order
                    xb = torch.stack([torch.bernoulli(xb[k], generator=noise_gens[k]) for k in range(K)])
                terms = stack.loss(xb, noise_gens)
                loss = terms["loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                b = xb.shape[1]
                with torch.no_grad():
                    if not keys:
                        keys = [k for k in terms if k != "loss"]
                    batch_terms = torch.stack([terms[k].detach() for k in keys], dim=1)  # (K, len(keys))
                    sums = batch_terms * b if sums is None else sums.add_(batch_terms, alpha=b)
                if step % NONFINITE_CHECK_EVERY == 0 or step == n_batches - 1:
                    value = loss.item()
                    if not math.isfinite(value):
                        raise NonFiniteLossError(epoch, step, value)
            stack.write_back()
            means = (sums / n).tolist()
            for k, m in enumerate(models):
                metrics = {f"train/{key}": v for key, v in zip(keys, means[k], strict=False)}
                if len(val):
                    metrics |= {
                        f"val/{key}": v for key, v in elbo_metrics(m, val.x, eval_batch_size, seed=seeds[k]).items()
                    }
                histories[k].append(metrics)
    for m in models:
        m.eval()
    return histories


def stacking_wins(
    kind: str, model_cfg: ModelConfig, k: int, batch_size: int, device: torch.device, fused: bool = False
) -> bool:
    """Whether one stacked step of k models beats k ordinary steps (vae.fused's steps if `fused`), here,
    at these shapes.

    On a GPU always (a step of these small models is bound by kernel launches). On a CPU
    a probe decides: best of PROBE_ROUNDS interleaved rounds of PROBE_STEPS steps each way,
    on random binary images, with models of their own (the global RNG is left as it was).
    The answer is kept per shape, thread count and device; it costs about 40 steps of one model.
    """
    if device.type != "cpu":
        return True
    key = (kind, model_cfg, k, batch_size, torch.get_num_threads(), str(device), fused)
    if key not in _PROBED:
        _PROBED[key] = _probe(kind, model_cfg, k, batch_size, device, fused)
    return _PROBED[key]


def _probe(kind: str, model_cfg: ModelConfig, k: int, batch_size: int, device: torch.device, fused: bool) -> bool:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        models = [build_model(kind, model_cfg).to(device) for _ in range(k)]
        x = torch.bernoulli(torch.full((k, batch_size, INPUT_DIM), 0.2, device=device))
        gens = [torch.Generator(device=device).manual_seed(i) for i in range(k)]
        stack = StackedModels(kind, models, device)
        s_opt = make_optimizer(stack.parameters(), 1e-4)
        # the stack holds copies of the weights, so the separate models may train on their own
        fused_steps = [FusedStep(m, batch_size, 1e-4) for m in models] if fused else []
        opts = [make_optimizer(m, 1e-4) for m in models] if not fused else []

        def stacked_steps(steps: int) -> None:
            for _ in range(steps):
                s_opt.zero_grad(set_to_none=True)
                stack.loss(x, gens)["loss"].backward()
                s_opt.step()

        def separate_steps(steps: int) -> None:
            for _ in range(steps):
                for i, fs in enumerate(fused_steps):
                    fs.step(x[i], gens[i])
                for i, (m, o) in enumerate(zip(models, opts, strict=False)):
                    o.zero_grad(set_to_none=True)
                    m.loss(x[i], generator=gens[i])["loss"].backward()
                    o.step()

        with denormals_flushed(True):
            best = {stacked_steps: math.inf, separate_steps: math.inf}
            for fn in best:
                fn(2)  # warm-up: allocation, dispatch caches
            for _ in range(PROBE_ROUNDS):
                for fn in best:
                    t0 = time.perf_counter()
                    fn(PROBE_STEPS)
                    best[fn] = min(best[fn], time.perf_counter() - t0)
    return best[stacked_steps] < best[separate_steps]
