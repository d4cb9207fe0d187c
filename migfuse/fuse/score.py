"""Score a prediction file against the manifest's labels.

Reads any file `export` writes (zip or CSV, with or without a header) and migfuse scores (.npz),
so a submission can be checked locally before upload, and predictions of other tools can be
compared on the same ids. Micro-gestures: top-1, mean class accuracy and a per-class table.
Emotion: accuracy and F1 (Win = positive). Scores files (.npz) also give top-5 / ROC-AUC.
The metrics themselves are `migfuse.fuse.metrics` (shared with `fuse evaluate`).
"""
from __future__ import annotations

import csv
import io
import re
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from migfuse.atomic_write import open_atomic, write_text
from migfuse.datasets import classes
from migfuse.datasets.manifest import SCHEMES, Manifest
from migfuse.errors import UserError
from migfuse.fuse import metrics
from migfuse.fuse.export import align_ids
from migfuse.fuse.scores import Scores, duplicates, existing_scores_file

_ID = re.compile(r"^\d+(_\d+)?$")  # video id 0054 or clip id 0054_0


@dataclass(frozen=True)
class Predictions:
    """Predictions read from a file: ids (N,), labels (N,) int64 in migfuse's class indices
    (mg: 0..31; emotion: 0 = Lose, 1 = Win), the task, the header found (None if none) and, for
    scores files only, probs (N, C) with columns in migfuse's class order."""

    ids: list[str]
    labels: np.ndarray
    task: str
    header: tuple[str, ...] | None = None
    probs: np.ndarray | None = None


@dataclass(frozen=True)
class ClassScore:
    """One row of the per-class table: clips of the class, how many predicted right, recall."""

    index: int
    name: str
    n: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")


@dataclass(frozen=True)
class ScoreReport:
    """Metrics of one prediction file on the ids it covers (see `score_predictions`)."""

    source: str
    task: str
    split: str | None
    n: int
    accuracy: float
    mean_class_accuracy: float
    per_class: list[ClassScore]
    top5: float | None = None        # mg, scores files only (a CSV holds top-1 only)
    f1: float | None = None          # emotion: F1 of Win (positive class)
    roc_auc: float | None = None     # emotion, scores files only
    ignored: list[str] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)  # (C, C) counts, rows = true class
    roc_curve: tuple[list[float], list[float]] | None = None  # emotion scores files: (fpr, tpr)

    def to_dict(self) -> dict:
        """The report as plain data (what `migfuse score --json` prints and metrics.json holds)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("per_class", "roc_curve")}
        out["per_class"] = [{"class": c.index, "name": c.name, "support": c.n, "correct": c.correct,
                             "accuracy": c.accuracy} for c in self.per_class]
        return out

    def format(self) -> str:
        """Human-readable summary and per-class table (what `migfuse score` prints)."""
        split = f" split {self.split}" if self.split else ""
        lines = [f"{self.source}: {self.n} {'videos' if self.task == 'emotion' else 'clips'}{split}"]
        if self.ignored:
            lines.append(f"ignored {len(self.ignored)} ids the challenge does not list: {', '.join(self.ignored[:5])}")
        lines.append(f"top-1 accuracy        {100 * self.accuracy:6.2f} %")
        if self.top5 is not None:
            lines.append(f"top-5 accuracy        {100 * self.top5:6.2f} %")
        lines.append(f"mean class accuracy   {100 * self.mean_class_accuracy:6.2f} %")
        if self.f1 is not None:
            lines.append(f"F1 (Win positive)     {100 * self.f1:6.2f} %")
        if self.roc_auc is not None:
            lines.append(f"ROC-AUC               {self.roc_auc:6.4f}")
        lines.append(f"{'idx':>3}  {'class':<24}{'n':>6}{'correct':>9}{'acc %':>8}")
        for c in self.per_class:
            lines.append(f"{c.index:>3}  {c.name:<24}{c.n:>6}{c.correct:>9}{100 * c.accuracy:>8.2f}")
        return "\n".join(lines)


def read_predictions(path: str | Path, task: str | None = None, win_label: int = 1) -> Predictions:
    """Read a prediction file: a challenge zip (CSV at its root), a CSV, or migfuse scores (.npz).

    CSV rows are `id,target`; a first row whose target is not an integer is a header. The task is
    "emotion" for video ids (`0054`) and "mg" for clip ids (`0054_0`) unless given. Emotion
    targets are mapped to 1 = Win using `win_label` (the polarity the file was written with).
    """
    path = existing_scores_file(path)
    if not path.is_file():
        raise UserError(f"prediction file not found: {path}")
    if path.suffix.lower() == ".npz":
        s = Scores.load(path)
        # columns by class name: the same predictions in another column order score the same
        probs = s.in_class_order(classes.EMOTION_CLASSES if s.task == "emotion" else classes.CLASS_NAMES, str(path))
        return Predictions(s.ids, probs.argmax(1).astype(np.int64), s.task, probs=probs)
    text = _zip_csv(path) if zipfile.is_zipfile(path) else _decode_csv(path.read_bytes(), str(path))
    rows = [r for r in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in r)]
    if not rows:
        raise UserError(f"{path} holds no prediction rows")
    header = None
    if not _ID.match(rows[0][0].strip()):  # a header names columns; data rows start with an id
        header, rows = tuple(c.strip() for c in rows[0]), rows[1:]
    if not rows:
        raise UserError(f"{path} holds no prediction rows (expected `id,target` lines under an optional header); "
                        f"pass a challenge zip, its CSV, or migfuse scores (.npz)")
    ids, values = [], []
    for line, row in enumerate(rows, 2 if header else 1):
        if len(row) != 2 or not _is_int(row[1]):
            raise UserError(f"{path} line {line} is {','.join(row)!r}, expected `id,integer target`")
        ids.append(row[0].strip())
        values.append(int(row[1]))
    dup = duplicates(ids)
    if dup:
        raise UserError(f"{path} lists {len(dup)} ids twice (e.g. {', '.join(dup[:3])}); keep one row per id")
    if task not in (None, "mg", "emotion"):
        raise UserError(f"unknown task {task!r}; use mg or emotion")
    task = task or _guess_task(ids, path)
    labels = np.asarray(values, dtype=np.int64)
    if task == "emotion":
        if win_label not in (0, 1) or not np.isin(labels, (0, 1)).all():
            raise UserError(f"{path} has emotion targets other than 0/1 (or --win-label is not 0/1)")
        labels = labels if win_label == 1 else 1 - labels
    elif not ((labels >= 0) & (labels < classes.NUM_CLASSES)).all():
        bad = int(labels[(labels < 0) | (labels >= classes.NUM_CLASSES)][0])
        raise UserError(f"{path} has class {bad}, outside 0..{classes.NUM_CLASSES - 1} (targets are class indices)")
    return Predictions(ids, labels, task, header)


def score_predictions(
    pred: Predictions,
    manifest: Manifest,
    split: str | None = None,
    scheme: str | None = None,
    source: str = "predictions",
) -> ScoreReport:
    """Compare predictions with the manifest's labels, joined by id.

    split: if given, the file must cover exactly that split of `scheme` (default split_miga for
    mg, split_emotion for emotion), challenge-excluded ids are ignored; if None, every id of the
    file is scored and must be in the manifest. UserError on unknown, missing or unlabelled ids.
    """
    scheme = scheme or ("split_emotion" if pred.task == "emotion" else "split_miga")
    if scheme not in SCHEMES:
        raise UserError(f"unknown split scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    if pred.task == "emotion" and scheme != "split_emotion":
        raise UserError(f"emotion predictions are per video: score them with --scheme split_emotion, not {scheme}")
    where = manifest.root or "the manifest"
    if split is not None:
        ids, ignored = align_ids(pred.ids, manifest, pred.task, scheme, split, source)
    else:
        known = manifest.videos if pred.task == "emotion" else manifest
        unknown = [i for i in pred.ids if i not in known]
        if unknown:
            raise UserError(f"{source} has {len(unknown)} ids that are not in {where} (e.g. "
                            f"{', '.join(unknown[:3])}); score against the prepared dataset they were predicted on")
        ids, ignored = list(pred.ids), []
    truth = [_label(manifest, i, pred.task) for i in ids]
    unlabelled = [i for i, t in zip(ids, truth) if t is None]
    if unlabelled:
        raise UserError(f"{where} has no label for {len(unlabelled)} of the ids (e.g. {', '.join(unlabelled[:3])}); "
                        f"score on a split with labels (challenge test labels are not public)")
    y = np.asarray(truth, dtype=np.int64)
    row = {i: r for r, i in enumerate(pred.ids)}
    rows = [row[i] for i in ids]  # joined by id
    names = classes.EMOTION_CLASSES if pred.task == "emotion" else classes.CLASS_NAMES
    has_probs = pred.probs is not None
    # A CSV holds top-1 only: score it as one-hot probabilities (top-5 / ROC-AUC then meaningless).
    probs = pred.probs[rows] if has_probs else np.eye(len(names), dtype=np.float32)[pred.labels[rows]]
    cm = np.asarray(metrics.confusion_matrix(y, probs.argmax(1), len(names)))
    per_class = [ClassScore(c, names[c], int(cm[c].sum()), int(cm[c, c])) for c in range(len(names)) if cm[c].sum()]
    common = dict(source=source, task=pred.task, split=split, n=len(ids), per_class=per_class, ignored=ignored,
                  mean_class_accuracy=float(np.mean([c.accuracy for c in per_class])), confusion=cm.tolist())
    if pred.task == "mg":
        m = metrics.mg_metrics(probs, y, names)
        return ScoreReport(accuracy=m["top1"], top5=m["top5"] if has_probs else None, **common)
    e = metrics.emotion_metrics(probs, y)
    roc = tuple(a.tolist() for a in metrics.roc_curve(probs[:, 1], y)) if has_probs else None
    return ScoreReport(accuracy=e["accuracy"], f1=e["f1"], roc_auc=e["roc_auc"] if has_probs else None,
                       roc_curve=roc, **common)  # type: ignore[arg-type]


def write_score_files(report: ScoreReport, out: str | Path) -> dict[str, Path]:
    """metrics.json, per_class.csv and the charts (confusion.png, per_class.png, roc.png for emotion
    scores files; charts need matplotlib, see `migfuse.fuse.plots`) in the folder `out`."""
    from migfuse.fuse.plots import write_plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = report.to_dict()
    names = classes.EMOTION_CLASSES if report.task == "emotion" else classes.CLASS_NAMES
    rows = metrics.per_class_rows(np.asarray(report.confusion), list(names))
    files = {"metrics": out / "metrics.json", "per_class": out / "per_class.csv"}
    with open_atomic(files["per_class"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    title = f"{Path(report.source).name}: {report.n} {'videos' if report.task == 'emotion' else 'clips'}" + (
        f" of {report.split}" if report.split else "") + f", top-1 {100 * report.accuracy:.1f}%"
    files.update(write_plots({**data, "per_class": rows}, names, out, title, roc=report.roc_curve))
    write_text(files["metrics"], metrics.to_json({**data, "files": {k: str(v) for k, v in files.items()}}))
    return files


def score_file(
    path: str | Path,
    prepared: Manifest | str | Path,
    split: str | None = None,
    scheme: str | None = None,
    task: str | None = None,
    win_label: int = 1,
) -> ScoreReport:
    """`read_predictions` + `score_predictions` against a PREPARED folder (or Manifest)."""
    manifest = prepared if isinstance(prepared, Manifest) else Manifest.load(prepared)
    pred = read_predictions(path, task=task, win_label=win_label)
    return score_predictions(pred, manifest, split=split, scheme=scheme, source=str(path))


def _zip_csv(path: Path) -> str:
    with zipfile.ZipFile(path) as zf:
        members = [n for n in zf.namelist() if n.lower().endswith(".csv") and not n.startswith("__MACOSX")]
        if len(members) != 1:
            raise UserError(f"{path} holds {len(members)} CSV files, expected exactly one")
        if "/" in members[0]:
            raise UserError(f"{path} has its CSV in a folder ({members[0]}); challenge scorers need it at the "
                            f"archive root: re-zip with `zip -j` or `migfuse export`")
        return _decode_csv(zf.read(members[0]), f"{path}:{members[0]}")


def _decode_csv(data: bytes, name: str) -> str:
    """CSV bytes as text: UTF-8 with or without a byte-order mark (Excel writes one).

    UTF-16 (Excel's "Unicode text") and other encodings are refused in one line: challenge
    scorers read UTF-8, so a file that only migfuse could read would still fail on upload.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(data) > 1 and b"\x00" in data[:2]):
        raise UserError(f"{name} is UTF-16 text, but challenge scorers read UTF-8: save it as "
                        f"'CSV UTF-8 (comma delimited)', or convert it with `iconv -f UTF-16 -t UTF-8`")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{name} is not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r}); save it as "
                        f"'CSV UTF-8 (comma delimited)' or write it with `migfuse export`") from None


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _guess_task(ids: list[str], path: Path) -> str:
    if all("_" in i for i in ids):
        return "mg"
    if all(i.isdigit() for i in ids):
        return "emotion"
    raise UserError(f"{path} mixes clip ids (0054_0) and video ids (0054); pass --task mg or --task emotion")


def _label(manifest: Manifest, id_: str, task: str) -> int | None:
    if task == "emotion":
        return classes.emotion_label(manifest.videos[id_].win_lose)
    return manifest.clip(id_).label
