"""Sample and reconstruction grids of any of the three models, logged under keys they share.

`image_grids(kind, model, data, seed)` draws them; `log_epoch_images(run, ...)` logs them with
mlflow.log_image(key, step) so the UI's chart view shows VAE, AE and PCA side by side at each step.
"""

from __future__ import annotations

import torch

from bench import tags as T
from bench.baselines import training_images
from bench.models import generate_images, get
from vae.data import Datasets
from vae.evaluate import image_grid, reconstruction_grid

N_SAMPLES = 64  # an 8 x 8 grid
N_RECONSTRUCTIONS = 16  # one row of originals above one row of reconstructions
FIT_IMAGES = 10_000  # training images whose codes the AE's and PCA's Gaussian is fitted to


def image_grids(kind: str, model: torch.nn.Module, data: Datasets, seed: int) -> dict[str, torch.Tensor]:
    """{samples, reconstructions}: (3, H, W) grids in [0, 1]; samples drawn as bench.scores draws them."""
    fit_x = None if get(kind).has_prior else training_images(data, seed, limit=FIT_IMAGES)
    samples = generate_images(kind, model, fit_x, N_SAMPLES, seed)
    return {
        T.SAMPLES: image_grid(samples),
        T.RECONSTRUCTIONS: reconstruction_grid(model, data.test.x, N_RECONSTRUCTIONS),
    }


def log_epoch_images(
    run, kind: str, model: torch.nn.Module, data: Datasets, seed: int, steps
) -> dict[str, torch.Tensor]:
    """Log the grids of the model as it is now at each of `steps` (one epoch, or PCA at every epoch); returns them."""
    grids = image_grids(kind, model, data, seed)
    for step in steps:
        for key, grid in grids.items():
            run.log_image(grid, key, step)
    return grids


def log_final_grids(run, grids: dict[str, torch.Tensor]) -> None:
    """The last grids as plain files under grids/, for the report and the Artifacts tab."""
    for key, grid in grids.items():
        run.log_grid(grid, T.grid_file(key))
