"""Measured matmul rates: the large-matrix GEMM peak, the rate of one training step's own GEMMs, and Adam's step.

`python -m bench.perf` divides the FLOPs of bench.perf.flops by these rates to get its floor.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from bench.perf.flops import linear_layers, training_gemms
from bench.perf.reference import DTYPES, REFERENCE_TRAIN, Precision
from vae.model import ModelConfig, build_model
from vae.train import make_optimizer

SQUARE_N = 2048  # side of the square GEMM that gives the peak rate
RATE_ROUNDS = 5  # a rate is the best of this many rounds
RATE_ROUND_S = 0.25  # each round repeats the GEMM(s) for at least this long


def best_seconds(
    fn: Callable[[], object],
    rounds: int = RATE_ROUNDS,
    round_s: float = RATE_ROUND_S,
    sync: Callable[[], object] = lambda: None,
) -> float:
    """Seconds per call of fn: the best round of `rounds`, each repeating fn for at least round_s.

    The best round, not the median, because other processes on a shared machine
    only ever slow a round down; the fastest one is closest to what the hardware does.
    `sync` waits for queued device work (torch.cuda.synchronize) after every call.
    """
    fn()  # first call: library dispatch, workspace allocation
    sync()
    best = math.inf
    for _ in range(rounds):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            sync()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= round_s:
                break
        best = min(best, elapsed / calls)
    return best


def square_gemm_rate(dtype: torch.dtype, n: int = SQUARE_N, rounds: int = RATE_ROUNDS) -> float:
    """GFLOP/s of one (n, n) @ (n, n) product in `dtype`: the machine's peak for large matrices."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    c = torch.empty(n, n, dtype=dtype)
    return 2 * n**3 / best_seconds(lambda: torch.mm(a, b, out=c), rounds) / 1e9


def model_gemm_rate(config: ModelConfig, batch: int, dtype: torch.dtype, rounds: int = RATE_ROUNDS) -> float:
    """GFLOP/s of one step's own GEMMs (training_gemms), run back to back in the layouts autograd uses.

    Forward is addmm(bias, x, W^T) as nn.Linear runs it, the weight gradient is
    g^T @ x and the input gradient g @ W, all with contiguous x, g and W; outputs
    are preallocated, so the time is the GEMM kernels' and their dispatch only.
    """
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype)

    calls: list[Callable[[], object]] = []
    for i, (d_in, d_out) in enumerate(linear_layers(config)):
        x, w, bias, grad = rand(batch, d_in), rand(d_out, d_in), rand(d_out), rand(batch, d_out)
        y, gw, gx = torch.empty(batch, d_out, dtype=dtype), torch.empty(d_out, d_in, dtype=dtype), torch.empty_like(x)
        calls.append(lambda x=x, w=w, bias=bias, y=y: torch.addmm(bias, x, w.t(), out=y))
        calls.append(lambda x=x, grad=grad, gw=gw: torch.mm(grad.t(), x, out=gw))
        if i > 0:
            calls.append(lambda w=w, grad=grad, gx=gx: torch.mm(grad, w, out=gx))

    def step() -> None:
        for call in calls:
            call()

    flops = sum(g.flops for g in training_gemms(config, batch))
    return flops / best_seconds(step, rounds) / 1e9


def gemm_rates(config: ModelConfig, batch: int, precisions: tuple[Precision, ...]) -> dict[str, dict[str, float]]:
    """GFLOP/s per precision: `square` (large-matrix peak) and `model` (the step's own shapes)."""
    return {
        p: {"square": square_gemm_rate(DTYPES[p]), "model": model_gemm_rate(config, batch, DTYPES[p])}
        for p in precisions
    }


def adam_step_seconds(config: ModelConfig, rounds: int = RATE_ROUNDS) -> float:
    """Seconds of one optimizer step of fit's Adam (vae.train.make_optimizer) on the model's parameters.

    Not a matmul, so not in the floor; reported beside it because every step pays it.
    """
    torch.manual_seed(0)
    model = build_model("vae", config)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt = make_optimizer(model, REFERENCE_TRAIN.lr)
    return best_seconds(opt.step, rounds)
