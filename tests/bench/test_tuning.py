"""bench.tuning: the expected best of n trials against hand values, the under-tuned flag, the check over latent size.

Pure functions on small tables: no training, no MLflow.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from bench.tuning import (
    best_per_search,
    curve,
    expected_best_table,
    expected_max,
    latent_sanity,
    rankings,
    search_seed_spread,
    trial_scores,
)


def test_expected_max_of_n_draws_without_replacement_by_hand():
    v = [3.0, 1.0, 2.0]
    assert expected_max(v, 1) == pytest.approx(2.0)  # the mean
    assert expected_max(v, 2) == pytest.approx((2 + 3 + 3) / 3)  # pairs {1,2} {1,3} {2,3}
    assert expected_max(v, 3) == pytest.approx(3.0)  # all of them: the maximum
    with pytest.raises(ValueError):
        expected_max(v, 4)


def test_expected_max_equals_the_average_over_every_subset():
    rng = np.random.default_rng(3)
    v = rng.normal(size=7)
    for n in range(1, 8):
        subsets = [max(c) for c in itertools.combinations(v, n)]
        assert expected_max(v, n) == pytest.approx(np.mean(subsets), abs=1e-12)
    c = curve(v)
    assert np.all(np.diff(c) >= -1e-12)  # more trials never lower the expected best


def scores(**per_latent: list[float]) -> pd.DataFrame:
    rows = [{"latent_dim": int(k[1:]), "value": x, "pruned": False} for k, vs in per_latent.items() for x in vs]
    return pd.DataFrame(rows)


def test_a_size_whose_best_keeps_rising_is_flagged_and_a_flat_one_is_not():
    # l2: every trial within 0.1 nats: the budget is enough. l4: the last trials keep finding much better ones
    tuning, points = expected_best_table(
        scores(
            l2=[-100.0, -100.1, -99.95, -100.05, -100.02, -99.98], l4=[-140.0, -139.0, -141.0, -120.0, -110.0, -100.0]
        ),
        resamples=300,
    )
    t = tuning.set_index("latent_dim")
    assert list(t["trials"]) == [6, 6]
    assert not t.loc[2, "under_tuned"] and t.loc[4, "under_tuned"]  # gains 0.02 and 7.95 nats against 0.5
    assert 0 < t.loc[2, "band_hw"] < 0.1 < t.loc[4, "band_hw"]
    # a seed noise larger than the gain: the rise is within what another training seed would give
    noisy, _ = expected_best_table(
        scores(l4=[-140.0, -139.0, -141.0, -120.0, -110.0, -100.0]), resamples=50, noise={4: 9.0}
    )
    assert not noisy["under_tuned"].iloc[0]
    assert t.loc[4, "gain_last_doubling"] == pytest.approx(
        expected_max([-140.0, -139.0, -141.0, -120.0, -110.0, -100.0], 6)
        - expected_max([-140.0, -139.0, -141.0, -120.0, -110.0, -100.0], 3)
    )
    assert t.loc[2, "best"] == pytest.approx(-99.95)
    assert list(points.loc[points["latent_dim"] == 4, "n"]) == [1, 2, 3, 4, 5, 6]
    band = points[points["latent_dim"] == 4]
    assert (band["band_low"] <= band["expected_best"] + 1e-9).all() and (
        band["expected_best"] <= band["band_high"] + 1e-9
    ).all()


def test_trial_scores_keep_finished_and_pruned_trials_with_their_last_value():
    runs = pd.DataFrame(
        {
            "tags.vaebench.role": ["trial", "trial", "trial", "ae", "trial"],
            "tags.latent_dim": ["2", "2", "4", "2", "4"],
            "status": ["FINISHED", "KILLED", "FINISHED", "FINISHED", "FAILED"],
            "metrics.val/elbo": [-100.0, -130.0, -90.0, -80.0, -50.0],
        }
    )
    s = trial_scores(runs)
    assert s.to_dict("list") == {
        "latent_dim": [2, 2, 4],
        "value": [-100.0, -130.0, -90.0],
        "pruned": [False, True, False],
    }


def test_sizes_that_fit_worse_than_a_smaller_one_are_named_with_the_likely_cause():
    table = pd.DataFrame(
        {
            "latent_dim": [8, 16, 32, 64],
            "test/elbo": [-110.0, -105.0, -108.0, -104.0],
            "test/elbo.hw95": [0.5, 0.5, 0.5, 0.5],
            "test/nll_iw": [100.0, 96.0, 96.4, 95.0],
            "test/nll_iw.hw95": [0.3, 0.3, 0.3, 0.3],
            "test/active_units": [8, 16, 12, 20],
        }
    )
    tuning = pd.DataFrame({"latent_dim": [8, 16, 32, 64], "under_tuned": [False, False, True, False]})
    problems = latent_sanity(table, tuning)
    assert len(problems) == 1  # ELBO 16 -> 32 falls by 3 > 1; NLL rises by 0.4 < 0.6; 64 is better again
    assert problems[0].startswith("test/elbo at latent 32 is worse than at 16 by 3.00 nats (intervals 1.00)")
    assert "under-tuned" in problems[0]
    table.loc[2, "test/active_units"] = 10  # 10 of 32 active: collapse is named too
    assert "posterior collapse: 10 of 32 units active" in latent_sanity(table, tuning)[0]
    assert latent_sanity(table.assign(**{"test/elbo": [-110.0, -105.0, -104.0, -103.0]}), tuning) == []


def test_the_spread_across_search_seeds_and_whether_the_ranking_survives():
    trials = pd.DataFrame(
        {
            "tags.study": ["latent"] * 4 + ["latent-search1"] * 4,
            "tags.latent_dim": ["2", "2", "8", "8"] * 2,
            "status": ["FINISHED", "FINISHED", "FINISHED", "KILLED"] * 2,
            "metrics.val/elbo": [-150.0, -152.0, -110.0, -90.0, -149.0, -160.0, -112.0, -100.0],
        }
    )
    best = best_per_search(trials)
    assert best.to_dict("list") == {
        "study": ["latent", "latent", "latent-search1", "latent-search1"],
        "latent_dim": [2, 8, 2, 8],
        "value": [-150.0, -110.0, -149.0, -112.0],
    }
    spread = search_seed_spread(best).set_index("latent_dim")
    assert spread.loc[8, "range"] == pytest.approx(2.0) and spread.loc[2, "searches"] == 2
    assert spread.loc[8, "sd"] == pytest.approx(math.sqrt(2.0))
    assert rankings(best) == {"latent": [8, 2], "latent-search1": [8, 2]}
