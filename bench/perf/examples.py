"""A copy of pytorch/examples vae/main.py's model, loss and training loop: the reference `bench.perf` times fit against.

Kept step for step as upstream (a torchvision DataLoader, default Adam, subnormals not flushed).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vae.denormal import denormal_mode


class ExamplesVAE(nn.Module):
    """The model of pytorch/examples vae/main.py: fc1 784-400, fc21 and fc22 400-20, fc3 20-400, fc4 400-784."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli means (probabilities, not logits), (B, 784)."""
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x.view(-1, 784))
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def examples_loss(recon_x: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """pytorch/examples' loss_function: BCE on probabilities plus KL, both summed over the batch (nats)."""
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def denormals_kept() -> AbstractContextManager[None]:
    """Subnormal floats computed as such inside the block, whatever the caller had set."""
    return denormal_mode(False)


class ExamplesTrainer:
    """pytorch/examples' training loop: a torchvision DataLoader over MNIST with ToTensor, default Adam."""

    def __init__(self, root: Path, batch_size: int = 128, lr: float = 1e-3) -> None:
        from torchvision import datasets, transforms  # torchvision loads slowly; only when the reference runs

        dataset = datasets.MNIST(str(root), train=True, download=False, transform=transforms.ToTensor())
        test_set = datasets.MNIST(str(root), train=False, download=False, transform=transforms.ToTensor())
        # on a CPU pytorch/examples passes no worker or pinning arguments: batches load in the main process
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
        self.test_loader = torch.utils.data.DataLoader(test_set, batch_size=batch_size, shuffle=False)
        self.model = ExamplesVAE()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    def train_epoch(self) -> float:
        """One pass over the training set, step for step as in main.py's train(); mean loss per image.

        The only thing left out is main.py's progress print every 10 batches.
        """
        self.model.train()
        train_loss = 0.0
        for data, _ in self.loader:
            self.optimizer.zero_grad()
            recon_batch, mu, logvar = self.model(data)
            loss = examples_loss(recon_batch, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            self.optimizer.step()
        return train_loss / len(self.loader.dataset)

    @torch.no_grad()
    def test_loss(self) -> float:
        """main.py's test(): the same loss (z sampled) summed over the test set, per image."""
        self.model.eval()
        total = 0.0
        for data, _ in self.test_loader:
            recon_batch, mu, logvar = self.model(data)
            total += examples_loss(recon_batch, data, mu, logvar).item()
        return total / len(self.test_loader.dataset)
