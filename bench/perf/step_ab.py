"""fit's training step before and after issue 12's overhead cuts, timed interleaved in one process, and its profile.

`python -m bench.perf.step_ab [--threads N] [--profile]`: the reference step (784-400-20, batch 128) with
torch.optim.Adam(fused=True) and x[idx] gathers ("before") against fit's LeanAdam and index_select ("after").
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

from bench.errors import HelpFormatter, cli_main
from bench.perf.machine import Stopwatch, machine_info
from bench.perf.reference import REFERENCE_MODEL
from vae.denormal import denormals_flushed
from vae.model import build_model
from vae.train import make_optimizer


def stepper(variant: str, x: torch.Tensor, batch: int = 128):
    """n steps of the reference model in the given variant, each on the next batch of a fixed shuffle."""
    torch.manual_seed(0)
    model = build_model("vae", REFERENCE_MODEL)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True) if variant == "before" else make_optimizer(model, 1e-3)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    pos = [0]

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
    p = argparse.ArgumentParser(prog="python -m bench.perf.step_ab", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds; the best is kept")
    p.add_argument("--steps", type=int, default=20, help="steps per round")
    p.add_argument("--profile", action="store_true", help="also print torch.profiler's table of 100 'after' steps")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print(f"{info['cpu_vendor']} {info['cpu_model']} (family/model {info['cpu_family_model']}, "
          f"{' '.join(info['cpu_flags'])}), {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    x = torch.rand(60_000, 784, generator=torch.Generator().manual_seed(1))
    fns = {v: stepper(v, x) for v in ("before", "after")}
    best = {v: math.inf for v in fns}
    share = 0.0
    with denormals_flushed(True):
        for f in fns.values():
            f(10)
        for _ in range(args.rounds):
            for v, f in fns.items():
                sw = Stopwatch()
                f(args.steps)
                wall, others = sw.stop()
                best[v] = min(best[v], wall / args.steps)
                share = max(share, others or 0.0)
        print(f"ms per step, best of {args.rounds} x {args.steps}: before {1e3 * best['before']:.3f}, "
              f"after {1e3 * best['after']:.3f} (after/before {best['after'] / best['before']:.3f}); "
              f"others used up to {100 * share:.0f}% of the CPUs; load {os.getloadavg()[0]:.2f}")
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fns["after"](100)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return 0


if __name__ == "__main__":
    sys.exit(main())
