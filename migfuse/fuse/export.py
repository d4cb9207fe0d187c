"""Challenge submission files from prediction scores, validated against the manifest.

An export writes one CSV row per id of the chosen split, in manifest order, and zips the CSV at
the archive root (CodaLab/Kaggle scorers fail on a CSV inside a folder). The id set must be
exactly the split's: missing ids and ids of other splits are refused; ids the challenge files do
not list (MiGA: clip 0453_32, videos 218/319/347/348; `split_miga` empty in the manifest) are
dropped with a note, so scores predicted on the raw annotation export cleanly.

Formats live in `EXPORTERS` (a migfuse.registry.Registry): add a challenge with `register_exporter`.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from migfuse.atomic_write import open_atomic, write_bytes
from migfuse.datasets import classes
from migfuse.datasets.manifest import Manifest
from migfuse.errors import UserError
from migfuse.fuse.scores import Scores
from migfuse.registry import Registry

log = logging.getLogger(__name__)

# A fixed timestamp makes the zip (and its sha256) depend on the rows only.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class ExportFormat:
    """One challenge file format.

    task: "mg" (one row per clip, target = class index 0..31) or "emotion" (one row per video,
        target = 0/1 with Win = `win_label`).
    scheme: the manifest column that defines the split's ids.
    header: column names of the CSV, or None for no header line.
    """

    name: str
    task: str
    scheme: str
    csv_name: str
    zip_name: str
    header: tuple[str, str] | None
    description: str


#: Format name -> ExportFormat (`migfuse export NAME`).
EXPORTERS: Registry[ExportFormat] = Registry("export format")


def register_exporter(fmt: ExportFormat) -> ExportFormat:
    """Add a format to `EXPORTERS`; returns it.

    Raises:
        ValueError: a format of that name is registered already.
    """
    EXPORTERS.register(fmt.name, fmt)
    return fmt


register_exporter(ExportFormat(
    "miga2025", "mg", "split_miga", "prediction.csv", "prediction.zip", ("Id", "Target"),
    "MiGA 2025 Track 1 (Kaggle): prediction.csv with header Id,Target, rows 0054_0,25"))
register_exporter(ExportFormat(
    "miga2023", "mg", "split_miga", "Submission.csv", "Submission.zip", None,
    "MiGA 2023 Track 1 (CodaLab): Submission.csv without header, rows 0054_0,30"))
register_exporter(ExportFormat(
    "emotion", "emotion", "split_emotion", "prediction.csv", "emotion.zip", ("Id", "Target"),
    "emotion (win/lose) per video: header and polarity configurable (official format unknown)"))


@dataclass(frozen=True)
class ExportResult:
    """What `export_scores` wrote: the zip, its CSV member, row count, sha256 and dropped ids, and
    the bare CSV beside the zip when one was asked for (`--out NAME.csv`)."""

    path: Path
    csv_name: str
    format: str
    split: str
    rows: int
    sha256: str
    dropped: list[str]
    csv_path: Path | None = None


def get_exporter(name: str) -> ExportFormat:
    """The registered format `name`; UserError listing the known ones otherwise."""
    return EXPORTERS.get(name)


def parse_header(text: str | None, default: tuple[str, str] | None) -> tuple[str, str] | None:
    """`--header` value: None -> the format's default, "none" or "" -> no header, "Id,Target" -> 2 names."""
    if text is None:
        return default
    if text.strip().lower() in ("", "none"):
        return None
    names = tuple(n.strip() for n in text.split(","))
    if len(names) != 2 or not all(names):
        raise UserError(f"--header {text!r} must be two comma-separated column names, e.g. Id,Target (or none)")
    return names  # type: ignore[return-value]


def split_ids(manifest: Manifest, fmt: ExportFormat, split: str) -> list[str]:
    """The ids a file of `fmt` must hold for `split`, in manifest order (clips) or sorted (videos)."""
    if fmt.task == "emotion":
        return manifest.video_ids(split, scheme=fmt.scheme)
    return manifest.ids(split, scheme=fmt.scheme)


def align_ids(
    ids: list[str], manifest: Manifest, task: str, scheme: str, split: str, source: str
) -> tuple[list[str], list[str]]:
    """Check the id set of a prediction against the manifest's `split`.

    ids: the ids of a scores or prediction file (unique).
    Returns (expected ids in manifest order, dropped ids): dropped are ids the challenge does not
    list (`scheme` column empty), which may be present and are left out. Any other difference
    (unknown ids, ids of another split, missing ids) raises a one-line UserError naming `source`.
    """
    where = manifest.root or "the manifest"
    if task == "emotion":
        expected = manifest.video_ids(split, scheme=scheme)
        split_of = {v: getattr(info, scheme) for v, info in manifest.videos.items()}
    else:
        expected = manifest.ids(split, scheme=scheme)
        split_of = {c.clip_id: getattr(c, scheme) for c in manifest.clips}
    if not expected:
        known = sorted({s for s in split_of.values() if s})
        raise UserError(f"{where} has no {scheme} == {split!r} ids; use --split {' or '.join(known) or 'NAME'}")
    expected_set = set(expected)
    extra = [i for i in ids if i not in expected_set]
    unknown = [i for i in extra if i not in split_of]
    if unknown:
        raise UserError(f"{source} has {len(unknown)} ids that are not in {where} (e.g. {', '.join(unknown[:3])}); "
                        f"predict on the clips of this prepared dataset")
    dropped = [i for i in extra if split_of[i] == ""]
    other = [i for i in extra if split_of[i] != ""]
    if other:
        raise UserError(f"{source} has {len(other)} ids outside {scheme} {split!r} (e.g. {other[0]} is "
                        f"{split_of[other[0]]!r}); pass the matching --split or predict on split {split!r}")
    present = set(ids)
    missing = [i for i in expected if i not in present]
    if missing:
        raise UserError(f"{source} lacks {len(missing)} of the {len(expected)} {split!r} ids (e.g. "
                        f"{', '.join(missing[:3])}); predict on every id of the split")
    if dropped:
        log.debug("%s: dropped %d ids the challenge does not list (%s)", source, len(dropped),
                 ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else ""))
    return expected, dropped


def targets(scores: Scores, ids: list[str], task: str, win_label: int = 1, source: str = "the scores") -> np.ndarray:
    """File targets of `ids` (joined by id): (len(ids),) int64.

    Columns are read by the class names the scores carry (`Scores.in_class_order`), not by
    position. mg: top-1 class index 0..31 of `classes.CLASS_NAMES`. emotion: `win_label` where Win
    has the highest score, else 1 - win_label. UserError for scores without class names.
    """
    if task == "emotion" and win_label not in (0, 1):
        raise UserError(f"--win-label must be 0 or 1, got {win_label}")
    names = classes.CLASS_NAMES if task == "mg" else classes.EMOTION_CLASSES
    ordered = Scores(scores.ids, scores.in_class_order(names, source), scores.task, scores.split, names)
    top = np.argmax(ordered.rows(ids), axis=1)
    if task == "mg":
        return top.astype(np.int64)
    win = top == classes.EMOTION_CLASSES.index("Win")
    return np.where(win, win_label, 1 - win_label).astype(np.int64)


def csv_text(ids: list[str], values: np.ndarray, header: tuple[str, str] | None) -> str:
    """CSV text `id,target` per row (LF line ends), with an optional header line."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header is not None:
        w.writerow(header)
    w.writerows(zip(ids, (int(v) for v in values)))
    return buf.getvalue()


def write_zip(path: Path, member: str, text: str) -> str:
    """Write `text` as `member` at the root of the zip `path` (atomically); returns the zip's sha256."""
    info = zipfile.ZipInfo(member, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    with open_atomic(path, "wb") as f, zipfile.ZipFile(f, "w") as zf:
        zf.writestr(info, text.encode("utf-8"))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_scores(
    scores: Scores | str | Path,
    prepared: Manifest | str | Path,
    fmt: str = "miga2025",
    out: str | Path | None = None,
    split: str = "test",
    header: str | None = None,
    win_label: int = 1,
) -> ExportResult:
    """Write the challenge zip of `fmt` from scores, validated against the prepared manifest.

    scores: a Scores (or its .npz path) of the format's task: (N, 32) for mg, (N, 2) for emotion.
    prepared: the PREPARED folder (or a loaded Manifest) whose `split` defines the exact id set.
    out: the zip path; or a CSV path (NAME.csv: that bare CSV, which Kaggle accepts, plus NAME.zip
        beside it); or a folder (an existing one, or a name without extension, created) for the
        format's default name (prediction.zip, Submission.zip, emotion.zip); default: that name in
        the current folder.
    header: override of the format's header ("Id,Target", or "none"); win_label: emotion polarity.
    Returns an ExportResult (rows in manifest order; dropped = challenge-excluded ids present in
    the scores). Raises UserError on a wrong task, id set, header or output name.
    """
    exporter = get_exporter(fmt)
    source = str(scores) if not isinstance(scores, Scores) else "the scores"
    if not isinstance(scores, Scores):
        scores = Scores.load(scores)
    manifest = prepared if isinstance(prepared, Manifest) else Manifest.load(prepared)
    if scores.task != exporter.task:
        fits = [f"`migfuse export {n}`" for n, e in EXPORTERS.load_all().items() if e.task == scores.task]
        raise UserError(f"{source} holds {scores.task} scores but {fmt} needs {exporter.task}; "
                        f"use {' or '.join(fits) or 'another format'}")
    if exporter.task == "mg" and scores.scores.shape[1] != classes.NUM_CLASSES:
        raise UserError(f"{source} has {scores.scores.shape[1]} classes, {fmt} needs {classes.NUM_CLASSES}")
    if scores.split and scores.split != split:
        log.warning("%s was predicted on split %r, exporting split %r", source, scores.split, split)
    columns = parse_header(header, exporter.header)
    path, bare_csv = _out_paths(out, exporter)

    ids, dropped = align_ids(scores.ids, manifest, exporter.task, exporter.scheme, split, source)
    text = csv_text(ids, targets(scores, ids, exporter.task, win_label, source), columns)
    digest = write_zip(path, exporter.csv_name, text)
    if bare_csv is not None:
        write_bytes(bare_csv, text.encode("utf-8"))  # the zip member's exact bytes
    log.debug("wrote %s: %s with %d rows, sha256 %s", path, exporter.csv_name, len(ids), digest)
    return ExportResult(path, exporter.csv_name, fmt, split, len(ids), digest, dropped, bare_csv)


def _out_paths(out: str | Path | None, exporter: ExportFormat) -> tuple[Path, Path | None]:
    """(zip to write, bare CSV to write or None) for `--out`."""
    if out is None:
        return Path(exporter.zip_name), None
    out = Path(out)
    suffix = out.suffix.lower()
    if out.is_dir() or not suffix:  # `--out DIR/`: the folder is created
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file without an extension; pass a folder, NAME.zip or NAME.csv")
        out.mkdir(parents=True, exist_ok=True)
        return out / exporter.zip_name, None
    if suffix == ".csv":
        return out.with_suffix(".zip"), out
    if suffix != ".zip":
        raise UserError(f"--out {out} must be NAME.zip, NAME.csv (the CSV plus NAME.zip) or a folder, "
                        f"e.g. {out.with_suffix('.zip')}")
    return out, None
