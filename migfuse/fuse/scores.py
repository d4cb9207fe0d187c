"""Prediction scores keyed by id: what `fuse predict` writes and `fuse late` / `export` / `score` read.

A `Scores` holds one row of class probabilities per clip (micro-gesture task) or per video
(emotion task). Rows are identified by `ids`, never by position: every consumer joins on ids.

On disk it is a plain `.npz` (no pickle): strings are stored as numpy unicode arrays, so the file
opens with `np.load(..., allow_pickle=False)` anywhere, without migfuse.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from migfuse.atomic_write import open_atomic
from migfuse.errors import UserError

TASKS = ("mg", "emotion")
FORMAT_VERSION = 1
_KEYS = ("ids", "scores", "task", "split", "format_version")  # + "classes" (absent: columns not named)


@dataclass(frozen=True)
class Scores:
    """Class probabilities of one split, one row per id.

    ids: list[str] (N,) clip ids `0054_0` (task "mg") or video ids `0054` (task "emotion"), unique.
    scores: np.ndarray (N, C) float32 probabilities; row i belongs to ids[i].
    task: "mg" (C = 32 classes) or "emotion" (C = 2, classes ["Lose", "Win"]).
    split: the split the rows come from ("test", "validation", ...); informative, "" if unknown.
    classes: list[str] (C,) class names, column j of `scores` is classes[j]; [] when the file that
        gave the scores did not name them (such scores cannot be turned into class predictions:
        `in_class_order` refuses them).
    """

    ids: list[str]
    scores: np.ndarray
    task: str
    split: str
    classes: list[str]

    def __post_init__(self) -> None:
        # Normalise so that callers may pass tuples, numpy string arrays or float64 scores.
        object.__setattr__(self, "ids", [str(i) for i in self.ids])
        object.__setattr__(self, "classes", [str(c) for c in self.classes])
        object.__setattr__(self, "scores", np.asarray(self.scores, dtype=np.float32))
        self._validate()

    def _validate(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"Scores.task must be one of {TASKS}, got {self.task!r}")
        if self.scores.ndim != 2:
            raise ValueError(f"Scores.scores must be (N, C), got shape {self.scores.shape}")
        n, c = self.scores.shape
        if n != len(self.ids):
            raise ValueError(f"Scores has {len(self.ids)} ids but {n} score rows")
        if self.classes and c != len(self.classes):
            raise ValueError(f"Scores has {len(self.classes)} classes but {c} score columns")
        dupes = duplicates(self.ids)
        if dupes:
            raise ValueError(f"Scores ids must be unique; duplicated: {', '.join(dupes[:5])}")
        if not np.all(np.isfinite(self.scores)):
            raise ValueError("Scores.scores contains NaN or inf")

    def __len__(self) -> int:
        return len(self.ids)

    def index(self) -> dict[str, int]:
        """Map id -> row, for joining by id."""
        return {i: r for r, i in enumerate(self.ids)}

    def rows(self, ids: list[str]) -> np.ndarray:
        """Score rows of `ids` in that order, (len(ids), C); KeyError naming a missing id."""
        index = self.index()
        missing = [i for i in ids if i not in index]
        if missing:
            raise KeyError(f"{len(missing)} ids not in these scores, e.g. {', '.join(missing[:5])}")
        return self.scores[[index[i] for i in ids]]

    def in_class_order(self, names: list[str], source: str = "the scores") -> np.ndarray:
        """The score matrix with its columns reordered to `names`: (N, len(names)) float32.

        Columns are matched by class name, never by position, so the same predictions stored with
        their columns in another order give the same result. UserError (naming `source`) when the
        scores carry no class names or not exactly the classes `names`.
        """
        if not self.classes:
            raise UserError(f"{source} has {self.scores.shape[1]} score columns but no class names, so its "
                            f"predictions cannot be read as classes; write it with `migfuse fuse predict` or "
                            f"import it with `migfuse fuse import` (which names the columns)")
        if self.classes == list(names):
            return self.scores
        missing = [n for n in names if n not in self.classes]
        extra = [c for c in self.classes if c not in names]
        if missing or extra or len(self.classes) != len(names):
            detail = (f"lacks {', '.join(repr(n) for n in missing[:3])}" if missing
                      else f"has {', '.join(repr(c) for c in extra[:3])}" if extra else "repeats a class")
            raise UserError(f"{source} has classes that are not the {len(names)} expected ones: it {detail}; "
                            f"score or export it for the task it was predicted for")
        return self.scores[:, [self.classes.index(n) for n in names]]

    def predictions(self) -> np.ndarray:
        """Top-1 class index per row, (N,) int64."""
        return np.argmax(self.scores, axis=1)

    def subset(self, ids: list[str]) -> "Scores":
        """The rows of `ids`, in that order."""
        return Scores(list(ids), self.rows(list(ids)), self.task, self.split, self.classes)

    def save(self, path: str | Path) -> Path:
        """Write a pickle-free `.npz`; returns the path written (".npz" appended if missing)."""
        path = scores_file(path)
        # np.str_ arrays of a fixed width: loadable with allow_pickle=False. Whole or not at all: a full
        # disk is one line naming the file, and an earlier file at `path` stays readable.
        with open_atomic(path, "wb") as f:
            np.savez(
                f,
                ids=np.array(self.ids, dtype=np.str_),
                scores=self.scores,
                task=np.array(self.task, dtype=np.str_),
                split=np.array(self.split, dtype=np.str_),
                classes=np.array(self.classes, dtype=np.str_),
                format_version=np.array(FORMAT_VERSION, dtype=np.int32),
            )
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Scores":
        """Read a file written by `save`; one-line UserError if it is missing or not a scores file."""
        path = existing_scores_file(path)
        if not path.is_file():
            raise UserError(f"scores file not found: {path} (write it with `migfuse fuse predict ... --out {path}`)")
        if not zipfile.is_zipfile(path):
            # np.load would try to unpickle a non-zip file and complain about pickles instead.
            raise UserError(f"{path} is not an .npz scores file; write it with `migfuse fuse predict` or Scores.save")
        try:
            with np.load(path, allow_pickle=False) as z:
                absent = [k for k in _KEYS if k not in z.files]
                if absent:
                    raise UserError(
                        f"{path} is not a migfuse scores file (no {', '.join(absent)}); "
                        f"write it with `migfuse fuse predict` or Scores.save")
                version = int(z["format_version"])
                if version > FORMAT_VERSION:
                    raise UserError(f"{path} has scores format {version}, newer than this migfuse "
                                    f"({FORMAT_VERSION}); upgrade migfuse")
                return cls(
                    ids=z["ids"].tolist(),
                    scores=z["scores"],
                    task=str(z["task"]),
                    split=str(z["split"]),
                    classes=z["classes"].tolist() if "classes" in z.files else [],
                )
        except UserError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"cannot read scores file {path} ({msg}); rewrite it with `migfuse fuse predict`") from None


def scores_file(path: str | Path) -> Path:
    """The file a scores writer writes for `--out path`: the name given, ".npz" appended unless it ends so.

    One rule for `fuse predict`, `fuse late` and `fuse import`; they print the name written."""
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def existing_scores_file(path: str | Path) -> Path:
    """The scores file a reader opens for `path`: `path` itself, or `path`.npz when only that exists
    (what a writer wrote for `--out path`), so the name given to `fuse predict --out` reads back."""
    path = Path(path)
    return scores_file(path) if not path.exists() and scores_file(path).is_file() else path


def duplicates(ids: list[str]) -> list[str]:
    """Ids that occur more than once, each listed once, in first-seen order."""
    seen: set[str] = set()
    dup: dict[str, None] = {}
    for i in ids:
        if i in seen:
            dup[i] = None
        seen.add(i)
    return list(dup)
