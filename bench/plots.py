"""Matplotlib figures a person would rather look at than read: latent scatter, metric curves.

Each function returns a Figure; bench.tracking logs it and closes it.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def latent_scatter(codes: np.ndarray, labels: np.ndarray, title: str = "test codes (posterior means)"):
    """2-D codes coloured by class, with a legend of the ten classes."""
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=110)
    sc = ax.scatter(codes[:, 0], codes[:, 1], c=labels, cmap="tab10", s=3, alpha=0.7, vmin=-0.5, vmax=9.5)
    fig.colorbar(sc, ax=ax, ticks=range(10), label="class")
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def metric_vs_latent(table, metric: str, title: str | None = None, hw_suffix: str = ".hw95"):
    """One line per model of `metric` against latent size (log2 x axis); `table` is a DataFrame
    with columns model, latent_dim and the metric, and optionally `metric + hw_suffix`: the
    half-width of each point's interval, drawn as an error bar."""
    fig, ax = plt.subplots(figsize=(5.6, 4.0), dpi=110)
    hw = metric + hw_suffix
    for model, group in table.groupby("model"):
        g = group.sort_values("latent_dim")
        if hw in g and g[hw].notna().any():
            ax.errorbar(g["latent_dim"], g[metric], yerr=g[hw].fillna(0), marker="o", capsize=3, label=model)
        else:
            ax.plot(g["latent_dim"], g[metric], marker="o", label=model)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("latent size")
    ax.set_ylabel(metric)
    ax.set_title(title or (f"{metric} (mean ± 95 % interval)" if hw in table else metric))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def image_row_figure(images: dict[str, np.ndarray], title: str):
    """Grids side by side, one per model: {label: (H, W, 3) uint8}."""
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.9), dpi=110, squeeze=False)
    for ax, (label, img) in zip(axes[0], images.items(), strict=False):
        ax.imshow(img)
        ax.set_title(label)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
