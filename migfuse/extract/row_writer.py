"""The writing end of an extraction: samples -> fixed batches -> forward -> rows and failure records.

`RowWriter` is the runner's (one per track of a run): it batches samples, runs the track's forward,
writes rows and failures in batches, counts them in the run's summary, ticks the progress bar and
releases work items' claims once their rows are written.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from migfuse.extract.claims import Claims
from migfuse.extract.interface import Extractor, Failure, Sample
from migfuse.extract.report import RunSummary

if TYPE_CHECKING:
    from migfuse.data_cache.store import TokenGroup

log = logging.getLogger(__name__)


#: failure records held before they are written in one go (they are also written at each flush)
_FAILURE_BATCH = 512


class RowWriter:
    """Batches samples, runs the forward, writes rows and failures (each in batches), counts,
    updates the bar. Rows held in memory when the process dies are simply not done: a rerun does
    them, and claims are released only once an item's rows are written."""

    def __init__(self, extractor: Extractor, group: "TokenGroup", batch_size: int, bar: Any, summary: RunSummary,
                 rowdefs: Mapping[str, str] | None = None, claims: Claims | None = None):
        self.ex, self.g, self.batch_size, self.bar, self.summary = extractor, group, batch_size, bar, summary
        self.rowdefs = rowdefs or {}
        self.claims = claims
        self.specs = extractor.arrays()
        self.batch: list[Sample] = []
        self.failures: list[tuple[str, str, str, str | None]] = []
        self.batch_units = 0
        self.batch_since = 0.0
        self.t0 = time.monotonic()
        self.timings = summary.timings
        self.timings.update(start=0.0, loaders=0.0, forward=0.0, writes=0.0)

    def started(self) -> None:
        """The model is built: what came before is the run's fixed start cost."""
        self.timings["start"] = time.monotonic() - self.t0

    def timed(self, key: str, since: float) -> None:
        self.timings[key] += time.monotonic() - since

    def add(self, sample: Sample) -> None:
        if sample.failure is not None or sample.inputs is None:
            self.fail(sample.id, sample.failure or Failure("load", "loader returned no inputs"))
            return
        if not self.batch:
            self.batch_since = time.monotonic()
        self.batch.append(sample)
        self.batch_units += max(1, sample.size)
        if self.batch_units >= self.batch_size:
            self.flush()

    def fail(self, row: str, failure: Failure) -> None:
        # the report summarises failures by cause; one log line per row would flood the console
        log.debug("%s %s failed at %s: %s", self.ex.group, row, failure.stage, failure.message)
        self.failures.append((row, failure.stage, failure.message, self.rowdefs.get(row)))
        self.summary.failed.append((row, failure.stage, failure.message))
        self._tick()
        if len(self.failures) >= _FAILURE_BATCH:
            self._write_failures()

    def _write_failures(self) -> None:
        if self.failures:
            t = time.monotonic()
            self.g.write_failures(self.failures)
            self.failures = []
            self.timed("writes", t)

    def flush(self) -> None:
        """Run the forward on the held batch, write its rows and every held failure, then release
        the claims of the items now written."""
        if self.batch:
            self._forward()
        self._write_failures()
        if self.claims is not None:
            self.claims.flushed()

    def _forward(self) -> None:
        batch, self.batch, self.batch_units = self.batch, [], 0
        t = time.monotonic()
        results = self.ex.forward([s.inputs for s in batch])
        self.timed("forward", t)
        if len(results) != len(batch):
            raise RuntimeError(f"{type(self.ex).__name__}.forward returned {len(results)} "
                               f"results for {len(batch)} inputs")
        rows = []
        for s, res in zip(batch, results):
            if isinstance(res, Failure):
                self.fail(s.id, res)
                continue
            arrays = {name: np.asarray(res[name]).astype(spec.dtype, copy=False) for name, spec in self.specs.items()}
            rows.append((s.id, arrays, self.rowdefs.get(s.id)))
        t = time.monotonic()
        self.g.write_rows(rows)
        self.timed("writes", t)
        for _ in rows:
            self.summary.done += 1
            self._tick()

    def _tick(self) -> None:
        self.bar.update(1)
        if self.summary.failed:
            self.bar.set_postfix_str(f"failed={len(self.summary.failed)}", refresh=False)
