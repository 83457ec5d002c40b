"""The rate-distortion frontier: Pareto fronts of trials, the trial a multi-objective study compares, the plot.

bench.trials calls `pick_by_elbo` on a Pareto front (the best trial, the compared ones); bench.report calls
`rate_distortion_points` and `rate_distortion_figure` on the study's trial runs read back from MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

RATE, DISTORTION = "val/kl", "val/recon_bce"  # per trial, the last epoch's values (nats per image)
REFERENCE = "test/code_recon_bce"  # the baselines' distortion: reconstruction of the deterministic code


def pareto_mask(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Which rows of values (N, M) no other row dominates (at least as good everywhere, better somewhere)."""
    v = np.asarray(values, np.float64) * np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    n = len(v)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        dominated = np.all(v <= v[i], axis=1) & np.any(v < v[i], axis=1)
        mask[i] = not dominated.any()
    return mask


def pick_by_elbo(trials: Sequence, directions: Sequence[str], split: str = "val"):
    """Of COMPLETE trials, the one a multi-objective study stands behind: the highest `{split}/elbo`
    (beta = 1, last epoch) among the trials on their Pareto front; None for no trials.

    For rate and distortion as objectives that is the front's point nearest the ELBO optimum
    rate + distortion = min; the Pareto filter keeps the rule sensible for other pairs too.
    """
    trials = [t for t in trials if t.values is not None]
    if not trials:
        return None
    front = [
        t
        for t, keep in zip(trials, pareto_mask(np.array([t.values for t in trials]), directions), strict=False)
        if keep
    ]
    return max(front, key=lambda t: (t.user_attrs.get("last_epoch", {}).get(f"{split}/elbo", -math.inf), -t.number))


def rate_distortion_points(runs: pd.DataFrame, compared: set[str] = frozenset()) -> pd.DataFrame:
    """One row per finished trial run with rate and distortion: latent_dim, trial, run_id, rate,
    distortion, pareto (on its latent size's front: lower rate and lower distortion are better), compared."""
    need = {f"metrics.{RATE}", f"metrics.{DISTORTION}", "tags.vaebench.role", "tags.latent_dim"}
    if runs.empty or not need <= set(runs.columns):
        return pd.DataFrame(columns=["latent_dim", "trial", "run_id", "rate", "distortion", "pareto", "compared"])
    keep = (runs["tags.vaebench.role"] == "trial") & (runs["status"] == "FINISHED")
    keep &= runs[f"metrics.{RATE}"].notna() & runs[f"metrics.{DISTORTION}"].notna()
    r = runs[keep]
    pts = pd.DataFrame(
        {
            "latent_dim": r["tags.latent_dim"].astype(int),
            "trial": r.get("tags.trial_number", pd.Series(-1, index=r.index)).astype(int),
            "run_id": r["run_id"],
            "rate": r[f"metrics.{RATE}"].astype(float),
            "distortion": r[f"metrics.{DISTORTION}"].astype(float),
        }
    )
    pts["pareto"] = False
    for _, g in pts.groupby("latent_dim"):
        pts.loc[g.index, "pareto"] = pareto_mask(g[["rate", "distortion"]].to_numpy(), ["minimize", "minimize"])
    pts["compared"] = pts["run_id"].isin(compared)
    return pts.sort_values(["latent_dim", "rate"]).reset_index(drop=True)


def _iso_elbo(ax, xlim: tuple[float, float], ylim: tuple[float, float], n: int = 6) -> None:
    """Dotted lines rate + distortion = c (ELBO = -c) across the visible box, labelled with c."""
    (x0, x1), (y0, y1) = xlim, ylim
    step = float(np.ceil((x1 + y1 - x0 - y0) / n))
    for c in np.arange(np.ceil(x0 + y0), x1 + y1, max(step, 1.0))[1:]:
        ax.plot([x0, x1], [c - x0, c - x1], ls=":", lw=0.9, color="0.45", zorder=0)
        x = min(max((c - y1 + 0.08 * (y1 - y0)), x0), x1)  # near the top edge, inside the box
        if y0 < c - x < y1:
            ax.annotate(f"-ELBO {c:.0f}", (x, c - x), fontsize=6, color="0.35", ha="left", va="bottom")


def rate_distortion_figure(points: pd.DataFrame, refs: pd.DataFrame, title: str = "rate-distortion"):
    """One panel per latent size: trials (grey), their Pareto front (line), the compared VAE (star),
    the AE's and PCA's distortion (horizontal lines, `refs`: model, latent_dim, distortion),
    and iso-ELBO lines rate + distortion = const. Axes shared, so the fronts can be compared."""
    import matplotlib.pyplot as plt

    latents = sorted(points["latent_dim"].unique())
    n = max(1, len(latents))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 3.6 * rows), dpi=110, sharex=True, sharey=True, squeeze=False
    )
    ref_vals = refs["distortion"].to_numpy() if len(refs) else np.array([])
    ymin = min(points["distortion"].min(), *ref_vals) if len(ref_vals) else points["distortion"].min()
    ymax = max(points["distortion"].max(), *ref_vals) if len(ref_vals) else points["distortion"].max()
    xmax = points["rate"].max()
    pad_y, pad_x = 0.08 * (ymax - ymin + 1), 0.08 * (xmax + 1)
    colors = {"ae": "tab:orange", "pca": "tab:green"}
    xlim, ylim = (-pad_x / 2, xmax + pad_x), (ymin - pad_y, ymax + pad_y)
    for ax, latent in zip(axes.flat, latents, strict=False):
        g = points[points["latent_dim"] == latent]
        _iso_elbo(ax, xlim, ylim)
        ax.scatter(g["rate"], g["distortion"], s=14, color="0.55", label="trials", zorder=2)
        f = g[g["pareto"]].sort_values("rate")
        ax.plot(f["rate"], f["distortion"], "-o", ms=4, color="tab:blue", label="Pareto front", zorder=3)
        c = g[g["compared"]]
        ax.scatter(c["rate"], c["distortion"], marker="*", s=120, color="tab:red", label="compared VAE", zorder=4)
        for r in refs[refs["latent_dim"] == latent].itertuples():
            ax.axhline(r.distortion, ls="--", lw=1, color=colors.get(r.model, "k"), label=f"{r.model} (test)")
        ax.set_title(f"latent size {latent}", fontsize=9)
        ax.grid(alpha=0.25)
    for ax in axes.flat[len(latents) :]:
        ax.axis("off")
    axes.flat[0].set_xlim(*xlim)
    axes.flat[0].set_ylim(*ylim)
    for ax in axes[-1]:
        ax.set_xlabel("rate: KL (nats)")
    for ax in axes[:, 0]:
        ax.set_ylabel("distortion: recon BCE (nats)")
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=False):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(
        f"{title}: trials' last-epoch validation rate and distortion; dotted: rate + distortion = -ELBO", fontsize=9
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    return fig
