"""Seconds per model-step of K replicates trained stacked (vae.stacked) against one after the other
(autograd and fused).

`python -m bench.perf.replicates [--k 3] [--widths 64 128 256 512 1024] [--threads 1]` interleaves
both ways in one process (best of --rounds rounds) and prints one row per hidden width.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

from bench.errors import HelpFormatter, cli_main
from bench.perf.machine import Stopwatch, machine_info
from vae.denormal import denormals_flushed
from vae.fused import FusedStep
from vae.model import INPUT_DIM, ModelConfig, build_model
from vae.stacked import StackedModels
from vae.train import make_optimizer


def measure(kind: str, width: int, latent: int, k: int, batch: int, steps: int, rounds: int) -> dict[str, float]:
    """Best-of-rounds seconds per model-step of each way, and the other processes' CPU share meanwhile."""
    torch.manual_seed(0)
    cfg = ModelConfig(latent_dim=latent, hidden_width=width)
    dev = torch.device("cpu")
    models = [build_model(kind, cfg) for _ in range(k)]
    x = torch.bernoulli(torch.full((k, batch, INPUT_DIM), 0.2))
    gens = [torch.Generator().manual_seed(i) for i in range(k)]
    stack = StackedModels(kind, [build_model(kind, cfg) for _ in range(k)], dev)
    s_opt = make_optimizer(stack.parameters(), 1e-4)
    opts = [make_optimizer(m, 1e-4) for m in models]
    fused_steps = [FusedStep(build_model(kind, cfg), batch, 1e-4) for _ in range(k)]  # fit's step on a CPU in fp32

    def stacked() -> None:
        for _ in range(steps):
            s_opt.zero_grad(set_to_none=True)
            stack.loss(x, gens)["loss"].backward()
            s_opt.step()

    def sequential() -> None:
        for m, o, i in zip(models, opts, range(k), strict=False):
            for _ in range(steps):  # as fit_replicates' sequential way: one model's steps, then the next's
                o.zero_grad(set_to_none=True)
                m.loss(x[i], generator=gens[i])["loss"].backward()
                o.step()

    def fused() -> None:
        for fs, i in zip(fused_steps, range(k), strict=False):
            for _ in range(steps):
                fs.step(x[i], gens[i])

    ways = {"stacked": stacked, "sequential": sequential, "fused": fused}
    best = {name: math.inf for name in ways}
    share = 0.0
    with denormals_flushed(True):
        for fn in ways.values():
            fn()
        for _ in range(rounds):
            for name, fn in ways.items():
                sw = Stopwatch()
                fn()
                wall, others = sw.stop()
                best[name] = min(best[name], wall / (steps * k))
                share = max(share, others or 0.0)
    return {**best, "others_cpu_share": share}


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.perf.replicates", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    p.add_argument("--kind", default="vae", choices=["vae", "ae"], help="model kind")
    p.add_argument("--k", type=int, default=3, help="replicates trained together")
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024], help="hidden widths")
    p.add_argument("--latent", type=int, default=16, help="latent size")
    p.add_argument("--batch", type=int, default=128, help="images per step")
    p.add_argument("--steps", type=int, default=20, help="steps per model per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the best is kept")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info()
    print(
        f"{info['cpu_model']} (family/model {info['cpu_family_model']}, {' '.join(info['cpu_flags'])}), "
        f"{args.threads} thread(s), load {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'width':>6} {'stacked ms':>11} {'sequential ms':>14} {'fused ms':>9} {'stacked/seq':>12} "
        f"{'stacked/fused':>14} {'others':>7}   "
        f"(per model-step, K={args.k}; sequential: autograd steps, fused: vae.fused's, fit's default)"
    )
    for w in args.widths:
        r = measure(args.kind, w, args.latent, args.k, args.batch, args.steps, args.rounds)
        print(
            f"{w:6d} {1e3 * r['stacked']:11.3f} {1e3 * r['sequential']:14.3f} {1e3 * r['fused']:9.3f} "
            f"{r['stacked'] / r['sequential']:12.2f} {r['stacked'] / r['fused']:14.2f} "
            f"{100 * r['others_cpu_share']:6.0f}%"
        )
    print(f"load at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
