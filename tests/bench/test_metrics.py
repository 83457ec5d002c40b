"""The metric vocabulary: every key declared once, with a direction the spec and report agree on."""

from __future__ import annotations

import pytest

from bench import metrics
from bench.report import SHARED_METRICS
from bench.scores import SCORE_NAMES
from bench.spec import METRIC_DIRECTIONS


def test_every_key_is_split_slash_name_and_declared_once():
    keys = [m.key for m in metrics._DEFS]
    assert len(keys) == len(set(keys))
    for k in keys:
        split, _, name = k.partition("/")
        assert split in {"train", "val", "test", "trials"} and name, k


def test_directions_match_what_each_metric_measures():
    assert metrics.better("test/elbo") == "higher"
    assert metrics.better("test/nll_iw") == "lower"
    assert metrics.better("test/probe_acc") == "higher"
    assert metrics.metric("val/elbo").direction == "maximize"
    assert metrics.metric("val/kl").direction == "minimize"
    with pytest.raises(ValueError):
        _ = metrics.metric("test/active_units").direction


def test_the_comparison_reconstruction_has_its_own_key():
    # the deterministic reconstruction must never be logged under the ELBO term's name
    assert "test/recon_bce" not in SCORE_NAMES
    assert metrics.metric("test/code_recon_bce").models == metrics.ALL_MODELS
    assert metrics.metric("test/recon_bce").models == metrics.VAE_ONLY  # the AE's is test/code_recon_bce
    assert metrics.metric("val/recon_bce").models == metrics.NETWORKS


def test_readers_take_keys_and_directions_from_the_registry():
    assert SCORE_NAMES == metrics.COMPARED
    assert {k: metrics.better(k) for k in metrics.COMPARISON} == SHARED_METRICS
    assert (*metrics.COMPARED, metrics.OOD_AUROC) == metrics.COMPARISON  # OOD only where the study names a dataset
    assert METRIC_DIRECTIONS["val/elbo"] == "maximize" and METRIC_DIRECTIONS["train/recon_bce"] == "minimize"
    assert set(METRIC_DIRECTIONS) == {k for k in metrics.METRICS if k.split("/")[0] in ("train", "val")}


def test_unknown_key_names_the_known_ones():
    with pytest.raises(KeyError, match="test/elbo"):
        metrics.metric("test/nope")
