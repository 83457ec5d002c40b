"""The end of a study: the parent run's summary, then baselines, seed replicates, the paper-protocol NLL and the report.

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
    data_root: str | None = None,
) -> None:
    summarize(study, spec, tracker, parent_run_id)
    if not run_baselines:
        return
    compare = bool(spec.baselines.models or spec.replicate_seeds)
    if compare:
        from bench.compare import run_comparison
        from bench.ood import load_ood_images
        from bench.replicates import run_replicates

        ood_x = load_ood_images(spec, data_root)  # None unless the study names [eval] ood_dataset
        run_comparison(study, spec, tracker, parent_run_id, data, device, progress, ood_x=ood_x)
        run_replicates(study, spec, tracker, parent_run_id, data, device, progress, ood_x=ood_x)
    if spec.eval.paper_protocol:
        from bench.paper import score_paper_protocol

        score_paper_protocol(study, spec, tracker, data, device)
    if not compare:
        return
    from bench.compare import report_dir as default_dir
    from bench.describe import parent_note
    from bench.report import make_report
    from bench.summary import best_trial

    out = default_dir(spec, report_dir)
    report = make_report(tracker, spec.name, parent_run_id, out)
    tracker.set_note(parent_run_id, parent_note(spec, best_trial(study, spec), str(out)))
    print("\n" + report.printed())  # the table is the result: printed with or without progress bars
    print(f"report: {out}/comparison.md")
