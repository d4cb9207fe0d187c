"""Evaluate a trained run on a labelled split: metrics.json, per_class.csv and charts.

    from migfuse.fuse.evaluate import evaluate
    report = evaluate("runs/cmtf", split="validation")   # -> RUN/eval_validation/

Micro-gestures: top-1, top-5, mean class accuracy, per-class table, 32x32 confusion matrix.
Emotion: accuracy, F1 (Win = positive), ROC-AUC, 2x2 confusion matrix, ROC curve.
Charts (confusion.png, per_class.png, roc.png) need matplotlib (`plots` extra, see fuse/plots.py).
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np

from migfuse.errors import UserError
from migfuse.atomic_write import open_atomic, write_text
from migfuse.fuse.metrics import per_class_rows, roc_curve, task_metrics, to_json
from migfuse.fuse.plots import write_plots
from migfuse.fuse.predict import load_run, predict_split

log = logging.getLogger(__name__)


def evaluate(run: str | Path, split: str = "test", cache: str | Path | None = None, data: str | Path | None = None,
             allow_missing: bool = False, runtime: Any = None) -> dict[str, Any]:
    """Metrics of the run's best checkpoint on the labelled samples of `split`; files in RUN/eval_<split>/.

    Returns the metrics dict, plus "files" (paths written). UserError when the split has no labels.
    `runtime`: where the head runs (`migfuse.runtime.Runtime`; None: the CPU in fp32).
    """
    r = load_run(run, cache, data)
    differs = r.data_differs(split)
    kept = Path(run) / f"eval_{split}"
    if differs and data is None:  # the run's own PREPARED folder was prepared again with other clips or labels
        raise UserError(f"{r.config['data']} has {differs} in split {split} than when run {run} was trained, so its "
                        f"evaluation in {kept} is kept: train the run again on this data (`migfuse fuse train ... "
                        f"--out {run} --overwrite`), or pass the data it was trained with as --data")
    if differs:
        raise UserError(f"--data {data} has {differs} in split {split} than {r.config['data']}, the data run {run} "
                        f"was trained with, so its evaluation in {kept} is kept (`fuse eval` scores a run on the "
                        f"data it was trained with): score that data with `migfuse fuse predict {run} --data {data} "
                        f"--split {split} --out SCORES.npz`, then `migfuse score SCORES.npz --data {data} "
                        f"--split {split}`")
    tokens, probs = predict_split(r, split, allow_missing, labelled_only=True, runtime=runtime)
    names = r.config["classes"]
    m = task_metrics(r.task, probs.numpy(), tokens.labels.numpy(), names)
    out = Path(run) / f"eval_{split}"
    out.mkdir(parents=True, exist_ok=True)
    headline = (f"top-1 {m['top1']:.1%}, top-5 {m['top5']:.1%}, mean class {m['mean_class_accuracy']:.1%}"
                if r.task == "mg" else f"accuracy {m['accuracy']:.1%}, F1 {m['f1']:.3f}, AUC {m['roc_auc']:.3f}")
    title = f"{Path(run).name} - {split} ({m['n']} {'clips' if r.task == 'mg' else 'videos'}): {headline}"
    m.setdefault("per_class", per_class_rows(np.asarray(m["confusion"]), list(names)))
    files = {"metrics": out / "metrics.json", "per_class": out / "per_class.csv"}
    write_per_class_csv(m["per_class"], files["per_class"])
    roc = roc_curve(probs.numpy()[:, 1], tokens.labels.numpy()) if r.task == "emotion" else None
    files.update(write_plots(m, names, out, title, roc=roc))
    m = {"split": split, "task": r.task, **m, "files": {k: str(v) for k, v in files.items()}}
    write_text(files["metrics"], to_json(m))
    log.debug("%s", title)
    return m


def write_per_class_csv(rows: list[dict], path: Path) -> Path:
    """per_class.csv: class, name, support, correct, accuracy, precision (empty when undefined)."""
    with open_atomic(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["class", "name", "support", "correct", "accuracy", "precision"])
        w.writeheader()
        w.writerows(rows)
    return path

