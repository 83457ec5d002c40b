"""The comparison report: the smoke study run with its baselines through the real CLI, then
`python -m bench.report` rebuilding the same table from the MLflow store alone."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pandas as pd
import pytest

from bench.report import SHARED_METRICS
from tests.bench.helpers import cli_env, png_size, run_cli

MODELS = ("vae", "ae", "pca")
LATENTS = (2, 4)  # smoke.toml covers both sizes


@pytest.fixture(scope="module")
def compared(smoke_compared):
    """The smoke study run with its baselines once per session (tests/bench/conftest.py)."""
    return smoke_compared


def test_the_table_has_one_full_row_per_model_and_latent_size(compared):
    table = pd.read_csv(compared.cwd / "reports" / "smoke" / "comparison.csv")
    # smoke.toml has 2 replicates: each metric is a mean over them, with its interval's half-width and n
    assert list(table.columns) == [
        "model",
        "latent_dim",
        "n",
        *(c for m in SHARED_METRICS for c in (m, m + ".hw95", m + ".n")),
    ]
    assert sorted(zip(table["model"], table["latent_dim"], strict=False)) == sorted(
        (m, d) for m in MODELS for d in LATENTS
    )
    assert not table.isna().any().any()
    assert (table["n"] == 2).all() and all((table[m + ".n"] == 2).all() for m in SHARED_METRICS)
    assert all((table[m + ".hw95"] >= 0).all() for m in SHARED_METRICS)
    for acc in ("test/probe_acc", "test/knn_acc"):
        assert table[acc].between(0.1, 1.0).all()  # better than chance on 10 digits
    assert (table["test/code_recon_bce"] > 50).all() and (
        table["test/sample_fd"] > 0
    ).all()  # nats per image, distances


def test_run_prints_the_table_without_progress_bars(compared):
    out = compared.proc.stdout
    assert "--no-progress" in compared.args("smoke")
    header = next(line for line in out.splitlines() if line.lstrip().startswith("model"))
    assert "latent_dim" in header and "test/sample_fd" in header
    assert sum(line.split()[:1] in (["vae"], ["ae"], ["pca"]) for line in out.splitlines()) == 6
    assert "report: reports/smoke/comparison.md" in out
    assert "mean ± 95% t-interval half-width over n seed replicates" in out
    assert "verdicts (Welch t-test of the best mean against each other model, Holm-adjusted across the table" in out
    # the trials' time and the baselines' and report's time are told apart
    assert re.search(
        r"study smoke: 3/3 trials finished \(3 run by this process in \d+ s, then \d+ s to finish the study\)", out
    )


def test_every_compared_run_has_every_metric_and_its_tags(compared):
    client = compared.client()
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id], "tags.compared = 'true'")
    assert sorted((r.data.tags["model"], int(r.data.tags["latent_dim"])) for r in runs) == sorted(
        (m, d) for m in MODELS for d in LATENTS
    )
    parent = compared.record().parent.info.run_id
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.parentRunId"] == parent
        for m in SHARED_METRICS:
            assert math.isfinite(r.data.metrics[m]), (r.data.tags["model"], m)


def test_the_report_is_logged_to_the_parent_run(compared, tmp_path):
    parent = compared.record().parent.info.run_id
    files = compared.download(parent, tmp_path, "report")
    names = {p.name for p in files.iterdir()}
    assert {"comparison.md", "comparison.csv", "vae_metrics.csv", "verdicts.csv"} <= names
    assert {f"{m.replace('/', '_')}.png" for m in SHARED_METRICS} <= names
    assert {f"samples_latent{d}.png" for d in LATENTS} <= names
    width, height = png_size(files / "samples_latent2.png")
    assert width > height > 100  # three grids side by side
    md = (files / "comparison.md").read_text()
    assert "## Verdicts" in md and "## VAE only" in md and "seeds 1, 2" in md
    verdicts = pd.read_csv(files / "verdicts.csv")
    judged = [m for m, better in SHARED_METRICS.items() if better != "none"]  # a standard error has no winner
    assert len(verdicts) == len(LATENTS) * len(judged) * 2  # the best model against each of the other two
    assert verdicts["p"].between(0, 1).all() and (verdicts["p_holm"] >= verdicts["p"]).all()


def test_bench_report_rebuilds_the_same_table_from_mlflow_alone(compared, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.report", "--study", "smoke", "--tracking-uri", compared.tracking_uri,
         "--out", str(tmp_path / "again"), "--no-log"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    first = pd.read_csv(compared.cwd / "reports" / "smoke" / "comparison.csv")
    again = pd.read_csv(tmp_path / "again" / "comparison.csv")
    pd.testing.assert_frame_equal(first, again)
    assert f"report written to {tmp_path / 'again'}/comparison.md" in proc.stdout


def replicate_runs_of(run):
    client = run.client()
    exp = client.get_experiment_by_name("smoke")
    return client, client.search_runs([exp.experiment_id], "tags.`vaebench.role` = 'replicate'", max_results=1000)


def test_replicates_are_nested_finished_runs_tagged_with_seed_and_the_configuration_they_replicate(compared):
    from bench.metrics import VAE_TEST

    client, reps = replicate_runs_of(compared)
    rec = compared.record()
    compared_vae = {
        int(r.data.tags["latent_dim"]): r
        for r in client.search_runs([rec.parent.info.experiment_id], "tags.compared = 'true' and tags.model = 'vae'")
    }
    trial_of_run = {t.user_attrs.get("mlflow_run_id"): t.number for t in rec.trials}
    assert sorted(
        (r.data.tags["model"], int(r.data.tags["latent_dim"]), int(r.data.tags["seed"])) for r in reps
    ) == sorted(
        (m, d, s) for m in MODELS for d in LATENTS for s in (1, 2)
    )  # seeds train.seed + 1, + 2: never the search's 0
    for r in reps:
        tags, latent = r.data.tags, int(r.data.tags["latent_dim"])
        assert r.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == rec.parent.info.run_id
        assert r.info.run_name == f"{tags['model']}-latent{latent}-seed{tags['seed']}"
        assert tags["replicate_of"] == compared_vae[latent].info.run_id
        assert tags["replicate_of_trial"] == str(trial_of_run[tags["replicate_of"]])
        assert "compared" not in tags  # the compared runs stay the selected trial and its baselines
        assert r.data.params["seed"] == tags["seed"]
        keys = {*SHARED_METRICS, *(VAE_TEST if tags["model"] == "vae" else ())}
        assert keys <= set(r.data.metrics), (r.info.run_name, keys - set(r.data.metrics))
        assert all(math.isfinite(r.data.metrics[k]) for k in keys)
        if tags["model"] == "vae":
            assert r.data.metrics["test/nll_iw"] <= -r.data.metrics["test/elbo"] * 1.05
            assert 0 < r.data.metrics["test/nll_iw_se"] < 10
            assert [m.step for m in client.get_metric_history(r.info.run_id, "val/elbo")] == [1, 2]
    # another seed is another model: the replicates of one configuration differ
    vae2 = {
        r.data.tags["seed"]: r.data.metrics["test/elbo"]
        for r in reps
        if r.data.tags["model"] == "vae" and r.data.tags["latent_dim"] == "2"
    }
    assert vae2["1"] != vae2["2"]


def test_bench_report_without_a_study_exits_2_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.report", "--study", "nothing", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "run the study first" in proc.stderr
    assert not (tmp_path / "none.db").exists()


def test_rerunning_the_same_command_trains_no_replicate_again(compared):
    client, before = replicate_runs_of(compared)
    exp = client.get_experiment_by_name("smoke")
    n_runs = len(client.search_runs([exp.experiment_id], max_results=1000))
    proc = run_cli([a for a in compared.args("smoke") if a != "--no-baselines"], compared.cwd)
    assert proc.returncode == 0, proc.stderr
    assert len(client.search_runs([exp.experiment_id], max_results=1000)) == n_runs
    assert sorted(r.info.run_id for r in replicate_runs_of(compared)[1]) == sorted(r.info.run_id for r in before)


@pytest.mark.slow  # trains 6 more runs: about a minute on 2 idle cores
def test_more_replicates_train_only_the_new_seed(compared):
    client, before = replicate_runs_of(compared)
    exp = client.get_experiment_by_name("smoke")
    count = lambda: len(client.search_runs([exp.experiment_id], max_results=1000))  # noqa: E731
    n_runs = count()
    args = [a for a in compared.args("smoke") if a != "--no-baselines"]
    proc = run_cli([*args, "--replicates", "3"], compared.cwd)  # seeds 1, 2 are done: only seed 3 is trained
    assert proc.returncode == 0, proc.stderr
    _, after = replicate_runs_of(compared)
    old = {r.info.run_id for r in before}
    new = [r for r in after if r.info.run_id not in old]
    assert old <= {r.info.run_id for r in after}
    assert sorted((r.data.tags["model"], r.data.tags["latent_dim"], r.data.tags["seed"]) for r in new) == sorted(
        (m, str(d), "3") for m in MODELS for d in LATENTS
    )
    assert count() == n_runs + len(MODELS) * len(LATENTS)
    table = pd.read_csv(compared.cwd / "reports" / "smoke" / "comparison.csv")
    assert (table["n"] == 3).all()
    assert "verdicts (Welch" in proc.stdout


# ------------------------------------------------------------------ intervals and verdicts, from tables built by hand

from bench.report import HW, N, build_report, display_table, replicate_report, write_report  # noqa: E402
from bench.stats import t_interval, welch_p  # noqa: E402

PROBE, RECON = "test/probe_acc", "test/code_recon_bce"  # higher is better; lower is better
T975_DF2 = 4.302652729911275


def replicates(cells: dict[tuple[str, int], dict[str, list[float]]]) -> pd.DataFrame:
    """A replicate table as bench.report reads it from MLflow: one row per (model, latent_dim, seed)."""
    rows = []
    for (model, latent), metrics in cells.items():
        n = len(next(iter(metrics.values())))
        for i in range(n):
            rows.append(
                {
                    "run_id": f"{model}{latent}-{i}",
                    "model": model,
                    "latent_dim": latent,
                    "seed": i + 1,
                    **{m: v[i] for m, v in metrics.items()},
                }
            )
    return pd.DataFrame(rows)


def compared_of(reps: pd.DataFrame) -> pd.DataFrame:
    return reps[["model", "latent_dim"]].drop_duplicates().assign(run_id="r")


def verdict(report, latent: int, metric: str) -> str:
    vt = report.verdict_table()
    return vt.loc[vt["latent_dim"] == latent, metric].item()


def test_cells_are_mean_and_t_interval_half_width_with_n():
    reps = replicates({("vae", 8): {PROBE: [1.0, 2.0, 3.0]}, ("ae", 8): {PROBE: [4.0, 6.0, 8.0]}})
    rep = replicate_report(reps, compared_of(reps))
    row = rep.table.set_index("model").loc["vae"]
    assert (row[PROBE], row[PROBE + N], row["n"]) == (2.0, 3, 3)
    assert row[PROBE + HW] == pytest.approx(T975_DF2 / math.sqrt(3))  # s = 1
    assert rep.table.set_index("model").loc["ae", PROBE + HW] == pytest.approx(T975_DF2 * 2 / math.sqrt(3))
    shown = display_table(rep.table, [PROBE]).set_index("model")
    assert shown.loc["vae", PROBE] == "2 ± 2.5" and shown.loc["ae", PROBE] == "6 ± 5"
    assert list(rep.table["model"]) == ["vae", "ae"]  # the report's model order


def test_overlapping_replicates_are_a_tie_and_separated_ones_name_the_winner():
    reps = replicates(
        {
            ("vae", 8): {PROBE: [0.950, 0.951, 0.952], RECON: [80.0, 81.0, 82.0]},
            ("ae", 8): {PROBE: [0.900, 0.901, 0.902], RECON: [80.5, 81.5, 82.5]},
            ("pca", 8): {PROBE: [0.800, 0.801, 0.799], RECON: [99.0, 99.5, 100.0]},
        }
    )
    rep = replicate_report(reps, compared_of(reps))
    assert verdict(rep, 8, PROBE) == "vae"  # far apart: p ~ 1e-6 survives Holm's factor of 4
    assert verdict(rep, 8, RECON) == "tie: vae, ae"  # vae's mean is lower, but within the seed noise of ae's
    tests = rep.verdicts.set_index(["metric", "other"])
    assert tests.loc[(RECON, "ae"), "p"] == pytest.approx(welch_p([80, 81, 82], [80.5, 81.5, 82.5]))
    assert tests.loc[(RECON, "ae"), "p"] > 0.5 and not tests.loc[(RECON, "ae"), "significant"]
    assert tests.loc[(RECON, "pca"), "significant"]  # pca is worse than the best for sure


def test_holm_turns_a_lone_significant_difference_into_a_tie_among_many_tests():
    better, worse = [0.93, 0.945, 0.948], [0.90, 0.91, 0.92]  # Welch p = 0.018
    assert 0.05 / 4 < welch_p(better, worse) < 0.05
    alone = replicate_report(
        *(lambda r: (r, compared_of(r)))(replicates({("vae", 8): {PROBE: better}, ("ae", 8): {PROBE: worse}}))
    )
    assert verdict(alone, 8, PROBE) == "vae"
    # the same two cells in a table of 6 tests: two clear-cut (p ~ 1e-6), three ties (p > 0.5) and this one.
    # Holm multiplies the third-smallest p by 6 - 2 = 4: 0.072, no longer significant
    reps = replicates(
        {
            ("vae", 8): {PROBE: better, RECON: [80.0, 81.0, 82.0]},
            ("ae", 8): {PROBE: worse, RECON: [80.5, 81.5, 82.5]},
            ("vae", 16): {PROBE: [0.95, 0.951, 0.952], RECON: [70.0, 71.0, 72.0]},
            ("ae", 16): {PROBE: [0.80, 0.801, 0.802], RECON: [70.2, 71.2, 72.2]},
            ("pca", 16): {PROBE: [0.70, 0.701, 0.702], RECON: [70.1, 71.3, 72.0]},
        }
    )
    crowded = replicate_report(reps, compared_of(reps))
    p = crowded.verdicts.set_index(["latent_dim", "metric", "other"])
    assert len(p) == 6
    assert p.loc[(8, PROBE, "ae"), "p_holm"] == pytest.approx(4 * welch_p(better, worse))
    assert verdict(crowded, 8, PROBE) == "tie: vae, ae"
    assert verdict(crowded, 16, PROBE) == "vae"
    assert verdict(crowded, 8, RECON) == "tie: vae, ae" and verdict(crowded, 16, RECON) == "tie: vae, ae, pca"


def runs_frame(rows: list[dict]) -> pd.DataFrame:
    """mlflow.search_runs output for compared runs (tags compared=true), one dict per run."""
    return pd.DataFrame(
        [
            {
                "run_id": f"run{i}",
                "status": "FINISHED",
                "tags.compared": "true",
                "tags.model": r["model"],
                "tags.latent_dim": str(r["latent_dim"]),
                **{f"metrics.{k}": v for k, v in r.items() if k.startswith("test/")},
            }
            for i, r in enumerate(rows)
        ]
    )


def test_without_replicates_the_table_is_as_before_and_verdicts_say_n_a(tmp_path):
    runs = runs_frame(
        [
            {"model": "vae", "latent_dim": 4, PROBE: 0.9, RECON: 80.0},
            {"model": "pca", "latent_dim": 4, PROBE: 0.8, RECON: 90.0},
        ]
    )
    rep = build_report(runs)
    assert not rep.has_replicates
    assert list(rep.table.columns) == ["model", "latent_dim", RECON, PROBE]
    assert rep.table[PROBE].tolist() == [0.9, 0.8]
    assert rep.verdict_table().loc[0, PROBE] == "n/a" and rep.verdict_table().loc[0, RECON] == "n/a"
    write_report(rep, tmp_path, study="s")
    md = (tmp_path / "comparison.md").read_text()
    assert "One run per cell (n = 1)" in md and "## Best model per latent size" in md and "## Verdicts" in md
    assert "±" not in md


def test_replicate_report_writes_intervals_verdicts_and_error_bars(tmp_path):
    reps = replicates({("vae", 2): {PROBE: [0.95, 0.951, 0.952]}, ("ae", 2): {PROBE: [0.90, 0.901, 0.902]}})
    rep = replicate_report(reps, compared_of(reps))
    files = {p.name for p in write_report(rep, tmp_path, study="s")}
    assert {"comparison.md", "comparison.csv", "verdicts.csv", "test_probe_acc.png"} <= files
    csv = pd.read_csv(tmp_path / "comparison.csv")
    assert list(csv.columns) == ["model", "latent_dim", "n", PROBE, PROBE + HW, PROBE + N]
    assert csv[PROBE].tolist() == pytest.approx([0.951, 0.901])
    assert csv[PROBE + HW].tolist() == pytest.approx([t_interval([0.95, 0.951, 0.952])[1]] * 2)
    md = (tmp_path / "comparison.md").read_text()
    assert "| vae | 2 | 3 | 0.951 ± 0.0025 |" in md
    assert "| 2 | vae |" in md  # the verdict row: latent 2, winner vae
    assert "seeds 1, 2, 3" in md
    assert "verdicts (Welch t-test" in rep.printed() and "0.951 ± 0.0025" in rep.printed()
