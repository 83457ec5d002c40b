"""`python -m bench.report --study latent`: VAE vs autoencoder vs PCA, read back from MLflow.

Builds the comparison table (Markdown and CSV), metric-vs-latent-size plots and side-by-side
image grids from the study's runs, writes them to a folder and to the parent run's artifacts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.errors import BenchError, HelpFormatter, cli_main
from bench.metrics import COMPARED, VAE_TEST, better
from bench.tags import IMAGE_KEYS, grid_file

# metrics every model has, in the order the table shows them, with the direction that is better
SHARED_METRICS = {m: better(m) for m in COMPARED}
VAE_METRICS = list(VAE_TEST)
MODELS = ("vae", "ae", "pca")


@dataclass
class Report:
    table: pd.DataFrame  # one row per (model, latent_dim), the shared metrics
    vae_table: pd.DataFrame  # one row per latent_dim, the VAE-only metrics
    runs: pd.DataFrame  # the compared runs (run_id, model, latent_dim)


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


def build_report(runs: pd.DataFrame) -> Report:
    """The comparison tables from a study's child runs (mlflow.search_runs output)."""
    sel = compared_runs(runs)
    if sel.empty:
        raise BenchError("the study has no compared runs yet: run it to the end with its [baselines] first")
    cols = [f"metrics.{m}" for m in SHARED_METRICS if f"metrics.{m}" in sel]
    table = sel[["model", "latent_dim", *cols]].rename(columns=lambda c: c.removeprefix("metrics."))
    order = {m: i for i, m in enumerate(MODELS)}
    table = table.sort_values(["latent_dim", "model"], key=lambda s: s.map(order) if s.name == "model" else s)
    vae = sel[sel["model"] == "vae"]
    vcols = [f"metrics.{m}" for m in VAE_METRICS if f"metrics.{m}" in vae]
    vae_table = vae[["latent_dim", *vcols]].rename(columns=lambda c: c.removeprefix("metrics.")).sort_values("latent_dim")
    return Report(table.reset_index(drop=True), vae_table.reset_index(drop=True), sel[["run_id", "model", "latent_dim"]])


def winners(table: pd.DataFrame) -> pd.DataFrame:
    """For each latent size and metric, the best model: where the VAE wins and where it loses."""
    rows = []
    for latent, g in table.groupby("latent_dim"):
        row = {"latent_dim": latent}
        for m, better in SHARED_METRICS.items():
            if m in g and g[m].notna().any():
                idx = g[m].idxmax() if better == "higher" else g[m].idxmin()
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
    from bench.plots import image_row_figure, metric_vs_latent

    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    files = []
    report.table.to_csv(out / "comparison.csv", index=False)
    report.vae_table.to_csv(out / "vae_metrics.csv", index=False)
    best = winners(report.table)
    md = [f"# {study}: VAE vs autoencoder vs PCA", "",
          "Test set, nats per image for BCE, squared error per image for MSE; accuracies in [0, 1]; "
          "sample_fd is a Fréchet distance (lower is better).", "",
          to_markdown(report.table), "", "## Best model per latent size", "", to_markdown(best), "",
          "## VAE only", "", to_markdown(report.vae_table), ""]
    (out / "comparison.md").write_text("\n".join(md), encoding="utf-8")
    files += [out / "comparison.csv", out / "vae_metrics.csv", out / "comparison.md"]
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
                for r in g.sort_values("model", key=lambda s: s.map({m: i for i, m in enumerate(MODELS)})).itertuples():
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
    write_report(report, out, tracker, study)
    if log:
        tracker.log_dir(parent_run_id, out, "report")
    return report


def child_runs(tracker, parent_run_id: str) -> pd.DataFrame:
    return tracker.runs_frame(parent_run_id)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.report",
        description="Compare the VAE with the autoencoder and PCA baselines of a finished study, from MLflow.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--study", default="latent", help="study name (its MLflow experiment)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
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
    out = Path(args.out or f"reports/{args.study}")
    report = make_report(tracker, args.study, parent, out, log=not args.no_log)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(report.table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nreport written to {out}/comparison.md" + ("" if args.no_log else f" and logged to run {parent}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
