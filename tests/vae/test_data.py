"""Tests of vae.data on the real MNIST files under $VAE_DATA_DIR: splits, binarization, corruption, errors.

Each load reads the 70,000 images (~0.3 s); configs use small limits so tensors stay small.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from vae.data import (
    DATA_ENV,
    Corruption,
    DataConfig,
    DataError,
    Datasets,
    Split,
    binarize_once,
    check_data,
    corrupt,
    load_data,
)

MNIST_TRAIN, MNIST_TEST = 60_000, 10_000


def load(root: Path, **kw) -> Datasets:
    return load_data(DataConfig(**kw), root, download=False)


def is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


# ---------------------------------------------------------------- sizes and values


def test_split_sizes_values_and_shapes(small_mnist):
    d = small_mnist
    assert (len(d.train), len(d.val), len(d.test)) == (500, 500, 500)
    for s in (d.train, d.val, d.test):
        assert s.x.shape == (len(s), 784) and s.x.dtype == torch.float32
        assert s.y.shape == (len(s),) and s.y.dtype == torch.int64
        assert s.x.min() >= 0 and s.x.max() <= 1
        assert set(s.y.unique().tolist()) == set(range(10))
    # training images stay grayscale (resampled per batch); evaluation images are binary
    assert d.train.dynamic and not d.val.dynamic and not d.test.dynamic
    assert not is_binary(d.train.x)
    assert is_binary(d.val.x) and is_binary(d.test.x)
    # MNIST: about 13% of pixels are on
    assert 0.08 < d.test.x.mean().item() < 0.2


def test_sizes_without_limits_and_with_val_size_zero(data_root):
    full = load(data_root, val_size=5000, binarize="none")
    assert (len(full.train), len(full.val), len(full.test)) == (MNIST_TRAIN - 5000, 5000, MNIST_TEST)
    # train and val partition the 60,000 training images: the label counts add up to the whole set's
    none = load(data_root, val_size=0, binarize="none")
    assert (len(none.train), len(none.val), len(none.test)) == (MNIST_TRAIN, 0, MNIST_TEST)
    assert none.val.x.shape == (0, 784)
    counts = torch.bincount(full.train.y, minlength=10) + torch.bincount(full.val.y, minlength=10)
    assert torch.equal(counts, torch.bincount(none.train.y, minlength=10))
    # grayscale everywhere with binarize="none"
    assert not none.train.dynamic and not is_binary(none.test.x)
    assert torch.equal(none.test.x.sum(1) > 0, torch.ones(MNIST_TEST, dtype=torch.bool))


def test_limit_and_test_limit_take_prefixes(data_root):
    a = load(data_root, val_size=100, limit=50, test_limit=30, binarize="none")
    b = load(data_root, val_size=100, limit=80, test_limit=60, binarize="none")
    assert (len(a.train), len(a.val), len(a.test)) == (50, 100, 30)
    assert torch.equal(a.train.x, b.train.x[:50]) and torch.equal(a.train.y, b.train.y[:50])
    assert torch.equal(a.test.x, b.test.x[:30])
    assert torch.equal(a.val.x, b.val.x)  # the validation split does not depend on limit


def test_binarized_test_set_does_not_depend_on_test_limit(data_root):
    # a small test_limit scores the first images of the same fixed binarization as the full test set
    a = load(data_root, val_size=100, limit=10, test_limit=100)
    b = load(data_root, val_size=1000, limit=10, test_limit=1000)
    assert torch.equal(a.test.x, b.test.x[:100])
    assert torch.equal(a.val.x, b.val.x[:100])


# ---------------------------------------------------------------- seeded split


def test_split_is_seeded(data_root):
    kw = dict(val_size=300, limit=300, test_limit=10, binarize="none")
    a = load(data_root, split_seed=0, **kw)
    b = load(data_root, split_seed=0, **kw)
    c = load(data_root, split_seed=1, **kw)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.x, b.val.x)
    assert torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.train.x, c.train.x) and not torch.equal(a.val.x, c.val.x)
    # the test set is not split: the same whatever the seed
    assert torch.equal(a.test.x, c.test.x)
    # it is a permutation, not the file order (MNIST's first training labels are 5 0 4 1 9 2 1 3 1 4)
    file_order = torch.tensor([5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    assert not torch.equal(a.val.y[:10], file_order) and not torch.equal(a.train.y[:10], file_order)
    # with val_size 0 the training split is the same permutation, so it starts with seed 0's validation images
    no_val = load(data_root, val_size=0, limit=300, test_limit=10, binarize="none")
    assert torch.equal(no_val.train.x, a.val.x)


def test_digest_identifies_the_dataset(data_root, small_mnist):
    again = load(data_root, val_size=10, limit=10, test_limit=10)
    fashion = load(data_root, dataset="fashion-mnist", val_size=10, limit=10, test_limit=10)
    assert len(small_mnist.digest) == 16
    assert again.digest == small_mnist.digest  # independent of the split settings
    assert fashion.digest != small_mnist.digest
    assert fashion.train.x.shape == (10, 784) and not torch.equal(fashion.test.x, again.test.x)


# ---------------------------------------------------------------- dynamic binarization


def test_evaluation_sets_are_identical_across_loads(data_root, small_mnist):
    again = load_data(small_mnist.config, data_root, download=False)
    assert torch.equal(again.val.x, small_mnist.val.x)
    assert torch.equal(again.test.x, small_mnist.test.x)
    # binarized from the grayscale images: on pixels are never where the grayscale is 0
    grey = load(data_root, val_size=500, limit=500, test_limit=500, binarize="none")
    assert torch.equal(grey.test.x, load(data_root, val_size=500, limit=500, test_limit=500, binarize="none").test.x)
    assert (small_mnist.test.x[grey.test.x == 0] == 0).all()
    assert (small_mnist.test.x[grey.test.x == 1] == 1).all()
    assert not torch.equal(small_mnist.test.x, (grey.test.x > 0.5).float())  # sampled, not thresholded


def test_binarize_once_is_a_fixed_bernoulli_sample(cpu_generator):
    p = torch.rand(2000, 784, generator=cpu_generator)
    a, b, c = binarize_once(p), binarize_once(p), binarize_once(p, seed=99)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert is_binary(a)
    # E[x] = p: mean over 1.5M pixels within 0.002
    assert abs(a.mean().item() - p.mean().item()) < 2e-3


def test_dynamic_training_batches_are_resampled_each_pass(small_mnist):
    train = small_mnist.train
    torch.manual_seed(0)
    first = torch.cat(list(train.batches(128)))
    second = torch.cat(list(train.batches(128)))
    assert first.shape == train.x.shape == second.shape
    assert is_binary(first) and is_binary(second)
    assert not torch.equal(first, second)
    # each is Bernoulli(grayscale): never on where the pixel is 0, always on where it is 1
    assert (first[train.x == 0] == 0).all() and (first[train.x == 1] == 1).all()
    assert abs(first.mean().item() - train.x.mean().item()) < 5e-3
    # the stored images are not modified
    assert not is_binary(train.x)


def test_batches_order_and_shuffle(cpu_generator):
    x = torch.arange(10, dtype=torch.float32).repeat(784, 1).T  # row i is all i
    s = Split(x, torch.arange(10))
    plain = list(s.batches(4))
    assert [b.shape[0] for b in plain] == [4, 4, 2]
    assert torch.equal(torch.cat(plain)[:, 0], torch.arange(10.0))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    s1 = torch.cat(list(s.batches(3, shuffle=True, generator=g1)))[:, 0]
    s2 = torch.cat(list(s.batches(3, shuffle=True, generator=g2)))[:, 0]
    assert torch.equal(s1, s2)
    assert sorted(s1.tolist()) == list(range(10)) and not torch.equal(s1, torch.arange(10.0))


# ---------------------------------------------------------------- corruption


def test_corrupt_is_deterministic_and_in_range(small_mnist):
    x = small_mnist.test.x[:200]
    a, b = corrupt(x), corrupt(x)
    assert torch.equal(a, b)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, x)
    assert not torch.equal(a, corrupt(x, Corruption(seed=1)))
    assert torch.equal(x, small_mnist.test.x[:200])  # input untouched


def test_corrupt_masks_pixels_with_the_documented_probability(small_mnist):
    x = small_mnist.test.x[:200]
    masked_only = corrupt(x, Corruption(noise_std=0.0, mask_prob=0.4, seed=3))
    kept = masked_only == x
    # every pixel is either kept as it was or set to 0
    assert ((masked_only == 0) | kept).all()
    # 156,800 pixels: the fraction of on-pixels zeroed is 0.4 within 0.01
    on = x == 1
    zeroed = (masked_only[on] == 0).float().mean().item()
    assert abs(zeroed - 0.4) < 0.01


def test_corrupt_adds_clipped_gaussian_noise(small_mnist):
    x = small_mnist.test.x[:200]
    noisy = corrupt(x, Corruption(noise_std=0.3, mask_prob=0.0, seed=3))
    off = x == 0
    # on background pixels the result is max(0, N(0, 0.3^2)): half exactly 0, the rest with mean 0.3*sqrt(2/pi)/... > 0
    frac_zero = (noisy[off] == 0).float().mean().item()
    assert abs(frac_zero - 0.5) < 0.01
    positive = noisy[off][noisy[off] > 0].double()
    # E[N | N > 0] = std * sqrt(2 / pi) for a half-normal, ignoring the clip at 1 (3.3 std away)
    assert positive.mean().item() == pytest.approx(0.3 * (2 / torch.pi) ** 0.5, rel=0.02)
    # identity when both corruptions are off
    assert torch.equal(corrupt(x, Corruption(noise_std=0.0, mask_prob=0.0)), x)


# ---------------------------------------------------------------- errors


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


def test_missing_folder_names_the_folder_and_the_env_var(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_data(DataConfig(), root, download=False)
    msg = one_line(err)
    assert str(root / "MNIST" / "raw") in msg
    assert DATA_ENV in msg


def test_compressed_files_only_are_reported_as_missing(tmp_path):
    # torchvision reads only the uncompressed files when it may not download
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / f"{n}.gz").write_bytes(b"")
    with pytest.raises(DataError) as err:
        load_data(DataConfig(), tmp_path, download=False)
    msg = one_line(err)
    assert str(raw) in msg and DATA_ENV in msg


def test_truncated_files_give_a_one_line_error_naming_the_folder(tmp_path, data_root):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / n).write_bytes((data_root / "MNIST" / "raw" / n).read_bytes()[:100])
    with pytest.raises(DataError) as err:
        load_data(DataConfig(), tmp_path, download=False)
    assert str(tmp_path) in one_line(err)


def test_env_var_names_an_explicit_folder_that_is_never_downloaded_into(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    with pytest.raises(DataError) as err:
        check_data("fashion-mnist")  # download defaults to off for a named folder
    assert str(tmp_path / "FashionMNIST" / "raw") in one_line(err)
    assert not any(tmp_path.iterdir())  # nothing written


def test_env_var_is_used_when_no_root_is_given(data_root, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(data_root))
    assert check_data("mnist") == data_root


def test_unknown_dataset_name_is_one_line(tmp_path):
    with pytest.raises(DataError) as err:
        check_data("cifar10", tmp_path, download=False)
    msg = one_line(err)
    assert "'cifar10'" in msg and "fashion-mnist" in msg and "mnist" in msg
    with pytest.raises(ValueError, match="dataset must be one of") as err:
        DataConfig(dataset="cifar10")
    one_line(err)


@pytest.mark.parametrize(
    "field, value",
    [
        ("binarize", "static"),
        ("val_size", -1),
        ("val_size", 60_000),
        ("val_size", 10.0),
        ("val_size", True),
        ("split_seed", -1),
        ("split_seed", 2**32),
        ("limit", 0),
        ("limit", 2.5),
        ("test_limit", 0),
        ("test_limit", False),
    ],
)
def test_data_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DataConfig(**{field: value})


def test_data_config_is_frozen_and_accepts_edges():
    c = DataConfig(val_size=0, limit=1, test_limit=1, split_seed=0, binarize="none")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.limit = 5  # type: ignore[misc]
    assert DataConfig(val_size=59_999).val_size == 59_999
    # a seed is a seed, not an image count: the same range as TrainConfig.seed (was capped at 59,999)
    assert DataConfig(split_seed=2**32 - 1).split_seed == 2**32 - 1


def test_large_split_seed_loads(data_root):
    a = load(data_root, val_size=50, limit=10, test_limit=10, split_seed=123_456)
    b = load(data_root, val_size=50, limit=10, test_limit=10, split_seed=123_456)
    assert torch.equal(a.val.x, b.val.x)
