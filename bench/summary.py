"""What the study's parent run holds at the end: best trial, Optuna's plots, the trials table.

`summarize(ctx)` (a bench.context.StudyContext) is idempotent: any worker may call it again.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import TrialState

from bench import tags as T
from bench.context import StudyContext
from bench.describe import parent_note
from bench.spec import StudySpec


def _plots(study: optuna.Study, spec: StudySpec) -> dict[str, Callable[[], object]]:
    """Optuna's matplotlib plots that make sense for this study (name -> factory)."""
    from optuna.visualization import matplotlib as ovm

    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if spec.multi_objective:
        names = list(spec.objectives)
        plots = {"pareto_front": lambda: ovm.plot_pareto_front(study, target_names=names)}
        for i, name in enumerate(names):
            short = name.replace("/", "_")
            if spec.search:
                plots[f"slice_{short}"] = lambda i=i, name=name: ovm.plot_slice(
                    study, target=lambda t: t.values[i], target_name=name
                )
            if len(spec.search) >= 2 and n_complete >= 2:
                plots[f"param_importances_{short}"] = lambda i=i, name=name: ovm.plot_param_importances(
                    study, target=lambda t: t.values[i], target_name=name
                )
        return plots
    plots: dict[str, Callable[[], object]] = {"optimization_history": lambda: ovm.plot_optimization_history(study)}
    if spec.search:
        plots["slice"] = lambda: ovm.plot_slice(study)
        plots["intermediate_values"] = lambda: ovm.plot_intermediate_values(study)
    if len(spec.search) >= 2 and n_complete >= 2:
        plots["param_importances"] = lambda: ovm.plot_param_importances(study)
        plots["contour"] = lambda: ovm.plot_contour(study)
    return plots


def summarize(ctx: StudyContext) -> None:
    """Log the best trial's parameters and metrics, Optuna's plots and the trials table to the parent run.

    The best trial's metrics go under the children's own keys (val/elbo, test/elbo, ...), so the
    parent's row in the runs table lines up with its trials' columns.
    """
    import matplotlib.pyplot as plt

    study, spec, tracker, parent_run_id = ctx.study, ctx.spec, ctx.tracker, ctx.parent_run_id
    best = ctx.bests.trial
    tracker.set_note(parent_run_id, parent_note(spec, best))
    if best is not None:
        tags = {
            T.BEST_TRIAL: best.number,
            T.BEST_RUN_ID: best.user_attrs.get(T.RUN_ID_ATTR, ""),
            **{T.BEST_PARAM.format(name=k): v for k, v in best.params.items()},
        }
        if spec.multi_objective:  # which trials make the front, and the rule that chose `best` among them
            tags["pareto_trials"] = ",".join(str(t.number) for t in sorted(study.best_trials, key=lambda t: t.number))
            tags["best_rule"] = f"highest {spec.split}/elbo on the Pareto front"
        tracker.set_tags(parent_run_id, tags)
        # under the children's own keys, so the parent's row lines up with its trials' columns
        tracker.log_metrics(
            parent_run_id,
            {**dict(zip(spec.objectives, best.values, strict=False)), **best.user_attrs.get(T.TEST_METRICS_ATTR, {})},
        )
    states = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name.lower()] += 1
    tracker.log_metrics(
        parent_run_id, {f"trials/{k}": v for k, v in states.items() if k in ("complete", "pruned", "fail")}
    )

    with tempfile.TemporaryDirectory(prefix="vaebench-") as tmp:
        csv = Path(tmp) / "trials.csv"
        study.trials_dataframe().to_csv(csv, index=False)
        tracker.log_file(parent_run_id, csv, "optuna")
    if best is None:
        return
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # plots warn about params that never varied
    try:
        for name, make in _plots(study, spec).items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    ax = make()
                except (ValueError, RuntimeError, ZeroDivisionError):
                    continue  # e.g. importances of a parameter that never varied
                fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 5))
                fig.tight_layout()
            tracker.log_figure(parent_run_id, fig, f"optuna/{name}.png")
            plt.close("all")
    finally:
        optuna.logging.set_verbosity(verbosity)
