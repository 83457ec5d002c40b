"""The regression gate's reference file and the statistics of its band.

`load_reference(path)` validates the TOML written by `write_reference`: per gated (model, metric)
the mean and standard deviation over the calibration seeds, and the seeds the gate runs. A gate
value is the mean over its K seeds; it passes when |value - mean| <= band, where

    band = max(t * sd * sqrt(1/K + 1/n), floor),  t = t_{n-1} quantile at 1 - alpha / (2 m)

(two-sided, Bonferroni over the m gated metrics, so the whole gate false-alarms with probability
at most alpha when seeds are exchangeable draws).
"""

from __future__ import annotations

import functools
import math
import statistics
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from bench.errors import BenchError
from bench.metrics import METRICS, better

DEFAULT_THRESHOLDS = Path(__file__).resolve().parent.parent / "studies" / "thresholds" / "ci.toml"
GATE_ALPHA = 0.01  # family-wise false-alarm rate of the whole gate
FLOOR = 0.02  # nats: the band is never narrower (float32 sums over 10,000 images differ across CPUs)
POWER = 0.95  # the minimum detectable regression is the shift caught with this probability

# what the file's values must be, judged by pydantic: strict (true is not 1, "3" is not 3), numbers finite
_STRICT = ConfigDict(strict=True, allow_inf_nan=False)
_GATE_SEEDS = TypeAdapter(Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2)], config=_STRICT)
_CALIBRATION_N = TypeAdapter(Annotated[int, Field(ge=3)], config=_STRICT)
_NUMBER = TypeAdapter(float, config=_STRICT)


@dataclass(frozen=True)
class Reference:
    """One gated number as calibrated: its mean and spread over n seeds."""

    model: str
    metric: str
    mean: float
    sd: float  # sample standard deviation over the calibration seeds
    n: int  # calibration seeds

    def noise(self, k: int) -> float:
        """Standard error of (mean of k new seeds - this mean)."""
        return self.sd * math.sqrt(1 / k + 1 / self.n)

    def band(self, k: int, m: int, alpha: float = GATE_ALPHA, floor: float = FLOOR) -> float:
        return max(t_quantile(1 - alpha / (2 * m), self.n - 1) * self.noise(k), floor)

    def detectable(
        self, k: int, m: int, alpha: float = GATE_ALPHA, floor: float = FLOOR, power: float = POWER
    ) -> float:
        """The shift (in the metric's unit) that a gate of k seeds catches with probability `power`."""
        return self.band(k, m, alpha, floor) + normal_quantile(power) * self.noise(k)


@dataclass(frozen=True)
class GateReference:
    """The whole file: the references, the gate's seeds and how it was calibrated."""

    references: tuple[Reference, ...]
    seeds: tuple[int, ...]  # the seeds the gate trains
    alpha: float = GATE_ALPHA
    floor: float = FLOOR
    false_alarm_empirical: float | None = None  # from resampling the calibration seeds
    provenance: dict | None = None

    @property
    def m(self) -> int:
        return len(self.references)


@dataclass(frozen=True)
class Verdict:
    """One gated metric judged: the gate's mean against the reference band."""

    ref: Reference
    value: float | None  # mean over the gate's seeds; None when a seed did not report it
    band: float
    detectable: float

    @property
    def delta(self) -> float:
        return float("nan") if self.value is None else self.value - self.ref.mean

    @property
    def result(self) -> str:
        """'pass', 'worse' (a regression), 'better' (outside the band the good way) or 'missing'."""
        if self.value is None:
            return "missing"
        if abs(self.delta) <= self.band:
            return "pass"
        higher = better(self.ref.metric) == "higher"
        return "better" if (self.delta > 0) == higher else "worse"


@functools.cache
def t_quantile(p: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, df))


def normal_quantile(p: float) -> float:
    return statistics.NormalDist().inv_cdf(p)


def judge(ref: GateReference, values_by_seed: list[dict[tuple[str, str], float]]) -> list[Verdict]:
    """Each reference against the mean of the seeds' values."""
    out = []
    for r in ref.references:
        vals = [v[(r.model, r.metric)] for v in values_by_seed if (r.model, r.metric) in v]
        value = statistics.fmean(vals) if len(vals) == len(values_by_seed) and vals else None
        k = len(values_by_seed)
        out.append(
            Verdict(r, value, r.band(k, ref.m, ref.alpha, ref.floor), r.detectable(k, ref.m, ref.alpha, ref.floor))
        )
    return out


def calibrate(values_by_seed: list[dict[tuple[str, str], float]], keys: list[tuple[str, str]]) -> tuple[Reference, ...]:
    """References (mean, sd, n) from the calibration seeds' values."""
    refs = []
    for model, metric in keys:
        vals = [v[(model, metric)] for v in values_by_seed]
        refs.append(Reference(model, metric, statistics.fmean(vals), statistics.stdev(vals), len(vals)))
    return tuple(refs)


def empirical_false_alarm(
    values_by_seed: list[dict[tuple[str, str], float]],
    keys: list[tuple[str, str]],
    k: int,
    alpha: float = GATE_ALPHA,
    floor: float = FLOOR,
    resamples: int = 20_000,
    seed: int = 0,
) -> float:
    """How often an unchanged code base fails the gate, estimated without assuming normality.

    Each resample plays the gate with k of the calibration seeds against a reference calibrated
    on the other n - k, exactly as `judge` does (same band formula, t with n - k - 1 df); the
    fraction of resamples in which any metric leaves its band is the estimate. Needs n >= k + 3.
    """
    import numpy as np

    n = len(values_by_seed)
    if n < k + 3:
        raise ValueError(f"need at least k + 3 = {k + 3} calibration seeds, got {n}")
    x = np.array([[v[key] for key in keys] for v in values_by_seed], dtype=np.float64)  # (n, m)
    m = x.shape[1]
    order = np.argsort(np.random.default_rng(seed).random((resamples, n)), axis=1)  # a permutation per resample
    gate, rest = x[order[:, :k]], x[order[:, k:]]  # (R, k, m), (R, n - k, m)
    rest_n = n - k
    noise = rest.std(axis=1, ddof=1) * np.sqrt(1 / k + 1 / rest_n)  # (R, m)
    band = np.maximum(t_quantile(1 - alpha / (2 * m), rest_n - 1) * noise, floor)
    outside = np.abs(gate.mean(axis=1) - rest.mean(axis=1)) > band
    return float(outside.any(axis=1).mean())


def choose_gate_seeds(
    values_by_seed: list[dict[tuple[str, str], float]],
    seeds: list[int],
    keys: list[tuple[str, str]],
    k: int,
    tries: int = 200_000,
    seed: int = 0,
) -> tuple[int, ...]:
    """The k calibration seeds whose means sit closest to the calibration means, jointly.

    With fixed seeds the gate's draw is fixed too: an arbitrary set of 8 seeds measured here once
    sat 2.9 noise units above the mean, which would have hidden a 1.5-nat regression on this
    machine. Among `tries` random k-subsets (seeded), the one minimizing the largest
    |subset mean - mean| / sd over the metrics is taken, so the gate starts centred where it was
    calibrated. Elsewhere (another CPU's float rounding, a change in the random stream) its draw
    is a fresh one, which the band's sqrt(1/k + 1/n) already assumes.
    """
    import numpy as np

    x = np.array([[v[key] for key in keys] for v in values_by_seed], dtype=np.float64)  # (n, m)
    mu, sd = x.mean(axis=0), np.maximum(x.std(axis=0, ddof=1), 1e-12)
    rng = np.random.default_rng(seed)
    best, best_cost = None, float("inf")
    for start in range(0, tries, 10_000):
        picks = np.argsort(rng.random((min(10_000, tries - start), len(seeds))), axis=1)[:, :k]  # (T, k)
        cost = (np.abs(x[picks].mean(axis=1) - mu) / sd).max(axis=1)  # (T,)
        i = int(cost.argmin())
        if cost[i] < best_cost:
            best, best_cost = picks[i], float(cost[i])
    return tuple(sorted(int(seeds[i]) for i in best))


# ------------------------------------------------------------------------ the file


def load_reference(path: str | Path) -> GateReference:
    """Read and validate a reference file; BenchError with one line on any problem."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"thresholds file {path} does not exist; make one with python -m bench.check --calibrate")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"{path}: TOML syntax error: {exc}") from None
    unknown = set(raw) - {"provenance", "gate", "reference"}
    if unknown:
        raise BenchError(
            f"{path}: unknown section(s) {', '.join(sorted(unknown))}; allowed: provenance, gate, reference"
        )
    gate = raw.get("gate")
    if not isinstance(gate, dict):
        raise BenchError(f"{path}: needs a [gate] table with seeds (the seeds the gate trains)")
    extra = set(gate) - {"seeds", "alpha", "floor", "false_alarm_empirical", "resamples"}
    if extra:
        raise BenchError(f"{path}: [gate]: unknown key(s) {', '.join(sorted(extra))}")
    seeds = gate.get("seeds")
    if not _valid(_GATE_SEEDS, seeds) or len(set(seeds)) != len(seeds):
        raise BenchError(
            f"{path}: [gate] seeds must be a list of at least 2 distinct non-negative integers, got {seeds!r}"
        )
    alpha, floor = gate.get("alpha", GATE_ALPHA), gate.get("floor", FLOOR)
    if not _number(alpha) or not 0 < alpha < 0.5:
        raise BenchError(f"{path}: [gate] alpha must be a number in (0, 0.5), got {alpha!r}")
    if not _number(floor) or floor < 0:
        raise BenchError(f"{path}: [gate] floor must be a number >= 0, got {floor!r}")
    items = raw.get("reference")
    if not isinstance(items, list) or not items:
        raise BenchError(f"{path}: needs at least one [[reference]] table with model, metric, mean, sd and n")
    refs = []
    for i, r in enumerate(items, 1):
        if not isinstance(r, dict):
            raise BenchError(f"{path}: reference {i} must be a table")
        need = {"model", "metric", "mean", "sd", "n"}
        extra, missing = set(r) - need, need - set(r)
        if extra or missing:
            raise BenchError(
                f"{path}: reference {i}: "
                + "; ".join(
                    ([f"unknown key(s) {', '.join(sorted(extra))}"] if extra else [])
                    + ([f"missing {', '.join(sorted(missing))}"] if missing else [])
                )
            )
        if r["metric"] not in METRICS or better(r["metric"]) == "none":
            raise BenchError(f"{path}: reference {i}: metric {r['metric']!r} is not a declared metric with a direction")
        if r["model"] not in METRICS[r["metric"]].models:
            raise BenchError(f"{path}: reference {i}: model {r['model']!r} does not log {r['metric']}")
        if not _number(r["mean"]) or not _number(r["sd"]) or r["sd"] < 0:
            raise BenchError(f"{path}: reference {i}: mean must be a number and sd a number >= 0")
        if not _valid(_CALIBRATION_N, r["n"]):
            raise BenchError(f"{path}: reference {i}: n must be an integer >= 3, got {r['n']!r}")
        refs.append(Reference(r["model"], r["metric"], float(r["mean"]), float(r["sd"]), r["n"]))
    if len({(r.model, r.metric) for r in refs}) != len(refs):
        raise BenchError(f"{path}: a (model, metric) has two [[reference]] tables")
    fa = gate.get("false_alarm_empirical")
    return GateReference(
        tuple(refs), tuple(seeds), float(alpha), float(floor), None if fa is None else float(fa), raw.get("provenance")
    )


def write_reference(path: str | Path, ref: GateReference) -> None:
    lines = [
        "# Regression gate reference for python -m bench.check (studies/ci.toml), written by --calibrate.",
        "# Per gated metric: mean and sd over the calibration seeds. The gate trains [gate] seeds and",
        "# fails when their mean leaves mean +- max(t * sd * sqrt(1/K + 1/n), floor), t at 1 - alpha/(2m).",
        "[provenance]",
    ]
    lines += [f"{k} = {_toml(v)}" for k, v in (ref.provenance or {}).items()]
    lines += ["", "[gate]", f"seeds = {_toml(list(ref.seeds))}", f"alpha = {ref.alpha}", f"floor = {ref.floor}"]
    if ref.false_alarm_empirical is not None:
        lines.append(f"false_alarm_empirical = {ref.false_alarm_empirical}")
    for r in ref.references:
        lines += [
            "",
            "[[reference]]",
            f"model = {_toml(r.model)}",
            f"metric = {_toml(r.metric)}",
            f"mean = {r.mean:.6f}",
            f"sd = {r.sd:.6f}",
            f"n = {r.n}",
        ]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _number(v: object) -> bool:
    return _valid(_NUMBER, v)


def _valid(adapter: TypeAdapter, value: Any) -> bool:
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def _toml(v: object) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)
