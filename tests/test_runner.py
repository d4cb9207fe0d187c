"""The extraction runner's mechanics with a tiny array extractor (no video, no model)."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

from migfuse.data_cache.store import DONE, FAILED, MISSING, ArraySpec, TokenCache
from migfuse.errors import UserError
from migfuse.extract.interface import Extractor, Failure, Sample, WorkItem
from migfuse.extract.report import format_summary
from migfuse.extract.runner import parse_shard, run_extraction, shard_items

# item key -> its rows. Special items: "bad" yields a Failure for its 2nd row, "boom" raises after its
# first row, "gap" forgets its last row, "crash" kills the worker process (only in a worker).
ITEMS = {
    "g0": ["g0_0", "g0_1", "g0_2"],
    "g1": ["g1_0", "g1_1"],
    "bad": ["bad_0", "bad_1"],
    "boom": ["boom_0", "boom_1"],
    "gap": ["gap_0", "gap_1"],
    "g2": ["g2_0", "g2_1", "g2_2", "g2_3"],
}
GOOD = ["g0_0", "g0_1", "g0_2", "g1_0", "g1_1", "bad_0", "boom_0", "gap_0", "g2_0", "g2_1", "g2_2", "g2_3"]


def value_of(row: str) -> float:
    return float(sum(map(ord, row)))


class ArrayLoader:
    """Yields x = [v, v+1, v+2] per row (v from the row name); misbehaves on the special items."""

    def __call__(self, item: WorkItem):
        for row in item.ids:
            if item.key == "crash":
                os._exit(3)
            if item.key == "bad" and row == "bad_1":
                yield Sample(row, failure=Failure("decode", "bad frame 7"))
                continue
            if row == "boom_1":
                raise ValueError("corrupt header")
            if item.key == "gap" and row == "gap_1":
                continue
            yield Sample(row, inputs={"x": value_of(row) + np.arange(3, dtype=np.float32)})


class ArrayExtractor(Extractor):
    group = "test/array"

    def __init__(self, items=ITEMS, provenance=None):
        self.items, self.batches, self._prov = items, [], provenance or {"rule": "x*2"}

    def ids(self):
        return [r for rows in self.items.values() for r in rows]

    def work_items(self, ids):
        keep = set(ids)
        return [WorkItem(k, tuple(r for r in rows if r in keep)) for k, rows in self.items.items()]

    def arrays(self):
        return {"y": ArraySpec((3,), "float32")}

    def provenance(self):
        return self._prov

    def loader(self):
        return ArrayLoader()

    def setup(self):
        self.device = self.runtime.device

    def forward(self, inputs):
        self.batches.append(len(inputs))
        return [{"y": i["x"] * 2} for i in inputs]


def read_all(cache):
    g = TokenCache(cache).group("test/array")
    return g, {r: g.read(r)["y"] for r in g.done_ids()}


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_input_is_recorded_and_the_run_goes_on(tmp_path, workers):
    ex = ArrayExtractor()
    s = run_extraction(ex, tmp_path / "c.zarr", workers=workers, batch_size=4)
    g, got = read_all(tmp_path / "c.zarr")
    assert sorted(got) == sorted(GOOD)
    for row in GOOD:
        np.testing.assert_array_equal(got[row], 2 * (value_of(row) + np.arange(3)))
    stages = {f["clip_id"]: (f["stage"], f["message"]) for f in g.failures()}
    assert stages == {
        "bad_1": ("decode", "bad frame 7"),
        "boom_1": ("load", "ValueError: corrupt header"),
        "gap_1": ("load", "loader ended without yielding this row"),
    }
    assert (s.done, len(s.failed), s.total, s.skipped) == (12, 3, 15, 0) and not s.ok
    assert max(ex.batches) <= 4 and sum(ex.batches) == 12
    text = format_summary(s)
    assert "3 failed" in text and re.search(r"\nboom_1 +load +ValueError: corrupt header\n", text)


def test_a_dying_worker_fails_only_its_item_and_is_replaced(tmp_path):
    items = dict(ITEMS, crash=["crash_0", "crash_1"])
    s = run_extraction(ArrayExtractor(items), tmp_path / "c.zarr", workers=2, batch_size=2)
    g, got = read_all(tmp_path / "c.zarr")
    assert sorted(got) == sorted(GOOD)  # every other item still made it
    crash = {f["clip_id"]: f for f in g.failures() if f["clip_id"].startswith("crash")}
    assert sorted(crash) == ["crash_0", "crash_1"]
    assert all(f["stage"] == "worker" and "exit code 3" in f["message"] for f in crash.values())
    assert len(s.failed) == 5


def test_resume_skips_done_and_failed_rows_unless_retry_failed(tmp_path):
    cache = tmp_path / "c.zarr"
    run_extraction(ArrayExtractor(), cache, workers=0)
    again = ArrayExtractor()
    s = run_extraction(again, cache, workers=0)
    assert again.batches == [] and s.done == 0 and s.skipped == 15
    assert sorted(f[0] for f in s.failed) == ["bad_1", "boom_1", "gap_1"]  # earlier failures still reported
    retry = ArrayExtractor()
    s = run_extraction(retry, cache, workers=0, retry_failed=True)
    assert s.skipped == 12 and sum(retry.batches) == 0  # the retried rows fail again, nothing else runs
    assert sorted(f[0] for f in s.failed) == ["bad_1", "boom_1", "gap_1"]


def test_a_row_left_missing_by_a_killed_writer_is_redone(tmp_path):
    cache = tmp_path / "c.zarr"
    run_extraction(ArrayExtractor(), cache, workers=0)
    g = TokenCache(cache).group("test/array")
    g._g["status"][g.row("g1_0")] = MISSING  # what a writer killed before `status` leaves
    ex = ArrayExtractor()
    s = run_extraction(ex, cache, workers=0)
    assert s.done == 1 and g.status(["g1_0"])[0] == DONE and sum(ex.batches) == 1


def test_shards_split_whole_items_disjointly(tmp_path):
    cache = tmp_path / "c.zarr"
    seen = []
    for rank in range(3):
        s = run_extraction(ArrayExtractor(), cache, workers=0, shard=(rank, 3))
        seen.append(s.total)
    g = TokenCache(cache).group("test/array")
    assert sum(seen) == 15 and (g.status() != MISSING).all()
    items = [WorkItem(k, tuple(v)) for k, v in ITEMS.items()]
    parts = [shard_items(items, r, 4) for r in range(4)]
    keys = [it.key for p in parts for it in p]
    assert sorted(keys) == sorted(ITEMS) and len(keys) == len(set(keys))


def test_changed_provenance_is_refused(tmp_path):
    run_extraction(ArrayExtractor(), tmp_path / "c.zarr", workers=0)
    with pytest.raises(UserError, match="rule"):
        run_extraction(ArrayExtractor(provenance={"rule": "x*3"}), tmp_path / "c.zarr", workers=0)


def test_parse_shard():
    assert parse_shard("2/5", env={}) == (2, 5)
    assert parse_shard(None, env={}) == (0, 1)
    assert parse_shard(None, env={"RANK": "3", "WORLD_SIZE": "4"}) == (3, 4)
    for bad in ["5/5", "x/2", "1"]:
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad, env={})
    with pytest.raises(UserError, match="torchrun"):
        parse_shard("0/2", env={"RANK": "0", "WORLD_SIZE": "2"})


def test_failed_status_value_is_the_store_constant(tmp_path):
    run_extraction(ArrayExtractor(), tmp_path / "c.zarr", workers=0)
    g = TokenCache(tmp_path / "c.zarr").group("test/array")
    assert g.status(["bad_1"])[0] == FAILED
