"""Scores of other tools as migfuse `Scores`, so `fuse late` ensembles a PoseC3D / VideoSwin run with migfuse heads.

    from migfuse.fuse.importers import import_scores
    scores = import_scores("result.pkl", annotation="imigue_coco.pkl", ann_split="test")
    scores.save("posec3d_test.npz")

Formats read (each as its tool writes it):
  * mmaction2 1.x `tools/test.py --dump result.pkl`: a list of dicts, one per sample, whose
    `pred_score` is a (C,) tensor (mmengine `DumpResults`; 1.0 release candidates wrote
    `pred_scores.item`).
  * mmaction2 0.x `tools/test.py --out result.pkl` and pyskl `tools/test.py --out result.pkl`: a
    list of (C,) numpy arrays.
  These hold no ids: row i belongs to sample i of the annotation file the test ran on.
  * annotation files: an mmaction2 list file (`path label` per line for videos, `frame_dir
    total_frames label` for raw frames; the id is the name without folder and extension), or a
    pyskl / mmaction2 skeleton pickle (`annotations` with `frame_dir`, optionally `split`: the
    test then ran on the annotations whose frame_dir is in `split[NAME]`, in annotation order).
  * CSV `Id,score_0,...,score_C-1` (or a header of class names, in any order), one row per id.

Pickles from another tool are read with a restricted unpickler: only builtin containers and
numbers, numpy arrays/scalars/dtypes and torch tensors are rebuilt (torch tensors through torch's
weights-only loader); anything else is refused in one line, because unpickling it would run code.

Columns are the tool's label indices; with migfuse's `data export-pyskl` labels (and every
standard iMiGUE label list) they are migfuse's class order, so the scores get migfuse's class
names. Rows that are not probabilities (logits of `average_clips='score'`) are turned into
probabilities with a softmax, and the result says so.
"""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from migfuse.datasets import classes
from migfuse.errors import UserError
from migfuse.fuse.scores import Scores, duplicates
from migfuse.safe_pickle import load_pickle_safely

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# annotation files: the ids, in the order the tool tested them
# ---------------------------------------------------------------------------------------------
def _id_of(entry: str) -> str:
    """`videos/0054/0054_0.mp4` -> `0054_0`; `0054_0` stays."""
    name = entry.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = name.rpartition(".")
    return stem if dot and ext and not ext.isdigit() else name


def read_annotation_ids(path: str | Path, split: str | None = None) -> list[str]:
    """The sample ids of an annotation file, in the order the tool iterates them.

    path: a list file (.txt: first token of each non-empty line) or a skeleton pickle
        (`annotations` list with frame_dir/filename, or a bare list of such dicts).
    split: for a skeleton pickle with `split`: the split the test ran on (required when the file
        has several splits); its annotations are kept in annotation order, as pyskl/mmaction2 do.
    """
    path = Path(path)
    if path.suffix.lower() in (".pkl", ".pickle"):
        return _pickle_annotation_ids(load_pickle_safely(path, "annotation pickle"), path, split)
    if split is not None:
        raise UserError(f"--ann-split is for skeleton pickles; {path} is a list file (it is one split already)")
    if not path.is_file():
        raise UserError(f"annotation file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a UTF-8 list file (`path label` per line)") from None
    return [_id_of(line.split()[0]) for line in lines if line.strip()]


def _pickle_annotation_ids(data: Any, path: Path, split: str | None) -> list[str]:
    annotations = data.get("annotations") if isinstance(data, dict) else data
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        raise UserError(f"{path} is not a pyskl/mmaction2 skeleton annotation file (no list of `annotations`)")
    key = "filename" if annotations and "filename" in annotations[0] else "frame_dir"
    if any(key not in a for a in annotations):
        raise UserError(f"{path} has annotations without `{key}`; it is not a pyskl/mmaction2 skeleton file")
    ids = [_id_of(str(a[key])) for a in annotations]
    splits = data.get("split") if isinstance(data, dict) else None
    if split is None:
        if isinstance(splits, dict) and len(splits) > 1:
            raise UserError(f"{path} has splits {', '.join(map(str, splits))}: pass --ann-split with the one "
                            f"the test ran on")
        return ids
    if not isinstance(splits, dict) or split not in splits:
        known = ", ".join(map(str, splits)) if isinstance(splits, dict) else "none"
        raise UserError(f"{path} has no split {split!r} (its splits: {known})")
    members = {_id_of(str(x)) for x in splits[split]}
    return [i for i in ids if i in members]


# ---------------------------------------------------------------------------------------------
# result files
# ---------------------------------------------------------------------------------------------
_ID_KEYS = ("frame_dir", "filename", "video_id", "img_key")


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float64)


def read_result_rows(path: str | Path) -> tuple[np.ndarray, list[str] | None, str]:
    """The score rows of an mmaction2/pyskl test pickle: ((N, C) float64, per-row ids or None, format).

    Ids come back only when the tool stored them in each row (mmaction2 1.x meta keys such as
    `frame_dir`); the usual files hold none.
    """
    path = Path(path)
    data = load_pickle_safely(path, "test-result pickle")
    if not isinstance(data, (list, tuple)) or not len(data):
        raise UserError(f"{path} is not a test-result pickle: expected a list of per-sample scores, "
                        f"found {type(data).__name__}{' (empty)' if isinstance(data, (list, tuple)) else ''}")
    rows, ids = [], []
    for k, item in enumerate(data):
        if isinstance(item, dict):
            score = item.get("pred_score")
            if score is None and isinstance(item.get("pred_scores"), dict):  # mmaction2 1.0 rc
                score = item["pred_scores"].get("item")
            if score is None:
                raise UserError(f"{path} row {k} is a dict without `pred_score` (keys {', '.join(map(str, item))}); "
                                f"dump it with mmaction2 `tools/test.py --dump`")
            found = next((item[key] for key in _ID_KEYS if key in item), None)
            ids.append(None if found is None else _id_of(str(found)))
        else:
            score = item
            ids.append(None)
        row = _as_array(score).reshape(-1)
        rows.append(row)
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise UserError(f"{path} has score rows of different lengths ({', '.join(map(str, sorted(widths)))}); "
                        f"one class-score vector per sample is expected")
    have_ids = all(i is not None for i in ids)
    fmt = "mmaction2 1.x" if isinstance(data[0], dict) else "mmaction2 0.x / pyskl"
    return np.stack(rows), (ids if have_ids else None), fmt


def read_score_csv(path: str | Path) -> tuple[list[str], np.ndarray, list[str] | None]:
    """A CSV `Id,score...`: (ids, (N, C) float64, class names from the header or None)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"scores CSV not found: {path}")
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{path} is UTF-16 text; save it as UTF-8 CSV (or `iconv -f UTF-16 -t UTF-8`)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; save it as UTF-8 CSV") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    if not rows:
        raise UserError(f"{path} holds no rows")
    header = None
    try:
        float(rows[0][1] if len(rows[0]) > 1 else "x")
    except ValueError:
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    width = len(header) if header else len(rows[0])
    if width < 2 or not rows:
        raise UserError(f"{path} holds no score rows (expected `id,score,score,...` lines, one per clip or video)")
    ids, values = [], []
    for line, row in enumerate(rows, 2 if header else 1):
        if len(row) != width or width < 2:
            raise UserError(f"{path} line {line} has {len(row)} cells, expected {width} (`id,score,...`)")
        try:
            values.append([float(c) for c in row[1:]])
        except ValueError:
            raise UserError(f"{path} line {line} has a score that is not a number: {','.join(row)[:80]!r}") from None
        ids.append(row[0].strip())
    names = header[1:] if header and not all(_generic(h) for h in header[1:]) else None
    return ids, np.asarray(values, dtype=np.float64), names


def _generic(name: str) -> bool:
    """`score_3`, `3`, `class3`: a column number, not a class name."""
    return name.lower().rstrip("0123456789").rstrip("_ ") in ("", "score", "class", "prob", "p", "c")


# ---------------------------------------------------------------------------------------------
# the import
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImportedScores:
    """`import_scores` result: the Scores, the source format, and whether a softmax was applied."""

    scores: Scores
    source_format: str
    softmax_applied: bool


def _probabilities(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """Rows that already are probabilities stay; other rows (logits) go through a softmax."""
    if (x >= 0).all() and np.allclose(x.sum(1), 1.0, atol=1e-3):
        return x, False
    z = np.exp(x - x.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True), True


def import_scores(
    results: str | Path,
    annotation: str | Path | None = None,
    ann_split: str | None = None,
    task: str = "mg",
    split: str | None = None,
) -> ImportedScores:
    """Read another tool's test scores into a migfuse Scores keyed by clip (or video) id.

    results: a test-result pickle (mmaction2 0.x/1.x, pyskl) or a scores CSV (see module docstring).
    annotation: for a pickle, the annotation file the test ran on (its ids, in order); not for a CSV.
    ann_split: the split of a skeleton-pickle annotation the test ran on.
    task: "mg" (32 columns, migfuse class order) or "emotion" (2 columns: Lose, Win).
    split: the split name recorded in the Scores (default ann_split, else "").
    Returns ImportedScores with (N, C) float32 probabilities. UserError (one line, naming files
    and counts) when the row count or ids do not match the annotation, the column count does not
    match the task, or a file cannot be read safely.
    """
    if task not in ("mg", "emotion"):
        raise UserError(f"unknown task {task!r}; use mg or emotion")
    names = list(classes.CLASS_NAMES if task == "mg" else classes.EMOTION_CLASSES)
    results = Path(results)
    header_names = None
    if results.suffix.lower() == ".csv":
        if annotation is not None:
            raise UserError(f"{results} is a CSV with its own ids; drop --ann (it is for test-result pickles)")
        ids, x, header_names = read_score_csv(results)
        fmt = "csv"
    else:
        if not results.is_file():
            raise UserError(f"test-result file not found: {results}")
        x, row_ids, fmt = read_result_rows(results)  # a file that is no readable pickle is refused first
        if annotation is None:
            raise UserError(f"{results} holds scores without ids: pass --ann with the annotation file the test "
                            f"ran on (mmaction2 list file or pyskl .pkl)")
        ids = read_annotation_ids(annotation, ann_split)
        where = f"{annotation}" + (f" split {ann_split!r}" if ann_split else "")
        if len(ids) != len(x):
            raise UserError(f"{results} has {len(x)} score rows but {where} lists {len(ids)} samples; pass the "
                            f"annotation file (and --ann-split) the test was run on")
        if row_ids is not None:
            wrong = [k for k, (a, b) in enumerate(zip(row_ids, ids)) if a != b]
            if wrong:
                k = wrong[0]
                raise UserError(f"{results} names other samples than {where}: {len(wrong)} of {len(ids)} rows "
                                f"differ (row {k}: {row_ids[k]} vs {ids[k]}); pass the annotation the test ran on")
    dup = duplicates(ids)
    if dup:
        raise UserError(f"{annotation or results} lists {len(dup)} ids twice (e.g. {', '.join(dup[:3])}); "
                        f"scores are keyed by id")
    if x.shape[1] != len(names):
        raise UserError(f"{results} has {x.shape[1]} score columns but the {task} task has {len(names)} classes; "
                        f"import it with the matching --task")
    if header_names is not None:
        columns = header_names
        if sorted(columns) != sorted(names):
            raise UserError(f"{results} names columns {', '.join(columns[:3])}... that are not the {task} classes; "
                            f"use the class names of `migfuse.datasets.classes` or score_0..score_{len(names) - 1}")
    else:
        columns = names  # the tool's label index k is migfuse's class k
    probs, softened = _probabilities(x)
    if not np.isfinite(probs).all():
        raise UserError(f"{results} has scores that are NaN or infinite")
    scores = Scores(ids, probs.astype(np.float32), task, split if split is not None else (ann_split or ""), columns)
    if columns != names:
        scores = Scores(ids, scores.in_class_order(names, str(results)), task, scores.split, names)
    return ImportedScores(scores, fmt, softened)
