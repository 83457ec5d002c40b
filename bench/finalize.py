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
