"""Helpers of the bench tests: the real `python -m bench.run` in a subprocess, and what it wrote.

`run_cli(args, cwd)` runs this checkout's CLI; `StudyRun(cwd, name).record()` reads back the MLflow
runs and Optuna trials a study left in `cwd`. Fixtures built on them are in conftest.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import REPO, data_folder

TEST_STUDIES = Path(__file__).resolve().parent / "studies"
CLI_TIMEOUT_S = 900  # one smoke study takes ~50 s on 2 busy cores; a hang must still end


def cli_settings() -> dict[str, str]:
    """What every CLI run in the tests gets in its environment, in a subprocess or in this process."""
    return {"VAE_DATA_DIR": str(data_folder()), "COLUMNS": "1000"}  # COLUMNS: argparse help on one line per flag


def cli_env() -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout first on the path, no inherited MLflow URI."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("MLFLOW_TRACKING_URI", None)
    return env | cli_settings()


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


def main_in_process(module: str, argv: list[str], capfd, monkeypatch, cwd: Path | None = None) -> tuple[int, str, str]:
    """`python -m <module> *argv` as a call of the module's main(argv) in this process, in `cwd`:
    (exit code, stdout, stderr) as the file descriptors saw them. capfd, not capsys: a library's
    logging handler bound to the real stderr writes to fd 2, and is seen here as a subprocess's would be.
    For error paths and --help, which return before any worker starts; a subprocess costs 5-10 s of
    interpreter and import start-up on a 2-core AMD EPYC, this a fraction of a second after the first."""
    import importlib
    import signal

    main = importlib.import_module(module).main
    uri_before = os.environ.get("MLFLOW_TRACKING_URI")
    if cwd is not None:
        monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key, value in cli_settings().items():
        monkeypatch.setenv(key, value)
    sigterm = signal.getsignal(signal.SIGTERM)  # bench.run's main installs its own handler
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        if "mlflow" in sys.modules:  # a main that set MLflow's process-wide URI must not leak it to later tests
            sys.modules["mlflow"].set_tracking_uri(uri_before)
    out, err = capfd.readouterr()
    return code or 0, out, err


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

    def record(self) -> Record:
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


@dataclass
class Smoke:
    """The smoke study run once for the session (the `smoke` fixture)."""

    run: StudyRun
    record: Record  # right after the first run, before any test resumed the study
    parent_files: Path  # the parent run's artifacts, downloaded at the same moment
