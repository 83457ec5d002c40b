"""The regression gate's thresholds file: per (model, metric) a bound and where it came from.

`load_thresholds(path)` validates the TOML; `derive(values_by_seed)` turns measured runs
into bounds (worst seen, minus a stated margin), which `write_thresholds` records.
"""

from __future__ import annotations

import statistics
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bench.errors import BenchError

DEFAULT_THRESHOLDS = Path(__file__).resolve().parent.parent / "studies" / "thresholds" / "ci.toml"
OPS = {">=": lambda v, b: v >= b, "<=": lambda v, b: v <= b}
# which way each gated metric is allowed to move: ">=" higher is better. KL is not gated:
# a higher KL with a better ELBO is no regression.
GATED = {
    ("vae", "test/elbo"): ">=",
    ("vae", "test/recon_bce"): "<=",
    ("vae", "test/nll_iw"): "<=",
    ("vae", "test/probe_acc"): ">=",
    ("ae", "test/code_recon_bce"): "<=",
    ("ae", "test/probe_acc"): ">=",
    ("pca", "test/code_recon_bce"): "<=",
    ("pca", "test/probe_acc"): ">=",
}
MARGIN_RULE = "max(3 x std over seeds, 1% of |worst|) for nats; max(3 x std, 0.02) for accuracies"


@dataclass(frozen=True)
class Bound:
    """One gated number: `model`'s `metric` must satisfy `op value`."""

    model: str
    metric: str
    op: Literal[">=", "<="]
    value: float
    worst_seen: float | None = None
    margin: float | None = None

    def holds(self, x: float) -> bool:
        return OPS[self.op](x, self.value)

    def slack(self, x: float) -> float:
        """How far inside the bound x is (negative: outside)."""
        return x - self.value if self.op == ">=" else self.value - x


def load_thresholds(path: str | Path) -> list[Bound]:
    """Read and validate a thresholds file; BenchError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"thresholds file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"{path}: TOML syntax error: {exc}") from None
    unknown = set(raw) - {"provenance", "bound"}
    if unknown:
        raise BenchError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}; allowed: provenance, bound")
    items = raw.get("bound")
    if not isinstance(items, list) or not items:
        raise BenchError(f"{path}: needs at least one [[bound]] table with model, metric, op and value")
    bounds = []
    for i, b in enumerate(items, 1):
        if not isinstance(b, dict):
            raise BenchError(f"{path}: bound {i} must be a table")
        extra = set(b) - {"model", "metric", "op", "value", "worst_seen", "margin"}
        missing = {"model", "metric", "op", "value"} - set(b)
        if extra or missing:
            raise BenchError(
                f"{path}: bound {i}: " + "; ".join(
                    ([f"unknown key(s) {', '.join(sorted(extra))}"] if extra else [])
                    + ([f"missing {', '.join(sorted(missing))}"] if missing else [])
                )
            )
        if b["op"] not in OPS:
            raise BenchError(f"{path}: bound {i}: op must be '>=' or '<=', got {b['op']!r}")
        if isinstance(b["value"], bool) or not isinstance(b["value"], (int, float)):
            raise BenchError(f"{path}: bound {i}: value must be a number, got {b['value']!r}")
        if not isinstance(b["model"], str) or not isinstance(b["metric"], str):
            raise BenchError(f"{path}: bound {i}: model and metric must be strings")
        bounds.append(Bound(b["model"], b["metric"], b["op"], float(b["value"]), b.get("worst_seen"), b.get("margin")))
    return bounds


def derive(values_by_seed: list[dict[tuple[str, str], float]]) -> list[Bound]:
    """Bounds from runs with different seeds: the worst value seen, loosened by the margin rule."""
    bounds = []
    for (model, metric), op in GATED.items():
        seen = [v[(model, metric)] for v in values_by_seed if (model, metric) in v]
        if not seen:
            continue
        worst = min(seen) if op == ">=" else max(seen)
        sd = statistics.stdev(seen) if len(seen) > 1 else 0.0
        floor = 0.02 if metric.endswith("_acc") else 0.01 * abs(worst)
        margin = max(3 * sd, floor)
        value = worst - margin if op == ">=" else worst + margin
        bounds.append(Bound(model, metric, op, round(value, 4), round(worst, 4), round(margin, 4)))
    return bounds


def write_thresholds(path: str | Path, bounds: list[Bound], provenance: dict[str, object]) -> None:
    lines = [
        "# Regression gate thresholds for python -m bench.check (studies/ci.toml).",
        "# Each bound = the worst value seen over the seeds below, loosened by `margin`.",
        "[provenance]",
    ]
    for k, v in provenance.items():
        lines.append(f"{k} = {_toml(v)}")
    lines.append(f"margin_rule = {_toml(MARGIN_RULE)}")
    for b in bounds:
        lines += ["", "[[bound]]", f"model = {_toml(b.model)}", f"metric = {_toml(b.metric)}", f"op = {_toml(b.op)}",
                  f"value = {b.value}", f"worst_seen = {b.worst_seen}", f"margin = {b.margin}"]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _toml(v: object) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)
