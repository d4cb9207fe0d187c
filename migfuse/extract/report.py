"""What an extraction run did: the per-process `RunSummary` and its plain-text report.

Failures are summarised, never listed one line per row: up to `TABLE_ROWS` failed rows are shown as
a table; beyond that, one line per cause (the message with its numbers blanked, e.g. "video #### has
no skeleton") with its count, how many videos, and an example, then where every record is
(`migfuse cache info CACHE --failures N`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from migfuse.wording import counted


@dataclass
class RunSummary:
    """What one process did. `failed` covers this process's rows, earlier runs included."""

    group: str
    shard: tuple[int, int]
    total: int = 0  # rows of this shard
    done: int = 0  # rows written by this run
    skipped: int = 0  # rows already done (or already failed, without retry_failed) before this run
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (id, stage, message)
    seconds: float = 0.0
    redone: int = 0  # rows done or failed earlier whose definition changed since (extracted again)
    busy: int = 0  # rows left to another process that held their work item (see `claims.Claims`)
    world_failed: int | None = None  # under torchrun: failed rows of all ranks (see `runner.run_extractor`)
    #: where the main process's time went, seconds: "start" (cache, workers, model build), "loaders"
    #: (waiting for loader workers, or loading in this process with --workers 0), "forward" (the
    #: model, copies to and from the device included), "writes" (the cache)
    timings: dict[str, float] = field(default_factory=dict)
    #: the resolved settings of the run: batch, workers, decode threads per worker
    settings: dict[str, Any] = field(default_factory=dict)
    #: rows left out by --only-available (their input file is missing: not extracted, not failed)
    unavailable: int = 0
    #: of those, rows failed or done by an earlier run (they keep that status)
    unavailable_failed: int = 0
    unavailable_done: int = 0
    #: rows outside --split (not extracted by this run)
    outside_split: int = 0
    #: what a row is ("clip", "video") and the cache written, for the report
    unit: str = "row"
    cache: str = ""

    @property
    def ok(self) -> bool:
        """No failed row: of this process, or under torchrun of any rank (so all ranks exit alike)."""
        return not self.failed if self.world_failed is None else self.world_failed == 0



def format_timings(summary: RunSummary) -> str:
    """One line: where the main process's time went, and the settings that explain it.

    "waiting for loaders" large against "forward": decoding sets the pace (raise --workers, or
    decode on the GPU); "forward" near the whole run: the model does (a larger --batch-size).
    """
    t = summary.timings
    total = max(summary.seconds, 1e-9)
    cfg = summary.settings
    parts = [f"start {t.get('start', 0):.1f} s (cache, workers, model build)",
             f"waiting for loaders {t.get('loaders', 0):.1f} s",
             f"forward {t.get('forward', 0):.1f} s ({100 * t.get('forward', 0) / total:.0f} % of the run)",
             f"writes {t.get('writes', 0):.1f} s"]
    workers = f"{cfg['workers']} loader worker{'s' if cfg['workers'] != 1 else ''}" if cfg else ""
    where = f"; batch {cfg['batch']}, {workers} x {cfg['decode_threads']} decode threads" if cfg else ""
    return "time: " + ", ".join(parts) + where


TABLE_ROWS = 10
#: causes listed when failures are summarised
CAUSES_SHOWN = 5


def format_summary(summary: RunSummary, max_rows: int = TABLE_ROWS) -> str:
    """A plain-text report: counts, then the failures (a table of up to `max_rows` rows, else one
    line per cause)."""
    rank, world = summary.shard
    lines = [f"{summary.group} shard {rank}/{world}: {summary.total:,} rows, {summary.done:,} written now, "
             f"{summary.skipped:,} skipped (done or failed earlier), {len(summary.failed):,} failed, "
             f"{summary.seconds:.1f} s"]
    if summary.timings:
        lines.append(format_timings(summary))
    if summary.outside_split:
        were = "was" if summary.outside_split == 1 else "were"
        lines.append(f"{counted(summary.outside_split, summary.unit)} outside --split {were} left alone")
    if summary.unavailable:
        one = summary.unavailable == 1
        lines.append(f"{counted(summary.unavailable, summary.unit)} {'has' if one else 'have'} no input file and "
                     f"{'was' if one else 'were'} left out (--only-available): "
                     + _left_out_status(summary))
    if summary.redone:
        lines.append(f"{summary.redone} rows were extracted again: "
                     "their clip changed (frame range) since they were written")
    if summary.busy:
        lines.append(f"{summary.busy} rows left to another process extracting the same group; rerun after it ends")
    if summary.world_failed:
        lines.append(f"all torchrun ranks: {summary.world_failed} rows failed")
    if summary.failed:
        lines += _failure_table(summary.failed) if len(summary.failed) <= max_rows else _failure_causes(summary)
        lines.append("rerun with --retry-failed after fixing the inputs to redo failed rows")
    return "\n".join(lines)


def _left_out_status(summary: RunSummary) -> str:
    """What the rows left out by --only-available hold in the cache: their status of earlier runs."""
    earlier = [f"{n:,} of them {'are' if n != 1 else 'is'} recorded as {what} by an earlier run"
               for n, what in ((summary.unavailable_failed, "failed"), (summary.unavailable_done, "done")) if n]
    if not earlier:
        return "they stay missing in the cache, not failed"
    rest = summary.unavailable - summary.unavailable_failed - summary.unavailable_done
    return "not extracted now; " + ", ".join(earlier) + (f", the other {rest:,} stay missing" if rest else "")


def _failure_table(failed: list[tuple[str, str, str]]) -> list[str]:
    w_id = max(len("id"), *(len(f[0]) for f in failed))
    w_st = max(len("stage"), *(len(f[1]) for f in failed))
    return [f"{'id':<{w_id}}  {'stage':<{w_st}}  reason",
            *(f"{row:<{w_id}}  {stage:<{w_st}}  {message}" for row, stage, message in failed)]


def failure_cause(stage: str, message: str) -> str:
    """What failures of one kind share: the stage and the message with its numbers blanked."""
    return f"[{stage}] " + re.sub(r"\d+", "#", message)


def _failure_causes(summary: RunSummary) -> list[str]:
    by_cause: dict[str, list[tuple[str, str, str]]] = {}
    for f in summary.failed:
        by_cause.setdefault(failure_cause(f[1], f[2]), []).append(f)
    videos = {row.split("_")[0] for row, _, _ in summary.failed}
    unit = summary.unit
    lines = [f"{counted(len(summary.failed), unit)} of {counted(len(videos), 'video')} failed, "
             f"{counted(len(by_cause), 'cause')}:"]
    for _cause, rows in sorted(by_cause.items(), key=lambda kv: -len(kv[1]))[:CAUSES_SHOWN]:
        n_videos = len({row.split("_")[0] for row, _, _ in rows})
        row, stage, message = rows[0]
        lines.append(f"  {counted(len(rows), unit)} ({counted(n_videos, 'video')}) at {stage}, e.g. {row}: {message}")
    if len(by_cause) > CAUSES_SHOWN:
        rest = sum(len(r) for r in sorted(by_cause.values(), key=len, reverse=True)[CAUSES_SHOWN:])
        lines.append(f"  ... and {len(by_cause) - CAUSES_SHOWN} more causes ({counted(rest, unit)})")
    where = summary.cache or "CACHE"
    lines.append(f"every failure is recorded in the cache: `migfuse cache info {where} --failures "
                 f"{len(summary.failed)}` lists them")
    return lines
