"""vae.fused's hand-derived step against autograd: gradients of every supported configuration, and whole fits.

The gradients are compared relative to each tensor's norm (never per element: near-zero entries have no
relative precision, and Intel and AMD round GEMMs differently), in fp64 to check the derivation itself.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from vae.data import DataConfig, Datasets, load_data
from vae.fused import FusedStep, grads_of, supports
from vae.model import ACTIVATIONS, ModelConfig, build_model
from vae.train import TrainConfig, fit, fused_step_applies, seed_everything, uses_fused_step

# Tolerances on ||g_fused - g_autograd|| / ||g_autograd|| per parameter tensor. Both sides round each dot
# product of K <= 784 terms; the typical error of such a sum is sqrt(K) * u (u: unit roundoff) and a gradient
# passes through at most 2 * 4 + 1 = 9 GEMMs here, so about 9 * 28 * u: 3e-14 in fp64 (u = 1.1e-16) and
# 1.5e-5 in fp32 (u = 6e-8). The bounds below are those, rounded up by 3x; measured on Intel: 8e-16 and 7e-7.
# A mistake in a derivative (a factor, a sign, a missing term) moves the gradient by 1e-3 of its norm or more.
FP64_TOL = 1e-13
FP32_TOL = 5e-5
CONFIGS = list(itertools.product(("vae", "ae"), range(4), sorted(ACTIVATIONS)))


def _autograd_and_fused(kind: str, layers: int, act: str, dtype: torch.dtype):
    torch.manual_seed(layers)
    model = build_model(
        kind, ModelConfig(latent_dim=5, hidden_width=33, hidden_layers=layers, activation=act, beta=0.7)
    ).to(dtype)
    # 17 images into buffers sized for 32: the views of a short last batch are what is checked
    x = torch.bernoulli(torch.full((17, 784), 0.3, dtype=dtype), generator=torch.Generator().manual_seed(1))
    terms = model.loss(x, generator=torch.Generator().manual_seed(5))
    terms["loss"].backward()
    auto = [p.grad.clone() for p in model.parameters()]
    fs = FusedStep(model, 32, 0.0)  # lr 0: the step leaves the weights as they are
    fs.step(x, torch.Generator().manual_seed(5))  # the same z noise as the autograd loss drew
    bce, kl2 = fs.terms[:2].tolist()
    fused = grads_of(fs)
    fs.release()
    loss = (bce + 0.7 * kl2 / 2) / 17
    return terms["loss"].item(), loss, auto, fused


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("kind,layers,act", CONFIGS)
def test_fused_gradients_are_autograds_in_fp64(kind, layers, act):
    auto_loss, loss, auto, fused = _autograd_and_fused(kind, layers, act, torch.float64)
    assert len(fused) == len(auto) == 2 * (2 * layers + 2)
    assert loss == pytest.approx(auto_loss, rel=FP64_TOL)
    worst = max(_rel(f, a) for f, a in zip(fused, auto, strict=False))
    assert worst < FP64_TOL


@pytest.mark.parametrize("kind,layers,act", CONFIGS)
def test_fused_gradients_are_autograds_in_fp32(kind, layers, act):
    auto_loss, loss, auto, fused = _autograd_and_fused(kind, layers, act, torch.float32)
    assert loss == pytest.approx(auto_loss, rel=FP32_TOL)
    assert max(_rel(f, a) for f, a in zip(fused, auto, strict=False)) < FP32_TOL


def test_a_wrong_derivative_is_caught(monkeypatch):
    """The comparison can fail: tanh's backward planted as ReLU's is far outside the tolerance."""
    from vae import fused as fused_mod

    wrong = fused_mod.Activation(
        fused_mod.ACTIVATION_STEPS["tanh"].forward, fused_mod.ACTIVATION_STEPS["relu"].backward, False
    )
    monkeypatch.setitem(fused_mod.ACTIVATION_STEPS, "tanh", wrong)
    _, _, auto, fused = _autograd_and_fused("vae", 1, "tanh", torch.float64)
    assert max(_rel(f, a) for f, a in zip(fused, auto, strict=False)) > 1e-3


def test_one_step_is_the_same_adam_step_as_fits_optimizer():
    """lr > 0: after one step the weights agree with autograd + vae.train's Adam to float rounding."""
    from vae.train import make_optimizer

    cfg = ModelConfig(latent_dim=4, hidden_width=16, hidden_layers=1)
    x = torch.bernoulli(torch.full((8, 784), 0.3), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    a = build_model("vae", cfg)
    opt = make_optimizer(a, 1e-2)
    a.loss(x, generator=torch.Generator().manual_seed(2))["loss"].backward()
    opt.step()
    torch.manual_seed(0)
    f = build_model("vae", cfg)
    fs = FusedStep(f, 8, 1e-2)
    fs.step(x, torch.Generator().manual_seed(2))
    fs.release()
    for pa, pf in zip(a.parameters(), f.parameters(), strict=False):
        assert _rel(pf.detach(), pa.detach()) < FP32_TOL
        assert pf.untyped_storage().nbytes() == pf.numel() * 4  # released: storage of its own again


# 512 training images = 4 batches of 128 (plus a short last batch of 72 at batch size 110)
DATA = DataConfig(binarize="dynamic", val_size=256, limit=512, test_limit=256)


@pytest.fixture(scope="module")
def data(data_root: Path) -> Datasets:
    return load_data(DATA, data_root, download=False)


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_two_epochs_give_the_same_elbo_on_both_paths(data, kind):
    """Same seeds, same draws (shuffle, binarization, z noise): per-epoch metrics equal to float rounding.

    10 Adam steps in fp32 from the same weights: the paths' rounding differs by ~1e-7 relative per step
    and Adam's normalized update does not amplify it much in so few steps; 1e-5 is that with 100x to spare,
    while one different random draw (a batch, a binarization) moves these metrics by 1e-3 or more.
    """
    histories = {}
    for step in ("fused", "autograd"):
        seed_everything(0)
        model = build_model(kind, ModelConfig(latent_dim=8, hidden_width=64, hidden_layers=2, activation="elu"))
        histories[step] = fit(
            model, data, TrainConfig(epochs=2, batch_size=110, lr=3e-3, seed=0, step=step), progress=False
        )
    fused, auto = histories["fused"], histories["autograd"]
    assert len(fused) == len(auto) == 2
    for f, a in zip(fused, auto, strict=False):
        assert f.keys() == a.keys()
        for k in a:
            assert f[k] == pytest.approx(a[k], rel=1e-5), k
    assert fused[1]["val/recon_bce"] < fused[0]["val/recon_bce"]  # it trained


class _OtherModel(nn.Module):
    """Not one of vae.model's classes: the fused step does not know its loss."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(784, 784)

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": (self.lin(x) - x).pow(2).mean()}


def test_auto_takes_the_fused_step_only_where_it_applies():
    cpu = torch.device("cpu")
    vae = build_model("vae", ModelConfig(latent_dim=4, hidden_width=8))
    auto = TrainConfig()
    assert uses_fused_step(vae, auto, cpu)
    assert uses_fused_step(build_model("ae", ModelConfig(latent_dim=4, hidden_width=8)), auto, cpu)
    assert not uses_fused_step(vae, TrainConfig(precision="bf16"), cpu)
    assert not uses_fused_step(vae, TrainConfig(compile=True), cpu)
    assert not uses_fused_step(vae, TrainConfig(step="autograd"), cpu)
    assert not uses_fused_step(_OtherModel(), auto, cpu)
    assert not fused_step_applies(vae, auto, torch.device("meta"))
    assert not uses_fused_step(build_model("vae", ModelConfig(latent_dim=4, hidden_width=8)).double(), auto, cpu)
    assert not supports(_OtherModel())
    with pytest.raises(ValueError, match="step 'fused' needs a CPU"):
        uses_fused_step(_OtherModel(), TrainConfig(step="fused"), cpu)
    for bad in ({"precision": "bf16"}, {"compile": True}):  # refused as the config is made, before any training
        with pytest.raises(ValueError, match="step 'fused' needs precision 'fp32' and compile off"):
            TrainConfig(step="fused", **bad)
    with pytest.raises(ValueError, match="step must be"):
        TrainConfig(step="fast")


def _largest_allocation(fn) -> int:
    """The largest block of tensor memory the CPU allocator handed out while fn ran (torch.profiler), in bytes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max([e.cpu_memory_usage for e in prof.events()] + [0])


def test_a_fused_step_allocates_no_tensor_memory():
    """After the first step every buffer exists: a step (gather, binarize, forward, backward, Adam) allocates none.

    Eager PyTorch still makes 0-d tensors of 4-8 bytes (a Python number wrapped for an op, a reduction's
    result before it is copied out), so the check is on the largest block: none as large as one row of a buffer.
    """
    torch.manual_seed(0)
    model = build_model("vae", ModelConfig(latent_dim=8, hidden_width=32, hidden_layers=2, activation="gelu"))
    fs = FusedStep(model, 64, 1e-3)
    images = torch.rand(256, 784)
    gen = torch.Generator().manual_seed(0)
    idx = torch.arange(64)

    def steps() -> None:
        for _ in range(3):
            xb = fs.x[:64]
            torch.index_select(images, 0, idx, out=xb)
            torch.bernoulli(xb, generator=gen, out=xb)
            fs.step(xb, gen)

    steps()
    assert _largest_allocation(steps) <= 8
    assert _largest_allocation(lambda: torch.sigmoid(images)) >= images.numel() * 4  # the probe sees an allocation
    fs.release()
