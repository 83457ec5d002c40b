"""What a study leaves in MLflow (params, per-epoch metrics, test scores, images, the model, tags, the
parent's summary), read back with MLflow's own client; and bench.tracking.Tracker's run bookkeeping.

The smoke study is run once per session by the `smoke` fixture (tests/bench/conftest.py).
"""

from __future__ import annotations

import csv
import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from bench.errors import BenchError
from bench.spec import STUDIES_DIR, load_spec
from bench.tracking import ROLE_TAG, Tracker, check_tracking_uri, to_uint8_image
from tests.bench.helpers import REPO, global_tracking_uri, logged_images, png_size
from vae.data import load_data
from vae.evaluate import elbo_metrics
from vae.train import load_checkpoint, resolve_device

EPOCH_METRICS = ("train/elbo", "train/recon_bce", "train/kl", "val/elbo", "val/recon_bce", "val/kl")
TEST_METRICS = ("test/elbo", "test/recon_bce", "test/kl", "test/nll_iw", "test/nll_iw_se", "test/active_units")
SEARCHED = ("latent_dim", "hidden_width", "beta")


def complete(rec):
    """(trial, run) pairs of the completed trials."""
    return [(t, rec.child(t.number)) for t in rec.trials if t.state == TrialState.COMPLETE]


@pytest.fixture(scope="module")
def smoke_data(data_root):
    spec = load_spec("smoke")
    return load_data(spec.data, data_root)


# ------------------------------------------------------------------ params and tags


def test_params_are_the_trials_params_and_the_study_files_settings(smoke):
    rec = smoke.record
    for trial in rec.trials:
        params = rec.child(trial.number).data.params
        assert set(trial.params) == set(SEARCHED)
        for name, value in trial.params.items():
            assert params[name] == str(value), (trial.number, name)
        # fixed by studies/smoke.toml
        assert {k: params[k] for k in ("epochs", "batch_size", "lr", "seed", "hidden_layers", "activation")} == {
            "epochs": "2", "batch_size": "128", "lr": "0.001", "seed": "0", "hidden_layers": "1", "activation": "relu",
        }  # fmt: skip
        assert {
            k: params[k] for k in ("data.dataset", "data.binarize", "data.val_size", "data.limit", "data.test_limit")
        } == {
            "data.dataset": "mnist", "data.binarize": "dynamic", "data.val_size": "500", "data.limit": "2000",
            "data.test_limit": "1000",
        }  # fmt: skip
        assert params["iw_samples"] == "10"


def test_trial_runs_are_tagged_for_search_and_reproduction(smoke, smoke_data):
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    rec = smoke.record
    for trial in rec.trials:
        tags = rec.child(trial.number).data.tags
        assert tags[ROLE_TAG] == "trial"
        assert tags["model"] == "vae"
        assert tags["latent_dim"] == str(trial.params["latent_dim"])
        assert tags["trial_number"] == str(trial.number)
        assert tags["study"] == "smoke"
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", tags["git_commit"]) and tags["git_commit"][:40] == head
        assert tags["dataset"] == "mnist"
        assert tags["dataset_digest"] == smoke_data.digest
        assert tags["device"] == str(resolve_device("auto"))
        assert tags["torch_version"] == torch.__version__


# ------------------------------------------------------------------ metrics


def test_epoch_metrics_have_one_point_per_epoch_and_match_optuna(smoke):
    client, rec = smoke.run.client(), smoke.record
    for trial in rec.trials:
        run_id = trial.user_attrs["mlflow_run_id"]
        hist = {k: client.get_metric_history(run_id, k) for k in EPOCH_METRICS}
        epochs = sorted(trial.intermediate_values)
        if trial.state == TrialState.COMPLETE:
            assert epochs == [1, 2]
        for name, points in hist.items():
            assert [p.step for p in points] == epochs, (trial.number, name)
            assert all(math.isfinite(p.value) for p in points)
        # the pruner saw exactly what MLflow holds
        assert [p.value for p in hist["val/elbo"]] == pytest.approx([trial.intermediate_values[e] for e in epochs])
        for split in ("train", "val"):
            for e, elbo, recon, kl in zip(
                epochs, hist[f"{split}/elbo"], hist[f"{split}/recon_bce"], hist[f"{split}/kl"], strict=False
            ):
                assert elbo.value < 0 and recon.value > 0 and kl.value >= 0, (trial.number, split, e)
                assert elbo.value == pytest.approx(-(recon.value + kl.value), rel=1e-5)
        if trial.state == TrialState.COMPLETE:
            assert hist["val/elbo"][-1].value == pytest.approx(trial.value)
            # two epochs of Adam at lr 1e-3 do improve on the first
            assert hist["val/elbo"][1].value > hist["val/elbo"][0].value


def test_test_metrics_are_logged_once_and_are_sane(smoke):
    rec = smoke.record
    assert len(complete(rec)) >= 2
    for trial, run in complete(rec):
        m = {k: run.data.metrics[k] for k in TEST_METRICS}
        assert m == pytest.approx(trial.user_attrs["test_metrics"])
        elbo, recon, kl, nll, nll_se, au = (m[k] for k in TEST_METRICS)
        assert -784 * math.log(2) < elbo < -100  # beats p = 0.5 everywhere (543 nats), short of a tuned VAE
        assert elbo == pytest.approx(-(recon + kl), rel=1e-6)
        assert kl > 0
        # the IWAE bound (k=10, first 200 test images) is tighter than the ELBO (all 1000)
        assert 0 < nll <= -elbo * 1.05
        assert 0.1 < nll_se < 5  # std across 200 digits (tens of nats) / sqrt(200)
        assert au == int(au) and 0 <= au <= trial.params["latent_dim"]
    for trial in rec.trials:
        if trial.state == TrialState.PRUNED:
            assert not any(k.startswith("test/") for k in rec.child(trial.number).data.metrics)


# ------------------------------------------------------------------ artifacts and the model


def test_images_are_pngs_of_the_expected_size(smoke, tmp_path):
    client = smoke.run.client()
    for trial, run in complete(smoke.record):
        # keyed images at every epoch and before training (step 0), for the UI's image grid
        assert logged_images(client, run.info.run_id) == {
            (k, s) for k in ("samples", "reconstructions") for s in (0, 1, 2)
        }
        files = smoke.run.download(run.info.run_id, tmp_path / str(trial.number), "grids")
        names = sorted(p.name for p in files.iterdir())
        latent_pics = ["latent_manifold.png", "latent_scatter.png"] if trial.params["latent_dim"] == 2 else []
        assert names == sorted(["reconstructions.png", "samples.png", *latent_pics])
        assert png_size(files / "samples.png") == (8 * 30 + 2, 8 * 30 + 2)  # 64 samples, 28 px + 2 px padding
        assert png_size(files / "reconstructions.png") == (
            16 * 30 + 2,
            2 * 30 + 2,
        )  # 16 originals over 16 reconstructions
    for trial in smoke.record.trials:
        if trial.state == TrialState.PRUNED:
            run_id = trial.user_attrs["mlflow_run_id"]
            assert [a.path for a in client.list_artifacts(run_id)] == ["images"]  # step 0 only
            assert {s for _, s in logged_images(client, run_id)} == {0}


def test_logged_model_loads_back_with_no_pickle_and_is_the_evaluated_one(smoke, smoke_data, tmp_path):
    import mlflow
    import yaml

    trial, run = complete(smoke.record)[0]
    run_id = run.info.run_id
    with global_tracking_uri(smoke.run.tracking_uri):
        loaded = mlflow.pyfunc.load_model(run.data.tags["model_uri"])
        files = Path(mlflow.artifacts.download_artifacts(run.data.tags["model_uri"], dst_path=str(tmp_path / "model")))
    # models-from-code: the model is a code file, the vae package and the weights-only checkpoint;
    # no pickle is stored, so none is run on load
    flavor = yaml.safe_load((files / "MLmodel").read_text())["flavors"]
    assert list(flavor) == ["python_function"]
    assert flavor["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert (files / "mlflow_model.py").is_file() and (files / "code" / "vae" / "model.py").is_file()
    assert not [f.name for f in files.rglob("*") if f.suffix in (".pkl", ".pickle", ".pth", ".cloudpickle")]
    torch.load(files / "artifacts" / "model.pt", weights_only=True)  # refuses anything but tensors and plain data

    model = loaded.unwrap_python_model().model
    assert type(model).__name__ == "VAE"
    assert model.latent_dim == trial.params["latent_dim"]
    assert model.config.hidden_width == trial.params["hidden_width"]
    x = model.sample(4)
    assert x.shape == (4, 784) and float(x.min()) >= 0 and float(x.max()) <= 1
    # predict: test images in, their reconstructions out
    images = smoke_data.test.x[:5]
    recon = loaded.predict(images.numpy())
    assert recon.shape == (5, 784)
    assert torch.allclose(torch.as_tensor(recon), model.reconstruct(images).detach(), atol=1e-6)

    # the weights-only checkpoint beside it holds the same weights
    ckpt = smoke.run.download(run_id, tmp_path, "checkpoint/model.pt")
    twin, train_cfg = load_checkpoint(ckpt)
    assert train_cfg.epochs == 2 and train_cfg.lr == 1e-3
    for (name, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items(), strict=False):
        assert torch.equal(a, b), name

    # and it is the model whose test ELBO was logged (same images, same z seed)
    again = elbo_metrics(model, smoke_data.test.x, seed=0)
    assert again["elbo"] == pytest.approx(run.data.metrics["test/elbo"], rel=1e-5)
    assert again["kl"] == pytest.approx(run.data.metrics["test/kl"], rel=1e-5)


# ------------------------------------------------------------------ the parent run


def test_parent_run_holds_the_study_file_its_settings_and_the_trials_table(smoke):
    parent, files = smoke.record.parent, smoke.parent_files
    assert (files / "study" / "smoke.toml").read_text() == (STUDIES_DIR / "smoke.toml").read_text()
    assert parent.data.tags["n_trials"] == "3" and "n_trials" not in parent.data.params  # a resume may raise it
    assert parent.data.params["searched"] == "latent_dim,hidden_width,beta"
    assert parent.data.params["metric"] == "val/elbo" and parent.data.params["direction"] == "maximize"
    assert parent.data.tags["study"] == "smoke"
    assert parent.data.tags["git_commit"][:40] == smoke.record.child(0).data.tags["git_commit"][:40]

    with open(files / "optuna" / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == [t.number for t in smoke.record.trials]
    assert [r["state"] for r in rows] == [t.state.name for t in smoke.record.trials]
    for r, t in zip(rows, smoke.record.trials, strict=False):
        assert float(r["params_beta"]) == pytest.approx(t.params["beta"])
    w, h = png_size(files / "optuna" / "optimization_history.png")
    assert w >= 400 and h >= 300


def test_parent_run_names_the_best_trial(smoke):
    rec = smoke.record
    done = [t for t in rec.trials if t.state == TrialState.COMPLETE]
    best = max(done, key=lambda t: t.value)
    tags, metrics = rec.parent.data.tags, rec.parent.data.metrics
    assert tags["best_trial"] == str(best.number)
    assert tags["best_run_id"] == rec.child(best.number).info.run_id
    for name, value in best.params.items():
        assert tags[f"best.{name}"] == str(value)
    # under the trials' own keys, so the parent's row in the runs table lines up with theirs
    assert metrics["val/elbo"] == pytest.approx(best.value)
    for k in TEST_METRICS:
        assert metrics[k] == pytest.approx(rec.child(best.number).data.metrics[k])
    assert not any(k.startswith("best/") for k in metrics)
    assert metrics["trials/complete"] == len(done)
    assert metrics["trials/complete"] + metrics["trials/pruned"] == 3
    assert metrics["trials/fail"] == 0


# ------------------------------------------------------------------ Tracker, in process


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    tmp = tmp_path_factory.mktemp("tracker")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    # made here with its artifacts in tmp: MLflow would put them in ./mlruns, the checkout
    mlflow.MlflowClient(uri).create_experiment("unit", artifact_location=(tmp / "mlruns").as_uri())
    yield Tracker(uri, "unit")
    mlflow.set_tracking_uri(before)  # Tracker sets the process-wide URI; do not leak it


@pytest.fixture(scope="module")
def parent_id(tracker):
    return tracker.create_parent_run(
        "unit", {"n_trials": 2, "sampler_seed": None}, {"optuna_study_uid": "u1"}, {"study/unit.toml": "x = 1\n"}
    )


def test_parent_run_is_created_once_and_found_by_study_uid(tracker, parent_id, tmp_path):
    run = tracker.client.get_run(parent_id)
    assert run.data.tags[ROLE_TAG] == "study" and run.data.tags["study"] == "unit"
    assert run.data.params == {"n_trials": "2", "sampler_seed": "None"}
    assert tracker.find_parent_run("unit", "u1") == parent_id
    assert tracker.find_parent_run("unit", "other") is None
    assert tracker.run_exists(parent_id) and not tracker.run_exists(None) and not tracker.run_exists("0" * 32)
    assert (tracker.download(parent_id, "study/unit.toml", tmp_path)).read_text() == "x = 1\n"
    assert Tracker(tracker.uri, "unit").experiment_id == tracker.experiment_id  # get, not create again


def test_child_run_finishes_with_params_and_parent(tracker, parent_id):
    import mlflow

    with tracker.child_run(parent_id, "ok", {"beta": 0.5, "limit": None}, {"trial_number": 7}) as run:
        run.log_metrics({"val/elbo": -100.0}, step=1)
        run.log_metrics({"val/elbo": -90.0}, step=2)
    r = tracker.client.get_run(run.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params == {"beta": "0.5", "limit": "None"}
    assert r.data.tags["mlflow.parentRunId"] == parent_id and r.data.tags["trial_number"] == "7"
    assert [(m.step, m.value) for m in tracker.client.get_metric_history(run.run_id, "val/elbo")] == [
        (1, -100.0),
        (2, -90.0),
    ]
    assert mlflow.active_run() is None


@pytest.mark.parametrize(
    "exc, outcome, status, reason",
    [
        (RuntimeError("boom"), None, "FAILED", "RuntimeError: boom"),
        (KeyboardInterrupt(), None, "KILLED", "KeyboardInterrupt: "),  # SIGINT, or SIGTERM via bench.run
        (optuna.TrialPruned("pruned at epoch 1"), ("KILLED", "pruned at epoch 1"), "KILLED", "pruned at epoch 1"),
    ],
    ids=["error", "interrupt", "pruned"],
)
def test_child_run_is_never_left_running(tracker, parent_id, exc, outcome, status, reason):
    import mlflow

    with pytest.raises(type(exc)), tracker.child_run(parent_id, "bad", {}, {}) as run:
        run.outcome = outcome
        raise exc
    r = tracker.client.get_run(run.run_id)
    assert r.info.status == status
    assert r.data.tags["fail_reason"] == reason
    assert mlflow.active_run() is None


def test_close_if_running_closes_only_open_runs(tracker, parent_id):
    rid = tracker.client.create_run(tracker.experiment_id).info.run_id
    assert tracker.close_if_running(rid, "FAILED", "worker died") is True
    assert tracker.status(rid) == "FAILED"
    assert tracker.client.get_run(rid).data.tags["fail_reason"] == "worker died"
    assert tracker.close_if_running(rid, "KILLED", "again") is False
    assert tracker.status(rid) == "FAILED"
    assert tracker.close_if_running("0" * 32, "FAILED", "no such run") is False


def test_to_uint8_image_clamps_and_moves_channels_last():
    grid = torch.tensor([[[0.0, 1.0], [-0.5, 2.0]]]).expand(3, 2, 2)  # (3, H=2, W=2)
    img = to_uint8_image(grid)
    assert img.dtype == np.uint8 and img.shape == (2, 2, 3)
    assert img[..., 0].tolist() == [[0, 255], [0, 255]]
    assert img.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize(
    "uri, message",
    [
        ("sqlite:////nonexistent-folder-xyz/mlflow.db", "the folder of the MLflow database"),
        ("file:///nonexistent-folder-xyz/mlruns", "the parent folder of the MLflow store"),
        ("ftp://example.org/mlflow", "unsupported MLflow tracking URI"),
    ],
)
def test_unusable_tracking_uri_is_a_bench_error(uri, message):
    with pytest.raises(BenchError, match=message):
        check_tracking_uri(uri)


def test_usable_tracking_uris_pass(tmp_path):
    check_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    check_tracking_uri(f"file://{tmp_path}/mlruns")
    check_tracking_uri("postgresql://u@127.0.0.1:1/db")  # checked when connecting, not here
    assert list(tmp_path.iterdir()) == []
