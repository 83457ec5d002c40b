"""bench.jobs' pool: the comparison's models computed in parallel processes equal those computed in one.

A smoke-sized job list (a trained VAE's scores, an autoencoder trained and scored, PCA) with a stand-in
feature classifier; the scores, the autoencoder's epoch metrics and its images are compared value by value.
"""

from __future__ import annotations

import pytest
import torch

from bench.fd_classifier import FDClassifier, FeatureMLP
from bench.jobs import JobEnv, ModelJob, compute
from bench.metrics import COMPARED
from bench.pool import pool_size
from vae.model import ModelConfig, build_model
from vae.train import TrainConfig, fit, save_checkpoint, seed_everything

MODEL = ModelConfig(latent_dim=2, hidden_width=32)
TRAIN = TrainConfig(epochs=1, batch_size=128, seed=3)


@pytest.fixture(scope="module")
def jobs(data, tmp_path_factory) -> list[ModelJob]:
    seed_everything(TRAIN.seed)
    vae = build_model("vae", MODEL)
    fit(vae, data, TRAIN, progress=False)
    ckpt = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", vae, "vae", TRAIN)
    return [
        ModelJob("vae", MODEL, TRAIN, str(ckpt), of_run="run-a"),
        ModelJob("ae", MODEL, TRAIN, of_run="run-a"),
        ModelJob("pca", MODEL, TRAIN, of_run="run-a"),
    ]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> FDClassifier:
    torch.manual_seed(0)  # random features are features: the FD only has to be the same function in every process
    return FDClassifier(FeatureMLP().eval(), {}, tmp_path_factory.mktemp("fd") / "none.pt", from_cache=True)


def test_two_processes_compute_what_one_computes(data, jobs, classifier, one_torch_thread):
    cpu = torch.device("cpu")
    env = JobEnv(data, classifier, cpu, 200, 10, 100)
    one = {(r.job.kind, r.job.latent): r for r in compute(jobs, env, processes=1)}
    two = {(r.job.kind, r.job.latent): r for r in compute(jobs, env, processes=2)}
    assert sorted(one) == sorted(two) == [("ae", 2), ("pca", 2), ("vae", 2)]
    for key, a in one.items():
        b = two[key]
        assert a.scores.keys() == b.scores.keys() == set(COMPARED)
        for name, v in a.scores.items():
            assert b.scores[name] == pytest.approx(v, rel=1e-5, abs=1e-6), (key, name)
        assert len(a.history) == len(b.history) == (1 if key[0] == "ae" else 0)
        for ha, hb in zip(a.history, b.history, strict=False):
            assert hb == pytest.approx(ha, rel=1e-5)
        assert a.step_images.keys() == b.step_images.keys()
        assert sorted(a.step_images) == ([] if key[0] == "vae" else [0, 1])  # step 0 and each epoch
        for step in a.step_images:
            for name in a.step_images[step]:
                torch.testing.assert_close(a.step_images[step][name], b.step_images[step][name], rtol=1e-5, atol=1e-5)
        assert (a.state is None) == (key[0] != "ae")  # the autoencoder's weights come back for its logged model
    assert one[("ae", 2)].scores["test/code_recon_bce"] > 0  # an honest number, not a placeholder


def test_process_count_follows_the_cores_and_the_device():
    cpu = torch.device("cpu")
    assert pool_size(18, cpu, cpus=2) == 2
    assert pool_size(1, cpu, cpus=2) == 1
    assert pool_size(18, cpu, cpus=1) == 1
    assert pool_size(18, torch.device("cuda"), cpus=16) == 1
