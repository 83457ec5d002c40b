"""The end of a study: the parent run's summary, then baselines, seed replicates, the paper-protocol NLL and the report.

Called by whichever worker sees the study complete, with its bench.context.StudyContext; every step is safe to repeat.
"""

from __future__ import annotations

from bench.context import StudyContext
from bench.summary import summarize


def finalize(ctx: StudyContext, run_baselines: bool, report_dir: str | None) -> None:
    ctx = ctx.with_best()  # the best trials, found once for every stage below
    summarize(ctx)
    if not run_baselines:
        return
    spec = ctx.spec
    compare = bool(spec.baselines.models or spec.replicate_seeds)
    if compare:
        from bench.compare import run_comparison
        from bench.ood import load_ood_scoring
        from bench.replicates import run_replicates

        ood = load_ood_scoring(spec, ctx.data_root)  # None unless the study names [eval] ood_dataset
        run_comparison(ctx, ood=ood)
        run_replicates(ctx, ood=ood)
    if spec.eval.paper_protocol:
        from bench.paper import score_paper_protocol

        score_paper_protocol(ctx)
    if compare:
        write_report(ctx, report_dir)


def write_report(ctx: StudyContext, report_dir: str | None) -> None:
    """The comparison report, in `report_dir` (default reports/<study>) and on the parent run, printed."""
    from bench.describe import parent_note
    from bench.report import make_report, report_folder

    out = report_folder(ctx.spec.name, report_dir)
    report = make_report(ctx.tracker, ctx.spec.name, ctx.parent_run_id, out)
    ctx.tracker.set_note(ctx.parent_run_id, parent_note(ctx.spec, ctx.bests.trial, str(out), report.under_tuned))
    print("\n" + report.printed())  # the table is the result: printed with or without progress bars
    print(f"report: {out}/comparison.md")
