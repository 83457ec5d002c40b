"""bench.frontier: Pareto fronts and the multi-objective study's chosen trial against hand-worked cases,
and the rate-distortion points and picture built from MLflow-like rows. In-process, no training."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd

from bench.frontier import pareto_mask, pick_by_elbo, rate_distortion_figure, rate_distortion_points


def test_pareto_mask_by_hand():
    # (rate, distortion), both minimized: (1, 9), (3, 5), (6, 2) trade off; (4, 6) is dominated by (3, 5);
    # (3, 5) twice: neither dominates the other, both stay
    pts = np.array([[1, 9], [3, 5], [4, 6], [6, 2], [3, 5]])
    assert pareto_mask(pts, ["minimize", "minimize"]).tolist() == [True, True, False, True, True]
    # maximizing the second instead: (1, 9) has the lowest rate and the highest value, so it dominates every other
    assert pareto_mask(pts, ["minimize", "maximize"]).tolist() == [True, False, False, False, False]


def _made(number: int, kl: float, recon: float) -> optuna.trial.FrozenTrial:
    t = optuna.trial.create_trial(
        values=[kl, recon], user_attrs={"last_epoch": {"val/elbo": -(kl + recon), "val/kl": kl, "val/recon_bce": recon}}
    )
    t.number = number
    return t


def test_the_compared_trial_is_the_highest_elbo_on_the_front():
    trials = [_made(0, 1, 100), _made(1, 10, 80), _made(2, 30, 55), _made(3, 12, 90), _made(4, 60, 40)]
    # sums: 101, 90, 85, 102, 100 -> trial 2 has the best ELBO (-85); trial 3 is dominated by trial 1
    assert pick_by_elbo(trials, ["minimize", "minimize"]).number == 2
    # a dominated trial never wins even with the best ELBO recorded: the front filters first
    odd = _made(5, 31, 56)
    odd.user_attrs["last_epoch"]["val/elbo"] = -1.0
    assert pick_by_elbo([*trials, odd], ["minimize", "minimize"]).number == 2
    assert pick_by_elbo([], ["minimize", "minimize"]) is None


def _runs() -> pd.DataFrame:
    rows = [  # latent 2: three trials, one dominated; latent 8: two; one pruned run and one baseline are ignored
        ("a", "trial", "FINISHED", 2, 0, 5.0, 150.0),
        ("b", "trial", "FINISHED", 2, 1, 10.0, 130.0),
        ("c", "trial", "FINISHED", 2, 2, 12.0, 140.0),
        ("d", "trial", "FINISHED", 8, 3, 20.0, 100.0),
        ("e", "trial", "FINISHED", 8, 4, 30.0, 90.0),
        ("f", "trial", "KILLED", 8, 5, 1.0, 1.0),
        ("g", "baseline", "FINISHED", 8, -1, np.nan, 80.0),
    ]
    return pd.DataFrame(
        [
            {
                "run_id": r,
                "tags.vaebench.role": role,
                "status": st,
                "tags.latent_dim": str(latent),
                "tags.trial_number": str(n),
                "metrics.val/kl": kl,
                "metrics.val/recon_bce": rec,
            }
            for r, role, st, latent, n, kl, rec in rows
        ]
    )


def test_rate_distortion_points_keep_finished_trials_and_mark_each_sizes_front():
    pts = rate_distortion_points(_runs(), compared={"b", "e"})
    assert pts["run_id"].tolist() == ["a", "b", "c", "d", "e"]
    assert pts["pareto"].tolist() == [True, True, False, True, True]  # c (12, 140) is beaten by b (10, 130)
    assert pts["compared"].tolist() == [False, True, False, False, True]
    assert pts["trial"].tolist() == [0, 1, 2, 3, 4]
    assert rate_distortion_points(pd.DataFrame()).empty


def test_rate_distortion_figure_has_a_panel_per_latent_size_with_its_references(tmp_path):
    import matplotlib.pyplot as plt

    pts = rate_distortion_points(_runs(), compared={"b", "e"})
    refs = pd.DataFrame({"model": ["ae", "pca", "ae"], "latent_dim": [2, 2, 8], "distortion": [120.0, 160.0, 70.0]})
    fig = rate_distortion_figure(pts, refs, title="t")
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    assert [ax.get_title() for ax in panels] == ["latent size 2", "latent size 8"]
    # horizontal reference lines at the baselines' distortion, per panel
    flat = lambda ax: sorted(ln.get_ydata()[0] for ln in ax.get_lines() if ln.get_linestyle() == "--")  # noqa: E731
    assert flat(panels[0]) == [120.0, 160.0] and flat(panels[1]) == [70.0]
    lo, hi = panels[0].get_ylim()
    assert lo < 70.0 and hi > 160.0  # shared axes hold every point and line
    fig.savefig(tmp_path / "rd.png")
    plt.close(fig)
    assert (tmp_path / "rd.png").stat().st_size > 10_000
