"""Evaluate a trained run on a labelled split: metrics.json, per_class.csv and confusion.png.

    from migfuse.fuse.evaluate import evaluate
    report = evaluate("runs/cmtf", split="validation")   # -> RUN/eval_validation/

Micro-gestures: top-1, top-5, mean class accuracy, per-class table, 32x32 confusion matrix.
Emotion: accuracy, F1 (Win = positive), ROC-AUC, 2x2 confusion matrix.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from migfuse.fuse.metrics import task_metrics
from migfuse.fuse.plots import confusion_png
from migfuse.fuse.predict import load_run, predict_split

log = logging.getLogger(__name__)


def evaluate(run: str | Path, split: str = "test", cache: str | Path | None = None, data: str | Path | None = None,
             allow_missing: bool = False) -> dict[str, Any]:
    """Metrics of the run's best checkpoint on the labelled samples of `split`; files in RUN/eval_<split>/.

    Returns the metrics dict, plus "files" (paths written). UserError when the split has no labels.
    """
    r = load_run(run, cache, data)
    tokens, probs = predict_split(r, split, allow_missing, labelled_only=True)
    names = r.config["classes"]
    m = task_metrics(r.task, probs.numpy(), tokens.labels.numpy(), names)
    out = Path(run) / f"eval_{split}"
    out.mkdir(parents=True, exist_ok=True)
    headline = (f"top-1 {m['top1']:.1%}, top-5 {m['top5']:.1%}, mean class {m['mean_class_accuracy']:.1%}"
                if r.task == "mg" else f"accuracy {m['accuracy']:.1%}, F1 {m['f1']:.3f}, AUC {m['roc_auc']:.3f}")
    title = f"{Path(run).name} - {split} ({m['n']} {'clips' if r.task == 'mg' else 'videos'}): {headline}"
    files = {"metrics": out / "metrics.json", "confusion": confusion_png(m["confusion"], names, out / "confusion.png", title)}
    if r.task == "mg":
        files["per_class"] = out / "per_class.csv"
        with open(files["per_class"], "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["class", "name", "support", "correct", "accuracy", "precision"])
            w.writeheader()
            w.writerows(m["per_class"])
    m = {"split": split, "task": r.task, **m, "files": {k: str(v) for k, v in files.items()}}
    files["metrics"].write_text(json.dumps(m, indent=2))
    log.info("%s", title)
    return m
