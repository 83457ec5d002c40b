"""The end of a study: the parent run's summary, then baselines and the report when asked for.

Called by whichever worker sees the study complete; every step is safe to repeat.
"""

from __future__ import annotations

import optuna
import torch

from bench.spec import StudySpec
from bench.summary import summarize
from bench.tracking import Tracker
from vae.data import Datasets


def finalize(
    study: optuna.Study,
    spec: StudySpec,
    tracker: Tracker,
    parent_run_id: str,
    data: Datasets,
    device: torch.device,
    run_baselines: bool,
    report_dir: str | None,
    progress: bool,
) -> None:
    summarize(study, spec, tracker, parent_run_id)
    if not (run_baselines and spec.baselines.models):
        return
    from bench.compare import report_dir as default_dir, run_comparison
    from bench.describe import parent_note
    from bench.report import make_report
    from bench.summary import best_trial

    run_comparison(study, spec, tracker, parent_run_id, data, device, progress)
    out = default_dir(spec, report_dir)
    report = make_report(tracker, spec.name, parent_run_id, out)
    tracker.set_note(parent_run_id, parent_note(spec, best_trial(study), str(out)))
    import pandas as pd  # the table is the result: printed with or without progress bars

    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print("\n" + report.table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"report: {out}/comparison.md")
