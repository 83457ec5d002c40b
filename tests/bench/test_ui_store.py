"""What the MLflow UI shows, read from the store the smoke study (with its baselines) leaves: one meaning
per metric key, keyed images of the three models, datasets, descriptions, models and the registry.

The store is made once per session by the `smoke_compared` fixture (tests/bench/conftest.py), which
tests/bench/test_report.py shares; tests/bench/test_ui_browser.py looks at the same things in Chromium.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from bench import metrics as M
from bench import tags as T
from bench.describe import registered_name
from tests.bench.helpers import global_tracking_uri, logged_images

EPOCHS = 2  # studies/smoke.toml
LATENTS = (2, 4)


@pytest.fixture(scope="module")
def store(smoke_compared):
    client = smoke_compared.client()
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, exp, runs


def by_role(runs, role):
    return [r for r in runs if r.data.tags.get(T.ROLE) == role]


def compared(runs, model):
    return sorted(
        (r for r in runs if r.data.tags.get(T.COMPARED) == "true" and r.data.tags[T.MODEL] == model),
        key=lambda r: int(r.data.tags[T.LATENT_DIM]),
    )


# ------------------------------------------------------------------ one meaning per key


def test_every_vae_run_s_elbo_is_minus_its_reconstruction_term_plus_kl(store):
    """The comparison stage once overwrote test/recon_bce on the trial runs with its own reconstruction."""
    client, _, runs = store
    vae_runs = [r for r in by_role(runs, "trial") if "test/elbo" in r.data.metrics]
    assert len(vae_runs) >= 2 and any(r.data.tags.get(T.COMPARED) == "true" for r in vae_runs)
    for r in vae_runs:
        m = r.data.metrics
        assert m["test/elbo"] == pytest.approx(-(m["test/recon_bce"] + m["test/kl"]), rel=1e-6), r.info.run_name
        # written once: a second write (another meaning) would leave a second point in the history
        for key in m:
            if key.startswith("test/"):
                assert len(client.get_metric_history(r.info.run_id, key)) == 1, (r.info.run_name, key)
    # the parent's copy of the best trial's numbers is the same numbers
    (parent,) = by_role(runs, "study")
    best = next(r for r in runs if r.info.run_id == parent.data.tags[T.BEST_RUN_ID])
    for key, value in parent.data.metrics.items():
        if not key.startswith("trials/"):
            assert value == pytest.approx(best.data.metrics[key]), key


def test_every_logged_key_is_declared_for_the_model_of_its_run(store):
    client, _, runs = store
    seen = set()
    for r in runs:
        model = r.data.tags.get(T.MODEL, "study")
        for key in r.data.metrics:
            declared = M.metric(key)  # KeyError: written but never declared
            allowed = declared.models | ({"study"} if "vae" in declared.models else set())
            assert model in allowed, f"{key} on a {model} run; declared for {sorted(declared.models)}"
            history = client.get_metric_history(r.info.run_id, key)
            steps = [p.step for p in history]
            assert len(steps) == len(set(steps)), f"{key} written twice at one step on {r.info.run_name}"
            seen.add((model, key))
    # the comparison's keys are on all three models, the ELBO's terms on the VAE only
    for model in ("vae", "ae", "pca"):
        assert {(model, k) for k in M.COMPARED} <= seen, model
    assert {("vae", k) for k in ("test/elbo", "test/recon_bce", "test/kl", "test/nll_iw")} <= seen
    assert not {("ae", "test/recon_bce"), ("pca", "test/recon_bce")} & seen
    for model in ("vae", "ae"):
        assert {k for m, k in seen if m == model and k.split("/")[0] in ("train", "val")} == {
            k for k, d in M.METRICS.items() if model in d.models and k.split("/")[0] in ("train", "val")
        }


def test_the_report_carries_the_store_s_values(smoke_compared, store):
    _, _, runs = store
    # smoke has [replicates]: each cell is the mean over the VAE replicate runs of that latent size
    table = pd.read_csv(smoke_compared.cwd / "reports" / "smoke" / "vae_metrics.csv")
    reps = [r for r in runs if r.data.tags.get(T.ROLE) == T.REPLICATE_ROLE and r.data.tags.get(T.MODEL) == "vae"]
    assert reps
    for latent in LATENTS:
        mine = [r for r in reps if int(r.data.tags[T.LATENT_DIM]) == latent]
        row = table[table["latent_dim"] == latent].iloc[0]
        assert row["n"] == len(mine) == 2
        for key in ("test/elbo", "test/recon_bce", "test/kl"):
            assert row[key] == pytest.approx(sum(r.data.metrics[key] for r in mine) / len(mine))


# ------------------------------------------------------------------ images, datasets, params


def test_vae_ae_and_pca_log_samples_and_reconstructions_under_the_same_keys_and_steps(store):
    client, _, runs = store
    expected = {(k, s) for k in T.IMAGE_KEYS for s in range(EPOCHS + 1)}
    for model in ("vae", "ae", "pca"):
        rs = compared(runs, model)
        assert [int(r.data.tags[T.LATENT_DIM]) for r in rs] == list(LATENTS)
        for r in rs:
            assert logged_images(client, r.info.run_id) == expected, (model, r.info.run_name)
            grids = {a.path for a in client.list_artifacts(r.info.run_id, T.GRIDS)}
            assert {T.grid_file(k) for k in T.IMAGE_KEYS} <= grids


def test_train_validation_and_test_splits_are_dataset_inputs_of_every_child_run(store):
    _, _, runs = store
    children = [r for r in runs if r.data.tags.get(T.ROLE) in ("trial", "baseline")]
    assert len(children) == 3 + 4
    digests = None
    for r in children:
        inputs = {
            (d.dataset.name, d.dataset.digest, tuple(t.value for t in d.tags if t.key == T.INPUT_CONTEXT))
            for d in r.inputs.dataset_inputs
        }
        assert {(n, c) for n, _, c in inputs} == {
            ("mnist-train", ("training",)),
            ("mnist-val", ("validation",)),
            ("mnist-test", ("testing",)),
        }
        digests = digests or {n: d for n, d, _ in inputs}
        assert {n: d for n, d, _ in inputs} == digests  # the same data for every model
        assert len(set(digests.values())) == 3
        assert r.data.tags[T.DATASET_DIGEST]  # the raw-bytes digest tag stays


def test_no_run_carries_a_parameter_its_model_does_not_have(store):
    _, _, runs = store
    for r in runs:
        params, model = r.data.params, r.data.tags.get(T.MODEL)
        if model == "vae":
            assert {"beta", "iw_samples", "hidden_width", "lr"} <= set(params)
        elif model == "ae":
            assert "beta" not in params and "iw_samples" not in params
            assert {"hidden_width", "epochs", "lr"} <= set(params)
        elif model == "pca":
            assert {k for k in params if not k.startswith("data.")} == {"latent_dim", "seed"}


# ------------------------------------------------------------------ descriptions, names, models, the link


def test_experiment_parent_and_children_have_descriptions(store, smoke_compared):
    _, exp, runs = store
    assert "latent_dim, hidden_width, beta" in exp.tags[T.NOTE] and "maximizing val/elbo" in exp.tags[T.NOTE]
    (parent,) = by_role(runs, "study")
    note = parent.data.tags[T.NOTE]
    assert f"Best: trial {parent.data.tags[T.BEST_TRIAL]} " in note and "reports/smoke" in note
    for r in runs:
        assert r.data.tags.get(T.NOTE), f"{r.info.run_name} has no description"
    for r in by_role(runs, "trial"):
        note = r.data.tags[T.NOTE]
        assert note.startswith(f"VAE trial {r.data.tags[T.TRIAL_NUMBER]} of study `smoke`")
        if r.data.tags[T.OPTUNA_STATE] == "PRUNED":
            assert r.info.run_name.endswith(" (pruned)") and "pruned by the median pruner" in note
        else:
            assert f"val/elbo = {r.data.metrics['val/elbo']:.2f}" in note


def test_models_have_distinct_names_and_the_best_vae_per_size_is_registered(store, smoke_compared):
    import mlflow

    client, exp, runs = store
    names = sorted(m.name for m in client.search_logged_models([exp.experiment_id]))
    done = [r for r in by_role(runs, "trial") if r.data.tags[T.OPTUNA_STATE] == "COMPLETE"]
    assert names == sorted(
        [f"vae-latent{r.data.tags[T.LATENT_DIM]}-trial{int(r.data.tags[T.TRIAL_NUMBER]):03d}" for r in done]
        + [f"ae-latent{d}" for d in LATENTS]
    )
    with global_tracking_uri(smoke_compared.tracking_uri):
        for vae in compared(runs, "vae"):
            latent = int(vae.data.tags[T.LATENT_DIM])
            ref = f"models:/{registered_name('smoke', latent)}@best"
            assert vae.data.tags[T.REGISTERED_AS] == ref
            version = client.get_model_version_by_alias(registered_name("smoke", latent), "best")
            assert version.run_id == vae.info.run_id
            model = mlflow.pyfunc.load_model(ref).unwrap_python_model().model
            assert type(model).__name__ == "VAE" and model.latent_dim == latent
        ae = mlflow.pyfunc.load_model(compared(runs, "ae")[0].data.tags[T.MODEL_URI])
        assert type(ae.unwrap_python_model().model).__name__ == "Autoencoder"
        assert ae.predict(np.zeros((2, 784), dtype=np.float32)).shape == (2, 784)  # reconstructions


def test_run_prints_a_link_to_the_trials_best_first(smoke_compared, store):
    _, exp, _ = store
    out = smoke_compared.proc.stdout
    (link,) = re.findall(r"trials, best first: (\S+)", out)
    assert link == (
        f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
        "&searchFilter=tags.%60vaebench.role%60%20%3D%20%27trial%27"
        "&orderByKey=metrics.%60val%2Felbo%60&orderByAsc=false"
    )
