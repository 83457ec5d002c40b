"""Shared pytest fixtures: the data folder, a small in-memory MNIST, a seeded generator and a trained VAE.

`data_root` is the one way a test finds the data. It skips only when $VAE_DATA_DIR is unset and
./data lacks MNIST; a folder named by the variable but wrong fails the tests that need it, as it should.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import SMALL_DATA, TINY_MODEL, data_folder, has_mnist
from vae.data import DATA_ENV, Datasets, load_data
from vae.model import build_model
from vae.train import TrainConfig, fit, seed_everything

MAX_TEST_PROCESSES = 4  # many tests start 2-3 processes of their own; more in parallel only thrash


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject's addopts): one test process per core the scheduler gives us, at most MAX_TEST_PROCESSES."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_TEST_PROCESSES, cores))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The data folder: $VAE_DATA_DIR, else ./data (see tests.helpers.data_folder)."""
    root = data_folder()
    if not os.environ.get(DATA_ENV) and not has_mnist(root):
        pytest.skip(
            f"{DATA_ENV} is not set and {root} holds no MNIST (point {DATA_ENV} at the folder holding MNIST/raw)"
        )
    return root


@pytest.fixture(scope="session")
def small_mnist(data_root: Path) -> Datasets:
    """SMALL_DATA loaded once per session; tests must not modify its tensors."""
    return load_data(SMALL_DATA, data_root, download=False)


@pytest.fixture
def cpu_generator() -> torch.Generator:
    """A fresh generator with a fixed seed, for test inputs that must not touch the global RNG."""
    return torch.Generator().manual_seed(20240501)


@pytest.fixture(scope="session")
def trained_vae(small_mnist: Datasets):
    """TINY_MODEL trained for 3 epochs (30 Adam steps) on small_mnist; tests must not train it further."""
    seed_everything(0)
    model = build_model("vae", TINY_MODEL)
    fit(model, small_mnist, TrainConfig(epochs=3, batch_size=50, lr=3e-3, seed=0), progress=False)
    return model.eval()
