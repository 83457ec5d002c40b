"""A two-objective (rate, distortion) study through the real CLI: what lands in Optuna, in MLflow and in
the report. tests/bench/studies/rd_tiny.toml, with baselines; about a minute on 2 busy cores."""

from __future__ import annotations

import pandas as pd
import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState

from bench.frontier import pareto_mask
from tests.bench.helpers import TEST_STUDIES, StudyRun, png_size, run_cli


@pytest.fixture(scope="module")
def rd(tmp_path_factory, data_root):
    run = StudyRun(tmp_path_factory.mktemp("rd"), "rd_tiny")
    args = [a for a in run.args(TEST_STUDIES / "rd_tiny.toml") if a != "--no-baselines"]
    run.proc = run_cli(args, run.cwd)
    assert run.proc.returncode == 0, f"exit {run.proc.returncode}\n{run.proc.stdout}\n{run.proc.stderr}"
    return run, run.record()


def _elbo(t) -> float:
    return t.user_attrs["last_epoch"]["val/elbo"]


def test_trials_return_rate_and_distortion_and_are_never_reported(rd):
    run, rec = rd
    study = run.optuna_study()
    assert study.directions == [StudyDirection.MINIMIZE, StudyDirection.MINIMIZE]
    assert [t.state for t in rec.trials] == [TrialState.COMPLETE] * 3
    for t in rec.trials:
        child = rec.child(t.number)
        last = t.user_attrs["last_epoch"]
        # the objective's values are the last epoch's val/kl and val/recon_bce, as logged to the trial's run
        assert t.values == [last["val/kl"], last["val/recon_bce"]]
        assert t.values == pytest.approx([child.data.metrics["val/kl"], child.data.metrics["val/recon_bce"]])
        assert _elbo(t) == pytest.approx(-sum(t.values), rel=1e-6)  # beta = 1 ELBO = -(rate + distortion)
        assert t.intermediate_values == {}  # Optuna cannot report (or prune) with two objectives


def test_parent_run_has_the_pareto_front_and_the_chosen_trial(rd, tmp_path):
    run, rec = rd
    trials = rec.trials
    front = [
        t for t, keep in zip(trials, pareto_mask([t.values for t in trials], ["minimize"] * 2), strict=False) if keep
    ]
    chosen = max(front, key=_elbo)
    tags, metrics = rec.parent.data.tags, rec.parent.data.metrics
    assert tags["pareto_trials"] == ",".join(str(t.number) for t in front)
    assert tags["best_trial"] == str(chosen.number)
    assert tags["best_rule"] == "highest val/elbo on the Pareto front"
    assert metrics["val/kl"] == pytest.approx(chosen.values[0])  # under the trials' own keys
    assert metrics["val/recon_bce"] == pytest.approx(chosen.values[1])
    files = run.download(rec.parent.info.run_id, tmp_path, "optuna")
    width, height = png_size(files / "pareto_front.png")
    assert width > 300 and height > 200
    assert (files / "slice_val_kl.png").exists() and (files / "slice_val_recon_bce.png").exists()
    assert f"Pareto front: {len(front)} trials" in run.proc.stdout
    assert f"best trial {chosen.number}: val/kl = " in run.proc.stdout


def test_the_compared_vae_at_each_size_is_the_highest_elbo_of_its_front(rd):
    run, rec = rd
    compared = {
        int(c.data.tags["latent_dim"]): c.info.run_id for c in rec.children if c.data.tags.get("compared") == "true"
    }
    for latent in (2, 4):
        ts = [t for t in rec.trials if t.params["latent_dim"] == latent]
        front = [t for t, keep in zip(ts, pareto_mask([t.values for t in ts], ["minimize"] * 2), strict=False) if keep]
        assert compared[latent] == max(front, key=_elbo).user_attrs["mlflow_run_id"]


def test_report_draws_every_trial_on_the_rate_distortion_plane(rd):
    run, rec = rd
    out = run.cwd / "reports" / "rd_tiny"
    pts = pd.read_csv(out / "rate_distortion.csv")
    assert sorted(pts["trial"]) == [0, 1, 2]
    by_trial = {t.number: t for t in rec.trials}
    for row in pts.itertuples():
        assert [row.rate, row.distortion] == pytest.approx(by_trial[row.trial].values)
    assert pts["compared"].sum() == 2  # one per latent size
    width, height = png_size(out / "rate_distortion.png")
    assert width > height > 200  # two panels side by side
    md = (out / "comparison.md").read_text()
    assert "## Rate-distortion frontier" in md
    table = pd.read_csv(out / "comparison.csv")
    assert "test/ood_auroc" not in table  # rd_tiny names no OOD dataset
    assert table["test/sample_recall"].between(0, 1).all() and (table["test/sample_kid_se"] > 0).all()
