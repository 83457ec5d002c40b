"""bench.stats against values worked out by hand: the t-interval, Welch's test and Holm's adjustment."""

from __future__ import annotations

import math

import pytest

from bench.stats import holm, t_interval, welch_p

T975_DF2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom (tables: 4.303)


def test_t_interval_of_three_values():
    mean, hw, n = t_interval([1.0, 2.0, 3.0])  # s = 1
    assert (mean, n) == (2.0, 3)
    assert hw == pytest.approx(T975_DF2 / math.sqrt(3), rel=1e-9)  # 2.484


def test_t_interval_drops_nans_and_has_no_width_for_one_value():
    assert t_interval([5.0, float("nan")])[::2] == (5.0, 1)
    assert math.isnan(t_interval([5.0])[1])
    mean, hw, n = t_interval([])
    assert n == 0 and math.isnan(mean) and math.isnan(hw)
    assert t_interval([4.0, 4.0, 4.0]) == (4.0, 0.0, 3)


def test_welch_p_against_a_hand_computation():
    # a: mean 2, var 1; b: mean 6, var 4; n = 3 each
    # t = (2 - 6) / sqrt(1/3 + 4/3) = -3.0984, df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 50/17
    from scipy.stats import t as student

    t = -4 / math.sqrt(5 / 3)
    df = 50 / 17
    assert t == pytest.approx(-3.0984, abs=1e-4)
    expected = 2 * student.sf(abs(t), df)
    assert 0.05 < expected < 0.06  # not significant at 0.05 with three seeds each
    assert welch_p([1, 2, 3], [4, 6, 8]) == pytest.approx(expected, rel=1e-9)
    assert welch_p([4, 6, 8], [1, 2, 3]) == pytest.approx(expected, rel=1e-9)  # two-sided


def test_welch_p_edge_cases():
    assert math.isnan(welch_p([1.0], [2.0, 3.0]))
    assert welch_p([1.0, 1.0], [2.0, 2.0]) == 0.0  # no spread, different means
    assert welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0
    assert welch_p([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)


def test_holm_against_hand_values():
    # sorted: 0.005 * 4 = 0.02; 0.01 * 3 = 0.03; 0.03 * 2 = 0.06; 0.04 * 1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1, NaNs kept in place and not counted in m
    got = holm([0.5, float("nan"), 0.4])
    assert got[0] == pytest.approx(0.8) and math.isnan(got[1]) and got[2] == pytest.approx(0.8)
    assert holm([0.9, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []
