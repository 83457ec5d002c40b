"""The model kinds a study compares (vae, ae, pca): how each is built and fitted, sampled, scored, named and described.

Every stage asks this registry (`get(kind)`, `fit_model(kind, ...)`, `generate_images(kind, ...)`) instead of
branching on a kind's name: the comparison, the replicates, the gate, the scores, the images, the OOD check,
the run texts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from bench.baselines import (
    FittedGaussianSampler,
    PCAModel,
    PriorSampler,
    Sampler,
    training_images,
)
from vae.data import Datasets
from vae.model import ModelConfig, build_model
from vae.train import EpochCallback, TrainConfig, fit, seed_everything

# (model_cfg, train_cfg, data, device, progress, on_epoch_end, on_model) -> the fitted model in eval mode
Fitter = Callable[..., nn.Module]


def _fit_network(
    name: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: Datasets,
    device,
    progress: bool,
    on_epoch_end: EpochCallback | None,
    on_model: Callable[[nn.Module], None],
) -> nn.Module:
    """The one seed -> build -> fit recipe of the trained kinds (the study's trials follow it too).

    Seeded before building, so the initial weights come from train_cfg.seed as well (fit seeds
    only the shuffling, binarization and noise); fit leaves the model in eval mode.
    """
    seed_everything(train_cfg.seed)
    model = build_model(name, model_cfg)
    on_model(model)
    fit(model, data, train_cfg, device, on_epoch_end=on_epoch_end, progress=progress)
    return model


def _fit_pca(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: Datasets,
    device,
    progress: bool,
    on_epoch_end: EpochCallback | None,
    on_model: Callable[[nn.Module], None],
) -> nn.Module:
    # all training images, binarized once with the training seed when the models see binary ones
    x = training_images(data, seed=train_cfg.seed)
    model = PCAModel.fit(x, model_cfg.latent_dim, seed=train_cfg.seed).to(device).eval()
    on_model(model)
    return model


@dataclass(frozen=True)
class ModelKind:
    """What one kind of model is, for every stage that builds, scores, logs or describes one."""

    name: str  # the `model` tag and the first part of its run and model names: "vae", "ae", "pca"
    title: str  # as a person reads it in a description
    fitter: Fitter  # builds and fits it from a ModelConfig and a TrainConfig (its seed included)
    by_epochs: bool  # trained epoch by epoch (images at step 0 and each epoch); False: fitted once
    has_prior: bool  # generates from its own prior; False: from a Gaussian fitted to its training codes
    bound: bool  # has a likelihood bound: test ELBO terms and IWAE NLL; OOD novelty is its IWAE NLL
    searched: bool  # the study's trials are this kind: compared on the trial's own run, from its checkpoint
    logs_model: bool  # its comparison run logs the fitted model (the searched kind's trial run holds its own)
    params: tuple[str, ...] | None  # the only run parameters it carries besides data.*; None: all but `excluded`
    excluded: tuple[str, ...] = ()  # parameters meaningless for it
    description: str = ""  # what it is, for a baseline run's note ({latent_dim} is filled in)

    def cost(self, model_cfg: ModelConfig) -> float:
        """A rough relative cost of fitting it, to start the long jobs first: networks by width, PCA none."""
        return float(model_cfg.hidden_width) if self.by_epochs else 0.0

    def carries(self, param: str) -> bool:
        """Whether a run of this kind logs `param` (run_params' names: model, train, data.*, iw_samples)."""
        if param.startswith("data."):
            return True
        return param in self.params if self.params is not None else param not in self.excluded

    def sampler(self, model: nn.Module, train_x: torch.Tensor | None) -> Sampler:
        """How it generates: its prior (train_x unused), or a Gaussian fitted to the codes of train_x."""
        return PriorSampler(model) if self.has_prior else FittedGaussianSampler.fit(model, train_x)

    def generator(self, model: nn.Module, seed: int) -> torch.Generator:
        """A generator seeded with `seed` on the device its sampler draws on (the prior's: the model's)."""
        dev = next(model.parameters()).device if self.has_prior else torch.device("cpu")
        return torch.Generator(device=dev).manual_seed(seed)


VAE_ONLY = ("beta", "iw_samples")  # the KL weight and the IWAE bound mean nothing without a posterior
KINDS: dict[str, ModelKind] = {
    k.name: k
    for k in (
        ModelKind(
            "vae",
            "VAE",
            partial(_fit_network, "vae"),
            by_epochs=True,
            has_prior=True,
            bound=True,
            searched=True,
            logs_model=False,
            params=None,
        ),
        ModelKind(
            "ae",
            "autoencoder",
            partial(_fit_network, "ae"),
            by_epochs=True,
            has_prior=False,
            bound=False,
            searched=False,
            logs_model=True,
            params=None,
            excluded=VAE_ONLY,
            description="the VAE's encoder and decoder without the KL term, trained on reconstruction BCE with the "
            "same data, epochs, optimizer and seed",
        ),
        ModelKind(
            "pca",
            "PCA",
            _fit_pca,
            by_epochs=False,
            has_prior=False,
            bound=False,
            searched=False,
            logs_model=False,
            params=("latent_dim", "seed"),  # no network: these and the data define it
            description="PCA with {latent_dim} components fitted on the training images, decoded linearly and clipped",
        ),
    )
}
SEARCHED = next(k.name for k in KINDS.values() if k.searched)  # "vae": the kind of the study's trials


def get(kind: str, what: str = "kind") -> ModelKind:
    """The registry's entry for `kind`; ValueError naming the kinds (as `what`) for anything else."""
    if kind not in KINDS:
        raise ValueError(f"{what} must be one of {sorted(KINDS)}, got {kind!r}")
    return KINDS[kind]


def fit_model(
    kind: str,
    model_config: ModelConfig,
    train_config: TrainConfig,
    data: Datasets,
    device: torch.device | str = "cpu",
    progress: bool = False,
    on_epoch_end: EpochCallback | None = None,
    on_model: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """A model of `kind` at `model_config.latent_dim`, fitted with `train_config` (its seed too), in eval mode
    on `device`.

    "vae", "ae": vae.model's network built after seed_everything(seed) and trained by vae.train.fit
    (the autoencoder on reconstruction BCE alone, with the VAE's data, epochs, optimizer and seed);
    `on_epoch_end` receives each epoch's metrics. "pca": scikit-learn PCA with latent_dim components
    fitted on the training images (no epochs; the seed picks the binarization). `on_model(model)` is
    called once the model exists (a network's before training), e.g. to draw it at each epoch.
    """
    return get(kind, "model or baseline").fitter(
        model_config, train_config, data, device, progress, on_epoch_end, on_model or (lambda m: None)
    )


def image_sampler(kind: str, model: nn.Module, train_x: torch.Tensor | None) -> Sampler:
    """How a model of `kind` generates (ModelKind.sampler)."""
    return get(kind).sampler(model, train_x)


def sampler_generator(kind: str, model: nn.Module, seed: int) -> torch.Generator:
    """A generator seeded with `seed` on the device the sampler of `kind` draws on."""
    return get(kind).generator(model, seed)


def generate_images(kind: str, model: nn.Module, train_x: torch.Tensor | None, n: int, seed: int) -> torch.Tensor:
    """n images generated by the model of `kind` with draws seeded by `seed`: Bernoulli means (n, 784) on the CPU."""
    return image_sampler(kind, model, train_x).sample(n, sampler_generator(kind, model, seed))
