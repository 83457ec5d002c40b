"""Sample quality beyond the Frechet distance: KID and k-NN precision/recall of generated images.

All three work on feature sets (N, F), the FD classifier's features (bench.fd_classifier);
bench.scores calls `sample_quality(generated, real)` with the same features as test/sample_fd.
"""

from __future__ import annotations

import math

import numpy as np
import torch

KID_SUBSETS = 10  # disjoint subsets whose estimates give KID's mean and standard error
PR_K = 3  # the k of the k-NN radii (Kynkaanniemi et al. 2019)
DIST_CHUNK = 2048  # rows of a distance matrix computed at a time


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3 for rows of a (m, d) and b (n, d): (m, n), float64 (Binkowski et al. 2018)."""
    d = a.shape[1]
    return (a @ b.T / d + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased squared MMD between samples x (m, d) and y (n, d) under `polynomial_kernel`, m, n >= 2.

    MMD^2_u = sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (n(n-1)) - 2 sum_{i,j} k(x_i, y_j) / (mn);
    it can be negative when the two distributions are close.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 points in each set, got {m} and {n}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2.0 * kxy.sum() / (m * n)
    )


def kid(generated: np.ndarray, real: np.ndarray, subsets: int = KID_SUBSETS, seed: int = 0) -> tuple[float, float]:
    """KID and its standard error: `mmd2_unbiased` on `subsets` disjoint random subsets of each set.

    Each set is shuffled (seeded) and cut into `subsets` parts of equal size (a remainder is
    left out); the parts' estimates are independent and each is unbiased, so their mean is an
    unbiased KID and std(ddof=1) / sqrt(subsets) an honest standard error. (torchmetrics and
    the paper draw overlapping subsets of 1,000; with 500-5,000 samples here, disjoint ones
    keep the error bar valid.) subsets = 1 gives the estimate on all points and a NaN error.
    """
    g, r = np.asarray(generated, np.float64), np.asarray(real, np.float64)
    if subsets < 1 or min(len(g), len(r)) < 2 * subsets:
        raise ValueError(
            f"need at least {2 * subsets} points in each set for {subsets} subsets, got {len(g)} and {len(r)}"
        )
    rng = np.random.default_rng(seed)
    gi, ri = rng.permutation(len(g)), rng.permutation(len(r))
    mg, mr = len(g) // subsets, len(r) // subsets
    est = np.array([mmd2_unbiased(g[gi[s * mg : (s + 1) * mg]], r[ri[s * mr : (s + 1) * mr]]) for s in range(subsets)])
    if subsets == 1:
        return float(est[0]), math.nan
    return float(est.mean()), float(est.std(ddof=1) / math.sqrt(subsets))


def knn_radii(x: torch.Tensor, k: int = PR_K) -> torch.Tensor:
    """Distance from each point of x (N, F) to its k-th nearest other point: (N,), float64."""
    if len(x) <= k:
        raise ValueError(f"k-NN radii with k = {k} need more than {k} points, got {len(x)}")
    # the k+1 smallest distances in each row include the point itself (distance 0); chunks of rows keep
    # memory at DIST_CHUNK x N
    return torch.cat([torch.cdist(xc, x).topk(k + 1, dim=1, largest=False).values[:, k] for xc in x.split(DIST_CHUNK)])


def coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Fraction of `points` within radius of at least one centre: |p - c| <= r(c) (closed balls)."""
    inside = [(torch.cdist(pc, centres) <= radii).any(dim=1) for pc in points.split(DIST_CHUNK)]
    return torch.cat(inside).double().mean().item()


def precision_recall(generated: np.ndarray, real: np.ndarray, k: int = PR_K) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of generated features against real ones.

    The manifold of a set is the union of balls around its points, each of radius the
    distance to its k-th nearest neighbour in the same set. Precision: fraction of generated
    points in the real manifold (fidelity). Recall: fraction of real points in the generated
    manifold (diversity). Both sets should have the same size: the radii shrink as a set grows.
    """
    g = torch.as_tensor(np.asarray(generated), dtype=torch.float64)
    r = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    precision = coverage(g, r, knn_radii(r, k))
    recall = coverage(r, g, knn_radii(g, k))
    return precision, recall


def sample_quality(generated, real, seed: int = 0) -> dict[str, float]:
    """KID (with its standard error), precision and recall of generated vs real features (N, F).

    Precision and recall use the first min(N_generated, N_real) points of each set, so that
    both manifolds are estimated from as many points.
    """
    g, r = np.asarray(generated, np.float64), np.asarray(real, np.float64)
    n = min(len(g), len(r))
    kid_mean, kid_se = kid(g, r, seed=seed)
    precision, recall = precision_recall(g[:n], r[:n])
    return {
        "test/sample_kid": kid_mean,
        "test/sample_kid_se": kid_se,
        "test/sample_precision": precision,
        "test/sample_recall": recall,
    }
