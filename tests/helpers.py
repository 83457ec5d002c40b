"""Values and functions the tests share; fixtures live in conftest.py, which imports from here.

`data_folder()` is where every test finds MNIST: $VAE_DATA_DIR, else the project's ./data.
"""

from __future__ import annotations

import os
from pathlib import Path

from vae.data import DATA_ENV, DataConfig
from vae.model import ModelConfig

REPO = Path(__file__).resolve().parents[1]

# 500 train / 500 val / 500 test images: big enough for the ELBO to move, small enough for ~0.3 s per load
SMALL_DATA = DataConfig(dataset="mnist", binarize="dynamic", val_size=500, limit=500, test_limit=500, split_seed=0)
# small enough that the tests can afford a dozen fits of 10-50 Adam steps each
TINY_MODEL = ModelConfig(latent_dim=8, hidden_width=64, hidden_layers=1)


def data_folder() -> Path:
    """$VAE_DATA_DIR, else the project's ./data: the folder holding MNIST/raw (and FashionMNIST/raw)."""
    return Path(os.environ.get(DATA_ENV) or REPO / "data")


def has_mnist(root: Path) -> bool:
    raw = root / "MNIST" / "raw"
    return (raw / "train-images-idx3-ubyte").exists() or (raw / "train-images-idx3-ubyte.gz").exists()
