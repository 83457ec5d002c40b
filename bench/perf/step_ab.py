"""fit's training step in its three forms, timed interleaved in one process against the matmul floor, and a profile.

`python -m bench.perf.step_ab [--threads N] [--profile]`: the reference step (784-400-20, batch 128) with
torch.optim.Adam(fused=True) and x[idx] gathers ("before"), fit's autograd step with LeanAdam and index_select
("after"), and vae.fused's hand-derived step ("fused", fit's default on a CPU since issue 23).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from bench.errors import HelpFormatter, cli_main
from bench.perf.flops import training_gemms
from bench.perf.machine import Stopwatch, machine_info
from bench.perf.probe import adam_step_seconds, model_gemm_rate
from bench.perf.reference import REFERENCE_MODEL
from bench.stats import t_interval
from vae.denormal import denormals_flushed
from vae.fused import FusedStep
from vae.model import build_model
from vae.train import make_optimizer

VARIANTS = ("before", "after", "fused")


def stepper(variant: str, x: torch.Tensor, batch: int = 128):
    """n steps of the reference model in the given variant, each on the next batch of a fixed shuffle."""
    torch.manual_seed(0)
    model = build_model("vae", REFERENCE_MODEL)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    pos = [0]
    if variant == "fused":
        fs, gen = FusedStep(model, batch, 1e-3), torch.Generator().manual_seed(0)

        def fused_steps(n: int) -> None:
            for _ in range(n):
                start = pos[0] % (len(x) - batch)
                pos[0] += batch
                xb = fs.x[:batch]
                torch.index_select(x, 0, order[start : start + batch], out=xb)
                fs.step(xb, gen)

        return fused_steps
    opt = (
        torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        if variant == "before"
        else make_optimizer(model, 1e-3)
    )

    def steps(n: int) -> None:
        for _ in range(n):
            start = pos[0] % (len(x) - batch)
            pos[0] += batch
            idx = order[start : start + batch]
            xb = x[idx] if variant == "before" else x.index_select(0, idx)
            opt.zero_grad(set_to_none=True)
            model.loss(xb)["loss"].backward()
            opt.step()

    return steps


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.perf.step_ab", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds; the best is kept")
    p.add_argument("--steps", type=int, default=20, help="steps per round")
    p.add_argument("--profile", action="store_true", help="also print torch.profiler's table of 100 'after' steps")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print(
        f"{info['cpu_vendor']} {info['cpu_model']} (family/model {info['cpu_family_model']}, "
        f"{' '.join(info['cpu_flags'])}), {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}"
    )
    x = torch.rand(60_000, 784, generator=torch.Generator().manual_seed(1))
    fns = {v: stepper(v, x) for v in VARIANTS}
    rounds: dict[str, list[float]] = {v: [] for v in fns}  # seconds per step, one per round
    share = 0.0
    with denormals_flushed(True):
        for f in fns.values():
            f(10)
        for _ in range(args.rounds):
            for v, f in fns.items():
                sw = Stopwatch()
                f(args.steps)
                wall, others = sw.stop()
                rounds[v].append(wall / args.steps)
                share = max(share, others or 0.0)
        best = {v: min(r) for v, r in rounds.items()}
        # the floor: this step's GEMMs at the rate they reach back to back, and Adam's step on its own
        floor = sum(g.flops for g in training_gemms(REFERENCE_MODEL, 128)) / (
            model_gemm_rate(REFERENCE_MODEL, 128, torch.float32) * 1e9
        )
        adam = adam_step_seconds(REFERENCE_MODEL)
        print(
            f"ms per step, best of {args.rounds} x {args.steps}: "
            + ", ".join(f"{v} {1e3 * t:.3f}" for v, t in best.items())
            + f" (after/before {best['after'] / best['before']:.3f}); "
            f"others used up to {100 * share:.0f}% of the CPUs; "
            f"load {os.getloadavg()[0]:.2f}"
        )
        print(
            f"matmul floor {1e3 * floor:.3f} ms per step; "
            f"Adam alone {1e3 * adam:.3f} ms ({adam / floor:.2f} of the floor)"
        )
        for v in fns:
            mean, half, n = t_interval([t / floor for t in rounds[v]])
            print(
                f"  {v:<7} best {best[v] / floor:.2f}x the floor; per round {mean:.2f} +- {half:.2f} (95 % t, n = {n})"
            )
        mean, half, n = t_interval([a / f for a, f in zip(rounds["after"], rounds["fused"], strict=False)])
        print(f"  after / fused, round by round: {mean:.3f} +- {half:.3f} (95 % t, n = {n})")
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fns["fused"](100)
            table = prof.key_averages()
            print(table.table(sort_by="self_cpu_time_total", row_limit=25))
            total = sum(e.self_cpu_time_total for e in table) / 100 / 1e6  # seconds per step, as profiled
            gemm = sum(e.self_cpu_time_total for e in table if e.key in ("aten::addmm", "aten::mm")) / 100 / 1e6
            adam_in = sum(e.self_cpu_time_total for e in table if e.key == "aten::_fused_adam_") / 100 / 1e6
            print(
                f"fused step as profiled: {1e3 * total:.3f} ms = GEMMs {1e3 * gemm:.3f} ({gemm / floor:.2f}x their "
                f"floor of {1e3 * floor:.3f}) + Adam {1e3 * adam_in:.3f} "
                f"+ the rest {1e3 * (total - gemm - adam_in):.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
