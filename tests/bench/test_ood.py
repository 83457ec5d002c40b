"""bench.ood: the AUROC against a hand count, per-image scores against their averaged forms, the OOD
images prepared like the test set, and a trained VAE telling Fashion-MNIST from MNIST. About 5 s."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.errors import BenchError
from bench.ood import auroc, check_ood_data, load_ood_images, novelty_scores, ood_auroc, recon_bce_per_image
from bench.scores import reconstruction_errors
from bench.spec import load_spec
from vae.evaluate import iwae_nll, iwae_nll_per_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_auroc_by_hand():
    # negatives (in-distribution) 1, 2, 3; positives (OOD) 2, 4: pairs (pos > neg) count 1, ties 1/2
    # 2 vs {1, 2, 3}: 1 + 0.5 + 0 = 1.5;  4 vs all: 3  ->  4.5 / 6 = 0.75
    assert auroc([1, 2, 3], [2, 4]) == pytest.approx(0.75)
    assert auroc([1, 2], [3, 4]) == 1.0 and auroc([3, 4], [1, 2]) == 0.0  # OOD preferred: the known failure reads < 0.5


def test_per_image_iwae_averages_to_iwae_nll(trained_vae, small_mnist):
    x = small_mnist.test.x[:60]
    per = iwae_nll_per_image(trained_vae, x, k=20, batch_size=25, chunk=7, seed=3)
    assert per.shape == (60,) and (per > 0).all()
    assert per.double().mean().item() == pytest.approx(
        iwae_nll(trained_vae, x, k=20, batch_size=25, chunk=7, seed=3), rel=1e-6
    )


def test_reconstruction_score_per_image_averages_to_code_recon_bce(trained_vae, small_mnist):
    x = small_mnist.test.x[:100]
    per = recon_bce_per_image(trained_vae, x, batch_size=30)
    bce, _ = reconstruction_errors(trained_vae, x, x)
    assert per.shape == (100,) and per.double().mean().item() == pytest.approx(bce, rel=1e-5)
    assert torch.equal(novelty_scores(trained_vae, "ae", x, iw_samples=5), recon_bce_per_image(trained_vae, x))


def test_ood_images_are_the_other_datasets_test_set_binarized_alike(data_root):
    spec = load_spec("smoke")
    x = load_ood_images(spec, data_root)
    assert x.shape == (spec.data.test_limit, 784)
    assert set(x.unique().tolist()) == {0.0, 1.0}  # dynamic binarization: one fixed draw, like the MNIST test set
    assert torch.equal(x, load_ood_images(spec, data_root))
    assert (
        load_ood_images(dataclasses.replace(spec, eval=dataclasses.replace(spec.eval, ood_dataset=None)), data_root)
        is None
    )


def test_missing_ood_folder_is_one_bench_error(tmp_path):
    (tmp_path / "MNIST").mkdir()
    with pytest.raises(BenchError, match=r"\[eval\] ood_dataset = 'fashion-mnist': fashion-mnist not found in"):
        check_ood_data(load_spec("smoke"), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MNIST"]  # nothing downloaded or made


def test_a_trained_vae_finds_fashion_mnist_less_likely_than_mnist(trained_vae, small_mnist, data_root):
    ood_x = load_ood_images(load_spec("smoke"), data_root)
    vae = ood_auroc(trained_vae, "vae", small_mnist.test.x, ood_x, iw_samples=5, n=200)
    ae_like = ood_auroc(trained_vae, "ae", small_mnist.test.x, ood_x, iw_samples=5, n=200)
    assert vae > 0.8 and ae_like > 0.8  # MNIST-trained: Fashion items cost many more nats (measured ~0.98)
    swapped = ood_auroc(trained_vae, "vae", ood_x, small_mnist.test.x, iw_samples=5, n=200)
    assert swapped == pytest.approx(1 - vae, abs=0.02)  # the same pairs, roles exchanged (up to the draws of z)
