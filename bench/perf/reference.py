"""The reference configuration of the training-speed benchmark (pytorch/examples vae/main.py) and its targets.

Shared by `python -m bench.perf` and the other speed benchmarks (step_ab, gpu_check), so all time the same model.
"""

from __future__ import annotations

from typing import Literal

import torch

from vae.data import DataConfig
from vae.model import ModelConfig
from vae.train import TrainConfig

# The configuration of pytorch/examples vae/main.py, in this project's terms.
REFERENCE_MODEL = ModelConfig(latent_dim=20, hidden_width=400, hidden_layers=1)
REFERENCE_DATA = DataConfig(binarize="none", val_size=0)  # all 60,000 training images, grayscale targets
REFERENCE_TRAIN = TrainConfig(batch_size=128, lr=1e-3, seed=0)

SPEEDUP_TARGET = 8.0  # speedup_vs_reference at least this
FLOOR_RATIO_TARGET = 1.3  # ratio_to_floor at most this (fp32; issue 12)
QUALITY_EPOCHS = 10
QUALITY_TARGET = 105.0  # test loss (negative single-sample ELBO, nats per image) at most this after 10 epochs
EXAMPLES_QUALITY = 105.55  # what pytorch/examples reaches after 10 epochs (shared/ANCHORS.md)

Precision = Literal["fp32", "bf16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
PRECISION_CHOICES: dict[str, tuple[Precision, ...]] = {"fp32": ("fp32",), "bf16": ("bf16",), "both": ("fp32", "bf16")}
