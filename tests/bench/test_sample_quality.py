"""bench.sample_quality against hand-computed values on a few points in 2-D: the cubic kernel, the
unbiased MMD, KID's subsets and standard error, k-NN radii, precision and recall. In-process, < 1 s."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.sample_quality import (
    coverage,
    kid,
    knn_radii,
    mmd2_unbiased,
    polynomial_kernel,
    precision_recall,
    sample_quality,
)


def test_cubic_kernel_by_hand():
    # d = 2: k(x, y) = (x.y / 2 + 1)^3
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[2.0, 2.0]])
    # (1*2 + 0*2)/2 + 1 = 2 -> 8;  (0*2 + 2*2)/2 + 1 = 3 -> 27
    assert polynomial_kernel(a, b).ravel().tolist() == [8.0, 27.0]


def test_unbiased_mmd_by_hand():
    # x = {(0,0), (2,0)}, y = {(0,0), (0,2)}; k = (x.y/2 + 1)^3
    # k(x1,x2) = 1 -> xx term = (1 + 1) / 2 = 1;  k(y1,y2) = 1 -> yy term = 1
    # cross: k((0,0), .) = 1, 1; k((2,0),(0,0)) = 1; k((2,0),(0,2)) = 1 -> sum 4 -> 2 * 4 / 4 = 2
    x = np.array([[0.0, 0.0], [2.0, 0.0]])
    y = np.array([[0.0, 0.0], [0.0, 2.0]])
    assert mmd2_unbiased(x, y) == pytest.approx(0.0, abs=1e-12)
    # y moved along x's direction: k((2,0),(2,0)) = (2 + 1)^3 = 27 enters the cross and yy terms
    y2 = np.array([[0.0, 0.0], [2.0, 2.0]])
    # yy: k((0,0),(2,2)) = 1 -> 1; cross: k(x1,.) = 1, 1; k((2,0),(0,0)) = 1; k((2,0),(2,2)) = (4/2 + 1)^3 = 27 -> 30
    assert mmd2_unbiased(x, y2) == pytest.approx(1.0 + 1.0 - 2 * 30 / 4, abs=1e-12)  # -13: the estimate can be negative


def test_unbiased_mmd_leaves_out_the_diagonal():
    # identical single-point repeats: the biased estimate would be 0 anyway; a set against a far one is positive
    x = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    y = np.array([[4.0, 0.0], [4.0, 0.0], [4.0, 0.0]])
    # xx: 1, yy: (16/2 + 1)^3 = 729, xy: (0 + 1)^3 = 1 -> 1 + 729 - 2 = 728
    assert mmd2_unbiased(x, y) == pytest.approx(728.0)
    with pytest.raises(ValueError, match="at least 2 points"):
        mmd2_unbiased(x[:1], y)


def test_kid_is_the_mean_of_disjoint_subsets_with_their_standard_error():
    rng = np.random.default_rng(0)
    g, r = rng.normal(size=(40, 3)), rng.normal(loc=0.5, size=(60, 3))
    mean, se = kid(g, r, subsets=4, seed=7)
    perm = np.random.default_rng(7)
    gi, ri = perm.permutation(40), perm.permutation(60)
    est = [mmd2_unbiased(g[gi[s * 10 : (s + 1) * 10]], r[ri[s * 15 : (s + 1) * 15]]) for s in range(4)]
    assert mean == pytest.approx(np.mean(est), rel=1e-12)
    assert se == pytest.approx(np.std(est, ddof=1) / 2, rel=1e-12)
    one, nan = kid(g, r, subsets=1)
    assert one == pytest.approx(mmd2_unbiased(g, r)) and math.isnan(nan)
    with pytest.raises(ValueError, match="at least 8 points"):
        kid(g[:7], r, subsets=4)


def test_kid_separates_a_shifted_set_from_a_copy_beyond_its_error():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(2000, 8))
    same, se_same = kid(rng.normal(size=(2000, 8)), real)
    shifted, se_shift = kid(rng.normal(loc=0.3, size=(2000, 8)), real)
    assert abs(same) < 3 * se_same  # unbiased: zero within its error for the same distribution
    assert shifted > same + 3 * (se_same + se_shift)


def test_knn_radii_by_hand():
    # four points on a line at 0, 1, 3, 7: distances to the others
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [7.0, 0.0]], dtype=torch.float64)
    # k = 1: 1, 1, 2, 4;  k = 3: 7, 6, 4, 7
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(x, 3).tolist() == [7.0, 6.0, 4.0, 7.0]
    with pytest.raises(ValueError, match="more than 3 points"):
        knn_radii(x[:3], 3)


def test_coverage_counts_closed_balls():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0]], dtype=torch.float64)
    radii = torch.tensor([1.0, 2.0], dtype=torch.float64)
    pts = torch.tensor([[1.0, 0.0], [0.0, 1.1], [12.0, 0.0], [5.0, 5.0]], dtype=torch.float64)
    # on the first ball's boundary: in; just outside: out; on the second's boundary: in; far: out
    assert coverage(pts, centres, radii) == 0.5


def test_precision_and_recall_by_hand():
    # real: a tight cluster of 4 points; generated: 2 of them inside it, 2 far away in a tight cluster of their own
    real = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    gen = np.array([[0.5, 0.5], [0.2, 0.9], [50.0, 50.0], [50.0, 51.0]])
    # real radii with k = 3: each corner's 3rd neighbour is the opposite corner, sqrt(2):
    # the two inner generated points are inside, the far ones are not -> precision 2/4
    # generated radii (k = 3): (0.5,.5): dists 0.5, 70.0, 70.7 -> 70.7; (0.2,.9): 0.5, 69.6, 70.3 -> 70.3;
    # (50,50): 1, 69.6, 70.0 -> 70.0; (50,51): 1, 70.3, 70.7 -> 70.7: balls that big hold every real point -> recall 1
    p, r = precision_recall(gen, real, k=3)
    assert p == 0.5 and r == 1.0
    # with k = 1 the generated radii are 0.5, 0.5, 1, 1; no real corner is within 0.5 of (0.5,.5) (all at 0.707),
    # of (0.2,.9) only (0,1) at 0.224 ((1,1) is at 0.806) -> recall 1/4; real radii 1 keep precision at 2/4
    assert precision_recall(gen, real, k=1) == (0.5, 0.25)


def test_sample_quality_returns_the_declared_keys():
    rng = np.random.default_rng(2)
    out = sample_quality(rng.normal(size=(100, 4)), rng.normal(size=(150, 4)))
    assert tuple(out) == ("test/sample_kid", "test/sample_kid_se", "test/sample_precision", "test/sample_recall")
    assert 0 < out["test/sample_precision"] <= 1 and 0 < out["test/sample_recall"] <= 1
    assert out["test/sample_kid_se"] > 0
