"""`python -m bench.check`: the CI regression gate on ELBO and baseline thresholds.

Runs the small seeded `ci` study afresh (tracked in MLflow, tagged as a gate run), reads
its metrics back, and exits 0 when every bound holds, 1 on a regression, 2 on bad input.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time

from bench.errors import BenchError, HelpFormatter, cli_main
from bench.thresholds import DEFAULT_THRESHOLDS, Bound, derive, load_thresholds, write_thresholds

EXIT_PASS, EXIT_REGRESSION = 0, 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.check",
        description="Regression gate: run the fixed `ci` study and compare its metrics with stored thresholds. "
        "Exit 0: every threshold holds; 1: a metric regressed; 2: bad input.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--study", default="ci", help="the gate's study (name in studies/ or a .toml path)")
    p.add_argument("--thresholds", default=str(DEFAULT_THRESHOLDS), help="thresholds file (TOML)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else MLflow's default sqlite:///mlflow.db)")
    p.add_argument("--data-dir", default=None, help="data folder (default: $VAE_DATA_DIR, else ./data)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"], help="device; cpu is deterministic for a seed")
    p.add_argument("--seed", type=int, default=None, help="override the study's seed (default: the study file's)")
    p.add_argument("--calibrate", action="store_true", help="instead of gating, run every --seeds seed and write --thresholds from the worst values seen")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds for --calibrate")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def gate_run(args: argparse.Namespace, seed: int | None) -> dict[tuple[str, str], float]:
    """Run the gate study once in a fresh Optuna storage; its metrics by (model, metric)."""
    from bench import run

    with tempfile.TemporaryDirectory(prefix="vaebench-gate-") as tmp:
        argv = ["--study", args.study, "--storage", f"{tmp}/gate.journal", "--device", args.device,
                "--report-dir", f"{tmp}/report"]
        for flag, val in (("--tracking-uri", args.tracking_uri), ("--data-dir", args.data_dir), ("--seed", seed)):
            if val is not None:
                argv += [flag, str(val)]
        if args.no_progress:
            argv.append("--no-progress")
        run_args = run.build_parser().parse_args(argv)
        v = run.validate(run_args)
        out = run.execute(run_args, argv, v, parent_tags={"vaebench.gate": "true"})
        if out.rc != 0:
            raise SystemExit(out.rc)
        return collect_metrics(out.tracker, out.parent_run_id)


def collect_metrics(tracker, parent_run_id: str) -> dict[tuple[str, str], float]:
    """Every test/ metric of the parent's child runs, keyed by (model tag, metric)."""
    values: dict[tuple[str, str], float] = {}
    for r in tracker.find_runs(parent_run_id):
        model = r.data.tags.get("model", "?")
        for k, val in r.data.metrics.items():
            if k.startswith("test/"):
                values[(model, k)] = val
    return values


def judge(bounds: list[Bound], values: dict[tuple[str, str], float]) -> tuple[list[list[str]], bool]:
    """Rows (metric, model, value, threshold, margin, result) and whether all bounds held."""
    rows, ok = [], True
    for b in bounds:
        v = values.get((b.model, b.metric))
        if v is None:
            rows.append([b.metric, b.model, "missing", f"{b.op} {b.value:g}", "", "FAIL"])
            ok = False
            continue
        passed = b.holds(v)
        ok &= passed
        rows.append([b.metric, b.model, f"{v:.4f}", f"{b.op} {b.value:g}", f"{b.slack(v):+.4f}", "pass" if passed else "FAIL"])
    return rows, ok


def format_table(rows: list[list[str]]) -> str:
    head = ["metric", "model", "value", "threshold", "margin", "result"]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.calibrate:
        return calibrate(args)
    bounds = load_thresholds(args.thresholds)  # validated before anything runs
    t0 = time.monotonic()
    values = gate_run(args, args.seed)
    rows, ok = judge(bounds, values)
    print("\n" + format_table(rows))
    failed = [f"{r[1]} {r[0]}" for r in rows if r[-1] == "FAIL"]
    print(f"\ngate {'passed' if ok else 'FAILED'} in {time.monotonic() - t0:.0f} s"
          + ("" if ok else f": regressed: {', '.join(failed)}"))
    return EXIT_PASS if ok else EXIT_REGRESSION


def calibrate(args: argparse.Namespace) -> int:
    """Run the gate study for each seed and write thresholds from what was seen."""
    if len(args.seeds) < 5:
        raise BenchError(f"--calibrate needs at least 5 seeds to derive bounds, got {len(args.seeds)}")
    t0 = time.monotonic()
    runs = [gate_run(args, s) for s in args.seeds]
    bounds = derive(runs)
    provenance = {
        "command": "python -m bench.check --calibrate --seeds " + " ".join(map(str, args.seeds)),
        "study": args.study,
        "seeds": list(args.seeds),
        "measured": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "device": args.device,
    }
    write_thresholds(args.thresholds, bounds, provenance)
    rows = [[b.metric, b.model, f"{b.worst_seen:g}", f"{b.op} {b.value:g}", f"{b.margin:g}", ""] for b in bounds]
    print("\n" + format_table(rows).replace("value ", "worst ", 1))
    print(f"\nwrote {len(bounds)} bounds from {len(runs)} seeds to {args.thresholds} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
