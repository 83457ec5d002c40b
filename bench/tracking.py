"""Everything the project writes to or reads from MLflow; the only module that imports mlflow.

A study is one experiment holding one parent run; each trial and baseline is a child run
opened with `child_run(...)`, a `with` block that always closes the run with a final status.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import random
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import tags as T
from bench.errors import BenchError, InfrastructureError
from bench.outage import DEFAULT_TIMEOUT_S, Outage, transient
from bench.redact import mask, password_env
from bench.workers import dead_local_worker, worker_id

log = logging.getLogger(__name__)

ROLE_TAG = T.ROLE  # re-exported for the modules that import it from here
UI_PORT = 5000  # where `mlflow ui` listens by default
REPLICATE_ROLE, SEED_TAG = T.REPLICATE_ROLE, T.SEED  # re-exported, as ROLE_TAG
REPLICATE_OF_TAG, REPLICATE_TRIAL_TAG = T.REPLICATE_OF, T.REPLICATE_OF_TRIAL
PROJECT_DIR = Path(__file__).resolve().parent.parent
VAE_PACKAGE_DIR = PROJECT_DIR / "vae"
MODEL_CODE = Path(__file__).resolve().parent / "mlflow_model.py"  # what a logged model runs when loaded
MODEL_CHECKPOINT = "checkpoint"  # the logged model's artifact holding the checkpoint (mlflow_model.CHECKPOINT)
TERMINAL = ("FINISHED", "FAILED", "KILLED")
# MLflow's client retries a failed HTTP request 7 times over ~4 minutes, silently, then raises; fewer
# and shorter here (about 7 s), so that an outage is said at once and waited out by Outage up to
# --outage-timeout. Environment variables already set win.
MLFLOW_HTTP_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # waits of 1, 2, 4 s
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",  # seconds for one request to answer
}


def _mlflow():
    import mlflow

    return mlflow


def resolve_tracking_uri(flag: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else MLflow's default (sqlite:///mlflow.db here).

    A server URL's user and password (http://user:pw@host) move to MLFLOW_TRACKING_USERNAME /
    MLFLOW_TRACKING_PASSWORD, which MLflow's client sends as basic auth; the URL kept has neither.
    """
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI") or _mlflow().get_tracking_uri()
    uri, credentials = password_env(uri)
    os.environ.update(credentials)
    return uri


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
            # down or restarting (exit 3: run again later), or not an MLflow server at all (exit 2: fix the URI)
            error = InfrastructureError if transient(exc) or isinstance(reason, OSError) else BenchError
            raise error(
                f"cannot reach the MLflow tracking server {uri} ({reason}); start it or pass another --tracking-uri"
            ) from None
        _check_credentials(uri, timeout_s)
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


def _check_credentials(uri: str, timeout_s: float) -> None:
    """A server with basic-auth answers 401 without a known user's password: say so before anything is written.

    Sends what MLflow's client would send (MLFLOW_TRACKING_USERNAME / _PASSWORD as basic auth).
    """
    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            who = f"user {user!r} with MLFLOW_TRACKING_PASSWORD" if user and password else "a request with no user"
            raise BenchError(
                f"the MLflow tracking server {uri} refused {who} (401 Unauthorized); "
                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an MLflow user's"
            ) from None
    except (urllib.error.URLError, OSError):
        return  # it answered /health a moment ago; the client's own retries take over from here


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on what this study wrote."""
    if uri.startswith(("http://", "https://")):
        return f"open {mask(uri)} in a browser"
    return f"mlflow ui --backend-store-uri {mask(uri)}"


def runs_link(uri: str, experiment_id: str, search_filter: str = "", order_by: str = "") -> str:
    """The UI's runs view of an experiment in the model-training workflow, filtered and sorted.

    Without `workflowType=machine_learning` MLflow 3 opens an experiment on its GenAI page.
    `order_by` is "metrics.`val/elbo` DESC"-like; for a local store, the base is `mlflow ui`'s.
    """
    from urllib.parse import quote

    base = mask(uri).rstrip("/") if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{UI_PORT}"
    query = ["workflowType=machine_learning"]
    if search_filter:
        query.append("searchFilter=" + quote(search_filter, safe=""))
    if order_by:
        key, _, way = order_by.rpartition(" ")
        query += ["orderByKey=" + quote(key, safe=""), f"orderByAsc={str(way.upper() == 'ASC').lower()}"]
    return f"{base}/#/experiments/{experiment_id}/runs?" + "&".join(query)


def git_commit() -> str:
    """The project's git commit (with '-dirty' when the tree has changes), or 'unknown'."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def to_uint8_image(grid) -> np.ndarray:
    """A (3, H, W) float tensor in [0, 1] -> (H, W, 3) uint8 for mlflow.log_image."""
    arr = grid.detach().cpu().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    return np.ascontiguousarray(arr)


@dataclass(frozen=True)
class DatasetInfo:
    """One split of the data as an MLflow dataset input: what the runs table's Dataset column shows."""

    name: str  # e.g. "mnist-train"
    digest: str  # short hash of what the split holds (raw bytes, split and size)
    context: str  # "training", "validation" or "testing"
    rows: int  # images in the split
    source: str  # the folder the images were read from
    targets: str  # "dynamic binarization", "binarized once", "grayscale"

    def schema(self) -> str:
        spec = lambda dtype, shape: json.dumps([{"type": "tensor", "tensor-spec": {"dtype": dtype, "shape": shape}}])  # noqa: E731
        return json.dumps(
            {"mlflow_tensorspec": {"features": spec("float32", [-1, 784]), "targets": spec("int64", [-1])}}
        )

    def profile(self) -> str:
        return json.dumps({"num_rows": self.rows, "features_shape": [self.rows, 784], "targets": self.targets})


class Tracker:
    """One MLflow experiment per study: the parent run, child runs and what is logged to them."""

    def __init__(self, uri: str, experiment: str, outage_timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        mlflow = _mlflow()
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # we print one summary
        for key, value in MLFLOW_HTTP_RETRIES.items():
            os.environ.setdefault(key, value)
        self.uri = uri
        # every call of the client, and the few fluent calls below, waits out an outage of the store
        self.outage = Outage(f"the MLflow tracking store {uri}", outage_timeout_s)
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
                    self.client = _Patient(mlflow.MlflowClient(self.uri), self.outage)
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

    @classmethod
    def open_existing(cls, uri: str, experiment: str) -> Tracker:
        """The Tracker of an experiment that must exist already: a BenchError, creating nothing, if not."""
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
            raise BenchError(f"no MLflow database at {uri}; run the study first or pass --tracking-uri")
        if _mlflow().MlflowClient(uri).get_experiment_by_name(experiment) is None:
            raise BenchError(f"no MLflow experiment named {experiment!r} at {uri}; run the study first")
        return cls(uri, experiment)

    def describe_experiment(self, text: str) -> None:
        """The experiment's description (its page shows it above the runs)."""
        _retry_on_race(lambda: self.client.set_experiment_tag(self.experiment_id, T.NOTE, text))

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
            self.experiment_id, run_name=study, tags={T.ROLE: "study", T.STUDY: study, T.WORKER: worker_id(), **tags}
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
            filter_string=f"tags.`{T.ROLE}` = 'study' and tags.`{T.STUDY_UID}` = '{study_uid}'",
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def latest_parent(self) -> str | None:
        """The most recently started study run of this experiment."""
        runs = self.find_runs(tags={T.ROLE: "study"}, newest_first=True, max_results=1)
        return runs[0].info.run_id if runs else None

    def find_runs(
        self,
        parent: str | None = None,
        tags: dict[str, Any] | None = None,
        status: str | None = None,
        newest_first: bool = False,
        max_results: int = 10_000,
    ) -> list:
        """Runs of this experiment (mlflow Run objects): children of `parent`, with these tags, in this status."""
        where = [f"tags.`{T.PARENT_RUN}` = '{parent}'"] if parent else []
        where += [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
        where += [f"attributes.status = '{status}'"] if status else []
        order = ["attributes.start_time DESC" if newest_first else "attributes.start_time ASC"]
        out, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                " and ".join(where),
                order_by=order,
                max_results=min(max_results - len(out), 1000),
                page_token=token,
            )
            out += list(page)
            token = page.token
            if not token or len(out) >= max_results:
                return out

    def runs_frame(self, parent: str):
        """The children of `parent` as mlflow.search_runs' pandas table (metrics.*, params.*, tags.* columns)."""
        mlflow = _mlflow()
        mlflow.set_tracking_uri(self.uri)
        return mlflow.search_runs(
            [self.experiment_id], filter_string=f"tags.`{T.PARENT_RUN}` = '{parent}'", output_format="pandas"
        )

    def trial_runs(self):
        """Every VAE trial run of the experiment, of every study in it (--search-seeds puts several there)."""
        mlflow = _mlflow()
        mlflow.set_tracking_uri(self.uri)
        return mlflow.search_runs(
            [self.experiment_id], filter_string=f"tags.`{T.ROLE}` = 'trial'", output_format="pandas"
        )

    def metrics_of(self, run_id: str) -> dict[str, float]:
        """The latest value of each metric of a run."""
        return dict(self.client.get_run(run_id).data.metrics)

    def tags_of(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.tags)

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
        """Close a run left RUNNING by a dead worker or a lost service (tagged as such); returns whether it was open."""
        try:
            run = self.client.get_run(run_id)
        except Exception:
            return False
        if run.info.status in TERMINAL:
            return False
        # only lost workers and services close runs this way: never the model's failure
        self.set_tags(run_id, {T.FAIL_REASON: reason, T.FAILURE: T.INFRASTRUCTURE})
        self.client.set_terminated(run_id, status)
        return True

    def sweep_dead_runs(self, parent_id: str) -> list[str]:
        """Close (FAILED) every RUNNING child of `parent_id` whose worker was a process on this host that
        no longer exists (killed with -9, or its machine's power cut): a rerun leaves no run of any role
        RUNNING for ever. Runs of live workers, and of workers on other hosts, are left to them. Returns the ids."""
        closed = []
        for run in self.find_runs(parent_id, status="RUNNING"):
            worker = run.data.tags.get(T.WORKER, "")
            if dead_local_worker(worker) and self.close_if_running(
                run.info.run_id, "FAILED", f"worker {worker} died with the run open"
            ):
                closed.append(run.info.run_id)
        return closed

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

    def set_note(self, run_id: str, text: str) -> None:
        """The run's description (Overview tab, and the Description column of the runs table)."""
        self.client.set_tag(run_id, T.NOTE, text)

    def rename_run(self, run_id: str, name: str) -> None:
        self.client.update_run(run_id, name=name)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_image(self, run_id: str, grid, key: str, step: int) -> None:
        """A (3, H, W) tensor grid in [0, 1] under `key` at `step`: the chart view's image grid lines
        up runs by key and step (MLflow stores it under images/, which holds nothing else)."""
        self.client.log_image(run_id, to_uint8_image(grid), key=key, step=step, synchronous=True)

    def log_grid(self, run_id: str, grid, path: str) -> None:
        """A (3, H, W) tensor grid in [0, 1] as a plain PNG artifact at `path` (under grids/, never images/)."""
        self.client.log_image(run_id, to_uint8_image(grid), artifact_file=path)

    def log_datasets(self, run_id: str, inputs: list[DatasetInfo]) -> None:
        """The run's data as MLflow dataset inputs: the runs table's Dataset column and filter."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        datasets = [
            DatasetInput(
                Dataset(d.name, d.digest, "local", json.dumps({"uri": d.source}), d.schema(), d.profile()),
                [InputTag(T.INPUT_CONTEXT, d.context)],
            )
            for d in inputs
        ]
        _retry_on_race(lambda: self.client.log_inputs(run_id, datasets=datasets))

    def register_model(self, model_uri: str, name: str, alias: str, run_id: str, description: str) -> str:
        """Register `model_uri` as a version of `name` (once per run: a rerun reuses it), point `alias` at it;
        returns models:/name@alias."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name, description=description)
        except MlflowException as exc:  # registered before: add a version
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        source = self.client.get_logged_model(model_id).artifact_location if model_id else model_uri
        # idempotent: a rerun after a crash between registering and tagging the run finds its version
        known = self.client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        version = (
            max(known, key=lambda v: int(v.version))
            if known
            else self.client.create_model_version(
                name, source, run_id=run_id, model_id=model_id, description=description
            )
        )
        self.client.set_registered_model_alias(name, alias, version.version)
        return f"models:/{name}@{alias}"

    def log_figure(self, run_id: str, fig, name: str) -> None:
        """A matplotlib figure as a PNG artifact at `name` (closed afterwards)."""
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
    def child_run(self, parent_id: str, name: str, params: dict[str, Any], tags: dict[str, Any]) -> Iterator[ChildRun]:
        """A nested run that is always closed: FINISHED, or the status the body chose, or FAILED.

        The body sets `run.outcome = ("KILLED", reason)` before raising for a pruned trial;
        an interrupt (KeyboardInterrupt) closes it KILLED, any other exception FAILED, with its reason.
        """
        mlflow = _mlflow()
        active = self.outage.call(
            mlflow.start_run,
            experiment_id=self.experiment_id,
            run_name=name,
            parent_run_id=parent_id,
            tags={**{k: str(v) for k, v in tags.items()}, T.WORKER: worker_id()},
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
            infra = {T.FAILURE: T.INFRASTRUCTURE} if isinstance(exc, InfrastructureError) else {}
            _safe(lambda: self.set_tags(child.run_id, {T.FAIL_REASON: reason[:4000], **infra}))
            raise
        finally:
            _safe(lambda: self.outage.call(mlflow.end_run, status))


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

    def set_note(self, text: str) -> None:
        self.tracker.set_note(self.run_id, text)

    def rename(self, name: str) -> None:
        self.tracker.rename_run(self.run_id, name)

    def log_datasets(self, inputs: list[DatasetInfo]) -> None:
        self.tracker.log_datasets(self.run_id, inputs)

    def log_image(self, grid, key: str, step: int) -> None:
        self.tracker.log_image(self.run_id, grid, key, step)

    def log_grid(self, grid, path: str) -> None:
        self.tracker.log_grid(self.run_id, grid, path)

    def log_figure(self, fig, name: str) -> None:
        self.tracker.log_figure(self.run_id, fig, name)

    def log_model(self, name: str, checkpoint: str | os.PathLike) -> str:
        """The model in `checkpoint` (vae.train.save_checkpoint's file) as an MLflow model `name`; returns its URI.

        The URI (models:/m-...) is also kept in the run's model_uri tag; the checkpoint is logged
        beside it too (checkpoint/model.pt). Loading runs no pickle: the model is code
        (bench/mlflow_model.py, models-from-code) plus the vae package and this weights-only
        checkpoint, which it reads with torch.load(weights_only=True). So
        `mlflow.pyfunc.load_model(uri)` reconstructs images with `predict`, and
        `.unwrap_python_model().model` is the torch module with sample/encode/decode.
        """
        import torch
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        mlflow = _mlflow()
        images = Schema([TensorSpec(np.dtype(np.float32), (-1, 784))])  # (N, 784) pixels in [0, 1]
        with warnings.catch_warnings():
            # an input example would be run through the model at every log: the signature says it all
            warnings.filterwarnings("ignore", message=".*An input example was not provided", category=UserWarning)
            info = self.tracker.outage.call(
                mlflow.pyfunc.log_model,
                name=name,
                python_model=str(MODEL_CODE),
                signature=ModelSignature(inputs=images, outputs=images),  # images in, reconstructions out
                artifacts={MODEL_CHECKPOINT: str(checkpoint)},
                code_paths=[str(VAE_PACKAGE_DIR)],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"],
            )
        self.tracker.log_file(self.run_id, checkpoint, "checkpoint")
        self.set_tags({T.MODEL_URI: info.model_uri})
        return info.model_uri


class _Patient:
    """The MLflow client with every method called through an Outage: it waits out the store's outages."""

    def __init__(self, client, outage: Outage) -> None:
        self._client, self._outage = client, outage

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        return functools.partial(self._outage.call, attr) if callable(attr) else attr


def _retry_on_race(fn, attempts: int = 5):
    """fn(), again when another worker inserted the same row first (a dataset, an experiment tag).

    MLflow inserts these with insert-or-update; two workers doing it at the same moment make the
    database refuse the second insert. Done again, the row exists and the call goes through.
    """
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - only the duplicate-key race is retried
            text = str(exc)
            if attempt == attempts - 1 or not any(
                s in text for s in ("UniqueViolation", "UNIQUE constraint", "Duplicate entry")
            ):
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() / 5)


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
    except (Exception, InfrastructureError) as exc:  # noqa: BLE001 - cleanup only: the error being raised says more
        log.warning("MLflow cleanup step failed: %s", exc)
