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


# Gradients are sums over a batch of 32 of products of O(1) values: fp32 GEMMs of different blocking
# (one batched GEMM for K models, or K single ones; Intel's and AMD's kernels) agree to a few ulps of
# the terms' magnitude, well inside these tolerances.
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-5
LR = 1e-2


def step_bound(grad: torch.Tensor, param: torch.Tensor, lr: float) -> torch.Tensor:
    """How far one SGD step of two runs may differ when their gradients agree to GRAD_RTOL/GRAD_ATOL.

    p - lr * g is linear in g: the gradients' difference times lr, plus one rounding of the subtraction
    (2**-23 of |p|, one fp32 ulp at most). Nothing amplifies rounding, unlike Adam's first step.
    """
    return lr * (GRAD_ATOL + GRAD_RTOL * grad.abs()) + 2.0**-23 * param.abs()


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
    torch.optim.SGD(stacked.parameters(), lr=LR).step()
    stacked.write_back()
    for k, (m, s) in enumerate(zip(separate, SEEDS, strict=False)):
        t = m.loss(x[k], generator=noise_generator(s, torch.device("cpu")))  # the same z noise as model k above
        t["loss"].backward()
        for name in t:
            if name != "loss":
                torch.testing.assert_close(terms[name][k], t[name], rtol=1e-5, atol=1e-4)
        for got, want in zip(stacked.grads(k), [p.grad for p in m.parameters()], strict=False):
            torch.testing.assert_close(got, want, rtol=GRAD_RTOL, atol=GRAD_ATOL)
        bounds = [step_bound(p.grad, p, LR) for p in m.parameters()]
        torch.optim.SGD(m.parameters(), lr=LR).step()
        for got, want, bound in zip(stacked.models[k].parameters(), m.parameters(), bounds, strict=False):
            assert got.shape == want.shape
            excess = ((got - want).abs() - bound).max().item()
            assert excess <= 0, f"model {k}: a parameter moved {excess:.3g} past the SGD bound"
    assert terms["loss"].item() == pytest.approx(
        sum(terms["recon_bce"]).item() + 0.7 * sum(terms.get("kl", torch.zeros(3))).item(), rel=1e-5
    )


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_the_stacked_adam_step_equals_the_separate_one_where_the_gradient_decides_it(kind):
    """The optimizer studies use (Adam), on the coordinates whose update the gradient determines.

    Adam's first step is lr * g / (|g| + eps), about lr * sign(g): where |g| is within the gradients'
    tolerance of 0, float rounding may flip the sign and move the parameter by 2 lr. Elsewhere its
    derivative is lr * eps / (|g| + eps)**2 <= lr * eps / |g|**2, so a gradient error d moves it by at most
    lr * eps * d / |g|**2 < 1e-7 for |g| > 10 d (d <= GRAD_ATOL + GRAD_RTOL |g|, eps = 1e-8): those coordinates
    are compared, to 1e-6, with those whose gradient is exactly 0 on both sides (ReLU units no image
    activates: no update at all); together they must be nearly all of them.
    """
    config = dataclasses.replace(TINY_MODEL, hidden_layers=1, beta=0.7)
    g = torch.Generator().manual_seed(6)
    x = torch.bernoulli(torch.rand(len(SEEDS), 32, 784, generator=g), generator=g)
    separate = models_for(kind, config, SEEDS)
    stacked = StackedModels(kind, models_for(kind, config, SEEDS), torch.device("cpu"))
    stacked.loss(x, [noise_generator(s, torch.device("cpu")) for s in SEEDS])["loss"].backward()
    stacked_grads = [[g.clone() for g in stacked.grads(k)] for k in range(len(SEEDS))]
    make_optimizer(stacked.parameters(), LR).step()
    stacked.write_back()
    decided = total = 0
    for k, (m, s) in enumerate(zip(separate, SEEDS, strict=False)):
        m.loss(x[k], generator=noise_generator(s, torch.device("cpu")))["loss"].backward()
        masks = [
            (p.grad.abs() > 10 * (GRAD_ATOL + GRAD_RTOL * p.grad.abs())) | ((p.grad == 0) & (sg == 0))
            for p, sg in zip(m.parameters(), stacked_grads[k], strict=False)
        ]
        make_optimizer(m, LR).step()
        for got, want, mask in zip(stacked.models[k].parameters(), m.parameters(), masks, strict=False):
            torch.testing.assert_close(got[mask], want[mask], rtol=0, atol=1e-6)
            decided, total = decided + int(mask.sum()), total + mask.numel()
    assert decided / total > 0.9, f"only {decided} of {total} coordinates compared"


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_stacked_run_agrees_with_fit_one_seed_at_a_time(small_mnist, kind):
    stacked = fit_replicates(kind, TINY_MODEL, FAST, SEEDS, small_mnist, strategy="stacked")
    assert len(stacked) == len(SEEDS)
    for (model, history), s in zip(stacked, SEEDS, strict=False):
        seed_everything(s)
        ref = build_model(kind, TINY_MODEL)
        ref_history = fit(ref, small_mnist, dataclasses.replace(FAST, seed=s), progress=False)
        assert type(model) is type(ref) and not model.training
        assert [list(h) for h in history] == [list(h) for h in ref_history]
        for got, want in zip(history, ref_history, strict=False):
            for key in want:
                assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-2), (s, key)
        # 20 Adam steps apart only by rounding (batched vs single GEMMs): 0 on this project's Intel CPU,
        # 2.1e-6 at most when the reference trains with 2 threads (another GEMM blocking). The exception is
        # Adam's first step, about lr * sign(g): a coordinate whose first gradient is within rounding of 0
        # may step the other way here, 2 lr apart, and the later steps (driven by the later, agreeing
        # gradients) do not close that. So no coordinate may be more than 2 lr + 1e-3 off, and at most 1 in
        # 10,000 beyond 1e-3 (AMD's one-step run had 1-2 near-zero gradients per model, none flipped);
        # a real error moves every coordinate.
        off = total = 0
        for got, want in zip(model.parameters(), ref.parameters(), strict=False):
            d = (got - want).abs()
            assert d.max().item() <= 2 * FAST.lr + 1e-3, (s, d.max().item())
            off, total = off + int((d > 1e-3 + 1e-3 * want.abs()).sum()), total + d.numel()
        assert off <= total // 10_000, f"seed {s}: {off} of {total} parameters more than 1e-3 off"
    # the seeds differ: the replicates are not copies of one another
    assert stacked[0][1][-1]["train/recon_bce"] != stacked[1][1][-1]["train/recon_bce"]


def test_sequential_strategy_is_fit_exactly(small_mnist):
    got = fit_replicates("vae", TINY_MODEL, FAST, [4, 7], small_mnist, strategy="sequential")
    for (model, history), s in zip(got, [4, 7], strict=False):
        seed_everything(s)
        ref = build_model("vae", TINY_MODEL)
        assert history == fit(ref, small_mnist, dataclasses.replace(FAST, seed=s), progress=False)
        assert all(
            torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values(), strict=False)
        )


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
