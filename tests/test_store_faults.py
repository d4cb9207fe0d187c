"""Faults of the disk under the cache end in one line: a full disk, a read-only cache, a corrupt
chunk (`cache info --verify`); and caches of the previous format are still read and resumed."""
from __future__ import annotations

import errno
import json
import os
import struct

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from migfuse.cli import app
from migfuse.data_cache.store import DONE, FAILED, ArraySpec, CorruptChunk, GroupSpec, TokenCache
from migfuse.data_cache.views import make_view
from migfuse.errors import UserError

IDS = ["0001_0", "0001_1", "0002_0"]


def _group(path, n_done: int = 3):
    g = TokenCache(path).require_group(GroupSpec("video/mvit_v2_s", IDS, {"tokens": ArraySpec((9, 4), "float16")},
                                                 {"backbone": "mvit_v2_s"}))
    for i, cid in enumerate(IDS[:n_done]):
        g.write(cid, {"tokens": np.full((9, 4), i + 1, np.float16)})
    return g


def _fail_writes(monkeypatch, code: int, locks: bool = True) -> list[str]:
    """Every write of the Zarr store and every lock attempt raises OSError(code), as on a full or
    read-only disk (tests run as root, which ignores permission bits); `locks=False`: lock files that
    exist still open, as on a full disk. Returns the files tried."""
    import filelock
    from zarr.storage import LocalStore

    tried: list[str] = []

    async def refuse(self, key, *a, **k):
        tried.append(key)
        raise OSError(code, os.strerror(code), os.path.join(str(self.root), key))

    def refuse_lock(self, *a, **k):
        tried.append(self.lock_file)
        raise OSError(code, os.strerror(code), self.lock_file)

    for name in ("set", "set_if_not_exists", "delete"):
        monkeypatch.setattr(LocalStore, name, refuse)
    if locks:
        monkeypatch.setattr(filelock.FileLock, "acquire", refuse_lock)
    return tried


def _inner_chunk(shard, k: int, chunks_per_shard: int) -> tuple[int, int]:
    """(offset, nbytes) of inner chunk k in a shard file: zarr's shard index sits at the end, 16 bytes
    (offset, nbytes as little-endian uint64) per chunk, then a crc32c."""
    data = shard.read_bytes()
    return struct.unpack_from("<QQ", data, len(data) - 16 * chunks_per_shard - 4 + 16 * k)


def test_a_full_disk_ends_in_one_line_naming_the_chunk_file_and_the_fix(tmp_path, monkeypatch):
    g = _group(tmp_path / "c.zarr", n_done=1)
    _fail_writes(monkeypatch, errno.ENOSPC, locks=False)
    with pytest.raises(UserError) as e:
        g.write(IDS[1], {"tokens": np.ones((9, 4))})
    msg = str(e.value)
    assert msg.startswith(f"cannot write {tmp_path / 'c.zarr' / 'video/mvit_v2_s/tokens/c/0/0/0'}: "
                          "No space left on device; free space on that disk (or pass another --cache) and rerun")
    assert "\n" not in msg


def test_a_read_only_cache_resumes_with_nothing_to_do_and_refuses_new_rows_in_one_line(tmp_path, monkeypatch):
    path = tmp_path / "c.zarr"
    _group(path, n_done=2)
    spec = TokenCache(path).group("video/mvit_v2_s").spec
    tried = _fail_writes(monkeypatch, errno.EROFS)
    g = TokenCache(path).require_group(spec)  # what a resumed extract does first
    assert g.pending_ids() == [IDS[2]] and g.failures() == []
    assert tried == []  # reopening wrote nothing, not even a lock
    with pytest.raises(UserError, match=r"^cannot write .*c\.zarr/\.locks/video__mvit_v2_s\.lock: Read-only file "
                                        r"system; "
                                        r"the cache is read-only: "
                                         r"reading it needs no writes, but to add rows copy it"):
        g.write(IDS[2], {"tokens": np.ones((9, 4))})
    with pytest.raises(UserError, match=r"^cannot write .*c\.zarr\.lock: Read-only file system; "
                                        r"the cache is read-only"):
        TokenCache(path).require_group(GroupSpec("joint/agcn", IDS, {"f": ArraySpec((2,), "float16")}))


def test_cache_view_on_a_read_only_cache_resumes_when_done_and_fails_in_one_line_otherwise(tmp_path, monkeypatch):
    path = tmp_path / "c.zarr"
    _group(path, n_done=2)
    make_view(path, "video", "video/mvit_v2_s", pooling="video_cls")  # toy tokens (9, 4): not 49-patch time steps
    _fail_writes(monkeypatch, errno.EROFS)
    runner = CliRunner()
    res = runner.invoke(app, ["cache", "view", str(path), "--name", "video", "--group", "video/mvit_v2_s",
                              "--pool", "video_cls"])
    assert res.exit_code == 0, res.output  # nothing new: no writes needed
    res = runner.invoke(app, ["cache", "view", str(path), "--name", "raw", "--group", "video/mvit_v2_s",
                              "--pool", "raw"])
    assert res.exit_code == 2
    (line,) = res.output.strip().splitlines()
    assert line.startswith("error: cannot write ") and "Read-only file system; the cache is read-only" in line
    res = runner.invoke(app, ["cache", "info", str(path)])
    assert res.exit_code == 0, res.output


def test_a_corrupt_chunk_is_named_when_read(tmp_path):
    g = _group(tmp_path / "c.zarr")
    chunk = g.chunk_file("tokens", 1)
    assert chunk == tmp_path / "c.zarr/video/mvit_v2_s/tokens/c/0/0/0"  # one shard file holds the 3 rows
    offset, nbytes = _inner_chunk(chunk, 1, 3)
    data = bytearray(chunk.read_bytes())
    data[offset + nbytes // 2] ^= 0xFF  # row 1's own chunk inside the shard
    chunk.write_bytes(bytes(data))
    np.testing.assert_array_equal(g.read(IDS[0])["tokens"], np.full((9, 4), 1))
    np.testing.assert_array_equal(g.read(IDS[2])["tokens"], np.full((9, 4), 3))
    for read in (lambda: g.read(IDS[1]), lambda: g.read_many(IDS)):
        with pytest.raises(CorruptChunk) as e:
            read()
        assert str(e.value).startswith(f"corrupt chunk {chunk} in cache group 'video/mvit_v2_s' "
                                       "(array tokens, row 0001_1): ")
        assert "--verify --mark-failed" in str(e.value)


def test_cache_info_verify_names_the_corrupt_chunk_and_mark_failed_makes_it_retryable(tmp_path):
    path = tmp_path / "c.zarr"
    g = _group(path)
    runner = CliRunner()
    res = runner.invoke(app, ["cache", "info", str(path), "--verify"])
    assert res.exit_code == 0 and res.output.strip().endswith(f"verified: every chunk of the 1 groups in "
                                                              f"{path} decodes")

    chunk = g.chunk_file("tokens", 2)
    offset, nbytes = _inner_chunk(chunk, 2, 3)
    data = bytearray(chunk.read_bytes())
    data[offset + nbytes - 1] ^= 0xFF  # row 2's chunk: its checksum no longer matches
    chunk.write_bytes(bytes(data))
    res = runner.invoke(app, ["cache", "info", str(path), "--verify"])
    assert res.exit_code == 2
    err = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and err[0].startswith(f"error: corrupt chunk {chunk} in cache group 'video/mvit_v2_s' "
                                               f"(array tokens, row 0002_0)")

    # a damaged shard is deleted: every row it held is failed and redone, none reads as done
    res = runner.invoke(app, ["cache", "info", str(path), "--verify", "--mark-failed"])
    assert res.exit_code == 2 and \
        "marked 3 rows failed: rerun the same `migfuse extract` with --retry-failed" in res.output
    g = TokenCache(path).group("video/mvit_v2_s")
    assert g.status().tolist() == [FAILED, FAILED, FAILED] and g.failures()[2]["stage"] == "verify"
    assert not chunk.exists()
    for i, cid in enumerate(IDS):  # the retry
        g.write(cid, {"tokens": np.full((9, 4), i + 1)})
    res = runner.invoke(app, ["cache", "info", str(path), "--verify"])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(g.read_many(IDS)["tokens"][:, 0, 0], [1, 2, 3])


def test_a_truncated_shard_names_its_first_row_and_mark_failed_fails_all_its_rows(tmp_path):
    path = tmp_path / "c.zarr"
    g = _group(path)
    chunk = g.chunk_file("tokens", 0)
    chunk.write_bytes(chunk.read_bytes()[:-5])  # the shard index is cut
    res = CliRunner().invoke(app, ["cache", "info", str(path), "--verify", "--mark-failed"])
    assert res.exit_code == 2
    err = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert err[0].startswith(f"error: corrupt chunk {chunk} in cache group 'video/mvit_v2_s' (array tokens, "
                             "row 0001_0)") and "marked 3 rows failed" in err[0]
    assert TokenCache(path).group("video/mvit_v2_s").status().tolist() == [FAILED] * 3


def test_mark_failed_without_verify_is_refused(tmp_path):
    _group(tmp_path / "c.zarr")
    res = CliRunner().invoke(app, ["cache", "info", str(tmp_path / "c.zarr"), "--mark-failed"])
    assert res.exit_code == 2 and "--mark-failed needs --verify" in res.output


def test_cache_info_consolidate_rewrites_the_root_metadata(tmp_path):
    path = tmp_path / "c.zarr"
    _group(path)
    (path / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    res = CliRunner().invoke(app, ["cache", "info", str(path), "--consolidate"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"consolidated the metadata of 1 groups in {path / 'zarr.json'}")
    consolidated = json.loads((path / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    assert consolidated["video/mvit_v2_s/tokens"]["dimension_names"] == ["clip", "token", "channel"]


def _format1_group(path):
    """A group as the previous migfuse wrote it: ids array `ids`, no dimension names, zero fill."""
    root = zarr.open_group(str(path), mode="a")
    zg = root.require_group("joint/agcn")
    ids = zg.create_array("ids", shape=(2,), chunks=(2,), dtype=str, fill_value="")
    ids[:] = np.array(["0001_0", "0001_1"], dtype=object)
    zg.create_array("features", shape=(2, 3), chunks=(1, 3), dtype="float16", fill_value=0)
    zg.create_array("failure", shape=(2,), chunks=(1,), dtype=str, fill_value="")
    status = zg.create_array("status", shape=(2,), chunks=(1,), dtype="uint8", fill_value=0)
    zg["features"][0] = np.array([1, 2, 3])
    status[0] = DONE
    zg.attrs.update({"migfuse": {"format": 1,
                                 "arrays": {"features": {"shape": [3], "dtype": "float16", "ragged": False}},
                                 "clips_per_chunk": 1, "n": 2, "provenance": {"run": 1}, "info": {"created": "x"}}})


def test_a_cache_of_the_previous_format_is_read_and_resumed(tmp_path):
    path = tmp_path / "old.zarr"
    _format1_group(path)
    g = TokenCache(path).require_group(GroupSpec("joint/agcn", ["0001_0", "0001_1"],
                                                 {"features": ArraySpec((3,), "float16")},
                                                 {"run": 1}))
    assert g.format == 1 and g.ids == ["0001_0", "0001_1"] and g.pending_ids() == ["0001_1"]
    np.testing.assert_array_equal(g.read("0001_0")["features"], [1, 2, 3])
    g.write("0001_1", {"features": np.array([4, 5, 6])})
    assert TokenCache(path).group("joint/agcn").done_ids() == ["0001_0", "0001_1"]
    res = CliRunner().invoke(app, ["cache", "info", str(path)])
    assert res.exit_code == 0 and \
        "format 1: read by migfuse, but without dimension names (xarray cannot open it)" in res.output


def test_verify_names_a_corrupt_status_chunk_and_mark_failed_repairs_it(tmp_path):
    path = tmp_path / "c.zarr"
    g = _group(path)
    chunk = g.chunk_file("status", 0)
    chunk.write_bytes(b"\x00" * 7)
    res = CliRunner().invoke(app, ["cache", "info", str(path), "--verify"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1].startswith(
        f"error: corrupt chunk {chunk} in cache group 'video/mvit_v2_s' (array status, row 0001_0, 0001_1, 0002_0)")
    res = CliRunner().invoke(app, ["cache", "info", str(path), "--verify", "--mark-failed"])
    assert res.exit_code == 2 and "marked 3 rows failed" in res.output  # the rows whose status was lost
    assert TokenCache(path).group("video/mvit_v2_s").status().tolist() == [FAILED, FAILED, FAILED]


def _format2_group(path):
    """A group as migfuse wrote it before shards (format 2): one file per row and array."""
    root = zarr.open_group(str(path), mode="a")
    zg = root.require_group("joint/agcn")
    ids = zg.create_array("clip", shape=(2,), chunks=(2,), dtype=str, fill_value="", dimension_names=("clip",))
    ids[:] = np.array(["0001_0", "0001_1"], dtype=object)
    zg.create_array("features", shape=(2, 3), chunks=(1, 3), dtype="float16", fill_value=np.nan,
                    dimension_names=("clip", "channel"))
    for name, dtype, fill in (("failure", str, ""), ("rowdef", str, ""), ("status", "uint8", 0)):
        zg.create_array(name, shape=(2,), chunks=(1,), dtype=dtype, fill_value=fill, dimension_names=("clip",))
    zg["features"][0] = np.array([1, 2, 3])
    zg["status"][0] = DONE
    zg.attrs.update({"migfuse": {"format": 2, "row_dim": "clip",
                                 "arrays": {"features": {"shape": [3], "dtype": "float16", "ragged": False,
                                                         "dims": ["channel"]}},
                                 "clips_per_chunk": 1, "n": 2, "provenance": {"run": 1}, "info": {"created": "x"}}})


def test_a_cache_of_format_2_is_read_and_resumed_without_a_write_lock(tmp_path):
    path = tmp_path / "old.zarr"
    _format2_group(path)
    g = TokenCache(path).require_group(GroupSpec("joint/agcn", ["0001_0", "0001_1"],
                                                 {"features": ArraySpec((3,), "float16", dims=("channel",))},
                                                 {"run": 1}))
    assert g.format == 2 and g.pending_ids() == ["0001_1"]
    g.write("0001_1", {"features": np.array([4, 5, 6])})
    g.write_failure("0001_0", "load", "gone")
    g = TokenCache(path).group("joint/agcn")
    assert g.status().tolist() == [FAILED, DONE] and g.failures()[0]["message"] == "gone"
    np.testing.assert_array_equal(g.read("0001_1")["features"], [4, 5, 6])
    assert (path / "joint/agcn/features/c/1/0").is_file() and not (path / ".locks").exists()
    res = CliRunner().invoke(app, ["cache", "info", str(path)])
    assert res.exit_code == 0 and "format 2: read and resumed by migfuse, with one file per row" in res.output


def test_a_damaged_failure_file_is_emptied_without_failing_the_rows_whose_tokens_are_sound(tmp_path):
    path = tmp_path / "c.zarr"
    g = _group(path, n_done=2)
    g.write_failure(IDS[2], "decode", "bad packet")
    failure = g.chunk_file("failure", 0)  # one file holds every row's failure text (format 3)
    failure.write_bytes(b"garbage" * 10)
    res = CliRunner().invoke(app, ["cache", "info", str(path), "--verify", "--mark-failed"])
    assert res.exit_code == 2 and "marked 0 rows failed" in res.output, res.output
    g = TokenCache(path).group("video/mvit_v2_s")
    assert g.status().tolist() == [DONE, DONE, FAILED]  # the tokens of the done rows are kept
    np.testing.assert_array_equal(g.read_many(IDS[:2])["tokens"][:, 0, 0], [1, 2])
    assert g.failures() == [{"clip_id": IDS[2], "stage": "?", "message": ""}]  # its text is gone, the row stays failed
