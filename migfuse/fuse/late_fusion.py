"""Score-level (late) fusion of several prediction runs, e.g. joint + bone + CMTF.

Runs are always joined by id, never by position: two score files of the same clips in different
row orders must fuse to the same result (lshiwjx/2s-AGCN#10 fused by position and got 1.7%).
Runs whose id sets differ are refused unless the caller asks for their intersection.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from migfuse.errors import UserError
from migfuse.fuse.scores import Scores

log = logging.getLogger(__name__)

MODES = ("prob", "log")
_EPS = 1e-12  # floor before log: a run that gives 0 to a class must not veto it with -inf


@dataclass(frozen=True)
class LateFusion:
    """Result of `fuse_late`.

    scores: the fused Scores, rows in the first run's id order (restricted to the common ids).
    dropped: per run name, how many of its ids were not in every run (0 unless intersect=True).
    weights: the normalised weights used, one per run (sum 1).
    """

    scores: Scores
    dropped: dict[str, int] = field(default_factory=dict)
    weights: list[float] = field(default_factory=list)


def parse_weights(text: str | None, n: int) -> list[float]:
    """Parse "1,1,0.5" into n floats; None or "" -> equal weights. UserError on a bad list (not numbers,
    another count than n, a negative, NaN or infinite weight, all zero)."""
    if not text:
        return [1.0] * n
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise UserError(f"--weights {text!r} is not a comma-separated list of numbers, e.g. 1,1,0.5") from None
    if len(weights) != n:
        raise UserError(f"--weights has {len(weights)} values for {n} score files; give one weight per file")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not sum(weights) > 0:
        raise UserError(f"--weights {text!r}: each weight must be a finite number >= 0, and one at least > 0")
    return weights


def fuse_late(
    runs: Sequence[Scores],
    weights: Sequence[float] | None = None,
    mode: str = "prob",
    intersect: bool = False,
    names: Sequence[str] | None = None,
) -> LateFusion:
    """Weighted sum of the runs' class scores, joined by id.

    runs: K Scores of the same task and classes; each (N_k, C).
    weights: K non-negative weights (not all 0); normalised to sum 1. Default: equal.
    mode: "prob" sums probabilities; "log" sums log-probabilities and renormalises with a softmax
        (a weighted geometric mean), which rewards classes every run agrees on.
    intersect: fuse only the ids common to all runs (else differing id sets are refused).
    names: K labels for messages (file names); default "run 1", "run 2", ...
    Returns a LateFusion whose scores are (N, C) float32 probabilities (rows sum to 1).
    """
    if not runs:
        raise UserError("late fusion needs at least one score file")
    names = list(names) if names is not None else [f"run {k + 1}" for k in range(len(runs))]
    if len(names) != len(runs):
        raise ValueError(f"{len(names)} names for {len(runs)} runs")
    if mode not in MODES:
        raise UserError(f"unknown fusion mode {mode!r}; use one of {', '.join(MODES)}")
    w = np.asarray(weights if weights is not None else [1.0] * len(runs), dtype=np.float64)
    if w.shape != (len(runs),):
        raise UserError(f"{w.size} weights for {len(runs)} score files; give one weight per file")
    if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise UserError(f"weights must be non-negative and not all 0, got {','.join(f'{x:g}' for x in w)}")
    w = w / w.sum()

    first = runs[0]
    for run, name in zip(runs[1:], names[1:]):
        if run.task != first.task:
            raise UserError(f"{name} has task {run.task!r} but {names[0]} has {first.task!r}; fuse runs of one task")
        if run.classes != first.classes and sorted(run.classes) != sorted(first.classes):
            raise UserError(f"{name} has other classes than {names[0]}; fuse runs predicted with the same class list")
    # columns are joined by class name like rows by id (an imported run may order its classes differently)
    runs = [run if run.classes == first.classes else
            Scores(run.ids, run.in_class_order(first.classes, name), run.task, run.split, first.classes)
            for run, name in zip(runs, names)]

    common = set(first.ids).intersection(*(r.ids for r in runs[1:]))
    dropped = {name: len(run.ids) - len(common) for run, name in zip(runs, names)}
    if any(dropped.values()):
        if not intersect:
            bad = next(k for k, run in enumerate(runs) if set(run.ids) != set(first.ids))
            only_first = sorted(set(first.ids) - set(runs[bad].ids))
            only_bad = sorted(set(runs[bad].ids) - set(first.ids))
            example = (f"{len(only_first)} only in {names[0]} (e.g. {', '.join(only_first[:3])})" if only_first
                       else f"{len(only_bad)} only in {names[bad]} (e.g. {', '.join(only_bad[:3])})")
            raise UserError(f"{names[bad]} and {names[0]} score different ids: {example}; "
                            f"predict all runs on the same split, or pass --intersect")
        if not common:
            raise UserError(f"the score files {', '.join(names)} share no id; they come from different splits")
        log.debug("late fusion: kept %d common ids; dropped %s", len(common),
                 ", ".join(f"{n} from {name}" for name, n in dropped.items()))

    ids = [i for i in first.ids if i in common]  # the first run's order: deterministic
    stacked = np.stack([run.rows(ids).astype(np.float64) for run in runs])  # (K, N, C), joined by id
    if mode == "prob":
        fused = np.tensordot(w, stacked, axes=1)
        fused /= fused.sum(axis=1, keepdims=True).clip(min=_EPS)
    else:
        logits = np.tensordot(w, np.log(np.clip(stacked, _EPS, None)), axes=1)
        logits -= logits.max(axis=1, keepdims=True)
        fused = np.exp(logits)
        fused /= fused.sum(axis=1, keepdims=True)
    splits = {run.split for run in runs}
    split = first.split if len(splits) == 1 else ""
    return LateFusion(Scores(ids, fused.astype(np.float32), first.task, split, first.classes),
                      dropped, w.tolist())


def fuse_late_files(
    paths: Sequence[str | Path],
    weights: Sequence[float] | None = None,
    mode: str = "prob",
    intersect: bool = False,
) -> LateFusion:
    """`fuse_late` on score files (`Scores.save` .npz); messages name the files."""
    runs = [Scores.load(p) for p in paths]
    return fuse_late(runs, weights, mode=mode, intersect=intersect, names=[str(p) for p in paths])
