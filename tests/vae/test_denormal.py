"""Flush-to-zero on all of torch's CPU threads, and fit turning it on only while it trains."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.helpers import TINY_MODEL
from vae.data import Datasets
from vae.denormal import denormals_flushed, flush_denormal, flush_denormal_enabled
from vae.model import build_model
from vae.train import TrainConfig, fit

SUBNORMAL = 1e-39  # float32 normals start at 1.18e-38
# large enough that torch splits the multiply over every intra-op thread
N_ELEMENTS = 1 << 22


def flushed_fraction() -> float:
    """Share of a multi-threaded multiply of subnormals that came out as exactly 0."""
    x = torch.full((N_ELEMENTS,), SUBNORMAL)
    return ((x * 1.0) == 0).float().mean().item()


@pytest.fixture(autouse=True)
def flushing_off():
    flush_denormal(False)
    yield
    flush_denormal(False)


def test_subnormals_survive_by_default():
    assert not flush_denormal_enabled()
    assert flushed_fraction() == 0.0


def test_flush_reaches_every_thread_and_turns_off_again():
    assert torch.get_num_threads() >= 1
    assert flush_denormal(True) is True
    assert flush_denormal_enabled()
    assert flushed_fraction() == 1.0  # torch.set_flush_denormal alone would leave the pool threads' share
    assert flush_denormal(False) is True
    assert not flush_denormal_enabled()
    assert flushed_fraction() == 0.0


def test_normal_numbers_are_untouched():
    flush_denormal(True)
    x = torch.full((N_ELEMENTS,), 1.5e-38)
    assert torch.equal(x * 2.0, torch.full((N_ELEMENTS,), 3.0e-38))


def test_context_flushes_inside_and_restores_after():
    with denormals_flushed():
        assert flushed_fraction() == 1.0
    assert flushed_fraction() == 0.0
    with denormals_flushed(enabled=False):
        assert flushed_fraction() == 0.0


def test_context_leaves_a_callers_own_flushing_on():
    flush_denormal(True)
    with denormals_flushed():
        pass
    assert flushed_fraction() == 1.0


def _flushing_seen_by_fit(data: Datasets, config: TrainConfig) -> tuple[list[float], float]:
    seen: list[float] = []
    torch.manual_seed(0)
    fit(
        build_model("vae", TINY_MODEL),
        data,
        config,
        "cpu",
        lambda e, m: seen.append(flushed_fraction()),
        progress=False,
    )
    return seen, flushed_fraction()


def test_fit_flushes_while_training_and_restores_after(small_mnist):
    config = TrainConfig(epochs=2, batch_size=128, lr=1e-3, seed=0)
    during, after = _flushing_seen_by_fit(small_mnist, config)
    assert during == [1.0, 1.0]
    assert after == 0.0


def test_fit_without_flushing_leaves_subnormals_alone(small_mnist):
    config = TrainConfig(epochs=1, batch_size=128, lr=1e-3, seed=0, flush_denormal=False)
    during, after = _flushing_seen_by_fit(small_mnist, config)
    assert during == [0.0]
    assert after == 0.0


def test_flushing_does_not_change_what_fit_learns(small_mnist):
    config = TrainConfig(epochs=2, batch_size=128, lr=1e-3, seed=0)
    runs = []
    for flush in (True, False):
        torch.manual_seed(0)
        model = build_model("vae", TINY_MODEL)
        runs.append(fit(model, small_mnist, dataclasses.replace(config, flush_denormal=flush), "cpu", progress=False))
    for a, b in zip(*runs, strict=False):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-3), key


def test_train_config_refuses_a_non_bool_flag():
    with pytest.raises(ValueError, match="flush_denormal must be True or False"):
        TrainConfig(flush_denormal=1)
