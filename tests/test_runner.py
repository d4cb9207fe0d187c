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


# ----- failures at scale: batched, summarised, and a file count that does not follow the rows ------------
class NoInputLoader:
    """Video 0000 has its input; every other video has none (as 358 of iMiGUE's 359 skeletons)."""

    def __call__(self, item: WorkItem):
        for row in item.ids:
            if item.key == "0000":
                yield Sample(row, inputs={"x": np.arange(3, dtype=np.float32)})
            else:
                yield Sample(row, failure=Failure("skeleton", f"video {item.key} has no skeleton; "
                                                              "see prepare_report.json for why"))


class NoInputExtractor(ArrayExtractor):
    def __init__(self, videos: int):
        super().__init__({f"{v:04d}": [f"{v:04d}_{k}" for k in range(10)] for v in range(videos)})

    def loader(self):
        return NoInputLoader()

    def rows_with_input(self, ids):
        return {i for i in ids if i.startswith("0000_")}

    def rows_in_split(self, split, scheme=None):
        return {i for i in self.ids() if int(i[:4]) % 2 == (split == "test")}


def _files(folder) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def test_failures_are_written_in_batches_and_the_file_count_does_not_grow_with_the_rows(tmp_path, monkeypatch,
                                                                                         caplog):
    from migfuse.data_cache.group import TokenGroup

    calls = {"write_failures": 0, "write_failure": 0}
    for name in calls:
        original = getattr(TokenGroup, name)

        def counted(self, *a, _name=name, _original=original, **k):
            calls[_name] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(TokenGroup, name, counted)
    files = {}
    for videos in (10, 200):  # 100 and 2,000 rows
        cache = tmp_path / f"{videos}.zarr"
        calls["write_failures"] = 0
        with caplog.at_level("WARNING"):
            s = run_extraction(NoInputExtractor(videos), cache, workers=0, batch_size=4)
        g = TokenCache(cache).group("test/array")
        assert (s.done, len(s.failed)) == (10, 10 * (videos - 1))
        assert g.status().tolist() == [DONE] * 10 + [FAILED] * (10 * (videos - 1))
        assert g.failures()[-1]["message"] == f"video {videos - 1:04d} has no skeleton; see prepare_report.json for why"
        files[videos] = _files(cache)
        assert calls["write_failures"] <= len(s.failed) // 512 + 4 and calls["write_failure"] == 0
    assert files[10] == files[200]
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # no line per failed row

    lines = format_summary(s).splitlines()
    assert lines[-4:] == [
        "1,990 rows of 199 videos failed, 1 cause:",
        "  1,990 rows (199 videos) at skeleton, e.g. 0001_0: video 0001 has no skeleton; see prepare_report.json "
        "for why",
        f"every failure is recorded in the cache: `migfuse cache info {cache} --failures 1990` lists them",
        "rerun with --retry-failed after fixing the inputs to redo failed rows"]
    assert len(lines) == 6  # the counts, where the time went, and the four above


def test_only_available_and_split_leave_the_other_rows_missing_not_failed(tmp_path):
    cache = tmp_path / "c.zarr"
    s = run_extraction(NoInputExtractor(4), cache, workers=0, batch_size=4, only_available=True)
    g = TokenCache(cache).group("test/array")
    assert (s.total, s.done, s.failed, s.unavailable) == (10, 10, [], 30) and s.ok
    assert g.status().tolist() == [DONE] * 10 + [MISSING] * 30 and len(g.ids) == 40
    assert "30 rows have no input file and were left out (--only-available): they stay missing in the cache, " \
           "not failed" in format_summary(s)

    s = run_extraction(NoInputExtractor(4), cache, workers=0, batch_size=4, split="test")  # videos 1 and 3
    assert (s.total, s.done, len(s.failed), s.outside_split) == (20, 0, 20, 20)
    g = TokenCache(cache).group("test/array")
    assert g.status().tolist() == [DONE] * 10 + [FAILED] * 10 + [MISSING] * 10 + [FAILED] * 10
    assert "20 rows outside --split were left alone" in format_summary(s)

    s = run_extraction(NoInputExtractor(4), cache, workers=0, batch_size=4, only_available=True, retry_failed=True)
    assert (s.unavailable, s.unavailable_failed, s.unavailable_done) == (30, 20, 0)
    assert ("30 rows have no input file and were left out (--only-available): not extracted now; 20 of them are "
            "recorded as failed by an earlier run, the other 10 stay missing") in format_summary(s).splitlines()
    assert TokenCache(cache).group("test/array").status().tolist() == g.status().tolist()
