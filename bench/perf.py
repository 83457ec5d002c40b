"""Training speed of vae.train.fit against pytorch/examples vae/main.py and against the matmul floor.

`python -m bench.perf [--epochs 3] [--precision fp32|bf16|both] [--json [PATH]] [--quality]` measures
everything in one process on the reference configuration (784-400-20, batch 128, Adam 1e-3) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, ContextManager, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import HelpFormatter
from vae.data import DataConfig, DataError, Datasets, check_data, load_data
from vae.denormal import denormal_mode
from vae.evaluate import elbo_metrics
from vae.model import ModelConfig, build_model
from vae.train import TrainConfig, fit, make_optimizer

# The configuration of pytorch/examples vae/main.py, in this project's terms.
REFERENCE_MODEL = ModelConfig(latent_dim=20, hidden_width=400, hidden_layers=1)
REFERENCE_DATA = DataConfig(binarize="none", val_size=0)  # all 60,000 training images, grayscale targets
REFERENCE_TRAIN = TrainConfig(batch_size=128, lr=1e-3, seed=0)

SPEEDUP_TARGET = 8.0  # speedup_vs_reference at least this
FLOOR_RATIO_TARGET = 1.3  # ratio_to_floor at most this (fp32; issue 12)
QUALITY_EPOCHS = 10
QUALITY_TARGET = 105.0  # test loss (negative single-sample ELBO, nats per image) at most this after 10 epochs
EXAMPLES_QUALITY = 105.55  # what pytorch/examples reaches after 10 epochs (shared/ANCHORS.md)

CONTENDED_SHARE = 0.05  # an epoch during which other processes used more of the CPUs than this is flagged

SQUARE_N = 2048  # side of the square GEMM that gives the peak rate
RATE_ROUNDS = 5  # a rate is the best of this many rounds
RATE_ROUND_S = 0.25  # each round repeats the GEMM(s) for at least this long

Precision = Literal["fp32", "bf16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
PRECISION_CHOICES: dict[str, tuple[Precision, ...]] = {"fp32": ("fp32",), "bf16": ("bf16",), "both": ("fp32", "bf16")}


# ---------------------------------------------------------------- matmul FLOPs of one training step


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
        raise AssertionError(f"forward FLOPs {forward} != ModelConfig.matmul_flops_per_image() {config.matmul_flops_per_image()}")
    full, rest = divmod(n_images, batch)
    flops = full * sum(g.flops for g in training_gemms(config, batch))
    return flops + (sum(g.flops for g in training_gemms(config, rest)) if rest else 0)


# ---------------------------------------------------------------- measured matmul rates


def best_seconds(fn: Callable[[], object], rounds: int = RATE_ROUNDS, round_s: float = RATE_ROUND_S) -> float:
    """Seconds per call of fn: the best round of `rounds`, each repeating fn for at least round_s.

    The best round, not the median, because other processes on a shared machine
    only ever slow a round down; the fastest one is closest to what the hardware does.
    """
    fn()  # first call: library dispatch, workspace allocation
    best = math.inf
    for _ in range(rounds):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
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


def bf16_supported() -> bool:
    """Whether this CPU has native bf16 matmul (avx512_bf16 or AMX) that oneDNN uses."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


# ---------------------------------------------------------------- the pytorch/examples way


class ExamplesVAE(nn.Module):
    """The model of pytorch/examples vae/main.py: fc1 784-400, fc21 and fc22 400-20, fc3 20-400, fc4 400-784."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli means (probabilities, not logits), (B, 784)."""
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x.view(-1, 784))
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def examples_loss(recon_x: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """pytorch/examples' loss_function: BCE on probabilities plus KL, both summed over the batch (nats)."""
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


class ExamplesTrainer:
    """pytorch/examples' training loop: a torchvision DataLoader over MNIST with ToTensor, default Adam."""

    def __init__(self, root: Path, batch_size: int = 128, lr: float = 1e-3) -> None:
        from torchvision import datasets, transforms  # torchvision loads slowly; only when the reference runs

        dataset = datasets.MNIST(str(root), train=True, download=False, transform=transforms.ToTensor())
        test_set = datasets.MNIST(str(root), train=False, download=False, transform=transforms.ToTensor())
        # on a CPU pytorch/examples passes no worker or pinning arguments: batches load in the main process
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
        self.test_loader = torch.utils.data.DataLoader(test_set, batch_size=batch_size, shuffle=False)
        self.model = ExamplesVAE()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    def train_epoch(self) -> float:
        """One pass over the training set, step for step as in main.py's train(); mean loss per image.

        The only thing left out is main.py's progress print every 10 batches.
        """
        self.model.train()
        train_loss = 0.0
        for data, _ in self.loader:
            self.optimizer.zero_grad()
            recon_batch, mu, logvar = self.model(data)
            loss = examples_loss(recon_batch, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            self.optimizer.step()
        return train_loss / len(self.loader.dataset)

    @torch.no_grad()
    def test_loss(self) -> float:
        """main.py's test(): the same loss (z sampled) summed over the test set, per image."""
        self.model.eval()
        total = 0.0
        for data, _ in self.test_loader:
            recon_batch, mu, logvar = self.model(data)
            total += examples_loss(recon_batch, data, mu, logvar).item()
        return total / len(self.test_loader.dataset)


# ---------------------------------------------------------------- measurements


def _machine_busy_s() -> float | None:
    """CPU seconds all processes on the machine have spent busy since boot (Linux /proc/stat), else None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds of this process, all its threads."""
    t = os.times()
    return t.user + t.system


class Stopwatch:
    """Wall seconds of an interval, and the share of the machine's CPUs that other processes used meanwhile.

    On a shared machine the second number says whether the first can be trusted:
    with two threads on two cores, any other busy process stalls every parallel op.
    """

    def __init__(self) -> None:
        self._wall, self._busy, self._own = time.perf_counter(), _machine_busy_s(), _own_cpu_s()

    def stop(self) -> tuple[float, float | None]:
        wall = time.perf_counter() - self._wall
        busy = _machine_busy_s()
        if busy is None or self._busy is None or wall <= 0:
            return wall, None
        others = (busy - self._busy) - (_own_cpu_s() - self._own)  # CPU seconds; /proc/stat ticks are 10 ms
        return wall, min(1.0, max(0.0, others / (wall * (os.cpu_count() or 1))))


def machine_info() -> dict[str, object]:
    """CPU model and features, thread counts, library versions and the load average now."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    return {
        "cpu_vendor": fields.get("vendor_id", "unknown"),
        "cpu_model": fields.get("model name", platform.processor() or "unknown"),
        "cpu_family_model": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
        "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"}),
        "bf16_matmul": bf16_supported(),  # oneDNN's native bf16 (avx512_bf16 or AMX); else bf16 is emulated, slower
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def gemm_rates(config: ModelConfig, batch: int, precisions: tuple[Precision, ...]) -> dict[str, dict[str, float]]:
    """GFLOP/s per precision: `square` (large-matrix peak) and `model` (the step's own shapes)."""
    return {
        p: {"square": square_gemm_rate(DTYPES[p]), "model": model_gemm_rate(config, batch, DTYPES[p])}
        for p in precisions
    }


Timing = tuple[float, float | None]  # (wall seconds, share of the CPUs other processes used meanwhile)


def time_interleaved(
    data: Datasets, root: Path, train_config: TrainConfig, epochs: int, warmup: int
) -> tuple[list[Timing], list[Timing]]:
    """Per-epoch timings of `fit` and of the pytorch/examples loop, alternating epoch by epoch.

    The reference epoch runs inside fit's on_epoch_end callback, so the two see
    the same machine load; fit's epoch is timed from the end of one callback to
    the start of the next. The first `warmup` epochs of each are dropped.
    """
    torch.manual_seed(train_config.seed)
    reference = ExamplesTrainer(root, train_config.batch_size, train_config.lr)
    model = build_model("vae", REFERENCE_MODEL)
    fit_t: list[Timing] = []
    ref_t: list[Timing] = []
    watch = [Stopwatch()]

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        fit_t.append(watch[0].stop())
        with denormals_kept():  # pytorch/examples does not flush subnormals; fit does while it trains
            ref_watch = Stopwatch()
            reference.train_epoch()
            ref_t.append(ref_watch.stop())
        watch[0] = Stopwatch()

    fit(model, data, replace(train_config, epochs=warmup + epochs), "cpu", on_epoch_end=on_epoch_end, progress=False)
    return fit_t[warmup:], ref_t[warmup:]


def denormals_kept() -> ContextManager[None]:
    """Subnormal floats computed as such inside the block, whatever the caller had set."""
    return denormal_mode(False)


def reference_quality(root: Path, train_config: TrainConfig, epochs: int = QUALITY_EPOCHS) -> dict[str, float]:
    """pytorch/examples' own loop for `epochs`, seeded with train_config.seed: its test loss, as main.py prints it."""
    torch.manual_seed(train_config.seed)
    reference = ExamplesTrainer(root, train_config.batch_size, train_config.lr)
    with denormals_kept():
        for _ in range(epochs):
            train_loss = reference.train_epoch()
        return {"epochs": epochs, "seed": train_config.seed, "train_loss": train_loss, "test_loss": reference.test_loss()}


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
    precision: Precision, fit_t: list[Timing], ref_t: list[Timing], flops: int, rates: dict[str, dict[str, float]]
) -> dict[str, object]:
    """Medians, floors and ratios of one precision's interleaved timing."""
    fit_s, ref_s = [t for t, _ in fit_t], [t for t, _ in ref_t]
    shares = [o for _, o in fit_t + ref_t if o is not None]
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
        "others_cpu_share": {"fit": [o for _, o in fit_t], "reference": [o for _, o in ref_t]},
        "max_others_cpu_share": max(shares) if shares else None,
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
    for p, (fit_t, ref_t) in timings.items():
        runs[p] = summarize_run(p, fit_t, ref_t, flops, rates)
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
            "timed_epochs": args.epochs,
            "warmup_epochs": args.warmup,
        },
        "machine": info,
        "gemm_gflops": rates,
        "gemm_gflops_before_after": [rates_before, rates_after],
        "matmul_gflop_per_epoch": flops / 1e9,
        "adam_s_per_epoch": adam_epoch_s,
        "floor_rate": "model: the step's own GEMM shapes, fp32 unless the run is bf16 (see gemm_gflops)",
        **{k: v for k, v in main_run.items() if k not in ("epochs_s", "reference_epochs_s", "others_cpu_share", "quality")},
        "runs": runs,
        "reference_quality": reference_q,
        "targets": {
            "speedup_vs_reference": f">= {SPEEDUP_TARGET}",
            "ratio_to_floor": f"<= {FLOOR_RATIO_TARGET} (fp32), or bf16 faster than the fp32 floor at equal quality",
            "test_loss": f"<= {QUALITY_TARGET} after {QUALITY_EPOCHS} epochs (pytorch/examples: {EXAMPLES_QUALITY})",
        },
    }


# ---------------------------------------------------------------- output


def _met(ok: bool, contended: bool = False) -> str:
    """The verdict on a target; a time measured while other processes held the CPUs never counts as met."""
    if contended and ok:
        return "NOT JUDGED (contended run: rerun on an idle machine)"
    return "met" if ok else "MISSED"


def contended(run: dict[str, object]) -> bool:
    """Whether other processes used more than CONTENDED_SHARE of the CPUs during a timed epoch (or it is unknown)."""
    share = run.get("max_others_cpu_share")
    return share is None or share > CONTENDED_SHARE


def format_table(result: dict[str, object]) -> str:
    """The human-readable report of `run`'s result."""
    m = result["machine"]
    rates = result["gemm_gflops"]
    lines = [
        f"machine: {m['cpu_vendor']} {m['cpu_model']} (family/model {m['cpu_family_model']}), "
        f"{m['logical_cpus']} logical CPUs, flags {' '.join(m['cpu_flags']) or '(none of note)'}, "
        f"native bf16 matmul: {'yes' if m['bf16_matmul'] else 'no'}",
        f"torch {m['torch']} ({m['cpu_capability']}), {m['torch_threads']} threads; "
        f"load average {m['load_avg_1m']} at start, {m['load_avg_1m_end']} at end",
        "",
        f"matmul rate, GFLOP/s (best of {RATE_ROUNDS} rounds)".ljust(44) + "".join(f"{p:>10}" for p in rates),
        f"  {SQUARE_N}^3 square GEMM (peak)".ljust(44) + "".join(f"{r['square']:10.1f}" for r in rates.values()),
        "  the step's own GEMMs (the floor uses this)".ljust(44) + "".join(f"{r['model']:10.1f}" for r in rates.values()),
        f"matmul work per epoch: {result['matmul_gflop_per_epoch']:.1f} GFLOP (forward + backward, "
        f"{result['config']['train_images']} images)",
    ]
    for p, r in result["runs"].items():
        lines += [
            "",
            f"{p}  (seconds per epoch, median of {len(r['epochs_s'])} after {result['config']['warmup_epochs']} warm-up)",
            f"  floor at the step's GEMM rate      {r['floor_s']:8.3f}",
            f"  floor at the square-GEMM peak      {r['peak_floor_s']:8.3f}",
            f"  floor + fit's Adam steps           {r['floor_plus_adam_s']:8.3f}   (Adam alone "
            f"{result['adam_s_per_epoch']:.3f}: not a matmul, not in the floor)",
            f"  vae.train.fit                      {r['epoch_s']:8.3f}   all: "
            + " ".join(f"{t:.3f}" for t in r["epochs_s"]),
            f"  pytorch/examples way (reference)   {r['reference_epoch_s']:8.3f}   all: "
            + " ".join(f"{t:.3f}" for t in r["reference_epochs_s"]),
            f"  speedup vs reference  {r['speedup_vs_reference']:6.2f}x   target >= {SPEEDUP_TARGET}: "
            + _met(r["speedup_vs_reference"] >= SPEEDUP_TARGET, contended(r)),
        ]
        if p == "fp32":
            lines.append(
                f"  ratio to floor        {r['ratio_to_floor']:6.2f}    target <= {FLOOR_RATIO_TARGET}: "
                + _met(r["ratio_to_floor"] <= FLOOR_RATIO_TARGET, contended(r))
                + f"   (to the peak floor: {r['ratio_to_peak_floor']:.2f})"
            )
        else:
            lines.append(
                f"  ratio to fp32 floor   {r['ratio_to_fp32_floor']:6.2f}    target < 1: "
                + _met(r["ratio_to_fp32_floor"] < 1, contended(r))
                + f"   (to its own {p} floor: {r['ratio_to_floor']:.2f})"
            )
        share = r["max_others_cpu_share"]
        if share is not None:
            lines.append(
                f"  other processes used up to {100 * share:.0f}% of the CPUs during a timed epoch"
                + ("" if share <= CONTENDED_SHARE else "   WARNING: contended, these times are not the machine's")
            )
        if "quality" in r:
            q = r["quality"]
            lines.append(
                f"  test loss after {q['epochs']} epochs {q['test_loss']:8.2f}   target <= {QUALITY_TARGET}: "
                + _met(q["test_loss"] <= QUALITY_TARGET)
                + f"   (pytorch/examples: {EXAMPLES_QUALITY})"
            )
    rq = result.get("reference_quality")
    if rq:
        lines += [
            "",
            f"pytorch/examples loop, same seed ({rq['seed']}): test loss after {rq['epochs']} epochs "
            f"{rq['test_loss']:.2f}   target <= {QUALITY_TARGET}: " + _met(rq["test_loss"] <= QUALITY_TARGET),
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.perf",
        description="Epoch time of vae.train.fit on the pytorch/examples VAE configuration, "
        "against the pytorch/examples training loop and the matmul floor; all in one process.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--data-dir", default=None, help="folder holding MNIST/raw (default: $VAE_DATA_DIR, else ./data)"
    )
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs of each loop, after the warm-up (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs of each loop first (default: 1)")
    parser.add_argument(
        "--precision", choices=sorted(PRECISION_CHOICES), default="fp32",
        help="precision of fit: fp32, bf16 (autocast), or both one after the other (default: fp32)",
    )
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=False,
        help="train with TrainConfig(compile=True), torch.compile of the model's loss (default: off)",
    )
    parser.add_argument(
        "--flush-denormal", action=argparse.BooleanOptionalAction, default=True,
        help="fit with TrainConfig(flush_denormal=...): subnormal floats as 0 while training; "
        "the reference loop never flushes (default: on, as fit)",
    )
    parser.add_argument(
        "--seed", type=int, default=REFERENCE_TRAIN.seed,
        help=f"seed of the weights, shuffling and noise of fit and of the reference (default: {REFERENCE_TRAIN.seed})",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's own choice)"
    )
    parser.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="PATH",
        help="print the result as JSON instead of the table, or with PATH write it there "
        "and print the table (default: table only)",
    )
    parser.add_argument(
        "--quality", action="store_true",
        help=f"also train {QUALITY_EPOCHS} epochs per precision, and the reference loop {QUALITY_EPOCHS} epochs, "
        "and report their test losses (default: off)",
    )
    args = parser.parse_args(argv)
    for name, low in (("epochs", 1), ("warmup", 0), ("threads", 1), ("seed", 0)):
        v = getattr(args, name)
        if v is not None and v < low:
            parser.error(f"--{name} must be at least {low}, got {v}")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        result = run(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json == "-":
        print(json.dumps(result, indent=2))
        return 0
    print(format_table(result))
    if args.json is not None:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
