"""Evaluation charts with matplotlib: confusion matrix, per-class accuracy, ROC curve (emotion).

    from migfuse.fuse.plots import write_plots
    files = write_plots(metrics, class_names, out_dir, title)   # {"confusion": Path, "per_class_chart": Path}

matplotlib is the optional `plots` extra (pulled in by `fuse`). It is imported only when a chart is
drawn, through matplotlib's object API (`Figure`, no pyplot and no global backend switch), so
importing this module, `fuse eval` and `score` work without it: `write_plots` then writes no chart
and logs one warning naming the extra; the metrics files are written either way.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from migfuse.atomic_write import open_atomic

log = logging.getLogger(__name__)

PLOTS_EXTRA_HINT = "pip install 'migfuse[plots]'"


def plots_available() -> bool:
    """True when matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with open_atomic(path, "wb") as f:
        fig.savefig(f, format=path.suffix.lstrip(".") or "png")
    return path


def confusion_png(cm: Any, class_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Draw the (C, C) count matrix `cm` (rows = true class, columns = predicted) to `path`.

    Cells are shaded by the share of the true class (row-normalised recall), counts are written
    in the non-empty cells; the diagonal is outlined.
    """
    cm = np.asarray(cm)
    c = cm.shape[0]
    support = cm.sum(1, keepdims=True)
    rates = np.divide(cm, support, out=np.zeros(cm.shape, float), where=support > 0)
    size = max(4.5, 0.32 * c + 3.0)
    fig = _figure(size + 1.2, size)
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    labels = [f"{k} {n}" for k, n in enumerate(class_names)]
    ax.set_xticks(range(c), labels, rotation=90, fontsize=7 if c > 8 else 10)
    ax.set_yticks(range(c), labels, fontsize=7 if c > 8 else 10)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for r in range(c):
        ax.add_patch(_square(r))
        for k in range(c):
            if cm[r, k]:
                ax.text(k, r, str(int(cm[r, k])), ha="center", va="center", fontsize=6 if c > 8 else 12,
                        color="white" if rates[r, k] > 0.5 else "black")
    fig.colorbar(image, ax=ax, label="share of true class", shrink=0.8)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _square(k: int):
    from matplotlib.patches import Rectangle

    return Rectangle((k - 0.5, k - 0.5), 1, 1, fill=False, edgecolor="tab:red", linewidth=0.8)


def per_class_png(per_class: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Horizontal bars of per-class accuracy (recall) with each class's support, and the mean line.

    per_class: rows with "class", "name", "support", "accuracy" (as `metrics.mg_metrics` gives);
    classes without samples are drawn as empty rows labelled "n=0".
    """
    rows = list(per_class)
    fig = _figure(8.0, max(3.0, 0.26 * len(rows) + 1.4))
    ax = fig.subplots()
    y = np.arange(len(rows))
    acc = np.array([r["accuracy"] if r["accuracy"] is not None else 0.0 for r in rows])
    ax.barh(y, 100 * acc, color="tab:blue")
    present = [r for r in rows if r["support"]]
    if present:
        mean = 100 * float(np.mean([r["accuracy"] for r in present]))
        ax.axvline(mean, color="tab:red", linestyle="--", linewidth=1, label=f"mean class accuracy {mean:.1f}%")
        ax.legend(loc="lower right", fontsize=8)
    for k, r in enumerate(rows):
        ax.text(101, k, f"n={r['support']}", va="center", fontsize=7)
    ax.set_yticks(y, [f"{r['class']} {r['name']}" for r in rows], fontsize=7 if len(rows) > 8 else 10)
    ax.invert_yaxis()
    ax.set_xlim(0, 112)
    ax.set_xlabel("accuracy of the class (%)")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def roc_png(fpr: Any, tpr: Any, auc: float, path: str | Path, title: str = "", positive: str = "Win") -> Path:
    """The ROC curve (false-positive rate vs true-positive rate of `positive`) with its AUC."""
    fig = _figure(5.0, 5.0)
    ax = fig.subplots()
    ax.plot(fpr, tpr, color="tab:blue", linewidth=2, label=f"{positive} positive, AUC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def write_plots(metrics: dict, class_names: Sequence[str], out: str | Path, title: str = "",
                roc: tuple[Any, Any] | None = None) -> dict[str, Path]:
    """The charts of an evaluation in `out`: confusion.png, per_class.png and, given `roc`, roc.png.

    Returns {"confusion", "per_class_chart", "roc"} -> path for those written; {} with one warning
    when matplotlib is not installed.
    metrics: "confusion" (C, C), optional "per_class" rows and "roc_auc" (as `metrics` computes them).
    roc: (fpr, tpr) of `metrics.roc_curve` (emotion scores; not for top-1-only predictions).
    """
    from migfuse.fuse.metrics import per_class_rows

    if not plots_available():
        log.warning("matplotlib is not installed: no charts written (metrics files are); %s", PLOTS_EXTRA_HINT)
        return {}
    out = Path(out)
    files = {"confusion": confusion_png(metrics["confusion"], class_names, out / "confusion.png", title)}
    rows = metrics.get("per_class") or per_class_rows(np.asarray(metrics["confusion"]), list(class_names))
    files["per_class_chart"] = per_class_png(rows, out / "per_class.png", title)
    if roc is not None and len(roc[0]):
        files["roc"] = roc_png(roc[0], roc[1], metrics["roc_auc"], out / "roc.png", title)
    return files
