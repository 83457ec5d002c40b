"""bench.replicates in process: the plan of replicate runs, and a replicate trained exactly as a trial is.

The CLI's replicate runs (nested, tagged, resumed) are tested with the smoke study in test_report.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.replicates import Replicate, plan, train_replicate
from bench.spec import load_spec
from tests.helpers import TINY_MODEL
from vae.model import build_model
from vae.train import TrainConfig, fit, seed_everything


class FakeTrial:  # the two fields of optuna's FrozenTrial that plan() reads
    def __init__(self, number: int, run_id: str) -> None:
        self.number, self.user_attrs = number, {"mlflow_run_id": run_id}


def test_plan_lists_every_model_latent_size_and_seed_seed_by_seed():
    spec = load_spec("smoke").with_overrides(replicates=2, seed=4)
    got = plan({2: FakeTrial(0, "a"), 4: FakeTrial(3, "b")}, spec)
    assert [r.name for r in got[:6]] == [
        "vae-latent2-seed5", "ae-latent2-seed5", "pca-latent2-seed5",
        "vae-latent4-seed5", "ae-latent4-seed5", "pca-latent4-seed5",
    ]  # fmt: skip
    assert len(got) == 12 and {r.seed for r in got[6:]} == {6}
    assert got[3] == Replicate("vae", 4, 5, "b", 3)
    assert plan({2: FakeTrial(0, "a")}, load_spec("seed")) == []  # no [replicates]: nothing to do


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_a_replicate_is_trained_exactly_as_seed_everything_build_model_fit(kind, small_mnist, one_torch_thread):
    cfg = TrainConfig(epochs=1, batch_size=100, lr=1e-3, seed=0)
    model, history = train_replicate(kind, TINY_MODEL, cfg, 7, small_mnist, torch.device("cpu"))
    seed_everything(7)
    ref = build_model(kind, TINY_MODEL)
    ref_history = fit(ref, small_mnist, dataclasses.replace(cfg, seed=7), progress=False)
    assert history == ref_history and len(history) == 1
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values(), strict=False):
        assert torch.equal(a, b), name
    other, _ = train_replicate(kind, TINY_MODEL, cfg, 8, small_mnist, torch.device("cpu"))
    assert not torch.equal(next(other.parameters()), next(model.parameters()))


def test_a_pca_replicate_is_fitted_on_images_binarized_with_its_seed(small_mnist):
    a, history = train_replicate("pca", TINY_MODEL, TrainConfig(seed=0), 1, small_mnist, torch.device("cpu"))
    b, _ = train_replicate("pca", TINY_MODEL, TrainConfig(seed=0), 2, small_mnist, torch.device("cpu"))
    assert history == [] and a.latent_dim == TINY_MODEL.latent_dim
    assert not torch.allclose(a.mean, b.mean)  # other Bernoulli draws of the same training images
    assert torch.allclose(a.mean, b.mean, atol=0.1)


def test_two_processes_compute_the_replicates_one_process_computes(small_mnist, one_torch_thread):
    from bench.fd_classifier import FDClassifier, FeatureMLP
    from bench.jobs import JobEnv, compute

    torch.manual_seed(0)  # random features are features: the scores only need the same function everywhere
    classifier = FDClassifier(FeatureMLP().eval(), {}, None, from_cache=True)
    spec = load_spec("smoke")
    cfg = TrainConfig(epochs=1, batch_size=100, lr=1e-3, seed=0)
    jobs = [
        Replicate(kind, 8, seed, "run-a", 0).job(TINY_MODEL, cfg) for seed in (1, 2) for kind in ("vae", "ae", "pca")
    ]
    cpu = torch.device("cpu")
    env = JobEnv(small_mnist, classifier, cpu, spec.baselines.fd_samples, spec.eval.iw_samples, spec.eval.iw_images)
    one = {r.job.key: (r.history, r.scores) for r in compute(jobs, env, 1)}
    two = {r.job.key: (r.history, r.scores) for r in compute(jobs, env, 2)}
    assert sorted(one) == sorted(two) == sorted(j.key for j in jobs)
    for key, (h1, s1) in one.items():
        h2, s2 = two[key]
        assert len(h1) == len(h2) == (0 if key[0] == "pca" else 1)
        assert s1.keys() == s2.keys() and "test/code_recon_bce" in s1
        assert ("test/elbo" in s1) == (key[0] == "vae")
        for name, v in s1.items():
            assert s2[name] == pytest.approx(v, rel=1e-5, abs=1e-6), (key, name)
    assert one[("vae", 8, 1, "run-a")][1]["test/elbo"] != one[("vae", 8, 2, "run-a")][1]["test/elbo"]  # seeds differ
