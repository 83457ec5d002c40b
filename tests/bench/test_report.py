"""The comparison report: the smoke study run with its baselines through the real CLI, then
`python -m bench.report` rebuilding the same table from the MLflow store alone."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pandas as pd
import pytest

from bench.report import SHARED_METRICS
from tests.bench.conftest import cli_env, png_size

MODELS = ("vae", "ae", "pca")
LATENTS = (2, 4)  # smoke.toml covers both sizes


@pytest.fixture(scope="module")
def compared(smoke_compared):
    """The smoke study run with its baselines once per session (tests/bench/conftest.py)."""
    return smoke_compared


def test_the_table_has_one_full_row_per_model_and_latent_size(compared):
    table = pd.read_csv(compared.cwd / "reports" / "smoke" / "comparison.csv")
    assert list(table.columns) == ["model", "latent_dim", *SHARED_METRICS]
    assert sorted(zip(table["model"], table["latent_dim"])) == sorted((m, d) for m in MODELS for d in LATENTS)
    assert not table.isna().any().any()
    for acc in ("test/probe_acc", "test/knn_acc"):
        assert table[acc].between(0.1, 1.0).all()  # better than chance on 10 digits
    assert (table["test/code_recon_bce"] > 50).all() and (table["test/sample_fd"] > 0).all()  # nats per image, distances


def test_run_prints_the_table_without_progress_bars(compared):
    out = compared.proc.stdout
    assert "--no-progress" in compared.args("smoke")
    header = next(line for line in out.splitlines() if line.lstrip().startswith("model"))
    assert "latent_dim" in header and "test/sample_fd" in header
    assert sum(line.split()[:1] in (["vae"], ["ae"], ["pca"]) for line in out.splitlines()) == 6
    assert "report: reports/smoke/comparison.md" in out
    # the trials' time and the baselines' and report's time are told apart
    assert re.search(r"study smoke: 3/3 trials finished \(3 run by this process in \d+ s, then \d+ s to finish the study\)", out)


def test_every_compared_run_has_every_metric_and_its_tags(compared):
    client = compared.client()
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id], "tags.compared = 'true'")
    assert sorted((r.data.tags["model"], int(r.data.tags["latent_dim"])) for r in runs) == sorted(
        (m, d) for m in MODELS for d in LATENTS
    )
    parent = compared.record().parent.info.run_id
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.parentRunId"] == parent
        for m in SHARED_METRICS:
            assert math.isfinite(r.data.metrics[m]), (r.data.tags["model"], m)


def test_the_report_is_logged_to_the_parent_run(compared, tmp_path):
    parent = compared.record().parent.info.run_id
    files = compared.download(parent, tmp_path, "report")
    names = {p.name for p in files.iterdir()}
    assert {"comparison.md", "comparison.csv", "vae_metrics.csv"} <= names
    assert {f"{m.replace('/', '_')}.png" for m in SHARED_METRICS} <= names
    assert {f"samples_latent{d}.png" for d in LATENTS} <= names
    width, height = png_size(files / "samples_latent2.png")
    assert width > height > 100  # three grids side by side
    md = (files / "comparison.md").read_text()
    assert "## Best model per latent size" in md and "## VAE only" in md


def test_bench_report_rebuilds_the_same_table_from_mlflow_alone(compared, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.report", "--study", "smoke", "--tracking-uri", compared.tracking_uri,
         "--out", str(tmp_path / "again"), "--no-log"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    first = pd.read_csv(compared.cwd / "reports" / "smoke" / "comparison.csv")
    again = pd.read_csv(tmp_path / "again" / "comparison.csv")
    pd.testing.assert_frame_equal(first, again)
    assert f"report written to {tmp_path / 'again'}/comparison.md" in proc.stdout


def test_bench_report_without_a_study_exits_2_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.report", "--study", "nothing", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "run the study first" in proc.stderr
    assert not (tmp_path / "none.db").exists()
