"""MNIST and Fashion-MNIST as in-memory tensors: seeded splits, binarization, corruption.

`load_data(DataConfig(...), root)` reads through torchvision once and returns
`Datasets(train, val, test)`; training draws batches by index, never through a DataLoader.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch
from annotated_types import Interval

from vae.checks import check_fields

DATA_ENV = "VAE_DATA_DIR"
DEFAULT_ROOT = Path("data")
EVAL_BINARIZE_SEED = 1234  # evaluation sets are binarized once, with this seed, everywhere
DOWNLOAD_TIMEOUT_S = 20


def _torchvision_dataset(name: str):
    import torchvision.datasets as tvd

    return {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST}[name]


DATASET_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


class DataError(Exception):
    """Data that cannot be found or read; the message says what to do."""


@dataclass(frozen=True)
class DataConfig:
    """Which images, how many, and how targets are binarized."""

    dataset: Literal["mnist", "fashion-mnist"] = "mnist"  # a key of DATASET_FOLDERS
    binarize: Literal["none", "dynamic"] = "dynamic"  # "none": grayscale targets in [0, 1]
    val_size: Annotated[int, Interval(ge=0, le=59_999)] = (
        5000  # images held out of the 60,000 training images; 0 allowed
    )
    limit: Annotated[int, Interval(ge=1)] | None = (
        None  # at most this many training images (after the split); None = all
    )
    test_limit: Annotated[int, Interval(ge=1)] | None = None  # at most this many test images; None = all 10,000
    split_seed: Annotated[int, Interval(ge=0, le=2**32 - 1)] = 0  # seed of the train/validation permutation

    def __post_init__(self) -> None:
        if self.dataset not in DATASET_FOLDERS:  # named from the registry of loaders, as check_data names it
            raise ValueError(f"dataset must be one of {sorted(DATASET_FOLDERS)}, got {self.dataset!r}")
        check_fields(self)


@dataclass
class Split:
    """Images (N, 784) float in [0, 1] and labels (N,) int64, on one device.

    `dynamic` marks a training split whose batches are resampled as
    Bernoulli(pixel) each time they are drawn; evaluation splits are already binary.
    """

    x: torch.Tensor
    y: torch.Tensor
    dynamic: bool = False

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device), self.dynamic)

    def shuffled_order(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """The order of one shuffled epoch, (n,) indices on the CPU: every training path (batches(), the fused
        step's epoch in vae.train) takes it from here, so they see the same order."""
        return torch.randperm(len(self), generator=generator, device="cpu")

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        binarize_generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield (B, 784) batches by index; the last one may be smaller.

        `generator` (a CPU generator) draws the shuffling order; `binarize_generator`
        (on the data's device; None: torch's global one) draws the dynamic binarization.
        """
        n = len(self)
        order = self.shuffled_order(generator).to(self.x.device) if shuffle else None
        for start in range(0, n, batch_size):
            # index_select copies whole rows; x[idx] goes through the general indexing kernel, slower
            xb = (
                self.x.index_select(0, order[start : start + batch_size])
                if order is not None
                else self.x[start : start + batch_size]
            )
            if self.dynamic:
                xb = torch.bernoulli(xb, generator=binarize_generator)
            yield xb


@dataclass
class Datasets:
    """The three splits and where they came from."""

    train: Split
    val: Split
    test: Split
    config: DataConfig
    digest: str = field(default="")  # sha256 prefix of the raw image bytes (train + test)

    def to(self, device: torch.device | str) -> Datasets:
        return Datasets(self.train.to(device), self.val.to(device), self.test.to(device), self.config, self.digest)


def resolve_root(root: str | os.PathLike | None) -> tuple[Path, bool]:
    """The data folder: the argument, else $VAE_DATA_DIR, else ./data; and whether it was chosen explicitly."""
    if root is not None:
        return Path(root), True
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env), True
    return DEFAULT_ROOT, False


RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX_UBYTE = 0x08  # the IDX header's type code of unsigned bytes, the only one these files use


def _raw_files_present(root: Path, dataset: str) -> bool:
    # the uncompressed files: torchvision with download=False reads only these, never the .gz
    raw = root / DATASET_FOLDERS[dataset] / "raw"
    return all((raw / n).exists() for n in RAW_FILES)


def check_idx_file(path: Path) -> None:
    """Raise DataError unless `path` is a whole IDX file of bytes: its size is what its header's dims say.

    Reads 16 bytes (magic 0x0000080N, then N big-endian uint32 dims), so a truncated or foreign
    file is caught before torchvision reads it all (and fails with a traceback).
    """
    with open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[:2] != b"\0\0" or head[2] != IDX_UBYTE or not 1 <= head[3] <= 4:
            raise DataError(f"{path} is not an IDX file of bytes (its header is {head.hex() or 'empty'})")
        dims_raw = f.read(4 * head[3])
    if len(dims_raw) < 4 * head[3]:
        raise DataError(f"{path} is truncated: it ends inside its header; replace it with a whole copy")
    dims = [int.from_bytes(dims_raw[i : i + 4], "big") for i in range(0, len(dims_raw), 4)]
    expected = 4 + 4 * len(dims) + math.prod(dims)
    size = path.stat().st_size
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        raise DataError(
            f"{path} is {what}: {size} bytes, its header ({' x '.join(map(str, dims))}) says {expected}; "
            "replace it with a whole copy"
        )


def check_data(dataset: str, root: str | os.PathLike | None = None, download: bool | None = None) -> Path:
    """Make sure `dataset` is whole under the data folder (each file's size against its header), downloading it
    if allowed.

    By default a download is tried only into the implicit ./data folder; a folder
    named by argument or $VAE_DATA_DIR must already hold the files. Raises DataError.
    """
    if dataset not in DATASET_FOLDERS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(sorted(DATASET_FOLDERS))}")
    path, explicit = resolve_root(root)
    if _raw_files_present(path, dataset):
        for name in RAW_FILES:
            check_idx_file(path / DATASET_FOLDERS[dataset] / "raw" / name)
        return path
    if download is None:
        download = not explicit
    where = path / DATASET_FOLDERS[dataset] / "raw"
    hint = (
        f"put the {DATASET_FOLDERS[dataset]}/raw/*-ubyte files under a folder and pass it with --data-dir or {DATA_ENV}"
    )
    if not download:
        raise DataError(f"{dataset} not found in {where}; {hint}")
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    made = [p for p in (path, path / DATASET_FOLDERS[dataset]) if not p.exists()]
    try:
        for train in (True, False):
            _torchvision_dataset(dataset)(str(path), train=train, download=True)
    except Exception as exc:  # any network or file failure ends in the same advice
        for p in made:  # leave nothing behind from a failed download
            shutil.rmtree(p, ignore_errors=True)
        raise DataError(
            f"{dataset} not found in {where} and the download failed ({type(exc).__name__}); {hint}"
        ) from None
    finally:
        socket.setdefaulttimeout(old)
    return path


def _read(dataset: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        ds = _torchvision_dataset(dataset)(str(root), train=train, download=False)
    except Exception as exc:
        raise DataError(f"cannot read {dataset} from {root}: {exc}") from None
    return ds.data.reshape(len(ds.data), -1), ds.targets.long()


def binarize_once(x: torch.Tensor, seed: int = EVAL_BINARIZE_SEED) -> torch.Tensor:
    """A fixed Bernoulli(pixel) sample of x, the same for every run with the same seed."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.bernoulli(x.cpu(), generator=g).to(x.device)


def load_data(config: DataConfig, root: str | os.PathLike | None = None, download: bool | None = None) -> Datasets:
    """Read the dataset into float tensors on the CPU and split it as `config` says."""
    path = check_data(config.dataset, root, download)
    xtr_u8, ytr = _read(config.dataset, path, True)
    xte_u8, yte = _read(config.dataset, path, False)
    digest = hashlib.sha256(xtr_u8.numpy().tobytes() + xte_u8.numpy().tobytes()).hexdigest()[:16]
    xtr, xte = xtr_u8.float().div_(255.0), xte_u8.float().div_(255.0)

    perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(config.split_seed))
    val_idx, train_idx = perm[: config.val_size], perm[config.val_size :]
    if config.limit is not None:
        train_idx = train_idx[: config.limit]
    if config.test_limit is not None:
        xte, yte = xte[: config.test_limit], yte[: config.test_limit]

    dynamic = config.binarize == "dynamic"
    xval = xtr[val_idx]
    if dynamic:
        xval, xte = binarize_once(xval, EVAL_BINARIZE_SEED), binarize_once(xte, EVAL_BINARIZE_SEED + 1)
    return Datasets(
        train=Split(xtr[train_idx], ytr[train_idx], dynamic=dynamic),
        val=Split(xval, ytr[val_idx]),
        test=Split(xte, yte),
        config=config,
        digest=digest,
    )


@dataclass(frozen=True)
class Corruption:
    """How test images are corrupted for the denoising score.

    Additive Gaussian noise of std `noise_std`, clipped to [0, 1], then each pixel
    set to 0 with probability `mask_prob`; drawn from a generator seeded with `seed`.
    """

    noise_std: float = 0.3
    mask_prob: float = 0.25
    seed: int = 4321


def corrupt(x: torch.Tensor, c: Corruption = Corruption()) -> torch.Tensor:
    """The corrupted copy of x (N, 784); the same for every call with the same Corruption."""
    g = torch.Generator(device="cpu").manual_seed(c.seed)
    noise = torch.randn(x.shape, generator=g) * c.noise_std
    keep = (torch.rand(x.shape, generator=g) >= c.mask_prob).float()
    return ((x.cpu() + noise).clamp_(0.0, 1.0) * keep).to(x.device)
