"""Shared pytest fixtures: the data folder, a small in-memory MNIST, a tiny model config and a trained VAE.

Data fixtures skip only when VAE_DATA_DIR is unset (CI sets it); a set but
wrong folder fails the tests that need it, as it should.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from vae.data import DATA_ENV, DataConfig, Datasets, load_data
from vae.model import ModelConfig, build_model
from vae.train import TrainConfig, fit, seed_everything

# 500 train / 500 val / 500 test images: big enough for the ELBO to move, small enough for ~0.3 s per load
SMALL_DATA = DataConfig(dataset="mnist", binarize="dynamic", val_size=500, limit=500, test_limit=500, split_seed=0)
# small enough that the tests can afford a dozen fits of 10-50 Adam steps each
TINY_MODEL = ModelConfig(latent_dim=8, hidden_width=64, hidden_layers=1)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder named by $VAE_DATA_DIR; the test is skipped only when the variable is unset."""
    root = os.environ.get(DATA_ENV)
    if not root:
        pytest.skip(f"{DATA_ENV} is not set (point it at the folder holding MNIST/raw)")
    return Path(root)


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
