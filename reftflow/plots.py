"""Training curves as PNG figures for MLflow (people would rather look than read a CSV); the evaluation's
report figures are reftflow/eval_report.py."""

from __future__ import annotations

from typing import Mapping, Sequence


def pyplot():
    """matplotlib.pyplot on the Agg backend: no display, never opens a window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_figure(rows: Sequence[Mapping[str, float]], keys: Sequence[str], title: str):
    """One small panel per metric against `step`; keys missing from the rows are skipped."""
    plt = pyplot()
    keys = [k for k in keys if any(k in r for r in rows)]
    cols = max(1, min(3, len(keys)))
    nrows = max(1, -(-len(keys) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    for ax, key in zip(axes.flat, keys):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 40 else None)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
