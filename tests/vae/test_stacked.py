"""vae.stacked: one stacked step equals K separate steps, and whole stacked runs equal fit's.

Values, not timings: losses, gradients and weights against ordinary models trained one at a time.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.helpers import TINY_MODEL
from vae.model import ModelConfig, build_model
from vae.stacked import StackedModels, fit_replicates, stacking_wins
from vae.train import TrainConfig, fit, make_optimizer, noise_generator, seed_everything

SEEDS = [0, 1, 2]
FAST = TrainConfig(epochs=2, batch_size=50, lr=3e-3, seed=0)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def models_for(kind: str, config: ModelConfig, seeds: list[int]) -> list[torch.nn.Module]:
    out = []
    for s in seeds:
        seed_everything(s)
        out.append(build_model(kind, config))
    return out


@pytest.mark.parametrize("kind", ["vae", "ae"])
@pytest.mark.parametrize("layers", [0, 1, 2])
def test_one_stacked_step_equals_k_separate_steps(kind, layers):
    config = dataclasses.replace(TINY_MODEL, hidden_layers=layers, beta=0.7)
    g = torch.Generator().manual_seed(5)
    x = torch.bernoulli(torch.rand(len(SEEDS), 32, 784, generator=g), generator=g)  # (K, B, 784): one batch per model
    separate = models_for(kind, config, SEEDS)
    stacked = StackedModels(kind, models_for(kind, config, SEEDS), torch.device("cpu"))

    terms = stacked.loss(x, [noise_generator(s, torch.device("cpu")) for s in SEEDS])
    terms["loss"].backward()
    opt = make_optimizer(stacked.parameters(), 1e-2)
    opt.step()
    stacked.write_back()
    for k, (m, s) in enumerate(zip(separate, SEEDS)):
        t = m.loss(x[k], generator=noise_generator(s, torch.device("cpu")))  # the same z noise as model k above
        t["loss"].backward()
        for name in t:
            if name != "loss":
                torch.testing.assert_close(terms[name][k], t[name], rtol=1e-5, atol=1e-4)
        for got, want in zip(stacked.grads(k), [p.grad for p in m.parameters()]):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        o = make_optimizer(m, 1e-2)
        o.step()
        for got, want in zip(stacked.models[k].parameters(), m.parameters()):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert terms["loss"].item() == pytest.approx(sum(terms["recon_bce"]).item() + 0.7 * sum(terms.get("kl", torch.zeros(3))).item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_stacked_run_agrees_with_fit_one_seed_at_a_time(small_mnist, kind):
    stacked = fit_replicates(kind, TINY_MODEL, FAST, SEEDS, small_mnist, strategy="stacked")
    assert len(stacked) == len(SEEDS)
    for (model, history), s in zip(stacked, SEEDS):
        seed_everything(s)
        ref = build_model(kind, TINY_MODEL)
        ref_history = fit(ref, small_mnist, dataclasses.replace(FAST, seed=s), progress=False)
        assert type(model) is type(ref) and not model.training
        assert [list(h) for h in history] == [list(h) for h in ref_history]
        for got, want in zip(history, ref_history):
            for key in want:
                assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-2), (s, key)
        for got, want in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    # the seeds differ: the replicates are not copies of one another
    assert stacked[0][1][-1]["train/recon_bce"] != stacked[1][1][-1]["train/recon_bce"]


def test_sequential_strategy_is_fit_exactly(small_mnist):
    got = fit_replicates("vae", TINY_MODEL, FAST, [4, 7], small_mnist, strategy="sequential")
    for (model, history), s in zip(got, [4, 7]):
        seed_everything(s)
        ref = build_model("vae", TINY_MODEL)
        assert history == fit(ref, small_mnist, dataclasses.replace(FAST, seed=s), progress=False)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


def test_auto_probe_answers_once_per_shape_and_leaves_the_global_rng_alone():
    torch.manual_seed(11)
    before = torch.get_rng_state()
    a = stacking_wins("vae", TINY_MODEL, 3, 32, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), before)
    assert stacking_wins("vae", TINY_MODEL, 3, 32, torch.device("cpu")) is a  # cached
    assert stacking_wins("vae", TINY_MODEL, 3, 32, torch.device("cuda")) is True  # never probed off the CPU


def test_bad_arguments_are_refused(small_mnist):
    with pytest.raises(ValueError, match="seeds"):
        fit_replicates("vae", TINY_MODEL, FAST, [], small_mnist)
    with pytest.raises(ValueError, match="strategy"):
        fit_replicates("vae", TINY_MODEL, FAST, [0], small_mnist, strategy="threads")
