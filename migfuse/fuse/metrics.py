"""Classification metrics in numpy (no sklearn): micro-gesture top-k / mean class accuracy /
confusion, emotion accuracy / F1 / ROC-AUC.

`probs` are (N, C) class scores (any monotone scores work), `labels` (N,) int class indices.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def topk_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the k highest scores (ties: lower index first)."""
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean()) if len(labels) else float("nan")


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def per_class_rows(cm: np.ndarray, class_names: list[str]) -> list[dict]:
    """One dict per class of the (C, C) confusion matrix: class, name, support, correct,
    accuracy (recall; None without samples), precision (None when never predicted)."""
    support, predicted = cm.sum(1), cm.sum(0)
    rows = []
    for c, name in enumerate(class_names):
        tp = int(cm[c, c])
        rows.append({
            "class": c, "name": name, "support": int(support[c]), "correct": tp,
            "accuracy": tp / support[c] if support[c] else None,
            "precision": tp / predicted[c] if predicted[c] else None,
        })
    return rows


def mg_metrics(probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """top1, top5, mean_class_accuracy (over classes present in `labels`), per-class rows, confusion."""
    preds = probs.argmax(1)
    cm = confusion_matrix(labels, preds, len(class_names))
    support = cm.sum(1)
    per_class = per_class_rows(cm, class_names)
    present = support > 0
    return {
        "n": int(len(labels)),
        "top1": topk_accuracy(probs, labels, 1),
        "top5": topk_accuracy(probs, labels, 5),
        "mean_class_accuracy": float((np.diag(cm)[present] / support[present]).mean())
                               if present.any() else float("nan"),
        "per_class": per_class,
        "confusion": cm.tolist(),
    }


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve for binary `labels` (1 = positive), ties counted half (Mann-Whitney U).

    NaN when only one class is present."""
    pos, neg = labels == 1, labels == 0
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average rank of tied scores.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr), each (K,) float64 from (0, 0) to (1, 1), one step per distinct score
    (thresholds from high to low; tied scores move both rates at once, as the AUC counts them).

    Empty arrays when only one class is present."""
    pos, neg = int((labels == 1).sum()), int((labels == 0).sum())
    if pos == 0 or neg == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order] == 1
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp, fp = np.cumsum(y)[last_of_tie], np.cumsum(~y)[last_of_tie]
    return np.r_[0.0, fp / neg], np.r_[0.0, tp / pos]


def emotion_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """accuracy, f1 (Win = positive), roc_auc from (N, 2) scores [Lose, Win] and (N,) labels."""
    preds = probs.argmax(1)
    tp = int(((preds == 1) & (labels == 1)).sum())
    fp = int(((preds == 1) & (labels == 0)).sum())
    fn = int(((preds == 0) & (labels == 1)).sum())
    return {
        "n": int(len(labels)),
        "accuracy": float((preds == labels).mean()) if len(labels) else float("nan"),
        "f1": 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0,
        "roc_auc": roc_auc(probs[:, 1], labels),
        "confusion": confusion_matrix(labels, preds, 2).tolist(),
    }


def task_metrics(task: str, probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    return mg_metrics(probs, labels, class_names) if task == "mg" else emotion_metrics(probs, labels)


def to_json(obj: Any) -> str:
    """Strict JSON text (indented): NaN / inf, e.g. an AUC with one class present, become null."""
    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), indent=2, allow_nan=False)
