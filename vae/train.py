"""One plain training loop for the models in vae.model, with per-epoch callbacks.

`fit(model, data, TrainConfig(...), device)` trains with Adam on in-memory batches
and hands each epoch's metrics to `on_epoch_end(epoch, metrics)`; it logs nowhere itself.
"""

from __future__ import annotations

import inspect
import math
import os
import random
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from annotated_types import Interval
from torch import nn
from tqdm.auto import tqdm

from vae.checks import check_fields
from vae.data import Datasets, Split
from vae.denormal import denormals_flushed
from vae.evaluate import elbo_metrics
from vae.fused import FusedStep, supports
from vae.model import ModelConfig, build_model

EpochCallback = Callable[[int, dict[str, float]], None]
NONFINITE_CHECK_EVERY = 25  # steps between checks of the running loss (a host sync each)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run."""

    epochs: Annotated[int, Interval(ge=1, le=100_000)] = 10  # passes over the training split
    batch_size: Annotated[int, Interval(ge=1, le=1_000_000)] = 128  # images per Adam step
    lr: Annotated[float, Interval(gt=0, le=10)] = 1e-3  # Adam learning rate
    # seeds shuffling, binarization and z noise (fit's own generators);
    # weights: seed_everything(seed) before build_model
    seed: Annotated[int, Interval(ge=0, le=2**32 - 1)] = 0
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast matmuls, fp32 weights and loss
    compile: bool = False  # torch.compile the model's loss (forward and backward); first steps compile
    flush_denormal: bool = True  # on a CPU, treat subnormal floats as 0 while training (vae.denormal says why)
    # how gradients are computed: "fused" is vae.fused's hand-derived step (no autograd graph, fixed buffers, one
    # flat Adam), "autograd" is loss.backward(); "auto" takes fused wherever it applies (fused_step_applies)
    step: Literal["auto", "fused", "autograd"] = "auto"

    def __post_init__(self) -> None:
        check_fields(self)
        if self.step == "fused" and (self.precision != "fp32" or self.compile):
            raise ValueError("step 'fused' needs precision 'fp32' and compile off; use step 'auto' or 'autograd'")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; `epoch` and `step` say where."""

    def __init__(self, epoch: int, step: int, value: float) -> None:
        super().__init__(f"non-finite training loss {value} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.value = epoch, step, value


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an unavailable choice raises ValueError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' requested but MPS is not available; use --device cpu or auto")
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be one of auto, cpu, cuda, mps; got {name!r}")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """bf16 autocast on the device when asked for, else nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


class LeanAdam:
    """torch.optim.Adam(fused=True) with its defaults (betas 0.9/0.999, eps 1e-8, no weight decay), stepped
    by one direct call of torch's fused kernel.

    The same kernel on the same tensors, so the same numbers as torch.optim.Adam(fused=True), without
    Optimizer.step's per-step Python (hooks, regrouping tensors by device and dtype, one step-count
    kernel per tensor): 0.2-0.7 ms a step on the CPUs of this project, 5-15 % of a small model's step.
    """

    def __init__(self, params: list[torch.Tensor], lr: float) -> None:
        self.params = params
        self.lr = float(lr)
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
        # one step count for all tensors while all are stepped together (always, for these models);
        # per-tensor counts from the first step that skips a tensor without a gradient, as torch.optim keeps them
        self.shared_step = torch.zeros((), dtype=torch.float32, device=params[0].device)
        self.steps: list[torch.Tensor] | None = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]  # Adam skips gradient-less tensors
        if not live:
            return
        if len(live) < len(self.params) and self.steps is None:
            self.steps = [self.shared_step.clone() for _ in self.params]
        pick = (lambda ts: [ts[i] for i in live]) if len(live) < len(self.params) else (lambda ts: ts)
        if self.steps is None:
            self.shared_step.add_(1)
            steps = [self.shared_step] * len(live)
        else:
            steps = pick(self.steps)
            torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            pick(self.params),
            [self.params[i].grad for i in live],
            pick(self.exp_avgs),
            pick(self.exp_avg_sqs),
            [],
            steps,
            amsgrad=False,
            lr=self.lr,
            beta1=0.9,
            beta2=0.999,
            weight_decay=0.0,
            eps=1e-8,
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )


def make_optimizer(params: nn.Module | Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer | LeanAdam:
    """Adam over a model's parameters (or any tensors): LeanAdam where torch's fused kernel takes them
    (one device, one floating dtype), else torch.optim.Adam (fused, or foreach where fused is missing)."""
    params = list(params.parameters() if isinstance(params, nn.Module) else params)
    try:
        opt = torch.optim.Adam(params, lr=lr, fused=True)  # validates that the fused kernel takes these tensors
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, foreach=True)
    same = len({(p.device, p.dtype) for p in params}) == 1
    return LeanAdam(params, lr) if same and hasattr(torch, "_fused_adam_") else opt


def noise_generator(seed: int, device: torch.device) -> torch.Generator:
    """The generator of one run's dynamic binarization and z noise, on `device`, seeded with `seed`.

    One explicit generator per run (not torch's global one) lets several runs draw
    independently side by side (vae.stacked). Binarization and z noise draw from it
    in the order the global generator saw them before, and a fresh generator seeded
    with s gives the same numbers as torch.manual_seed(s), so CPU results are unchanged.
    """
    return torch.Generator(device=device).manual_seed(seed)


def compiled_loss(model: nn.Module) -> Callable[..., dict[str, torch.Tensor]]:
    """model.loss through torch.compile (inductor): forward and backward each become a few fused kernels.

    Shapes are static: the first full batch and a smaller last batch each compile
    once (tens of seconds on a CPU), and a new model compiles again. Random draws
    inside the graph (the reparameterization noise) come from inductor's generator,
    seeded from torch's, so a run repeats for a seed but differs from the eager one.
    """
    return torch.compile(model.loss, dynamic=False)


def fit(
    model: nn.Module,
    data: Datasets,
    config: TrainConfig,
    device: torch.device | str = "cpu",
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
    eval_batch_size: int = 2000,
) -> list[dict[str, float]]:
    """Train `model` in place; return one metrics dict per epoch.

    Metrics are nats per image: `train/<term>` averaged over the epoch's batches
    (as trained: dynamic binarization, sampled z), `val/<term>` on the fixed
    validation split when it is not empty. A callback may raise to stop training
    (Optuna's TrialPruned, say); the exception propagates unchanged.
    """
    device = torch.device(device)
    seed_everything(config.seed)
    model.to(device).train()
    fused = uses_fused_step(model, config, device)
    train = data.train.to(device)
    val = data.val.to(device)
    shuffle_gen = torch.Generator().manual_seed(config.seed)
    # compiled graphs draw their noise from torch's global generator (seeded above), so the
    # compiled path keeps that one for the binarization too: the same stream as before
    noise_gen = None if config.compile else noise_generator(config.seed, device)
    history: list[dict[str, float]] = []
    n_batches = math.ceil(len(train) / config.batch_size)
    if fused:
        fused_step = FusedStep(model, config.batch_size, config.lr)

        def run_epoch(epoch, bar):
            return _fused_epoch(fused_step, train, config, shuffle_gen, noise_gen, epoch, bar)
    else:
        fused_step = None
        opt = make_optimizer(model, config.lr)
        loss_fn = compiled_loss(model) if config.compile else model.loss
        # the models of vae.model take the generator; another model's loss(x) draws from torch's global one
        pass_gen = noise_gen is not None and "generator" in inspect.signature(model.loss).parameters

        def run_epoch(epoch: int, bar: tqdm) -> dict[str, float]:
            batches = train.batches(
                config.batch_size, shuffle=True, generator=shuffle_gen, binarize_generator=noise_gen
            )
            return _autograd_epoch(loss_fn, opt, batches, config, device, noise_gen if pass_gen else None, epoch, bar)

    try:
        with denormals_flushed(config.flush_denormal and device.type == "cpu"):
            for epoch in range(1, config.epochs + 1):
                model.train()
                bar = tqdm(
                    total=n_batches,
                    desc=f"epoch {epoch}/{config.epochs}",
                    disable=not progress,
                    leave=False,
                    unit="batch",
                )
                with bar:
                    metrics = run_epoch(epoch, bar)
                if len(val):
                    metrics |= {
                        f"val/{k}": v for k, v in elbo_metrics(model, val.x, eval_batch_size, seed=config.seed).items()
                    }
                history.append(metrics)
                if on_epoch_end is not None:
                    on_epoch_end(epoch, metrics)
    finally:
        if fused_step is not None:
            fused_step.release()  # the parameters get storage of their own back, also when a callback stopped training
    model.eval()
    return history


def fused_step_applies(model: nn.Module, config: TrainConfig, device: torch.device) -> bool:
    """Whether vae.fused's step can train `model` (on `device`) as `config` asks: a CPU, fp32 throughout
    (no bf16 autocast, fp32 weights), no torch.compile, and a VAE or Autoencoder of vae.model."""
    return (
        device.type == "cpu"
        and config.precision == "fp32"
        and not config.compile
        and supports(model)
        and all(p.dtype == torch.float32 for p in model.parameters())
    )


def uses_fused_step(model: nn.Module, config: TrainConfig, device: torch.device) -> bool:
    """config.step resolved for this model and device; "fused" where it does not apply raises ValueError."""
    applies = fused_step_applies(model, config, device)
    if config.step == "fused" and not applies:
        raise ValueError(
            "step 'fused' needs a CPU, precision 'fp32', compile off and a vae or ae model in fp32; "
            "use step 'auto' or 'autograd'"
        )
    return applies and config.step != "autograd"


def _check_loss(value: float, epoch: int, step: int) -> None:
    if not math.isfinite(value):
        raise NonFiniteLossError(epoch, step, value)


def _autograd_epoch(
    loss_fn: Callable[..., dict[str, torch.Tensor]],
    opt: torch.optim.Optimizer | LeanAdam,
    batches: Iterable[torch.Tensor],
    config: TrainConfig,
    device: torch.device,
    noise_gen: torch.Generator | None,
    epoch: int,
    bar: tqdm,
) -> dict[str, float]:
    """One epoch of loss.backward() steps; the train/<term> means (nats per image)."""
    n_batches = bar.total
    keys: list[str] = []  # the reported terms, in the model's order
    sums: torch.Tensor | None = None  # (len(keys),) batch-size-weighted sums of those terms
    seen = 0
    for step, xb in enumerate(batches):
        with autocast(device, config.precision):
            terms = loss_fn(xb, generator=noise_gen) if noise_gen is not None else loss_fn(xb)
        loss = terms["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        b = xb.shape[0]
        with torch.no_grad():
            # two small ops a step and no host sync: the epoch's sums stay on the device
            if not keys:
                keys = [k for k in terms if k != "loss"]
            batch_terms = torch.stack([terms[k].detach() for k in keys])
            sums = batch_terms * b if sums is None else sums.add_(batch_terms, alpha=b)
        seen += b
        bar.update()
        if step % NONFINITE_CHECK_EVERY == 0 or step == n_batches - 1:
            _check_loss(loss.item(), epoch, step)
    means = (sums / seen).tolist() if sums is not None else []
    return {f"train/{k}": v for k, v in zip(keys, means, strict=False)}


def _fused_epoch(
    fs: FusedStep,
    train: Split,
    config: TrainConfig,
    shuffle_gen: torch.Generator,
    noise_gen: torch.Generator,
    epoch: int,
    bar: tqdm,
) -> dict[str, float]:
    """One epoch of fused steps, drawing exactly what Split.batches and VAE.loss draw, in the same order
    (shuffle from shuffle_gen; binarization, then z noise, per batch from noise_gen); the train/<term> means."""
    n, bs = len(train), config.batch_size
    order = train.shuffled_order(shuffle_gen)
    sums = torch.zeros(2, dtype=fs.terms.dtype)  # BCE and 2 * KL, summed over the epoch's images
    for step, start in enumerate(range(0, n, bs)):
        idx = order[start : start + bs]
        xb = fs.x[: idx.shape[0]]
        torch.index_select(train.x, 0, idx, out=xb)
        if train.dynamic:
            torch.bernoulli(xb, generator=noise_gen, out=xb)  # in place: the same draws as torch.bernoulli(xb)
        fs.step(xb, noise_gen)
        sums.add_(fs.terms[:2])
        bar.update()
        if step % NONFINITE_CHECK_EVERY == 0 or step == bar.total - 1:
            bce, kl2 = fs.terms[:2].tolist()
            _check_loss((bce + fs.beta * kl2 / 2) / xb.shape[0], epoch, step)
    recon, kl = sums[0].item() / n, sums[1].item() / (2 * n)
    if not fs.is_vae:
        return {"train/recon_bce": recon}
    return {"train/recon_bce": recon, "train/kl": kl, "train/elbo": -(recon + kl)}


def save_checkpoint(path: str | os.PathLike, model: nn.Module, kind: str, train_config: TrainConfig) -> Path:
    """Write the state dict with both configs, loadable with weights_only=True."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "kind": kind,
            "model_config": asdict(model.config),
            "train_config": asdict(train_config),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
        path,
    )
    return path


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The model (in eval mode) and the TrainConfig saved by save_checkpoint."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = build_model(ckpt["kind"], ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), TrainConfig(**ckpt["train_config"])
