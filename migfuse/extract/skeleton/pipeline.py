"""Both skeleton streams end to end: train a joint and a bone backbone, then extract both into the cache.

What `migfuse demo` (and a user with a prepared folder) calls to fill `joint/<arch>` and `bone/<arch>`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from migfuse.extract.skeleton.train import TrainConfig, TrainResult, train_skeleton

log = logging.getLogger(__name__)


@dataclass
class StreamRun:
    """One stream: its training result and the extraction runner's summary."""

    stream: str
    train: TrainResult
    extract: object  # migfuse.extract.runner.RunSummary


def train_and_extract(prepared: str | Path, cache: str | Path, out: str | Path,
                      config: TrainConfig | None = None, *, streams: tuple[str, ...] = ("joint", "bone"),
                      batch_size: int = 64) -> dict[str, StreamRun]:
    """Train each stream into `out/<stream>/` (resumable) and extract it into `cache`.

    `config` gives every training setting but the stream (default: TrainConfig(), the published
    width; pass e.g. TrainConfig(epochs=3, base_channels=8, length=32) for a quick CPU run).
    """
    from migfuse.extract.skeleton.extractor import extract_skeleton

    config = config or TrainConfig()
    runs = {}
    for stream in streams:
        result = train_skeleton(prepared, Path(out) / stream, replace(config, stream=stream))
        summary = extract_skeleton(prepared, cache, result.best_checkpoint, stream, device=config.device,
                                   batch_size=batch_size)
        log.info("%s stream: best epoch %d (top-1 %.3f), %d clips extracted, %d failed", stream,
                 result.best_epoch, result.best_top1, summary.done, len(summary.failed))
        runs[stream] = StreamRun(stream, result, summary)
    return runs
