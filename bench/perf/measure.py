"""The measurements of `python -m bench.perf`, run in one process: fit and the reference interleaved, rates, quality.

`run(args)` returns one JSON-ready object; bench.perf.table formats it.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

from bench.perf.examples import ExamplesTrainer, denormals_kept
from bench.perf.flops import epoch_matmul_flops
from bench.perf.machine import Stopwatch, bf16_supported, contended, machine_info
from bench.perf.probe import adam_step_seconds, gemm_rates
from bench.perf.reference import (
    EXAMPLES_QUALITY,
    FLOOR_RATIO_TARGET,
    PRECISION_CHOICES,
    QUALITY_EPOCHS,
    QUALITY_TARGET,
    REFERENCE_DATA,
    REFERENCE_MODEL,
    REFERENCE_TRAIN,
    SPEEDUP_TARGET,
    Precision,
)
from bench.stats import t_interval
from vae.data import Datasets, check_data, load_data
from vae.evaluate import elbo_metrics
from vae.model import build_model
from vae.train import TrainConfig, fit, uses_fused_step

Timing = tuple[float, float | None]  # (wall seconds, share of the CPUs other processes used meanwhile)


def time_interleaved(
    data: Datasets, root: Path, train_config: TrainConfig, epochs: int, warmup: int
) -> tuple[list[Timing], list[Timing], list[Timing]]:
    """Per-epoch timings of `fit`, of fit with the autograd step (when fit's own is the fused one; else
    empty) and of the pytorch/examples loop, alternating epoch by epoch.

    The other two run inside fit's on_epoch_end callback, so all three see the same
    machine load; fit's epoch is timed from the end of one callback to the start of
    the next. The autograd epoch is a one-epoch fit of a second model (same seed and
    data; its Adam restarts each time, which costs nothing measurable). The first
    `warmup` epochs of each are dropped.
    """
    torch.manual_seed(train_config.seed)
    reference = ExamplesTrainer(root, train_config.batch_size, train_config.lr)
    model = build_model("vae", REFERENCE_MODEL)
    torch.manual_seed(train_config.seed)
    autograd_model = build_model("vae", REFERENCE_MODEL)
    autograd_config = replace(train_config, epochs=1, step="autograd")
    side_by_side = uses_fused_step(model, train_config, torch.device("cpu"))
    fit_t: list[Timing] = []
    autograd_t: list[Timing] = []
    ref_t: list[Timing] = []
    watch = [Stopwatch()]

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        fit_t.append(watch[0].stop())
        if side_by_side:
            autograd_watch = Stopwatch()
            fit(autograd_model, data, autograd_config, "cpu", progress=False)
            autograd_t.append(autograd_watch.stop())
        with denormals_kept():  # pytorch/examples does not flush subnormals; fit does while it trains
            ref_watch = Stopwatch()
            reference.train_epoch()
            ref_t.append(ref_watch.stop())
        watch[0] = Stopwatch()

    fit(model, data, replace(train_config, epochs=warmup + epochs), "cpu", on_epoch_end=on_epoch_end, progress=False)
    return fit_t[warmup:], autograd_t[warmup:], ref_t[warmup:]


def reference_quality(root: Path, train_config: TrainConfig, epochs: int = QUALITY_EPOCHS) -> dict[str, float]:
    """pytorch/examples' own loop for `epochs`, seeded with train_config.seed: its test loss, as main.py prints it."""
    torch.manual_seed(train_config.seed)
    reference = ExamplesTrainer(root, train_config.batch_size, train_config.lr)
    with denormals_kept():
        for _ in range(epochs):
            train_loss = reference.train_epoch()
        return {
            "epochs": epochs,
            "seed": train_config.seed,
            "train_loss": train_loss,
            "test_loss": reference.test_loss(),
        }


def quality_check(data: Datasets, train_config: TrainConfig, epochs: int = QUALITY_EPOCHS) -> dict[str, float]:
    """Train the reference model for `epochs` and score the test set: negative ELBO, nats per image."""
    torch.manual_seed(train_config.seed)  # the initial weights, whatever ran before in this process
    model = build_model("vae", REFERENCE_MODEL)
    history = fit(model, data, replace(train_config, epochs=epochs), "cpu", progress=False)
    test = elbo_metrics(model, data.test.x, seed=train_config.seed)
    return {
        "epochs": epochs,
        "seed": train_config.seed,
        "train_loss": -history[-1]["train/elbo"],
        "test_loss": -test["elbo"],
        "test_recon_bce": test["recon_bce"],
        "test_kl": test["kl"],
    }


def summarize_run(
    precision: Precision,
    fit_t: list[Timing],
    ref_t: list[Timing],
    flops: int,
    rates: dict[str, dict[str, float]],
    autograd_t: list[Timing] = (),
) -> dict[str, object]:
    """Medians, floors and ratios of one precision's interleaved timing (and of the autograd step's, if timed)."""
    fit_s, ref_s = [t for t, _ in fit_t], [t for t, _ in ref_t]
    shares = [o for _, o in fit_t + ref_t + list(autograd_t) if o is not None]
    epoch_s, reference_s = statistics.median(fit_s), statistics.median(ref_s)
    floor_s = flops / (rates[precision]["model"] * 1e9)
    peak_floor_s = flops / (rates[precision]["square"] * 1e9)
    fp32_floor_s = flops / (rates["fp32"]["model"] * 1e9)
    return {
        "precision": precision,
        "epoch_s": epoch_s,
        "reference_epoch_s": reference_s,
        "floor_s": floor_s,
        "peak_floor_s": peak_floor_s,
        "speedup_vs_reference": reference_s / epoch_s,
        "ratio_to_floor": epoch_s / floor_s,
        "ratio_to_peak_floor": epoch_s / peak_floor_s,
        "ratio_to_fp32_floor": epoch_s / fp32_floor_s,
        "epochs_s": fit_s,
        "reference_epochs_s": ref_s,
        "others_cpu_share": {
            "fit": [o for _, o in fit_t],
            "reference": [o for _, o in ref_t],
            "autograd": [o for _, o in autograd_t],
        },
        "max_others_cpu_share": max(shares) if shares else None,
        **(_autograd_side(fit_s, [t for t, _ in autograd_t], floor_s) if autograd_t else {}),
    }


def _autograd_side(fit_s: list[float], autograd_s: list[float], floor_s: float) -> dict[str, object]:
    """The autograd step's epochs beside fit's fused ones: its median and ratio, and 95 % t-intervals over the
    timed epochs of both ratios to the floor and of the per-epoch speedup (each pair ran back to back)."""
    epoch_s = statistics.median(autograd_s)
    return {
        "autograd_epoch_s": epoch_s,
        "autograd_epochs_s": autograd_s,
        "autograd_ratio_to_floor": epoch_s / floor_s,
        "ratio_to_floor_interval": t_interval([t / floor_s for t in fit_s]),
        "autograd_ratio_to_floor_interval": t_interval([t / floor_s for t in autograd_s]),
        "fused_speedup_interval": t_interval([a / f for a, f in zip(autograd_s, fit_s, strict=False)]),
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    """All measurements the flags ask for, as one JSON-ready object."""
    precisions = PRECISION_CHOICES[args.precision]
    if "bf16" in precisions and not bf16_supported():
        print("note: this CPU has no native bf16 matmul; bf16 runs on a slow fallback", file=sys.stderr)
    root = check_data("mnist", args.data_dir)
    data = load_data(REFERENCE_DATA, root)
    info = machine_info()
    train_config = replace(REFERENCE_TRAIN, compile=args.compile, flush_denormal=args.flush_denormal, seed=args.seed)
    rate_precisions = ("fp32", "bf16") if bf16_supported() or "bf16" in precisions else ("fp32",)
    # rates and Adam are measured before and after the training runs and the better one kept:
    # another process can only slow a measurement down
    rates_before = gemm_rates(REFERENCE_MODEL, train_config.batch_size, rate_precisions)
    adam_before = adam_step_seconds(REFERENCE_MODEL)
    flops = epoch_matmul_flops(REFERENCE_MODEL, len(data.train), train_config.batch_size)
    n_steps = math.ceil(len(data.train) / train_config.batch_size)

    timings = {
        p: time_interleaved(data, root, replace(train_config, precision=p), args.epochs, args.warmup)
        for p in precisions
    }
    rates_after = gemm_rates(REFERENCE_MODEL, train_config.batch_size, rate_precisions)
    rates = {p: {k: max(rates_before[p][k], rates_after[p][k]) for k in rates_before[p]} for p in rates_before}
    adam_epoch_s = min(adam_before, adam_step_seconds(REFERENCE_MODEL)) * n_steps
    info["load_avg_1m_end"] = round(os.getloadavg()[0], 2)

    runs: dict[str, dict[str, object]] = {}
    for p, (fit_t, autograd_t, ref_t) in timings.items():
        runs[p] = summarize_run(p, fit_t, ref_t, flops, rates, autograd_t)
        runs[p]["floor_plus_adam_s"] = runs[p]["floor_s"] + adam_epoch_s
        runs[p]["contended"] = contended(runs[p])  # then no target is reported as met
        if args.quality:
            runs[p]["quality"] = quality_check(data, replace(train_config, precision=p))
    reference_q = reference_quality(root, train_config) if args.quality else None

    main_run = runs[precisions[0]]
    return {
        "command": "python -m bench.perf " + " ".join(args.argv),
        "config": {
            "model": "784-400-20 VAE (ModelConfig(latent_dim=20, hidden_width=400, hidden_layers=1))",
            "train_images": len(data.train),
            "batch_size": train_config.batch_size,
            "lr": train_config.lr,
            "compile": train_config.compile,
            "flush_denormal": train_config.flush_denormal,
            "seed": train_config.seed,
            "step": train_config.step,
            "timed_epochs": args.epochs,
            "warmup_epochs": args.warmup,
        },
        "machine": info,
        "gemm_gflops": rates,
        "gemm_gflops_before_after": [rates_before, rates_after],
        "matmul_gflop_per_epoch": flops / 1e9,
        "adam_s_per_epoch": adam_epoch_s,
        "floor_rate": "model: the step's own GEMM shapes, fp32 unless the run is bf16 (see gemm_gflops)",
        **{
            k: v
            for k, v in main_run.items()
            if k not in ("epochs_s", "reference_epochs_s", "autograd_epochs_s", "others_cpu_share", "quality")
        },
        "runs": runs,
        "reference_quality": reference_q,
        "targets": {
            "speedup_vs_reference": f">= {SPEEDUP_TARGET}",
            "ratio_to_floor": f"<= {FLOOR_RATIO_TARGET} (fp32), or bf16 faster than the fp32 floor at equal quality",
            "test_loss": f"<= {QUALITY_TARGET} after {QUALITY_EPOCHS} epochs (pytorch/examples: {EXAMPLES_QUALITY})",
        },
    }
