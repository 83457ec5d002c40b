"""Correctness of fit's speed paths: the compiled loss and the on-device metric sums.

These check values, not timings; `python -m bench.perf` measures the speed.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from vae.data import DataConfig, Datasets, Split, load_data
from vae.model import ModelConfig, build_model
from vae.train import TrainConfig, fit

# 512 training images = 4 full batches of 128: one static shape, so one compilation per test
DATA = DataConfig(binarize="dynamic", val_size=256, limit=512, test_limit=256)
MODEL = ModelConfig(latent_dim=8, hidden_width=64, hidden_layers=1)
CONFIG = TrainConfig(epochs=3, batch_size=128, lr=3e-3, seed=0)
KEYS = ("train/recon_bce", "train/kl", "train/elbo", "val/recon_bce", "val/kl", "val/elbo")


@pytest.fixture(scope="module")
def data(data_root: Path) -> Datasets:
    return load_data(DATA, data_root, download=False)


@pytest.fixture
def fresh_compile():
    """Forget graphs compiled earlier in the session: a cached graph ignores inductor config patches."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def train(data: Datasets, config: TrainConfig) -> list[dict[str, float]]:
    torch.manual_seed(123)  # the initial weights; fit seeds everything else from config.seed
    return fit(build_model("vae", MODEL), data, config, "cpu", progress=False)


def test_compiled_fit_matches_eager_fit_when_the_noise_is_drawn_the_same_way(data, fresh_compile):
    # inductor draws its own random numbers; fallback_random makes it use torch's, as eager does,
    # so any difference left is a difference in what is computed (loss terms, beta, averaging)
    eager = train(data, CONFIG)
    with torch._inductor.config.patch(fallback_random=True):
        compiled = train(data, dataclasses.replace(CONFIG, compile=True))
    assert list(compiled[0]) == list(eager[0])
    for e, c in zip(eager, compiled, strict=False):
        for key in KEYS:
            assert c[key] == pytest.approx(e[key], rel=1e-4, abs=1e-3), key


def test_compiled_fit_repeats_for_a_seed_and_improves(data, fresh_compile):
    config = dataclasses.replace(CONFIG, compile=True)
    first, second = train(data, config), train(data, config)
    assert first == second
    elbos = [h["val/elbo"] for h in first]
    assert all(math.isfinite(v) for h in first for v in h.values())
    assert elbos[0] < elbos[1] < elbos[2]  # ~-490, -397, -321 nats: rising by tens of nats an epoch
    assert -360 < elbos[2] < -280


@pytest.mark.slow
def test_compiled_bf16_fit_trains_like_fp32(data, fresh_compile):
    fp32 = train(data, dataclasses.replace(CONFIG, compile=True))
    bf16 = train(data, dataclasses.replace(CONFIG, compile=True, precision="bf16"))
    assert bf16 != fp32  # the matmuls really ran in bf16
    assert all(math.isfinite(v) for h in bf16 for v in h.values())
    assert bf16[0]["val/elbo"] < bf16[2]["val/elbo"]
    assert bf16[2]["val/elbo"] == pytest.approx(fp32[2]["val/elbo"], abs=5.0)


class RowSum(nn.Module):
    """A model whose reported term does not depend on training: the mean row sum of its batch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = x.sum(-1)  # (B,)
        return {"loss": (self.w - 1.0).pow(2), "row_sum": rows.mean(), "size": x.new_tensor(float(x.shape[0]))}


def test_train_metrics_weight_each_batch_by_its_size(data):
    # 300 images in batches of 128, 128 and 44: an unweighted mean of batch means would be off
    x, y = data.train.x[:300], data.train.y[:300]
    plain = Datasets(Split(x, y), Split(x[:0], y[:0]), data.test, data.config)  # grayscale, no validation
    history = fit(RowSum(), plain, dataclasses.replace(CONFIG, epochs=2), "cpu", progress=False)
    expected = plain.train.x.double().sum(-1).mean().item()
    sizes = (128 * 128 + 128 * 128 + 44 * 44) / 300  # each batch's size, weighted by its size
    for h in history:
        assert list(h) == ["train/row_sum", "train/size"]
        assert h["train/row_sum"] == pytest.approx(expected, rel=1e-5)
        assert h["train/size"] == pytest.approx(sizes, rel=1e-6)


def test_lean_adam_steps_exactly_as_torch_fused_adam():
    from vae.train import LeanAdam, make_optimizer

    torch.manual_seed(0)
    a, b = build_model("vae", MODEL), build_model("vae", MODEL)
    b.load_state_dict(a.state_dict())
    lean, ref = make_optimizer(a, 3e-3), torch.optim.Adam(b.parameters(), lr=3e-3, fused=True)
    assert isinstance(lean, LeanAdam)
    g = torch.Generator().manual_seed(1)
    for step in range(5):
        x = torch.rand(32, 784, generator=g)
        for model, opt in ((a, lean), (b, ref)):
            opt.zero_grad(set_to_none=True)
            torch.manual_seed(step)  # the same z noise for both
            model.loss(x)["loss"].backward()
            if step == 2:
                model.decoder[0].bias.grad = None  # a tensor without a gradient is skipped, as torch.optim does
            opt.step()
        for p, q in zip(a.parameters(), b.parameters(), strict=False):
            assert torch.equal(p, q), step  # bit for bit: the same kernel on the same numbers


def test_batches_by_index_select_are_the_rows_of_the_shuffled_order():
    x = torch.arange(10 * 784, dtype=torch.float32).reshape(10, 784)
    split = Split(x, torch.zeros(10, dtype=torch.long))
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    got = torch.cat(list(split.batches(4, shuffle=True, generator=torch.Generator().manual_seed(3))))
    assert torch.equal(got, x[order])
