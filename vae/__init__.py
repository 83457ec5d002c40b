"""vae: Variational Autoencoders on MNIST-like data, as a plain PyTorch library.

Data, model, loss, training and evaluation; knows nothing of Optuna or MLflow.
"""

from vae.data import DataConfig, DataError, Datasets, Split, load_data
from vae.loss import ELBOTerms, bernoulli_nll, elbo_terms, gaussian_kl, iwae_bound
from vae.model import MODELS, VAE, Autoencoder, ModelConfig, build_model
from vae.train import NonFiniteLossError, TrainConfig, fit, resolve_device, seed_everything

__all__ = [
    "MODELS",
    "Autoencoder",
    "DataConfig",
    "DataError",
    "Datasets",
    "ELBOTerms",
    "ModelConfig",
    "NonFiniteLossError",
    "Split",
    "TrainConfig",
    "VAE",
    "bernoulli_nll",
    "build_model",
    "elbo_terms",
    "fit",
    "gaussian_kl",
    "iwae_bound",
    "load_data",
    "resolve_device",
    "seed_everything",
]
