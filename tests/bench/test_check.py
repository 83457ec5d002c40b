"""The regression gate: it passes on the shipped thresholds, and it can fail.

Real runs of `python -m bench.check` in a subprocess, with a SQLite MLflow store in tmp_path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.thresholds import DEFAULT_THRESHOLDS, derive, load_thresholds

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def gate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "bench.check", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--no-progress", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )


def test_shipped_thresholds_are_valid_and_cover_every_model():
    bounds = load_thresholds(DEFAULT_THRESHOLDS)
    covered = {(b.model, b.metric) for b in bounds}
    assert {("vae", "test/elbo"), ("vae", "test/recon_bce"), ("vae", "test/nll_iw")} <= covered
    assert {("ae", "test/code_recon_bce"), ("pca", "test/code_recon_bce")} <= covered
    text = DEFAULT_THRESHOLDS.read_text()
    assert "seeds = [0, 1, 2, 3, 4]" in text and "margin_rule" in text
    for b in bounds:  # each bound is the worst seen loosened by its margin
        assert b.worst_seen is not None and b.margin > 0
        assert b.value == pytest.approx(b.worst_seen - b.margin if b.op == ">=" else b.worst_seen + b.margin, abs=1e-3)


def test_derive_takes_the_worst_seed_and_a_margin():
    runs = [{("vae", "test/elbo"): v, ("pca", "test/code_recon_bce"): 100.0 + i} for i, v in enumerate([-100.0, -102.0, -101.0, -99.0, -100.5])]
    bounds = {(b.model, b.metric): b for b in derive(runs)}
    elbo = bounds[("vae", "test/elbo")]
    assert elbo.op == ">=" and elbo.worst_seen == -102.0 and elbo.value < -102.0
    pca = bounds[("pca", "test/code_recon_bce")]
    assert pca.op == "<=" and pca.worst_seen == 104.0 and pca.value > 104.0


@pytest.fixture(scope="module")
def passing_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gate")
    return tmp, gate(tmp)


def test_gate_passes_on_the_shipped_thresholds_and_logs_a_gate_run(passing_run):
    tmp, proc = passing_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gate passed" in proc.stdout
    lines = [l for l in proc.stdout.splitlines() if l.startswith("test/")]
    assert len(lines) == len(load_thresholds(DEFAULT_THRESHOLDS)) and all(l.rstrip().endswith("pass") for l in lines)
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("ci")
    parents = client.search_runs([exp.experiment_id], "tags.`vaebench.gate` = 'true'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


BROKEN = str(HERE / "studies" / "ci_broken.toml")


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("broken")
    return gate(tmp, "--study", BROKEN)


def test_gate_is_deterministic_on_cpu(broken_run, tmp_path):
    """The same seed gives the same numbers: a second run prints the same table."""
    second = gate(tmp_path, "--study", BROKEN)
    table = lambda out: [l for l in out.splitlines() if l.startswith("test/")]  # noqa: E731
    assert len(table(broken_run.stdout)) == len(load_thresholds(DEFAULT_THRESHOLDS))
    assert table(second.stdout) == table(broken_run.stdout)


def test_unmeetable_threshold_fails_and_names_the_metric(tmp_path):
    strict = tmp_path / "strict.toml"
    strict.write_text('[[bound]]\nmodel = "vae"\nmetric = "test/elbo"\nop = ">="\nvalue = -1.0\n'
                      '[[bound]]\nmodel = "pca"\nmetric = "test/code_recon_bce"\nop = "<="\nvalue = 1000.0\n')
    proc = gate(tmp_path, "--thresholds", str(strict), "--study", BROKEN)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "regressed: vae test/elbo" in proc.stdout
    assert "pca test/code_recon_bce" not in proc.stdout.split("regressed:")[1]


def test_planted_regression_is_caught(broken_run):
    proc = broken_run
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = proc.stdout.split("regressed:")[1]
    assert "vae test/elbo" in failed and "vae test/nll_iw" in failed


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[bound]]\nmodel = 'vae'\nmetric = 'test/elbo'\nop = '>'\nvalue = 1\n", "op must be"),
        ("[[bound]]\nmodel = 'vae'\nmetric = 'test/elbo'\nop = '>='\n", "missing value"),
        ("[[bound]\n", "TOML syntax error"),
        ("[provenance]\nseeds = [0]\n", "at least one [[bound]]"),
        ("[[bound]]\nmodel = 'vae'\nmetric = 'test/elbo'\nop = '>='\nvalue = 'high'\n", "value must be a number"),
    ],
)
def test_malformed_thresholds_exit_2_before_running(tmp_path, text, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    proc = gate(tmp_path, "--thresholds", str(bad))
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()
