"""bench.paper: the literature's k = 5000 NLL logged once on the best trial's run
(a real MLflow store and Optuna storage).

k is lowered for speed: the plumbing is the same, k = 5000 on 10,000 images costs ~2e13 FLOPs.
"""

from __future__ import annotations

import pytest
import torch

from bench.context import StudyContext
from bench.paper import BATCH_IMAGES, CHUNK_SAMPLES, PAPER_KEYS, PAPER_SECONDS_TAG, paper_nll, score_paper_protocol
from bench.spec import StudySpec
from vae.evaluate import iwae_nll_per_image
from vae.train import TrainConfig, save_checkpoint


def test_paper_nll_is_the_mean_of_per_image_bounds_and_their_standard_error(trained_vae, small_mnist):
    x = small_mnist.test.x[:150]
    got = paper_nll(trained_vae, x, seed=2, k=7)
    per = iwae_nll_per_image(trained_vae, x, k=7, batch_size=BATCH_IMAGES, chunk=CHUNK_SAMPLES, seed=2)
    assert got[PAPER_KEYS[0]] == pytest.approx(per.mean().item(), rel=1e-12)
    assert got[PAPER_KEYS[1]] == pytest.approx(per.std().item() / 150**0.5, rel=1e-9)


def test_the_best_trial_run_gets_the_paper_nll_once(tmp_path, trained_vae, small_mnist, restore_mlflow_uri):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from bench.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "paper")
    parent = tracker.create_parent_run("paper", {}, {}, {})
    run_ids = []
    for i in range(2):
        with tracker.child_run(parent, f"trial-{i:03d}", {}, {}) as run:
            (tmp_path / str(i)).mkdir()
            ckpt = save_checkpoint(tmp_path / str(i) / "model.pt", trained_vae, "vae", TrainConfig(seed=4))
            tracker.log_file(run.run_id, ckpt, "checkpoint")
            run_ids.append(run.run_id)
    study = optuna.create_study(
        storage=JournalStorage(JournalFileBackend(str(tmp_path / "j.log"))), direction="maximize"
    )
    for value, rid in zip((-120.0, -110.0), run_ids, strict=False):  # the second trial is the best
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"mlflow_run_id": rid}))

    spec = StudySpec(name="paper")  # one objective: the best trial is Optuna's
    ctx = StudyContext(study, spec, tracker, parent, small_mnist, torch.device("cpu"))
    logged = score_paper_protocol(ctx, k=3)
    assert logged == pytest.approx(paper_nll(trained_vae, small_mnist.test.x, seed=4, k=3))  # the checkpoint's seed
    best = tracker.client.get_run(run_ids[1]).data
    assert best.metrics[PAPER_KEYS[0]] == pytest.approx(logged[PAPER_KEYS[0]])
    assert 50 < best.metrics[PAPER_KEYS[0]] < 400 and 0 < best.metrics[PAPER_KEYS[1]] < 10
    assert int(best.tags[PAPER_SECONDS_TAG]) >= 0
    assert PAPER_KEYS[0] not in tracker.client.get_run(run_ids[0]).data.metrics
    assert score_paper_protocol(ctx, k=3) is None  # done: not again
    assert len(tracker.client.get_metric_history(run_ids[1], PAPER_KEYS[0])) == 1
