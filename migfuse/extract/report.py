"""What an extraction run did: the per-process `RunSummary` and its plain-text report."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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


def format_summary(summary: RunSummary, max_rows: int = 50) -> str:
    """A plain-text report: counts, then one line per failed row (id, stage, reason)."""
    rank, world = summary.shard
    lines = [f"{summary.group} shard {rank}/{world}: {summary.total} rows, {summary.done} written now, "
             f"{summary.skipped} skipped (done or failed earlier), {len(summary.failed)} failed, "
             f"{summary.seconds:.1f} s"]
    if summary.timings:
        lines.append(format_timings(summary))
    if summary.redone:
        lines.append(f"{summary.redone} rows were extracted again: "
                     "their clip changed (frame range) since they were written")
    if summary.busy:
        lines.append(f"{summary.busy} rows left to another process extracting the same group; rerun after it ends")
    if summary.world_failed:
        lines.append(f"all torchrun ranks: {summary.world_failed} rows failed")
    if summary.failed:
        w_id = max(len("id"), *(len(f[0]) for f in summary.failed))
        w_st = max(len("stage"), *(len(f[1]) for f in summary.failed))
        lines.append(f"{'id':<{w_id}}  {'stage':<{w_st}}  reason")
        for row, stage, message in summary.failed[:max_rows]:
            lines.append(f"{row:<{w_id}}  {stage:<{w_st}}  {message}")
        if len(summary.failed) > max_rows:
            lines.append(f"... and {len(summary.failed) - max_rows} more (see `failure` in the cache group)")
        lines.append("rerun with --retry-failed after fixing the inputs to redo failed rows")
    return "\n".join(lines)
