"""The human-readable report of `python -m bench.perf`: the machine, the matmul rates, and per precision its rows.

`format_table(result)` takes what bench.perf.measure.run returns; the rows are declared as data below.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

from bench.perf.machine import contended
from bench.perf.probe import RATE_ROUNDS, SQUARE_N
from bench.perf.reference import EXAMPLES_QUALITY, FLOOR_RATIO_TARGET, QUALITY_TARGET, SPEEDUP_TARGET

Run = dict  # one precision's entry of result["runs"]
Note = Callable[[Run, dict], str]  # (run, whole result) -> text after the number

RATE_LABEL_WIDTH = 44
RATE_ROWS = (  # (label, key of result["gemm_gflops"][precision]); one column per precision
    (f"  {SQUARE_N}^3 square GEMM (peak)", "square"),
    ("  the step's own GEMMs (the floor uses this)", "model"),
)


def _all(key: str) -> Note:
    return lambda run, _: "all: " + " ".join(f"{t:.3f}" for t in run[key])


# (label, key of the run: seconds per epoch, note); a row whose key the run lacks is left out
EPOCH_ROWS: tuple[tuple[str, str, Note | None], ...] = (
    ("floor at the step's GEMM rate", "floor_s", None),
    ("floor at the square-GEMM peak", "peak_floor_s", None),
    (
        "floor + fit's Adam steps",
        "floor_plus_adam_s",
        lambda _, result: f"(Adam alone {result['adam_s_per_epoch']:.3f}: not a matmul, not in the floor)",
    ),
    ("vae.train.fit", "epoch_s", _all("epochs_s")),
    ("fit, autograd step (step=autograd)", "autograd_epoch_s", _all("autograd_epochs_s")),
    ("pytorch/examples way (reference)", "reference_epoch_s", _all("reference_epochs_s")),
)

# fused against autograd, when the run timed both (interval: (mean, 95 % half-width, n) over the timed epochs)
SIDE_BY_SIDE: tuple[tuple[str, str, str], ...] = (  # (label, key of the run, unit)
    ("ratio to floor, fused step", "ratio_to_floor_interval", ""),
    ("ratio to floor, autograd step", "autograd_ratio_to_floor_interval", ""),
    ("autograd / fused, epoch by epoch", "fused_speedup_interval", "x"),
)

COMPARE: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le, "<": operator.lt}


@dataclass(frozen=True)
class Target:
    """A ratio of a run with the limit it must meet; a contended run's time is never judged met."""

    label: str
    key: str  # of the run
    op: str  # a key of COMPARE
    limit: float
    unit: str  # printed right after the value
    note: Callable[[Run, str], str]  # (run, precision) -> text after the verdict


SPEEDUP = Target("speedup vs reference", "speedup_vs_reference", ">=", SPEEDUP_TARGET, "x", lambda r, p: "")
FLOOR = Target(
    "ratio to floor",
    "ratio_to_floor",
    "<=",
    FLOOR_RATIO_TARGET,
    " ",
    lambda r, p: f"   (to the peak floor: {r['ratio_to_peak_floor']:.2f})",
)
FP32_FLOOR = Target(
    "ratio to fp32 floor",
    "ratio_to_fp32_floor",
    "<",
    1,
    " ",
    lambda r, p: f"   (to its own {p} floor: {r['ratio_to_floor']:.2f})",
)


def targets(precision: str) -> tuple[Target, ...]:
    """fp32 is judged against its own floor; another precision against fp32's (faster than it, at equal quality)."""
    return (SPEEDUP, FLOOR if precision == "fp32" else FP32_FLOOR)


def _met(ok: bool, contended: bool = False) -> str:
    """The verdict on a target; a time measured while other processes held the CPUs never counts as met."""
    if contended and ok:
        return "NOT JUDGED (contended run: rerun on an idle machine)"
    return "met" if ok else "MISSED"


def verdict(value: float, op: str, limit: float, contended: bool = False) -> str:
    """'target <= 1.3: met' and the like."""
    return f"target {op} {limit}: " + _met(COMPARE[op](value, limit), contended)


def _machine_lines(m: dict) -> list[str]:
    return [
        f"machine: {m['cpu_vendor']} {m['cpu_model']} (family/model {m['cpu_family_model']}), "
        f"{m['logical_cpus']} logical CPUs, flags {' '.join(m['cpu_flags']) or '(none of note)'}, "
        f"native bf16 matmul: {'yes' if m['bf16_matmul'] else 'no'}",
        f"torch {m['torch']} ({m['cpu_capability']}), {m['torch_threads']} threads; "
        f"load average {m['load_avg_1m']} at start, {m['load_avg_1m_end']} at end",
    ]


def _rate_lines(result: dict) -> list[str]:
    rates = result["gemm_gflops"]
    header = f"matmul rate, GFLOP/s (best of {RATE_ROUNDS} rounds)".ljust(RATE_LABEL_WIDTH) + "".join(
        f"{p:>10}" for p in rates
    )
    rows = [
        label.ljust(RATE_LABEL_WIDTH) + "".join(f"{r[key]:10.1f}" for r in rates.values()) for label, key in RATE_ROWS
    ]
    work = (
        f"matmul work per epoch: {result['matmul_gflop_per_epoch']:.1f} GFLOP (forward + backward, "
        f"{result['config']['train_images']} images)"
    )
    return [header, *rows, work]


def _run_lines(precision: str, run: Run, result: dict) -> list[str]:
    lines = [
        "",
        f"{precision}  (seconds per epoch, median of {len(run['epochs_s'])} after "
        f"{result['config']['warmup_epochs']} warm-up)",
    ]
    for label, key, note in EPOCH_ROWS:
        if key in run:
            lines.append(f"  {label:<35}{run[key]:8.3f}" + (f"   {note(run, result)}" if note else ""))
    for label, key, unit in SIDE_BY_SIDE:
        if key in run:
            mean, half, n = run[key]
            lines.append(f"  {label:<35}{mean:8.3f}{unit} +- {half:.3f}   (mean and 95 % t-interval over {n} epochs)")
    for t in targets(precision):
        value = run[t.key]
        lines.append(
            f"  {t.label:<22}{value:6.2f}{t.unit}   "
            + verdict(value, t.op, t.limit, contended(run))
            + t.note(run, precision)
        )
    share = run["max_others_cpu_share"]
    if share is not None:
        lines.append(
            f"  other processes used up to {100 * share:.0f}% of the CPUs during a timed epoch"
            + ("" if not contended(run) else "   WARNING: contended, these times are not the machine's")
        )
    if "quality" in run:
        q = run["quality"]
        lines.append(
            f"  test loss after {q['epochs']} epochs {q['test_loss']:8.2f}   "
            + verdict(q["test_loss"], "<=", QUALITY_TARGET)
            + f"   (pytorch/examples: {EXAMPLES_QUALITY})"
        )
    return lines


def format_table(result: dict) -> str:
    """The human-readable report of `run`'s result."""
    lines = [*_machine_lines(result["machine"]), "", *_rate_lines(result)]
    for precision, run in result["runs"].items():
        lines += _run_lines(precision, run, result)
    rq = result.get("reference_quality")
    if rq:
        lines += [
            "",
            f"pytorch/examples loop, same seed ({rq['seed']}): test loss after {rq['epochs']} epochs "
            f"{rq['test_loss']:.2f}   " + verdict(rq["test_loss"], "<=", QUALITY_TARGET),
        ]
    return "\n".join(lines)
