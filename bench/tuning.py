"""Is the search's budget enough, and do the sizes line up? Expected best validation ELBO after n trials per
latent size.

`expected_best_curves(trials)` gives, per latent size, the expected maximum of n trials drawn without replacement
from that size's trials (Dodge et al. 2019, "Show your work") with a bootstrap band, the gain of the last doubling
of n and an under-tuned flag; `latent_sanity(vae_table, ...)` names sizes whose test ELBO or NLL gets worse as the
latent size grows. The report (bench.report) prints both; bench.run's parent-run description repeats the flags.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

METRIC = "val/elbo"  # the VAE's bound on the validation split: nats per image, higher is better
BOOTSTRAP = 1000  # resamples of a size's trials for the band
LEVEL = 0.95  # the band's coverage
SEED = 0  # the bootstrap's own seed: the report reads the same every time
# a last-doubling gain below this is no reason to tune more: it is under the seed-to-seed noise of one
# training's ELBO (the replicates' intervals in the report are of this order)
MIN_GAIN = 0.5  # nats per image


def expected_max(values: list[float] | np.ndarray, n: int) -> float:
    """E[max of n draws without replacement] from `values` (higher is better).

    With v_(1) <= ... <= v_(N), the maximum of a random n-subset is v_(i) with probability
    C(i-1, n-1) / C(N, n) (the other n-1 come from the i-1 below it).
    """
    v = np.sort(np.asarray(values, dtype=float))
    big_n = len(v)
    if not 1 <= n <= big_n:
        raise ValueError(f"n must be in [1, {big_n}], got {n}")
    i = np.arange(n, big_n + 1)  # 1-based ranks that can be the maximum
    weights = np.array([math.comb(int(k) - 1, n - 1) for k in i], dtype=float) / math.comb(big_n, n)
    return float(weights @ v[i - 1])


def curve(values: list[float] | np.ndarray) -> np.ndarray:
    """expected_max for n = 1 .. N."""
    return np.array([expected_max(values, n) for n in range(1, len(values) + 1)])


def bootstrap_band(
    values: list[float], resamples: int = BOOTSTRAP, level: float = LEVEL, seed: int = SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile band of the curve over resamples of the trials with replacement: (low, high), each (N,)."""
    v = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    curves = np.stack([curve(rng.choice(v, size=len(v), replace=True)) for _ in range(resamples)])
    tail = (1 - level) / 2 * 100
    return np.percentile(curves, tail, axis=0), np.percentile(curves, 100 - tail, axis=0)


def trial_scores(runs: pd.DataFrame, metric: str = METRIC) -> pd.DataFrame:
    """Every finished VAE trial of the study: latent_dim, its last-epoch `metric`, pruned or not.

    A pruned trial counts with its last reported value: it was stopped for looking worse than its
    stratum's median there, and more epochs would rarely have made it the best.
    """
    role = runs.get("tags.vaebench.role")
    col = f"metrics.{metric}"
    if runs.empty or role is None or col not in runs:
        return pd.DataFrame(columns=["latent_dim", "value", "pruned"])
    keep = (role == "trial") & runs["status"].isin(["FINISHED", "KILLED"]) & runs[col].notna()
    out = pd.DataFrame(
        {
            "latent_dim": runs.loc[keep, "tags.latent_dim"].astype(int),
            "value": runs.loc[keep, col].astype(float),
            "pruned": runs.loc[keep, "status"] == "KILLED",
        }
    )
    return out.reset_index(drop=True)


def expected_best_table(
    scores: pd.DataFrame, resamples: int = BOOTSTRAP, noise: dict[int, float] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per latent size: the summary row, and the whole curve with its band.

    Summary columns: latent_dim, trials, pruned, best, gain_last_doubling (E[best of N] - E[best of ceil(N/2)]),
    band_hw (half the width of the bootstrap band at N: how uncertain the expected best is with N trials), and
    under_tuned: the last doubling of the budget bought more than a training seed's noise, `noise[latent]` (the
    replicates' 95 % half-width of that size's test ELBO) and at least MIN_GAIN, so the curve still rises and
    more trials would likely find a better model of that size. (With a handful of trials the bootstrap band is
    as wide as the gain: the band says how far to trust the curve, the seed noise whether its rise matters.)
    """
    rows, points = [], []
    for latent, g in scores.groupby("latent_dim"):
        v = g["value"].to_numpy()
        c = curve(v)
        low, high = bootstrap_band(v, resamples)
        half = math.ceil(len(v) / 2)
        gain = float(c[-1] - c[half - 1]) if len(v) > 1 else math.nan
        hw = float(high[-1] - low[-1]) / 2
        floor = max(MIN_GAIN, (noise or {}).get(int(latent), 0.0))
        rows.append(
            {
                "latent_dim": int(latent),
                "trials": len(v),
                "pruned": int(g["pruned"].sum()),
                "best": float(v.max()),
                "gain_last_doubling": gain,
                "band_hw": hw,
                "under_tuned": bool(len(v) > 1 and gain > floor),
            }
        )
        points += [
            {"latent_dim": int(latent), "n": n + 1, "expected_best": c[n], "band_low": low[n], "band_high": high[n]}
            for n in range(len(v))
        ]
    return pd.DataFrame(rows), pd.DataFrame(points)


def expected_best_figure(points: pd.DataFrame, metric: str = METRIC):
    """Expected best validation ELBO against the number of trials, one line and band per latent size."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for latent, g in points.groupby("latent_dim"):
        (line,) = ax.plot(g["n"], g["expected_best"], marker="o", ms=3, label=f"latent {latent}")
        ax.fill_between(g["n"], g["band_low"], g["band_high"], color=line.get_color(), alpha=0.15)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # n counts trials: no 1.2 trials
    ax.set_xlabel("trials n")
    ax.set_ylabel(f"expected best {metric} (nats, higher is better)")
    ax.set_title(f"Expected best of n trials per latent size ({LEVEL:.0%} bootstrap band)")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def latent_sanity(vae_table: pd.DataFrame, tuning: pd.DataFrame | None = None, hw: str = ".hw95") -> list[str]:
    """Sizes whose test ELBO falls (or NLL rises) from the next smaller size by more than the two intervals.

    With an equal budget per size a larger latent space should fit at least as well: where it does not,
    say the likely cause (the size is under-tuned, or units collapsed to the prior: few active units).
    """
    checks = {"test/elbo": 1.0, "test/nll_iw": -1.0}  # +1: higher is better
    problems = []
    t = vae_table.sort_values("latent_dim").reset_index(drop=True)
    flagged = set() if tuning is None or tuning.empty else set(tuning.loc[tuning["under_tuned"], "latent_dim"])
    for m, sign in checks.items():
        if m not in t:
            continue
        for i in range(1, len(t)):
            prev, cur = t.loc[i - 1], t.loc[i]
            noise = float(np.nan_to_num(prev.get(m + hw, 0.0)) + np.nan_to_num(cur.get(m + hw, 0.0)))
            drop = sign * (prev[m] - cur[m])
            if drop > noise:
                latent = int(cur["latent_dim"])
                causes = []
                if latent in flagged:
                    causes.append("under-tuned: its expected-best curve still rises")
                au = cur.get("test/active_units")
                if au is not None and not math.isnan(au) and au < 0.5 * latent:
                    causes.append(f"posterior collapse: {au:.3g} of {latent} units active")
                why = "; ".join(causes) or "neither under-tuned nor collapsed: a real effect or search noise"
                problems.append(
                    f"{m} at latent {latent} is worse than at {int(prev['latent_dim'])} by "
                    f"{drop:.2f} nats (intervals {noise:.2f}): {why}"
                )
    return problems


def search_seed_spread(best: pd.DataFrame) -> pd.DataFrame:
    """best: one row per (search, latent_dim) with its best `value` (best_per_search); per size: the number of
    searches and the mean, sd, min, max and range of their best values."""
    g = best.groupby("latent_dim")["value"]
    out = pd.DataFrame({"searches": g.size(), "mean": g.mean(), "sd": g.std(ddof=1), "min": g.min(), "max": g.max()})
    out["range"] = out["max"] - out["min"]
    return out.reset_index()


def best_per_search(trials: pd.DataFrame, metric: str = METRIC) -> pd.DataFrame:
    """One row per (study, latent_dim): the best finished (not pruned) trial's `metric`, from every trial run of
    an experiment, whose searches differ by sampler seed (bench.run --search-seeds): columns study, latent_dim,
    value."""
    col, study = f"metrics.{metric}", "tags.study"
    if trials.empty or col not in trials or study not in trials:
        return pd.DataFrame(columns=["study", "latent_dim", "value"])
    done = trials[(trials["status"] == "FINISHED") & trials[col].notna()]
    out = done.groupby([study, "tags.latent_dim"])[col].max().reset_index()
    out.columns = ["study", "latent_dim", "value"]
    out["latent_dim"] = out["latent_dim"].astype(int)
    return out.sort_values(["study", "latent_dim"]).reset_index(drop=True)


def rankings(best: pd.DataFrame) -> dict[str, list[int]]:
    """Per search: its latent sizes from the best val/elbo to the worst."""
    return {
        s: [int(x) for x in g.sort_values("value", ascending=False)["latent_dim"]] for s, g in best.groupby("study")
    }
