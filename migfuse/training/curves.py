"""curves.png of a run: loss, validation metric and learning rate per epoch (matplotlib, imported lazily).

Without matplotlib the png is skipped with one warning line; training does not need it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from migfuse.atomic_write import open_atomic

log = logging.getLogger(__name__)


def plot_curves(rows: Sequence[Mapping[str, Any]], path: str | Path, metric: str | None = None,
                title: str = "") -> Path | None:
    """Write three panels from metrics rows ({"epoch", "train_loss", "val_loss"?, metric?, "lr"}) to `path`.

    `metric` is the validation column to draw (e.g. "val_top1"); missing or None values leave gaps.
    Returns the path, or None when matplotlib is missing or there is nothing to draw."""
    if not rows:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: %s skipped (pip install matplotlib to get it)", path)
        return None

    def column(key: str) -> list[float]:
        return [float("nan") if r.get(key) is None else float(r[key]) for r in rows]

    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key in ("train_loss", "val_loss"):
        if any(r.get(key) is not None for r in rows):
            axes[0].plot(epochs, column(key), marker=".", label=key)
    axes[0].set_title("loss")
    axes[0].legend(loc="best", fontsize="small")
    if metric and any(r.get(metric) is not None for r in rows):
        axes[1].plot(epochs, column(metric), marker=".", color="tab:green")
        axes[1].set_title(metric)
    else:
        axes[1].set_title("no validation metric")
    if any(r.get("lr") is not None for r in rows):
        axes[2].plot(epochs, column("lr"), marker=".", color="tab:orange")
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    try:
        with open_atomic(path, "wb") as f:
            fig.savefig(f, format="png", dpi=80)
    finally:
        plt.close(fig)
    return path
