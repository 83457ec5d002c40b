"""The regression gate end to end: it passes on unchanged code and fails on planted regressions.

Real runs of `python -m bench.check` in a subprocess with a SQLite MLflow store in tmp_path. The
planted regressions change the configuration (a weaker learning rate, a shortened schedule) or a
copy of the code (a broken data order, an inflated metric); each must fail the gate.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gate import GATED
from bench.thresholds import DEFAULT_THRESHOLDS, load_reference

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def gate(cwd: Path, *args: str, code: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(code)}
    return subprocess.run(
        [sys.executable, "-m", "bench.check", "--tracking-uri", f"sqlite:///{cwd}/mlflow.db", "--no-progress", *args],
        cwd=code if code != ROOT else cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )


def table_rows(stdout: str) -> dict[tuple[str, str], str]:
    """(model, metric) -> result column of the printed table."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 8 and parts[0].startswith("test/"):
            rows[(parts[1], parts[0])] = " ".join(parts[7:])
    return rows


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "0"], "--workers must be between 1 and 64"),
        (
            ["--calibrate", "--calibration-seeds", "0", "1", "2", "3", "4", "5", "--gate-size", "4"],
            "at least --gate-size + 3",
        ),
        (["--calibrate", "--calibration-seeds", "20", "21", "22"], "at least 5 distinct"),
        (["--study", "no-such-study"], "no-such-study"),
        (["--thresholds", "/nonexistent/ref.toml"], "does not exist"),
    ],
)
def test_bad_input_exits_2_in_one_line_before_writing(tmp_path, args, message):
    proc = gate(tmp_path, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()


def test_malformed_reference_exits_2_before_running(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[gate]\nseeds = [0, 1]\n[[reference]]\nmodel = 'vae'\nmetric = 'test/elbo'\nmean = 1\nsd = 1\n")
    proc = gate(tmp_path, "--thresholds", str(bad))
    assert proc.returncode == 2 and "missing n" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.fixture(scope="module")
def passing_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gate")
    return tmp, gate(tmp)


@pytest.mark.slow
def test_gate_passes_on_unchanged_code_and_logs_every_seed(passing_run):
    tmp, proc = passing_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = table_rows(proc.stdout)
    assert set(rows) == set(GATED) and set(rows.values()) == {"pass"}
    assert "minimum detectable regression" in proc.stdout and "measured by resampling" in proc.stdout
    import mlflow

    ref = load_reference(DEFAULT_THRESHOLDS)
    client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("ci")
    parents = client.search_runs([exp.experiment_id], "tags.`vaebench.gate` = 'true'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert sorted((r.data.tags["model"], int(r.data.tags["seed"])) for r in children) == sorted(
        (m, s) for m in ("vae", "ae", "pca") for s in ref.seeds
    )
    vae = [r for r in children if r.data.tags["model"] == "vae"]
    for r in vae:  # the ELBO is its two terms
        m = r.data.metrics
        assert m["test/elbo"] == pytest.approx(-(m["test/recon_bce"] + m["test/kl"]), rel=1e-6)


def _planted_study(tmp_path: Path, **train: object) -> Path:
    text = (ROOT / "studies" / "ci.toml").read_text()
    for key, value in train.items():
        line = next(s for s in text.splitlines() if s.startswith(f"{key} = "))
        text = text.replace(line, f"{key} = {value}")
    path = tmp_path / "planted.toml"
    path.write_text(text)
    return path


# A copy of the code with one line changed: (file, line as it is, line as planted).
CODE_PLANTS = {
    "label_sorted_batches": (  # every batch one digit class: a broken data order
        "vae/data.py",
        'return torch.randperm(len(self), generator=generator, device="cpu")',
        "return torch.argsort(self.y.cpu(), stable=True)",
    ),
    "inflated_elbo": (  # the reported ELBO drops a tenth of the KL: 1.5 nats too good, its terms unchanged
        "vae/evaluate.py",
        'return {"elbo": -(recon + kl) / n, "recon_bce": recon / n, "kl": kl / n}',
        'return {"elbo": -(recon + 0.9 * kl) / n, "recon_bce": recon / n, "kl": kl / n}',
    ),
}


def _planted_text(plant: str) -> str:
    """The plant's file as planted: its one line changed, which must be there exactly once."""
    file, old, new = CODE_PLANTS[plant]
    text = (ROOT / file).read_text()
    assert text.count(old) == 1, f"the planted line is no longer in {file}: {old!r}"
    return text.replace(old, new)


@pytest.mark.parametrize("plant", sorted(CODE_PLANTS))
def test_planted_line_is_still_in_the_code(plant):
    """The slow gate test plants its regressions by text; a refactor that moves the line must fail here, fast."""
    assert _planted_text(plant) != (ROOT / CODE_PLANTS[plant][0]).read_text()


def _planted_code(tmp_path: Path, plant: str) -> Path:
    """A copy of the code with the plant's one line changed."""
    code = tmp_path / "code"
    for pkg in ("vae", "bench", "studies"):
        shutil.copytree(ROOT / pkg, code / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (code / CODE_PLANTS[plant][0]).write_text(_planted_text(plant))
    return code


@pytest.mark.slow
@pytest.mark.parametrize("plant", ["weaker_lr", "shorter_schedule", "label_sorted_batches", "inflated_elbo"])
def test_planted_regression_fails_the_gate(tmp_path, plant):
    if plant == "weaker_lr":
        proc = gate(tmp_path, "--study", str(_planted_study(tmp_path, lr="7e-4")))
    elif plant == "shorter_schedule":
        proc = gate(tmp_path, "--study", str(_planted_study(tmp_path, epochs=3)))
    else:
        proc = gate(tmp_path, code=_planted_code(tmp_path, plant))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = table_rows(proc.stdout)
    assert set(rows) == set(GATED)
    if plant == "inflated_elbo":
        assert rows[("vae", "test/elbo")] == "FAIL (better)" and "recalibrate" in proc.stdout
    else:
        assert rows[("vae", "test/elbo")] == "FAIL (worse)" and "regressed: vae test/elbo" in proc.stdout
