"""`python -m bench.check`: the CI regression gate, two-sided, with a measured false-alarm rate and power.

Trains the `ci` study's VAE, autoencoder and PCA with the reference file's seeds, logs each to
MLflow under one gate run, and compares the seeds' mean of each gated metric with the calibrated
band. Exit 0: every metric inside its band; 1: one is outside (worse, or better than noise
explains); 2: bad input; 3: the tracking store unreachable (infrastructure, not a regression).
`--calibrate` measures the reference from many seeds instead.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

from bench.errors import BenchError, HelpFormatter, cli_main
from bench.outage import DEFAULT_TIMEOUT_S as DEFAULT_OUTAGE_S
from bench.thresholds import DEFAULT_THRESHOLDS, FLOOR, GATE_ALPHA, POWER, GateReference, Verdict, write_reference

EXIT_PASS, EXIT_REGRESSION = 0, 1
CALIBRATION_SEEDS = list(range(100, 132))
GATE_SIZE = 16  # seeds the gate trains: 1 nat detectable; about 75 s on 2 idle cores here (8 seeds: 36 s)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.check",
        description="Regression gate: train the `ci` study's VAE, autoencoder and PCA with several seeds and "
        "compare each gated metric's mean with its calibrated band, both ways. "
        "Exit 0: all inside; 1: a metric moved beyond the noise; 2: bad input; 3: the tracking store is unreachable.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--study", default="ci", help="the gate's study (name in studies/ or a .toml path)")
    p.add_argument(
        "--thresholds", default=str(DEFAULT_THRESHOLDS), help="the reference file (TOML) written by --calibrate"
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else MLflow's default sqlite:///mlflow.db)",
    )
    p.add_argument("--data-dir", default=None, help="data folder (default: $VAE_DATA_DIR, else ./data)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="single-thread processes training seeds side by side (default: one per CPU core, at most one per seed)",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="instead of gating, train every --calibration-seeds seed and write --thresholds",
    )
    p.add_argument(
        "--calibration-seeds",
        type=int,
        nargs="+",
        default=CALIBRATION_SEEDS,
        help="seeds for --calibrate (default: 100 to 131)",
    )
    p.add_argument(
        "--gate-size",
        type=int,
        default=GATE_SIZE,
        help="with --calibrate: how many of the calibration seeds the gate trains "
        "(those whose means sit closest to the calibration means)",
    )
    p.add_argument(
        "--outage-timeout",
        type=float,
        default=DEFAULT_OUTAGE_S,
        metavar="SECONDS",
        help="how long to wait out an unreachable MLflow tracking store before ending with exit code 3",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def validate(args: argparse.Namespace):
    """Everything that can be checked before anything is written: spec, reference, data, tracking."""
    from bench.spec import load_spec
    from bench.thresholds import load_reference
    from bench.tracking import check_tracking_uri, resolve_tracking_uri
    from vae.data import DataError, check_data

    spec = load_spec(args.study)
    ref = None if args.calibrate else load_reference(args.thresholds)
    if not args.outage_timeout >= 0:
        raise BenchError(f"--outage-timeout must be at least 0 seconds, got {args.outage_timeout}")
    if args.workers is not None and not 1 <= args.workers <= 64:
        raise BenchError(f"--workers must be between 1 and 64, got {args.workers}")
    if args.calibrate:
        seeds = args.calibration_seeds
        if len(seeds) < 5 or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise BenchError(f"--calibration-seeds needs at least 5 distinct non-negative seeds, got {seeds}")
        if args.gate_size < 2:
            raise BenchError(f"--gate-size must be at least 2, got {args.gate_size}")
        if len(seeds) < args.gate_size + 3:
            raise BenchError(
                f"--calibration-seeds needs at least --gate-size + 3 = {args.gate_size + 3} seeds "
                "to estimate the false-alarm rate"
            )
    try:
        root = check_data(spec.data.dataset, args.data_dir)
    except DataError as exc:
        raise BenchError(str(exc)) from None
    uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking_uri(uri)
    return spec, ref, str(root), uri


def measure_and_log(
    spec,
    seeds: list[int],
    root: str,
    uri: str,
    workers: int | None,
    progress: bool,
    tags: dict[str, str],
    outage_timeout_s: float = DEFAULT_OUTAGE_S,
):
    """Train every seed (in parallel processes), log one child run per (model, seed) under a gate run."""
    from tqdm.auto import tqdm

    from bench import tags as T
    from bench.gate import measure
    from bench.pool import pool_size
    from bench.tracking import Tracker

    tracker = Tracker(uri, spec.name, outage_timeout_s)
    close_abandoned_gates(tracker)
    parent = tracker.create_parent_run(
        spec.name,
        {"seeds": ",".join(map(str, seeds)), "epochs": spec.train.epochs, "limit": spec.data.limit},
        {T.GATE: "true", **tags},
        {f"study/{spec.name}.toml": spec.text or ""},
    )
    bar = tqdm(total=len(seeds), desc="gate seeds", unit="seed", disable=not progress)

    def log_seed(res) -> None:
        models = sorted({m for m, _ in res.values})
        for model in models:
            metrics = {k: v for (m, k), v in res.values.items() if m == model}
            with tracker.child_run(
                parent,
                f"{model}-seed{res.seed}",
                {"seed": res.seed},
                {T.ROLE: T.GATE_ROLE, T.MODEL: model, T.SEED: res.seed},
            ) as run:
                run.log_metrics(metrics)
        bar.update(1)

    try:
        results = measure(spec, seeds, root, workers or pool_size(len(seeds)), on_seed=log_seed)
    except BaseException:
        tracker.set_status(parent, "FAILED")
        raise
    finally:
        bar.close()
    tracker.set_status(parent, "FINISHED")
    return results


def close_abandoned_gates(tracker) -> None:
    """Close the gate runs a gate on this host left RUNNING when it died or ended with exit 3 (the tracking
    store was down, so it could not close them): FAILED, tagged as an infrastructure failure."""
    from bench import tags as T
    from bench.workers import dead_local_worker

    for parent in tracker.find_runs(tags={T.GATE: "true"}, status="RUNNING"):
        if dead_local_worker(parent.data.tags.get(T.WORKER, "")):
            for child in tracker.find_runs(parent=parent.info.run_id, status="RUNNING"):
                tracker.close_if_running(child.info.run_id, "FAILED", "its gate ended before the run was closed")
            tracker.close_if_running(parent.info.run_id, "FAILED", "the gate ended before the run was closed")


def format_table(verdicts: list[Verdict]) -> str:
    head = ["metric", "model", "value", "reference", "band", "delta", "detectable", "result"]
    rows = [
        [
            v.ref.metric,
            v.ref.model,
            "missing" if v.value is None else f"{v.value:.3f}",
            f"{v.ref.mean:.3f}",
            f"±{v.band:.3f}",
            "" if v.value is None else f"{v.delta:+.3f}",
            f"{v.detectable:.3f}",
            {"pass": "pass", "worse": "FAIL (worse)", "better": "FAIL (better)", "missing": "FAIL (missing)"}[v.result],
        ]
        for v in verdicts
    ]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def power_summary(ref: GateReference, k: int) -> str:
    elbo = next((r for r in ref.references if (r.model, r.metric) == ("vae", "test/elbo")), None)
    parts = []
    if elbo is not None:
        parts.append(
            f"minimum detectable regression: {elbo.detectable(k, ref.m, ref.alpha, ref.floor):.2f} nats of VAE "
            f"test/elbo (caught with probability {POWER:.0%}; every metric's in the 'detectable' column)"
        )
    fa = (
        f"false-alarm rate: {ref.alpha:.1%} by construction (two-sided, Bonferroni over {ref.m} metrics, t with n-1 df)"
    )
    if ref.false_alarm_empirical is not None:
        fa += f", {ref.false_alarm_empirical:.2%} measured by resampling the calibration seeds"
    return "\n".join([*parts, fa])


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec, ref, root, uri = validate(args)  # nothing is written before this passes
    if args.calibrate:
        return run_calibration(args, spec, root, uri)
    from bench.thresholds import judge

    t0 = time.monotonic()
    results = measure_and_log(
        spec, list(ref.seeds), root, uri, args.workers, not args.no_progress, {}, args.outage_timeout
    )
    verdicts = judge(ref, [r.values for r in results])
    print("\n" + format_table(verdicts))
    print("\n" + power_summary(ref, len(ref.seeds)))
    bad = [v for v in verdicts if v.result != "pass"]
    took = time.monotonic() - t0
    if not bad:
        print(f"gate passed in {took:.0f} s ({len(ref.seeds)} seeds)")
        return EXIT_PASS
    worse = [f"{v.ref.model} {v.ref.metric}" for v in bad if v.result in ("worse", "missing")]
    better = [f"{v.ref.model} {v.ref.metric}" for v in bad if v.result == "better"]
    msg = f"gate FAILED in {took:.0f} s"
    if worse:
        msg += f"; regressed: {', '.join(worse)}"
    if better:
        msg += (
            f"; better than the calibrated band by more than the noise: {', '.join(better)} "
            "(if the improvement is intended, recalibrate: python -m bench.check --calibrate)"
        )
    print(msg)
    return EXIT_REGRESSION


def run_calibration(args: argparse.Namespace, spec, root: str, uri: str) -> int:
    """Train every calibration seed; write the references, the gate's seeds and the measured false-alarm rate."""
    t0 = time.monotonic()
    results = measure_and_log(
        spec,
        args.calibration_seeds,
        root,
        uri,
        args.workers,
        not args.no_progress,
        {"vaebench.calibration": "true"},
        args.outage_timeout,
    )
    provenance = {
        "command": "python -m bench.check --calibrate --calibration-seeds "
        + " ".join(map(str, args.calibration_seeds))
        + f" --gate-size {args.gate_size}",
        "study": args.study,
        "measured": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_kind()}, {platform.system()}",
        "seconds_per_seed": round(sum(r.seconds for r in results) / len(results), 2),
    }
    ref = reference_from(results, args.gate_size, provenance)
    write_reference(args.thresholds, ref)
    print_calibration(ref)
    print(f"wrote {args.thresholds} from {len(results)} seeds in {time.monotonic() - t0:.0f} s")
    return 0


def reference_from(results, gate_size: int, provenance: dict) -> GateReference:
    """The reference file's content from the calibration seeds' results."""
    from bench.gate import GATED
    from bench.thresholds import calibrate as references
    from bench.thresholds import choose_gate_seeds, empirical_false_alarm

    keys, seeds, values = list(GATED), [r.seed for r in results], [r.values for r in results]
    gate_seeds = choose_gate_seeds(values, seeds, keys, gate_size)
    fa = empirical_false_alarm(values, keys, gate_size)
    provenance = {**provenance, "calibration_seeds": seeds, "false_alarm_resamples": 20000}
    return GateReference(references(values, keys), gate_seeds, GATE_ALPHA, FLOOR, round(fa, 5), provenance)


def print_calibration(ref: GateReference) -> None:
    k = len(ref.seeds)
    head = ["metric", "model", "mean", "sd", "n", "band", "detectable"]
    rows = [
        [
            r.metric,
            r.model,
            f"{r.mean:.3f}",
            f"{r.sd:.3f}",
            str(r.n),
            f"±{r.band(k, ref.m):.3f}",
            f"{r.detectable(k, ref.m):.3f}",
        ]
        for r in ref.references
    ]
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head))]
    print(
        "\n"
        + "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in [head, *rows])
    )
    print(f"\ngate seeds: {', '.join(map(str, ref.seeds))}")
    print(power_summary(ref, k))


def cpu_kind() -> str:
    """The CPU's model name as /proc/cpuinfo gives it, with its core count."""
    import os

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


if __name__ == "__main__":
    sys.exit(main())
