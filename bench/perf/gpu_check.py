"""On a GPU: fit's epoch time against the GPU's matmul floor, and stacked replicates against one at a time.

`python -m bench.perf.gpu_check [--device cuda] [--json PATH]`, run by bench/perf/gpu_check.sh with the latent
study's wall time after it. Prints one table; not run on CPU-only machines (exit 2 with one line).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.errors import BenchError, HelpFormatter, cli_main
from bench.perf.flops import epoch_matmul_flops, linear_layers, training_gemms
from bench.perf.probe import best_seconds
from bench.perf.reference import REFERENCE_DATA, REFERENCE_MODEL, REFERENCE_TRAIN
from vae.data import DataConfig, load_data
from vae.model import ModelConfig, build_model
from vae.stacked import fit_replicates
from vae.train import fit, resolve_device, seed_everything


def synced_best_seconds(fn, device: torch.device) -> float:
    """Seconds per call of fn on `device`: best_seconds, synchronized after every call."""
    return best_seconds(fn, sync=torch.cuda.synchronize if device.type == "cuda" else (lambda: None))


def step_gemm_rate(config: ModelConfig, batch: int, device: torch.device, dtype=torch.float32) -> float:
    """GFLOP/s of one training step's own GEMMs on `device` (bench.perf.probe.model_gemm_rate's shapes)."""
    g = torch.Generator(device=device).manual_seed(0)
    calls = []
    for i, (d_in, d_out) in enumerate(linear_layers(config)):
        x = torch.randn(batch, d_in, generator=g, device=device, dtype=dtype)
        w = torch.randn(d_out, d_in, generator=g, device=device, dtype=dtype)
        b = torch.randn(d_out, generator=g, device=device, dtype=dtype)
        gr = torch.randn(batch, d_out, generator=g, device=device, dtype=dtype)
        calls.append(lambda x=x, w=w, b=b: torch.addmm(b, x, w.t()))
        calls.append(lambda x=x, gr=gr: gr.t() @ x)
        if i > 0:
            calls.append(lambda w=w, gr=gr: gr @ w)
    flops = sum(gm.flops for gm in training_gemms(config, batch))
    return flops / synced_best_seconds(lambda: [c() for c in calls], device) / 1e9


def epoch_times(device: torch.device, data, epochs: int = 4) -> list[float]:
    """Seconds of each of `epochs` epochs of fit on the reference configuration (the first is warm-up)."""
    seed_everything(0)
    model = build_model("vae", REFERENCE_MODEL)
    marks = [time.perf_counter()]

    def on_epoch_end(epoch, metrics):
        if device.type == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    fit(model, data, replace(REFERENCE_TRAIN, epochs=epochs), device, on_epoch_end=on_epoch_end, progress=False)
    return [b - a for a, b in zip(marks, marks[1:], strict=False)]


def replicate_times(device: torch.device, width: int, k: int = 3) -> dict[str, float]:
    """Wall seconds of 1 epoch of k replicates (latent 16, 55,000 binarized images) stacked and one at a time."""
    data = load_data(DataConfig(val_size=5000), None).to(device)
    cfg = ModelConfig(latent_dim=16, hidden_width=width)
    out = {}
    for strategy in ("stacked", "sequential", "stacked", "sequential"):  # interleaved; the best of two kept
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fit_replicates("vae", cfg, replace(REFERENCE_TRAIN, epochs=1), list(range(k)), data, device, strategy=strategy)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[strategy] = min(out.get(strategy, math.inf), time.perf_counter() - t0)
    return out


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.perf.gpu_check", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    p.add_argument("--device", default="cuda", help="the accelerator to measure")
    p.add_argument("--json", default=None, help="also write the result here (default: none)")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs of fit, after one warm-up epoch")
    p.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024], help="widths of the replicate timing")
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    data = load_data(REFERENCE_DATA, None).to(device)  # resident on the device, as bench.run puts it
    flops = epoch_matmul_flops(REFERENCE_MODEL, len(data.train), REFERENCE_TRAIN.batch_size)
    rate = step_gemm_rate(REFERENCE_MODEL, REFERENCE_TRAIN.batch_size, device)
    times = epoch_times(device, data, epochs=1 + args.epochs)
    epoch_s = sorted(times[1:])[len(times[1:]) // 2]
    floor_s = flops / (rate * 1e9)
    result = {
        "device": name,
        "torch": torch.__version__,
        "step_gemm_gflops": rate,
        "floor_s": floor_s,
        "epochs_s": times,
        "epoch_s": epoch_s,
        "ratio_to_floor": epoch_s / floor_s,
        "steps_per_epoch": math.ceil(len(data.train) / REFERENCE_TRAIN.batch_size),
        "replicates_k3_epoch_s": {w: replicate_times(device, w) for w in args.widths},
    }
    print(f"device: {name}, torch {torch.__version__}")
    print(f"step GEMMs: {rate:.0f} GFLOP/s; matmul floor {floor_s:.3f} s/epoch")
    print(
        f"fit epoch (784-400-20, batch 128, 60,000 images): {epoch_s:.3f} s (all: "
        + " ".join(f"{t:.3f}" for t in times)
        + f"), {epoch_s / floor_s:.1f}x the floor, "
        f"{1e3 * epoch_s / result['steps_per_epoch']:.2f} ms/step"
    )
    for w, r in result["replicates_k3_epoch_s"].items():
        print(
            f"3 replicates, width {w}, 1 epoch: stacked {r['stacked']:.2f} s, one at a time {r['sequential']:.2f} s "
            f"({r['sequential'] / r['stacked']:.2f}x)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
