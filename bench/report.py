"""`python -m bench.report --study latent`: VAE vs autoencoder vs PCA, read back from MLflow.

Builds the comparison table (Markdown and CSV), metric-vs-latent-size plots and side-by-side
image grids from the study's runs, writes them to a folder and to the parent run's artifacts.
With seed replicates every cell is mean ± 95 % t-interval over them, and a model is named the
winner of a (metric, latent size) only when Welch's test, Holm-adjusted across the table, says so.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.errors import BenchError, HelpFormatter, cli_main
from bench.frontier import REFERENCE, rate_distortion_figure, rate_distortion_points
from bench.metrics import COMPARISON, VAE_TEST, better
from bench.spec import check_study_name
from bench.stats import LEVEL, VERDICT_ALPHA, holm, t_interval, welch_p
from bench.tags import IMAGE_KEYS, grid_file
from bench.tracking import REPLICATE_OF_TAG, REPLICATE_ROLE, ROLE_TAG, SEED_TAG
from bench.tuning import (
    best_per_search,
    expected_best_figure,
    expected_best_table,
    latent_sanity,
    rankings,
    search_seed_spread,
    trial_scores,
)

# metrics every model has (test/ood_auroc when the study names an OOD dataset), in the order the
# table shows them, with the direction that is better
SHARED_METRICS = {m: better(m) for m in COMPARISON}
PAPER_METRICS = ["test/nll_iw_k5000", "test/nll_iw_k5000_se"]  # on the study's best VAE only, when asked for
VAE_METRICS = [*VAE_TEST, *PAPER_METRICS]
MODEL_ORDER = ("vae", "ae", "pca")
HW, N = ".hw95", ".n"  # suffixes of a metric's interval half-width and replicate count columns
NA = "n/a"


@dataclass
class Report:
    table: (
        pd.DataFrame
    )  # one row per (model, latent_dim): the shared metrics (means over replicates, with HW and N columns)
    vae_table: pd.DataFrame  # one row per latent_dim, the VAE-only metrics (the same way)
    runs: pd.DataFrame  # the compared runs (run_id, model, latent_dim)
    replicates: pd.DataFrame = field(
        default_factory=pd.DataFrame
    )  # one row per replicate run: model, latent_dim, seed, metrics
    verdicts: pd.DataFrame = field(
        default_factory=pd.DataFrame
    )  # one row per (latent_dim, metric, other model): the tests
    rd_points: pd.DataFrame | None = None  # every finished trial's rate and distortion (bench.frontier)
    tuning: pd.DataFrame = field(
        default_factory=pd.DataFrame
    )  # per latent size: trials, best, last-doubling gain, under-tuned (bench.tuning)
    tuning_curve: pd.DataFrame = field(
        default_factory=pd.DataFrame
    )  # per (latent size, n): expected best of n trials and its band
    sanity: list[str] = field(default_factory=list)  # sizes that fit worse than a smaller one, with the likely cause
    search_best: pd.DataFrame = field(
        default_factory=pd.DataFrame
    )  # per (search, latent size): its best val/elbo (--search-seeds)

    def search_spread_text(self) -> str:
        """The spread of the best val/elbo across the searches (search seeds), beside the replicates' interval."""
        if self.search_best.empty or self.search_best["study"].nunique() < 2:
            return ""
        spread = search_seed_spread(self.search_best)
        if "test/elbo" + HW in self.vae_table:
            spread = spread.merge(self.vae_table[["latent_dim", "test/elbo" + HW]], on="latent_dim", how="left")
            spread = spread.rename(columns={"test/elbo" + HW: "train_seed_hw95"})
        ranks = rankings(self.search_best)
        same = len({tuple(r) for r in ranks.values()}) == 1
        lines = [f"{s}: {' > '.join(map(str, r))}" for s, r in ranks.items()]
        return (
            spread.to_string(index=False, float_format=lambda v: f"{v:.2f}")
            + "\nlatent sizes by best val/elbo in each search:\n  "
            + "\n  ".join(lines)
            + f"\nthe ranking {'is the same in every search' if same else 'differs between searches'}"
        )

    @property
    def under_tuned(self) -> list[int]:
        return [] if self.tuning.empty else [int(x) for x in self.tuning.loc[self.tuning["under_tuned"], "latent_dim"]]

    def tuning_text(self) -> str:
        """The search's budget per latent size, as printed and in comparison.md."""
        if self.tuning.empty:
            return ""
        t = self.tuning.assign(flag=["under-tuned" if u else "" for u in self.tuning["under_tuned"]])
        cols = ["latent_dim", "trials", "pruned", "best", "gain_last_doubling", "band_hw", "flag"]
        return t[cols].to_string(index=False, float_format=lambda v: f"{v:.2f}")

    @property
    def has_replicates(self) -> bool:
        return not self.replicates.empty

    def verdict_table(self) -> pd.DataFrame:
        """latent_dim x metric: the significant winner, "tie: ..." or "n/a"."""
        return verdict_table(self.verdicts, self.table)

    def printed(self) -> str:
        """What the CLIs print: the search's budget per size, the table (with intervals and n when there are
        replicates), the verdicts and any size that fits worse than a smaller one."""
        tuning = ""
        if not self.tuning.empty:
            tuning = (
                "search budget per latent size (best val/elbo; gain of the last doubling of trials in the "
                "expected best; band_hw: half-width of its 95 % bootstrap band; under-tuned: that gain exceeds "
                "the size's training-seed noise (replicates' test/elbo half-width) and 0.5 nats):\n"
                + self.tuning_text()
                + "\n\n"
            )
        sanity = "".join(f"\nworse with a larger latent size: {line}" for line in self.sanity)
        if self.search_spread_text():
            sanity += (
                "\n\nbest val/elbo across search seeds (searches differing only by the sampler's seed), beside "
                "the replicates' test/elbo 95 % half-width:\n" + self.search_spread_text()
            )
        with pd.option_context("display.width", 250, "display.max_columns", 40, "display.max_colwidth", 40):
            if not self.has_replicates:
                return tuning + self.table.to_string(index=False, float_format=lambda v: f"{v:.4g}") + sanity
            return (
                tuning
                + (
                    display_table(self.table, list(SHARED_METRICS)).to_string(index=False)
                    + f"\n\nmean ± {LEVEL:.0%} t-interval half-width over n seed replicates\n"
                    + "verdicts (Welch t-test of the best mean against each other model, Holm-adjusted "
                    + f"across the table, alpha {VERDICT_ALPHA}):\n"
                    + self.verdict_table().to_string(index=False)
                )
                + sanity
            )


def compared_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs in the comparison: the best VAE per latent size (tag compared=true) and the baselines."""
    if runs.empty:
        return runs
    tag = lambda name: runs.get(f"tags.{name}", pd.Series([None] * len(runs), index=runs.index))  # noqa: E731
    keep = (tag("compared") == "true") & (runs["status"] == "FINISHED")
    out = runs[keep].copy()
    out["model"] = tag("model")[keep]
    out["latent_dim"] = tag("latent_dim")[keep].astype(int)
    return out.sort_values(["latent_dim", "model"]).drop_duplicates(["model", "latent_dim"], keep="last")


def replicate_runs(runs: pd.DataFrame, compared: pd.DataFrame) -> pd.DataFrame:
    """The FINISHED replicate runs of the configurations now compared (replicate_of a compared VAE run)."""
    role, of = runs.get(f"tags.{ROLE_TAG}"), f"tags.{REPLICATE_OF_TAG}"
    if runs.empty or role is None or of not in runs:
        return pd.DataFrame()
    current = set(compared.loc[compared["model"] == "vae", "run_id"])
    keep = (role == REPLICATE_ROLE) & (runs["status"] == "FINISHED") & runs[of].isin(current)
    out = runs[keep].copy()
    if out.empty:
        return pd.DataFrame()
    out["model"] = out["tags.model"]
    out["latent_dim"] = out["tags.latent_dim"].astype(int)
    out["seed"] = out[f"tags.{SEED_TAG}"].astype(int)
    cols = [c for c in out if c.startswith("metrics.test/")]
    out = out[["run_id", "model", "latent_dim", "seed", *cols]].rename(columns=lambda c: c.removeprefix("metrics."))
    return out.sort_values(["latent_dim", "model", "seed"]).drop_duplicates(
        ["model", "latent_dim", "seed"], keep="last"
    )


def aggregate(reps: pd.DataFrame, metrics: list[str], by: list[str]) -> pd.DataFrame:
    """One row per group of replicates: for each metric its mean, 95 % t half-width (HW) and n (N)."""
    rows = []
    for keys, g in reps.groupby(by):
        row = dict(zip(by, keys if isinstance(keys, tuple) else (keys,), strict=False))
        row["n"] = len(g)
        for m in metrics:
            if m in g:
                row[m], row[m + HW], row[m + N] = t_interval(g[m].tolist())
        rows.append(row)
    return pd.DataFrame(rows)


def _order(df: pd.DataFrame) -> pd.DataFrame:
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    return df.sort_values(["latent_dim", "model"], key=lambda s: s.map(order) if s.name == "model" else s).reset_index(
        drop=True
    )


def build_report(runs: pd.DataFrame) -> Report:
    """The comparison tables from a study's child runs (mlflow.search_runs output)."""
    sel = compared_runs(runs)
    if sel.empty:
        raise BenchError("the study has no compared runs yet: run it to the end with its [baselines] first")
    vae = sel[sel["model"] == "vae"]
    vcols = [f"metrics.{m}" for m in VAE_METRICS if f"metrics.{m}" in vae]
    vae_table = (
        vae[["latent_dim", *vcols]].rename(columns=lambda c: c.removeprefix("metrics.")).sort_values("latent_dim")
    )
    rd = rate_distortion_points(runs, set(vae["run_id"]))  # every finished trial's rate and distortion
    reps = replicate_runs(runs, sel)
    if not reps.empty:
        report = replicate_report(reps, sel[["run_id", "model", "latent_dim"]], vae_table.reset_index(drop=True), rd)
    else:
        cols = [f"metrics.{m}" for m in SHARED_METRICS if f"metrics.{m}" in sel]
        table = _order(sel[["model", "latent_dim", *cols]].rename(columns=lambda c: c.removeprefix("metrics.")))
        report = Report(
            table,
            vae_table.reset_index(drop=True),
            sel[["run_id", "model", "latent_dim"]],
            verdicts=significance_tests(table, None),
            rd_points=rd,
        )
    scores = trial_scores(runs)
    if not scores.empty:
        hw = "test/elbo" + HW  # the training seed's noise, where there are replicates
        noise = (
            dict(zip(report.vae_table["latent_dim"], report.vae_table[hw], strict=False))
            if hw in report.vae_table
            else None
        )
        report.tuning, report.tuning_curve = expected_best_table(scores, noise=noise)
    report.sanity = latent_sanity(report.vae_table, report.tuning)
    return report


def replicate_report(
    reps: pd.DataFrame, runs: pd.DataFrame, compared_vae: pd.DataFrame | None = None, rd: pd.DataFrame | None = None
) -> Report:
    """The report of a study with replicates: every cell aggregated over them, and the verdicts.

    The VAE table's paper-protocol NLL (k = 5000), measured once on the compared run, is taken from
    `compared_vae` (columns latent_dim and the PAPER_METRICS it has).
    """
    table = _order(aggregate(reps, [m for m in SHARED_METRICS if m in reps], ["model", "latent_dim"]))
    vae_reps = reps[reps["model"] == "vae"]
    vae_table = aggregate(vae_reps, [m for m in VAE_TEST if m in vae_reps], ["latent_dim"])
    if compared_vae is not None and not vae_table.empty:
        paper = [m for m in PAPER_METRICS if m in compared_vae and compared_vae[m].notna().any()]
        if paper:
            vae_table = vae_table.merge(compared_vae[["latent_dim", *paper]], on="latent_dim", how="left")
    return Report(
        table,
        vae_table,
        runs,
        replicates=reps.reset_index(drop=True),
        verdicts=significance_tests(table, reps),
        rd_points=rd,
    )


def significance_tests(table: pd.DataFrame, reps: pd.DataFrame | None, alpha: float = VERDICT_ALPHA) -> pd.DataFrame:
    """For each (latent size, metric): the best model by mean, Welch-tested against each other model.

    One row per (latent_dim, metric, other model) with both means, the raw p-value and the Holm-adjusted one
    (the family is every test in the table). Without replicates (reps None or empty) p is NaN: no verdict.
    """
    rows = []
    for latent, g in table.groupby("latent_dim"):
        for m, direction in SHARED_METRICS.items():
            if direction == "none" or m not in g or g[m].notna().sum() < 2:  # e.g. a standard error: no winner
                continue
            g2 = g[g[m].notna()]
            best = g2.loc[g2[m].idxmax() if direction == "higher" else g2[m].idxmin()]
            for _, other in g2[g2["model"] != best["model"]].iterrows():
                p = math.nan
                if reps is not None and not reps.empty:
                    size = reps["latent_dim"] == latent
                    p = welch_p(
                        reps.loc[size & (reps["model"] == best["model"]), m].tolist(),
                        reps.loc[size & (reps["model"] == other["model"]), m].tolist(),
                    )
                rows.append(
                    {
                        "latent_dim": latent,
                        "metric": m,
                        "better": direction,
                        "best": best["model"],
                        "other": other["model"],
                        "best_mean": best[m],
                        "other_mean": other[m],
                        "p": p,
                    }
                )
    out = pd.DataFrame(
        rows, columns=["latent_dim", "metric", "better", "best", "other", "best_mean", "other_mean", "p"]
    )
    out["p_holm"] = holm(out["p"].tolist()) if len(out) else []
    out["significant"] = out["p_holm"] < alpha  # NaN compares False
    return out


def verdict_table(verdicts: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """latent_dim x metric: the best model when it beats every other significantly, "tie: a, b" when some
    other model is within the noise (the models the data cannot tell apart), "n/a" without a test."""
    rows = []
    for latent in sorted(table["latent_dim"].unique()):
        row = {"latent_dim": latent}
        for m, direction in SHARED_METRICS.items():
            if m not in table or direction == "none":
                continue
            v = verdicts[(verdicts["latent_dim"] == latent) & (verdicts["metric"] == m)]
            if v.empty or v["p"].isna().any():
                row[m] = NA
            elif v["significant"].all():
                row[m] = v["best"].iloc[0]
            else:
                row[m] = "tie: " + ", ".join([v["best"].iloc[0], *v.loc[~v["significant"], "other"]])
        rows.append(row)
    return pd.DataFrame(rows)


def fmt_cell(mean: float, hw: float, n: int | None = None, row_n: int | None = None) -> str:
    """'mean ± half-width', 4 significant digits; '(n=k)' when this cell has fewer replicates than its row."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    text = f"{mean:.4g}" if hw is None or math.isnan(hw) else f"{mean:.4g} ± {hw:.2g}"
    return text + (f" (n={n})" if n is not None and row_n is not None and n != row_n else "")


def display_table(table: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """The aggregated table as text cells: keys, n, then 'mean ± hw' per metric."""
    keys = [c for c in ("model", "latent_dim") if c in table]
    out = table[keys].copy()
    if "n" in table:
        out["n"] = table["n"].astype(int)
    for m in metrics:
        if m not in table:
            continue
        if m + HW in table:
            out[m] = [fmt_cell(r[m], r[m + HW], int(r[m + N]), int(r["n"])) for _, r in table.iterrows()]
        else:
            out[m] = [fmt_cell(v, math.nan) for v in table[m]]
    return out


def winners(table: pd.DataFrame) -> pd.DataFrame:
    """For each latent size and metric, the best model: where the VAE wins and where it loses."""
    rows = []
    for latent, g in table.groupby("latent_dim"):
        row = {"latent_dim": latent}
        for m, direction in SHARED_METRICS.items():
            if direction != "none" and m in g and g[m].notna().any():
                idx = g[m].idxmax() if direction == "higher" else g[m].idxmin()
                row[m] = g.loc[idx, "model"]
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def write_report(report: Report, out: Path, tracker=None, study: str = "") -> list[Path]:
    """Tables, plots and image grids into `out`; returns the files written."""
    import matplotlib.pyplot as plt

    from bench.plots import metric_vs_latent

    out.mkdir(parents=True, exist_ok=True)
    files = []
    report.table.to_csv(out / "comparison.csv", index=False)
    report.vae_table.to_csv(out / "vae_metrics.csv", index=False)
    report.verdicts.to_csv(out / "verdicts.csv", index=False)
    head = [
        f"# {study}: VAE vs autoencoder vs PCA",
        "",
        "Test set, nats per image for BCE, squared error per image for MSE; accuracies in [0, 1]; "
        "sample_fd is a Fréchet distance and sample_kid a squared MMD (lower is better; sample_kid_se its "
        "standard error); sample_precision and sample_recall are fractions (fidelity and diversity, higher is better); "
        "ood_auroc is 0.5 at chance, above when the model finds the OOD images less likely, "
        "below when it prefers them.",
        "",
    ]
    verdict_note = (
        f"Welch t-test of the best mean against each other model, p-values Holm-adjusted across the "
        f"whole table (family-wise alpha {VERDICT_ALPHA}); a winner is named only when it beats every other "
        f'model, "tie" lists the models the replicates cannot tell apart.'
    )

    def closing(vae_table_md: str) -> list[str]:
        """The sections every report ends with: the verdicts, then the VAE's own metrics."""
        return [
            "## Verdicts",
            "",
            verdict_note,
            "",
            to_markdown(report.verdict_table()),
            "",
            "## VAE only",
            "",
            vae_table_md,
            "",
        ]

    if report.has_replicates:
        seeds = sorted(report.replicates["seed"].unique())
        md = [
            *head,
            f"Each cell: mean ± {LEVEL:.0%} t-interval half-width over n seed replicates "
            f"(seeds {', '.join(map(str, seeds))}: each compared configuration trained again, every random draw of "
            "its scoring from the seed); not the selected trial itself.",
            "",
            to_markdown(display_table(report.table, list(SHARED_METRICS))),
            "",
            *closing(to_markdown(display_table(report.vae_table, [m for m in VAE_METRICS if m in report.vae_table]))),
        ]
    else:
        md = [
            *head,
            "One run per cell (n = 1): no intervals, and no verdicts (add [replicates] to the study).",
            "",
            to_markdown(report.table),
            "",
            "## Best model per latent size",
            "",
            "By point estimate; whether the differences beat the noise is unknown without replicates.",
            "",
            to_markdown(winners(report.table)),
            "",
            *closing(to_markdown(report.vae_table)),
        ]
    files += _tuning(report, out, md)
    files += _rate_distortion(report, out, study, md)
    (out / "comparison.md").write_text("\n".join(md), encoding="utf-8")
    files += [out / "comparison.csv", out / "vae_metrics.csv", out / "verdicts.csv", out / "comparison.md"]
    for m in SHARED_METRICS:
        if m in report.table:
            fig = metric_vs_latent(report.table, m)
            path = out / f"{m.replace('/', '_')}.png"
            fig.savefig(path)
            plt.close(fig)
            files.append(path)
    if tracker is not None:
        files += _image_comparisons(report, out, tracker)
    return files


def _tuning(report: Report, out: Path, md: list[str]) -> list[Path]:
    """expected_best.png and tuning.csv: is each latent size's search budget enough (bench.tuning); a section of
    comparison.md with the sizes that fit worse than a smaller one."""
    import matplotlib.pyplot as plt

    files = []
    if not report.tuning.empty:
        report.tuning.to_csv(out / "tuning.csv", index=False)
        report.tuning_curve.to_csv(out / "expected_best.csv", index=False)
        fig = expected_best_figure(report.tuning_curve)
        fig.savefig(out / "expected_best.png")
        plt.close(fig)
        files += [out / "tuning.csv", out / "expected_best.csv", out / "expected_best.png"]
        flagged = report.under_tuned
        md += [
            "## Is the search's budget enough?",
            "",
            "Per latent size: its trials (pruned ones count with their last validation ELBO), the best "
            "`val/elbo`, and the gain of the last doubling of trials in the expected best of n trials (the "
            "expected maximum of n of them drawn without replacement, Dodge et al. 2019; curve and "
            f"{LEVEL:.0%} bootstrap band in `expected_best.png`, its half-width at all trials `band_hw`). "
            "**under-tuned**: that gain is larger than the size's training-seed noise (the replicates' 95 % "
            "half-width of test ELBO) and than 0.5 nats: the curve still rises, so more trials would likely "
            "find a better VAE of that size.",
            "",
            to_markdown(
                report.tuning.assign(under_tuned=["**under-tuned**" if u else "" for u in report.tuning["under_tuned"]])
            ),
            "",
            f"Under-tuned: {', '.join(map(str, flagged))}." if flagged else "No size is under-tuned.",
            "",
        ]
    if report.search_spread_text():
        report.search_best.to_csv(out / "search_seeds.csv", index=False)
        files.append(out / "search_seeds.csv")
        md += [
            "## The search's own noise",
            "",
            "The same study searched again with other sampler seeds (`--search-seeds`): per latent size, the spread "
            "of the best `val/elbo` across the searches, beside the replicates' 95 % half-width of `test/elbo` "
            "(the training seed's noise).",
            "",
            "```",
            report.search_spread_text(),
            "```",
            "",
        ]
    md += [
        "## Over latent size",
        "",
        "With an equal budget per size, test ELBO should not fall, nor NLL rise, as the latent size grows, "
        "beyond the sum of the two sizes' intervals." + ("" if report.sanity else " None does."),
        "",
    ]
    md += [f"- {line}" for line in report.sanity] + ([""] if report.sanity else [])
    return files


def _rate_distortion(report: Report, out: Path, study: str, md: list[str]) -> list[Path]:
    """rate_distortion.png and .csv: every finished trial's validation rate and distortion per latent
    size, against the compared AE's and PCA's test/code_recon_bce; a section of comparison.md."""
    import matplotlib.pyplot as plt

    pts = report.rd_points
    if pts is None or pts.empty:
        return []
    refs = report.table[report.table["model"].isin(["ae", "pca"])]
    refs = (
        refs[["model", "latent_dim", REFERENCE]].rename(columns={REFERENCE: "distortion"})
        if REFERENCE in refs
        else refs.iloc[0:0]
    )
    pts.to_csv(out / "rate_distortion.csv", index=False)
    fig = rate_distortion_figure(pts, refs, title=study or "rate-distortion")
    fig.savefig(out / "rate_distortion.png")
    plt.close(fig)
    front = pts[pts["pareto"]][["latent_dim", "trial", "rate", "distortion", "compared"]]
    md += [
        "## Rate-distortion frontier",
        "",
        "Each trial's last-epoch validation KL (rate) and reconstruction term (distortion), nats per image; "
        "the Pareto-optimal trials per latent size below, all trials in `rate_distortion.csv`, "
        "the picture in `rate_distortion.png` (AE and PCA lines: their test `code_recon_bce`).",
        "",
        to_markdown(front.assign(elbo=-(front["rate"] + front["distortion"]))),
        "",
    ]
    return [out / "rate_distortion.csv", out / "rate_distortion.png"]


def _image_comparisons(report: Report, out: Path, tracker) -> list[Path]:
    """Sample and reconstruction grids of the three models side by side, one figure per latent size."""
    import matplotlib.pyplot as plt
    from matplotlib.image import imread

    from bench.plots import image_row_figure

    files = []
    with tempfile.TemporaryDirectory(prefix="vaebench-") as tmp:
        for latent, g in report.runs.groupby("latent_dim"):
            for kind in IMAGE_KEYS:
                images = {}
                for r in g.sort_values(
                    "model", key=lambda s: s.map({m: i for i, m in enumerate(MODEL_ORDER)})
                ).itertuples():
                    try:
                        p = tracker.download(r.run_id, grid_file(kind), Path(tmp) / r.run_id)
                    except Exception:
                        continue
                    img = imread(p)
                    images[r.model] = img if img.dtype == "uint8" else (img * 255).round().astype("uint8")
                if images:
                    fig = image_row_figure(images, f"{kind}, latent size {latent}")
                    path = out / f"{kind}_latent{latent}.png"
                    fig.savefig(path)
                    plt.close(fig)
                    files.append(path)
    return files


def make_report(tracker, study: str, parent_run_id: str, out: Path, log: bool = True) -> Report:
    """Read the parent's child runs, write the report to `out` and (if log) to the parent run."""
    df = child_runs(tracker, parent_run_id)
    report = build_report(df)
    best = best_per_search(tracker.trial_runs())
    # this study and its search-seed siblings (bench.run --search-seeds: <study>-search1, ...)
    report.search_best = best[(best["study"] == study) | best["study"].str.startswith(f"{study}-search")]
    write_report(report, out, tracker, study)
    if log:
        tracker.log_dir(parent_run_id, out, "report")
    return report


def child_runs(tracker, parent_run_id: str) -> pd.DataFrame:
    return tracker.runs_frame(parent_run_id)


def report_folder(study: str, given: str | None = None) -> Path:
    """Where a study's report is written: `given`, else reports/<study> in the working directory.

    The name is checked again here, where it becomes a path: `../x` must never leave reports/.
    """
    return Path(given or f"reports/{check_study_name(study)}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.report",
        description="Compare the VAE with the autoencoder and PCA baselines of a finished study, from MLflow.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--study", default="latent", help="study name (its MLflow experiment)")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    p.add_argument("--parent-run", default=None, help="the study's parent run id (default: the latest one)")
    p.add_argument("--out", default=None, help="output folder (default: reports/<study>)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bench.tracking import Tracker, check_tracking_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking_uri(uri)
    tracker = Tracker.open_existing(uri, args.study)
    parent = args.parent_run or tracker.latest_parent()
    if parent is None:
        raise BenchError(f"experiment {args.study!r} has no study run")
    out = report_folder(args.study, args.out)
    report = make_report(tracker, args.study, parent, out, log=not args.no_log)
    print(report.printed())
    print(f"\nreport written to {out}/comparison.md" + ("" if args.no_log else f" and logged to run {parent}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
