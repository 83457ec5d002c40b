"""What every stage of a study needs, as one object: the study, its spec and tracking, the data on its device.

`bench.run` makes one `StudyContext` once the study and its parent run are open; the summary, the
comparison, the seed replicates, the paper-protocol NLL and the report (bench.finalize) each take it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import optuna
import torch

from bench.spec import StudySpec
from bench.tracking import Tracker
from bench.trials import StudyBest
from vae.data import Datasets


@dataclass(frozen=True)
class StudyContext:
    """One worker's open study: built once by bench.run.execute, read by every stage after the search."""

    study: optuna.Study  # the Optuna study: its trials and the claims written on it
    spec: StudySpec  # the study file with the command line's overrides
    tracker: Tracker  # the MLflow experiment named after the study
    parent_run_id: str  # the study's MLflow parent run; every stage's runs nest under it
    data: Datasets  # the study's splits, resident on `device` for the whole study
    device: torch.device  # where models are trained and scored
    data_root: str | None = None  # the data folder: the [eval] ood_dataset is read from it
    progress: bool = True  # progress bars (the report table is printed either way)
    best: StudyBest | None = None  # the best trials at the state the ending works from (with_best)

    def with_best(self) -> StudyContext:
        """This context with the study's best trials computed once, for every stage of the ending to share."""
        return dataclasses.replace(self, best=StudyBest.of(self.study, self.spec))

    @property
    def bests(self) -> StudyBest:
        """The best trials `with_best` fixed, or (a stage called on its own) the study's best trials now."""
        return self.best if self.best is not None else StudyBest.of(self.study, self.spec)
