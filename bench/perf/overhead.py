"""`python -m bench.perf.overhead`: trial wall time with MLflow tracking vs without (a benchmark).

Runs the same fixed trial alternately with a real Tracker (SQLite store in a temp folder)
and with NullTracker, and reports the median overhead; it also times every tracking call
inside the tracked trials, which stays meaningful when other work shares the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.errors import HelpFormatter, cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.perf.overhead", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    p.add_argument("--study", default="latent", help="study whose data, training and eval settings are used")
    p.add_argument("--latent-dim", type=int, default=16, help="latent size of the fixed trial")
    p.add_argument("--hidden-width", type=int, default=256, help="hidden width of the fixed trial")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the study's)")
    p.add_argument("--repeats", type=int, default=3, help="trials with and without tracking each")
    p.add_argument("--data-dir", default=None, help="data folder (default: $VAE_DATA_DIR, else ./data)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    return p


def timed_tracker_class():
    """A Tracker whose every MLflow call adds its wall time to `spent` (child runs included)."""
    from contextlib import contextmanager

    from bench.tracking import ChildRun, Tracker

    class TimedTracker(Tracker):
        spent = 0.0

        def _timed(self, fn, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent += time.perf_counter() - t0

        @contextmanager
        def child_run(self, *args, **kwargs):
            cm = super().child_run(*args, **kwargs)
            run = self._timed(cm.__enter__)
            timed = TimedRun(self, run)
            try:
                yield timed
            except BaseException:
                run.outcome = timed.outcome
                if not self._timed(cm.__exit__, *sys.exc_info()):
                    raise
            else:
                self._timed(cm.__exit__, None, None, None)

    class TimedRun:
        def __init__(self, tracker, run: ChildRun) -> None:
            self._tracker, self._run, self.outcome = tracker, run, None
            self.run_id = run.run_id

        def __getattr__(self, name):
            fn = getattr(self._run, name)
            return lambda *a, **k: self._tracker._timed(fn, *a, **k)

    return TimedTracker


class NullTracker:
    """A Tracker that records nothing: the baseline of the tracking-overhead benchmark."""

    uri = "none"
    experiment_id = "0"

    @contextmanager
    def child_run(self, parent_id: str, name: str, params: dict[str, Any], tags: dict[str, Any]) -> Iterator[NullRun]:
        yield NullRun()


class NullRun:
    run_id = "none"
    outcome: tuple[str, str] | None = None

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import optuna
    import torch

    from bench.objective import TrialRunner
    from bench.spec import load_spec

    TimedTracker = timed_tracker_class()
    from vae.data import load_data

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(args.study).with_overrides(epochs=args.epochs)
    spec = dataclasses.replace(
        spec,
        search=(),
        n_trials=10_000,
        model=dataclasses.replace(spec.model, latent_dim=args.latent_dim, hidden_width=args.hidden_width),
    )
    data = load_data(spec.data, args.data_dir)
    device = torch.device("cpu")
    times: dict[str, list[float]] = {"tracked": [], "untracked": []}
    in_tracking: list[float] = []
    with tempfile.TemporaryDirectory(prefix="vaebench-overhead-") as tmp:
        tracker = TimedTracker(f"sqlite:///{tmp}/mlflow.db", "overhead")
        parent = tracker.create_parent_run("overhead", {}, {}, {})
        runners = {
            "tracked": TrialRunner(spec, data, device, tracker, parent),
            "untracked": TrialRunner(spec, data, device, NullTracker(), "none"),
        }
        study = optuna.create_study(direction="maximize")
        study.optimize(runners["untracked"], n_trials=1)  # warm-up: imports, allocator, first-run costs
        study.optimize(runners["tracked"], n_trials=1)
        for _ in range(args.repeats):
            for mode in ("untracked", "tracked"):
                tracker.spent = 0.0
                t0 = time.perf_counter()
                study.optimize(runners[mode], n_trials=1)
                times[mode].append(time.perf_counter() - t0)
                if mode == "tracked":
                    in_tracking.append(tracker.spent)
    tracked, untracked = statistics.median(times["tracked"]), statistics.median(times["untracked"])
    result = {
        "trial_s_tracked": tracked,
        "trial_s_untracked": untracked,
        "overhead_s": tracked - untracked,
        "overhead_pct": 100 * (tracked - untracked) / untracked,
        "in_tracking_s": in_tracking,
        "in_tracking_pct": statistics.median(
            100 * s / (t - s) for s, t in zip(in_tracking, times["tracked"], strict=False)
        ),
        "all_s": times,
        "config": {
            "latent_dim": args.latent_dim,
            "hidden_width": args.hidden_width,
            "epochs": spec.train.epochs,
            "train_images": len(data.train),
            "threads": torch.get_num_threads(),
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"trial wall time, median of {args.repeats}: tracked {tracked:.2f} s, untracked {untracked:.2f} s")
        print(f"tracking overhead: {tracked - untracked:.2f} s per trial = {result['overhead_pct']:.1f} %")
        print(
            f"time inside tracking calls: {statistics.median(in_tracking):.2f} s per trial = "
            f"{result['in_tracking_pct']:.1f} % of the rest of the trial"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
