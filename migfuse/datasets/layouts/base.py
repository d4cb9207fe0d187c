"""What every layout reader returns: videos with their clips and a skeleton source, plus problems.

A layout reader only finds and parses label files; `migfuse.datasets.prepare` turns its
`LayoutScan` into the manifest and the skeleton arrays (one code path for all layouts).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass
class SourceClip:
    """One clip row as the layout gives it. Frames 0-based, end inclusive; raw_class None = unknown."""

    k: int
    start_frame: int
    end_frame: int
    raw_class: int | None


@dataclass
class SkeletonRead:
    """A skeleton read from its source file(s): (T, 137, 3) float32 points, (T,) bool mask, notes."""

    points: np.ndarray
    mask: np.ndarray
    info: dict = field(default_factory=dict)


class SkeletonSource(Protocol):
    """A per-video skeleton file or folder that can be read into the 137-point layout."""

    path: Path
    kind: str

    def read(self, progress: bool = True) -> SkeletonRead:
        """Read the skeleton; raise UserError/ValueError/OSError when it is empty or unreadable."""
        ...


@dataclass
class SourceVideo:
    """One video of a layout. ``split_miga`` None means "derive by the challenge rule"."""

    video_id: str
    clips: list[SourceClip] = field(default_factory=list)
    subject: int | None = None
    win_lose: str = ""
    split_miga: str | None = None
    video_path: Path | None = None
    skeleton: SkeletonSource | None = None
    label_file: Path | None = None


@dataclass
class LayoutScan:
    """The result of reading a dataset root in one layout."""

    layout: str
    root: Path
    videos: dict[str, SourceVideo]
    problems: list[dict] = field(default_factory=list)

    def problem(self, kind: str, detail: str, video_id: str | None = None, **extra: object) -> None:
        """Record a problem for prepare_report.json (the run goes on)."""
        entry: dict = {"kind": kind, "detail": detail}
        if video_id is not None:
            entry["video_id"] = video_id
        entry.update(extra)
        self.problems.append(entry)
