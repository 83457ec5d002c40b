"""Everything the project writes to or reads from MLflow; the only module that imports mlflow.

A study is one experiment holding one parent run; each trial and baseline is a child run
opened with `child_run(...)`, a `with` block that always closes the run with a final status.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bench.errors import BenchError

log = logging.getLogger(__name__)

ROLE_TAG = "vaebench.role"  # "study" on the parent run, "trial" / "baseline" / REPLICATE_ROLE on children
REPLICATE_ROLE = "replicate"  # a compared configuration trained again with another seed (bench.replicates)
SEED_TAG = "seed"  # a replicate's seed: training, binarization, FD draws, corruption noise
REPLICATE_OF_TAG = "replicate_of"  # MLflow run id of the best trial whose configuration a replicate repeats
REPLICATE_TRIAL_TAG = "replicate_of_trial"  # that trial's number
STUDY_TAG = "study"
PROJECT_DIR = Path(__file__).resolve().parent.parent
VAE_PACKAGE_DIR = PROJECT_DIR / "vae"
TERMINAL = ("FINISHED", "FAILED", "KILLED")


def _mlflow():
    import mlflow

    return mlflow


def resolve_tracking_uri(flag: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else MLflow's default (sqlite:///mlflow.db here)."""
    if flag:
        return flag
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return _mlflow().get_tracking_uri()


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail with a BenchError, writing nothing, when the tracking store cannot be used."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                if resp.status != 200:
                    raise BenchError(f"MLflow tracking server {uri} answered {resp.status} on /health")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BenchError(
                f"cannot reach the MLflow tracking server {uri} ({reason}); start it or pass another --tracking-uri"
            ) from None
        return
    if uri.startswith("sqlite:///"):
        # sqlite:///rel.db is relative to the working directory, sqlite:////abs.db absolute
        folder = Path(uri[len("sqlite:///") :]).parent
        if not folder.is_dir():
            raise BenchError(f"the folder of the MLflow database {uri} does not exist: {folder}")
        return
    if uri.startswith("file:") or "://" not in uri:
        folder = Path(uri[len("file://") :] if uri.startswith("file://") else uri).parent
        if not folder.is_dir():
            raise BenchError(f"the parent folder of the MLflow store {uri} does not exist: {folder}")
        return
    if uri.split("://")[0] in ("postgresql", "mysql", "mssql", "databricks") or "+" in uri.split("://")[0]:
        return
    raise BenchError(f"unsupported MLflow tracking URI {uri!r}; use http(s)://, sqlite:///, file: or a database URL")


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on what this study wrote."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri}"


def git_commit() -> str:
    """The project's git commit (with '-dirty' when the tree has changes), or 'unknown'."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def to_uint8_image(grid) -> np.ndarray:
    """A (3, H, W) float tensor in [0, 1] -> (H, W, 3) uint8 for mlflow.log_image."""
    arr = grid.detach().cpu().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    return np.ascontiguousarray(arr)


class Tracker:
    """One MLflow experiment per study: the parent run, child runs and what is logged to them."""

    def __init__(self, uri: str, experiment: str) -> None:
        mlflow = _mlflow()
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        # log_model's pickle warning is understood: see ChildRun.log_model for why pickle
        logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # we print one summary
        self.uri = uri
        mlflow.set_tracking_uri(uri)
        self._open(experiment)  # sets self.client and self.experiment_id

    def _open(self, name: str) -> None:
        """Connect and get or create the experiment, tolerating workers doing either at the same moment.

        Workers that start together on a new sqlite store would race to create and migrate its
        tables (an interrupted migration leaves the store unusable): that is done under a file
        lock. They also race to create the experiment: a retry finds it made.
        """
        mlflow = _mlflow()
        last: Exception | None = None
        for attempt in range(8):
            try:
                with _store_lock(self.uri):  # a new sqlite store is created and migrated here
                    self.client = mlflow.MlflowClient(self.uri)
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    location = self._artifact_location(name)
                    self.experiment_id = self.client.create_experiment(name, artifact_location=location)
                    return
                if exp.lifecycle_stage == "deleted":
                    self.client.restore_experiment(exp.experiment_id)
                self.experiment_id = exp.experiment_id
                return
            except Exception as exc:  # noqa: BLE001 - made concurrently: look again
                last = exc
                time.sleep(0.25 * (attempt + 1) + random.random() / 2)
        first = (str(last).strip().splitlines() or [type(last).__name__])[0]
        raise BenchError(f"cannot create or find the MLflow experiment {name!r} at {self.uri} ({first})")

    def _artifact_location(self, name: str) -> str | None:
        """For a SQLite store, artifacts go beside the database (MLflow's default is ./mlruns
        of whatever folder the process runs in); servers choose their own."""
        if not self.uri.startswith("sqlite:///"):
            return None
        folder = Path(self.uri[len("sqlite:///") :]).resolve().parent / "mlruns"
        return (folder / name.replace("/", "_")).as_uri()

    # ----------------------------------------------------------- parent run
    def create_parent_run(self, study: str, params: dict[str, Any], tags: dict[str, str], files: dict[str, str]) -> str:
        """A new study-level run with its parameters and files (name -> text) as artifacts."""
        run = self.client.create_run(
            self.experiment_id, run_name=study, tags={ROLE_TAG: "study", STUDY_TAG: study, **tags}
        )
        rid = run.info.run_id
        self.client.log_batch(rid, params=[_param(k, v) for k, v in params.items()])
        for name, text in files.items():
            self.client.log_text(rid, text, name)
        return rid

    def run_exists(self, run_id: str | None) -> bool:
        if not run_id:
            return False
        try:
            run = self.client.get_run(run_id)
        except Exception:
            return False
        return run.info.experiment_id == self.experiment_id and run.info.lifecycle_stage == "active"

    def find_parent_run(self, study: str, study_uid: str) -> str | None:
        """The parent run tagged with this Optuna study's id, if one exists."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = 'study' and tags.`optuna_study_uid` = '{study_uid}'",
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def delete_run(self, run_id: str) -> None:
        """Move a run to MLflow's trash (a duplicate parent made by a racing worker)."""
        self.client.delete_run(run_id)

    def set_status(self, run_id: str, status: str) -> None:
        """Mark a run RUNNING, FINISHED, FAILED or KILLED."""
        if status == "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.client.set_terminated(run_id, status)

    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    def close_if_running(self, run_id: str, status: str, reason: str) -> bool:
        """Close a run left RUNNING by a dead worker; returns whether it was open."""
        try:
            run = self.client.get_run(run_id)
        except Exception:
            return False
        if run.info.status in TERMINAL:
            return False
        self.client.set_tag(run_id, "fail_reason", reason)
        self.client.set_terminated(run_id, status)
        return True

    # ----------------------------------------------------------- logging by run id
    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step or 0) for k, v in metrics.items()])

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self.client.log_batch(run_id, params=[_param(k, v) for k, v in params.items()])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_image(self, run_id: str, grid, name: str) -> None:
        """A (3, H, W) tensor grid in [0, 1] as a PNG artifact."""
        self.client.log_image(run_id, to_uint8_image(grid), artifact_file=name)

    def log_figure(self, run_id: str, fig, name: str) -> None:
        import matplotlib.pyplot as plt

        self.client.log_figure(run_id, fig, name)
        plt.close(fig)

    def log_file(self, run_id: str, path: str | os.PathLike, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def log_dir(self, run_id: str, path: str | os.PathLike, folder: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(path), folder)

    def download(self, run_id: str, path: str, dst: str | os.PathLike) -> Path:
        return Path(self.client.download_artifacts(run_id, path, str(dst)))

    # ----------------------------------------------------------- child runs
    @contextmanager
    def child_run(self, parent_id: str, name: str, params: dict[str, Any], tags: dict[str, Any]) -> Iterator["ChildRun"]:
        """A nested run that is always closed: FINISHED, or the status the body chose, or FAILED.

        The body sets `run.outcome = ("KILLED", reason)` before raising for a pruned trial;
        an interrupt (KeyboardInterrupt) closes it KILLED, any other exception FAILED, with its reason.
        """
        mlflow = _mlflow()
        active = mlflow.start_run(
            experiment_id=self.experiment_id,
            run_name=name,
            parent_run_id=parent_id,
            tags={k: str(v) for k, v in tags.items()},
        )
        child = ChildRun(self, active.info.run_id)
        status = "FAILED"
        try:
            self.log_params(child.run_id, params)
            yield child
            status = "FINISHED"
        except BaseException as exc:
            # SIGINT, and SIGTERM turned into KeyboardInterrupt by bench.run: the run was stopped, not broken
            stopped = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            status, reason = child.outcome or (stopped, f"{type(exc).__name__}: {exc}")
            _safe(lambda: self.set_tags(child.run_id, {"fail_reason": reason[:4000]}))
            raise
        finally:
            _safe(lambda: mlflow.end_run(status))


@dataclass
class ChildRun:
    """The open child run: log to it while the `with` block lasts."""

    tracker: Tracker
    run_id: str
    outcome: tuple[str, str] | None = None  # (status, reason) to close with if the body raises
    _step_metrics: dict[str, float] = field(default_factory=dict)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.tracker.log_metrics(self.run_id, metrics, step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.tracker.set_tags(self.run_id, tags)

    def log_image(self, grid, name: str) -> None:
        self.tracker.log_image(self.run_id, grid, name)

    def log_figure(self, fig, name: str) -> None:
        self.tracker.log_figure(self.run_id, fig, name)

    def log_model(self, model, checkpoint: str | os.PathLike | None = None) -> str:
        """The model with mlflow.pytorch.log_model, so that mlflow.pytorch.load_model returns it.

        Pickle format with the `vae` package as code: the VAE's forward returns a tuple and
        its use is encode/decode/sample, which the pt2 graph format (one tensor out) cannot
        carry. A weights-only checkpoint (state dict + configs) is logged beside it.
        """
        import torch

        mlflow = _mlflow()
        info = mlflow.pytorch.log_model(
            model.cpu().eval(),
            name="model",
            serialization_format="pickle",
            code_paths=[str(VAE_PACKAGE_DIR)],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
        if checkpoint is not None:
            self.tracker.log_file(self.run_id, checkpoint, "checkpoint")
        return info.model_uri


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Hold `<db>.lock` beside a sqlite store, so that one process at a time creates or migrates it."""
    path = uri[len("sqlite:///") :].split("?", 1)[0] if uri.startswith("sqlite:///") else ""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        path = ""
    if not path or path == ":memory:":
        yield
        return
    with open(f"{path}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _param(key: str, value: Any):
    from mlflow.entities import Param

    return Param(key, "None" if value is None else str(value))


def _safe(fn) -> None:
    """Run a best-effort cleanup step; a tracking hiccup must not hide the real error."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - cleanup only
        log.warning("MLflow cleanup step failed: %s", exc)


def load_logged_model(model_uri: str):
    """mlflow.pytorch.load_model, for the report and tests."""
    return _mlflow().pytorch.load_model(model_uri)


def search_runs(uri: str, experiment: str, filter_string: str = ""):
    """Runs of an experiment as a pandas DataFrame (mlflow.search_runs)."""
    mlflow = _mlflow()
    mlflow.set_tracking_uri(uri)
    exp = mlflow.MlflowClient(uri).get_experiment_by_name(experiment)
    if exp is None:
        raise BenchError(f"no MLflow experiment named {experiment!r} at {uri}; run the study first")
    return mlflow.search_runs([exp.experiment_id], filter_string=filter_string, output_format="pandas")


def tempdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="vaebench-")


class NullTracker:
    """A Tracker that records nothing: the baseline of the tracking-overhead benchmark."""

    uri = "none"
    experiment_id = "0"

    @contextmanager
    def child_run(self, parent_id: str, name: str, params: dict[str, Any], tags: dict[str, Any]) -> Iterator["NullRun"]:
        yield NullRun()


class NullRun:
    run_id = "none"
    outcome: tuple[str, str] | None = None

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None
