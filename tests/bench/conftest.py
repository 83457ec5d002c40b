"""Shared helpers of the bench tests: the real `python -m bench.run` in a subprocess, and what it wrote.

`run_cli(args, cwd)` runs this checkout's CLI; the session fixture `smoke` runs the smoke study once
and records its MLflow runs and Optuna trials at once, so later tests may resume it freely.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
TEST_STUDIES = Path(__file__).resolve().parent / "studies"
CLI_TIMEOUT_S = 900  # one smoke study takes ~50 s on 2 busy cores; a hang must still end


def data_dir() -> Path:
    """Where MNIST lives for these tests: $VAE_DATA_DIR, else the project's ./data."""
    return Path(os.environ.get("VAE_DATA_DIR") or REPO / "data")


def require_mnist() -> Path:
    root = data_dir()
    raw = root / "MNIST" / "raw"
    if not ((raw / "train-images-idx3-ubyte").exists() or (raw / "train-images-idx3-ubyte.gz").exists()):
        pytest.skip(f"MNIST not found under {raw}; set VAE_DATA_DIR to a folder holding MNIST/raw")
    return root


def cli_env() -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout first on the path, no inherited MLflow URI."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["VAE_DATA_DIR"] = str(data_dir())
    env.pop("MLFLOW_TRACKING_URI", None)
    env["COLUMNS"] = "1000"  # argparse help on one line per flag
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    """`python -m bench.run *args` in `cwd`, with stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "bench.run", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class StudyRun:
    """One study run through the CLI against an MLflow sqlite store and an Optuna journal in `cwd`."""

    cwd: Path
    name: str
    proc: subprocess.CompletedProcess | None = None

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.cwd / 'mlflow.db'}"

    @property
    def journal(self) -> Path:
        return self.cwd / "optuna.journal"

    def args(self, study: str | Path, *extra: str) -> list[str]:
        return [
            "--study", str(study),
            "--tracking-uri", self.tracking_uri,
            "--storage", str(self.journal),
            "--no-progress",
            "--no-baselines",
            "--workers", "1",  # these tests follow one worker; --workers auto would start one per core
            *extra,
        ]  # fmt: skip

    def run(self, study: str | Path, *extra: str) -> subprocess.CompletedProcess:
        """Run (or resume) the study; fails the test with the CLI's output when it does not exit 0."""
        self.proc = run_cli(self.args(study, *extra), self.cwd)
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}\n{self.proc.stdout}\n{self.proc.stderr}"
        return self.proc

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def optuna_study(self):
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return optuna.load_study(study_name=self.name, storage=JournalStorage(JournalFileBackend(str(self.journal))))

    def record(self) -> "Record":
        """Everything the study wrote, read back now through MLflow's and Optuna's own APIs."""
        client = self.client()
        experiments = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        exp = client.get_experiment_by_name(self.name)
        runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
        parents = [r for r in runs if r.data.tags.get("vaebench.role") == "study"]
        children = sorted(
            (r for r in runs if r.data.tags.get("vaebench.role") == "trial"),
            key=lambda r: int(r.data.tags["trial_number"]),
        )
        return Record(experiments, parents, children, self.optuna_study().trials)

    def download(self, run_id: str, dst: Path, path: str = "") -> Path:
        """A run's artifacts (all, or the file/folder `path`) copied under `dst`."""
        dst.mkdir(parents=True, exist_ok=True)
        return Path(self.client().download_artifacts(run_id, path, str(dst)))


@dataclass
class Record:
    """A study's MLflow runs and Optuna trials as they were when recorded."""

    experiments: list[str]  # experiment names other than MLflow's "Default"
    parents: list  # mlflow Run objects tagged vaebench.role=study
    children: list  # mlflow Run objects tagged vaebench.role=trial, by trial number
    trials: list  # optuna FrozenTrial objects, by number

    @property
    def parent(self):
        assert len(self.parents) == 1, f"expected one parent run, found {len(self.parents)}"
        return self.parents[0]

    def child(self, trial_number: int):
        (run,) = [r for r in self.children if r.data.tags["trial_number"] == str(trial_number)]
        return run


@contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide URI (used by runs:/ URIs) at `uri`, and put it back afterwards.

    mlflow.set_tracking_uri also sets $MLFLOW_TRACKING_URI, which must not leak into other tests.
    """
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # None unsets both


@dataclass
class Smoke:
    run: StudyRun
    record: Record  # right after the first run, before any test resumed the study
    parent_files: Path  # the parent run's artifacts, downloaded at the same moment


@pytest.fixture(scope="session")
def smoke(tmp_path_factory) -> Smoke:
    """The shipped smoke study (3 trials, 2 epochs), run once through the CLI for the whole session."""
    require_mnist()
    run = StudyRun(tmp_path_factory.mktemp("smoke"), "smoke")
    run.run("smoke")
    record = run.record()
    files = run.download(record.parent.info.run_id, tmp_path_factory.mktemp("smoke-parent"))
    return Smoke(run, record, files)


@pytest.fixture(scope="session")
def smoke_compared(tmp_path_factory) -> StudyRun:
    """The smoke study with its baselines and report (as `python -m bench.run --study smoke` runs it),
    once per session; tests read it and must not resume it."""
    require_mnist()
    run = StudyRun(tmp_path_factory.mktemp("compared"), "smoke")
    args = [a for a in run.args("smoke") if a != "--no-baselines"]
    proc = run_cli(args, run.cwd)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    run.proc = proc
    return run


IMAGE_FILE = re.compile(r"images/(?P<key>[^+/]+)\+step\+(?P<step>\d+)\+timestamp\+\d+\+[0-9a-f-]+\.png")


def logged_images(client, run_id: str) -> set[tuple[str, int]]:
    """(key, step) of every image a run logged with mlflow.log_image(key=, step=); fails on any
    other file under images/ (it would break the UI's image-key parser)."""
    out = set()
    for a in client.list_artifacts(run_id, "images"):
        if a.path.endswith("+compressed.webp"):
            continue  # MLflow's thumbnail of each image
        m = IMAGE_FILE.fullmatch(a.path)
        assert m, f"{a.path} is not a log_image(key=, step=) file"
        out.add((m["key"], int(m["step"])))
    return out


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file, opened with PIL; fails on anything that is not a valid PNG."""
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG", f"{path} is {im.format}, not PNG"
        im.load()  # decodes every pixel: a truncated file fails here
        return im.size


@pytest.fixture
def restore_mlflow_uri() -> Iterator[None]:
    """For tests that let bench.tracking set MLflow's process-wide tracking URI."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    import mlflow

    mlflow.set_tracking_uri(before)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for in-process training: two OpenMP threads fighting other processes
    on a shared 2-core machine are 10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    """2,000 training, 500 validation and 1,000 test MNIST images (dynamic binarization)."""
    from vae.data import DataConfig, load_data

    return load_data(DataConfig(limit=2000, val_size=500, test_limit=1000))
