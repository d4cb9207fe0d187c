"""The Zarr token cache: round trips, provenance refusal, concurrent writers, a real kill mid-clip."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from migfuse.data_cache.store import DONE, FAILED, MISSING, ArraySpec, GroupSpec, TokenCache
from migfuse.errors import UserError

IDS = [f"0001_{i}" for i in range(6)]


def _spec(ids=IDS, provenance=None, **kw) -> GroupSpec:
    return GroupSpec(
        name="video/mvit_v2_s",
        ids=ids,
        arrays={
            "tokens": ArraySpec((5, 8), "float16"),
            "win": ArraySpec((3, 4), "float32", ragged=True),
            "mask": ArraySpec((3,), "bool"),
        },
        provenance=provenance or {"checkpoint_sha256": "aaa", "sampling": {"frames": 16}},
        **kw,
    )


def _clip_arrays(i: int) -> dict[str, np.ndarray]:
    return {
        "tokens": np.full((5, 8), i, np.float16) + np.arange(8, dtype=np.float16),
        "win": np.full((1 + i % 3, 4), -i, np.float32),
        "mask": np.array([i % 2 == 0, True, False]),
    }


def test_write_read_round_trip(tmp_path):
    g = TokenCache(tmp_path / "c.zarr").require_group(_spec())
    for i in (4, 1, 2):
        g.write(IDS[i], _clip_arrays(i))
    assert g.done_ids() == [IDS[1], IDS[2], IDS[4]]
    one = g.read(IDS[4])
    np.testing.assert_array_equal(one["tokens"], _clip_arrays(4)["tokens"])
    assert one["win"].shape == (2, 4)  # ragged: trimmed to its own length
    np.testing.assert_array_equal(one["mask"], [True, True, False])

    many = g.read_many([IDS[4], IDS[1]])  # order of the ids asked, not of the rows
    np.testing.assert_array_equal(many["tokens"][0], _clip_arrays(4)["tokens"])
    np.testing.assert_array_equal(many["tokens"][1], _clip_arrays(1)["tokens"])
    np.testing.assert_array_equal(many["win_len"], [2, 2])
    assert many["win"].shape == (2, 3, 4) and (many["win"][0, 2] == 0).all()
    assert [cid for cid, _ in g.iter_clips()] == [IDS[1], IDS[2], IDS[4]]
    with pytest.raises(KeyError, match="not done"):
        g.read(IDS[0])
    with pytest.raises(KeyError, match="not done"):
        g.read_many([IDS[0], IDS[1]])


def test_reopen_same_spec_keeps_data_and_other_provenance_is_refused(tmp_path):
    cache = TokenCache(tmp_path / "c.zarr")
    cache.require_group(_spec()).write(IDS[0], _clip_arrays(0))
    again = TokenCache(tmp_path / "c.zarr").require_group(_spec())
    assert again.done_ids() == [IDS[0]]
    assert again.provenance == {"checkpoint_sha256": "aaa", "sampling": {"frames": 16}}
    assert "created" in again.info and again.info["versions"]["zarr"].startswith("3.")

    other = _spec(provenance={"checkpoint_sha256": "bbb", "sampling": {"frames": 16}})
    with pytest.raises(UserError, match=r"checkpoint_sha256='aaa' but this run has checkpoint_sha256='bbb'"):
        cache.require_group(other)
    with pytest.raises(UserError, match=r"sampling\.frames=16 but this run has sampling\.frames=8"):
        cache.require_group(_spec(provenance={"checkpoint_sha256": "aaa", "sampling": {"frames": 8}}))
    with pytest.raises(UserError, match="created for 6 ids, this run has 5"):
        cache.require_group(_spec(ids=IDS[:5]))
    changed = dataclasses.replace(_spec(), arrays={"tokens": ArraySpec((5, 9), "float16")})
    with pytest.raises(UserError, match="holds arrays"):
        cache.require_group(changed)
    # The refused attempts changed nothing.
    assert cache.group("video/mvit_v2_s").done_ids() == [IDS[0]]


def test_user_errors_for_missing_cache_and_group(tmp_path):
    with pytest.raises(UserError, match=r"no token cache at .*nowhere\.zarr"):
        TokenCache(tmp_path / "nowhere.zarr").group("video/mvit_v2_s")
    cache = TokenCache(tmp_path / "c.zarr")
    cache.require_group(_spec())
    with pytest.raises(UserError, match=r"has no group 'face/swinface' \(groups: video/mvit_v2_s\)"):
        cache.group("face/swinface")


def test_failures_are_recorded_and_retryable(tmp_path):
    g = TokenCache(tmp_path / "c.zarr").require_group(_spec())
    g.write(IDS[0], _clip_arrays(0))
    g.write_failure(IDS[3], "decode", "moov atom not found")
    assert g.status().tolist() == [DONE, MISSING, MISSING, FAILED, MISSING, MISSING]
    (rec,) = g.failures()
    assert rec["clip_id"] == IDS[3] and rec["stage"] == "decode" and rec["message"] == "moov atom not found"
    assert IDS[3] in g.pending_ids(retry_failed=True)
    assert IDS[3] not in g.pending_ids(retry_failed=False)
    g.write(IDS[3], _clip_arrays(3))  # a later success clears the failure
    assert g.failures() == [] and g.status([IDS[3]]).tolist() == [DONE]


def test_bad_values_never_reach_disk(tmp_path):
    g = TokenCache(tmp_path / "c.zarr").require_group(_spec())
    bad = _clip_arrays(0)
    bad["tokens"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        g.write(IDS[0], bad)
    wrong = _clip_arrays(0)
    wrong["tokens"] = np.zeros((4, 8))
    with pytest.raises(ValueError, match="shape"):
        g.write(IDS[0], wrong)
    with pytest.raises(ValueError, match="needs arrays"):
        g.write(IDS[0], {"tokens": np.zeros((5, 8))})
    assert g.status().tolist() == [MISSING] * 6


def test_views_bulk_write_with_many_clips_per_chunk(tmp_path):
    cache = TokenCache(tmp_path / "c.zarr")
    v = cache.require_group(GroupSpec("views/small", IDS, {"x": ArraySpec((2,), "float32")},
                                      {"from": "video"}, clips_per_chunk=4))
    data = np.arange(12, dtype=np.float32).reshape(6, 2)
    v.write_many(IDS[::-1], {"x": data[::-1]})
    np.testing.assert_array_equal(v.read_many(IDS)["x"], data)
    assert sorted(cache.group_names()) == ["views/small"]


_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from migfuse.data_cache.store import TokenCache, GroupSpec, ArraySpec
    path, start, step, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    ids = [f"0002_{i}" for i in range(n)]
    spec = GroupSpec("joint/agcn", ids, {"features": ArraySpec((64, 16, 4), "float16")}, {"run": 1})
    g = TokenCache(path).require_group(spec)        # both processes race to create the group
    for i in range(start, n, step):
        g.write(ids[i], {"features": np.full((64, 16, 4), i, np.float16)})
    """
)


def test_two_processes_writing_different_clips_lose_nothing(tmp_path):
    path = str(tmp_path / "c.zarr")
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, path, str(k), "2", "40"], stderr=subprocess.PIPE, text=True)
        for k in (0, 1)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    g = TokenCache(path).group("joint/agcn")
    assert len(g.done_ids()) == 40
    feats = g.read_many(g.ids)["features"]
    np.testing.assert_array_equal(feats[:, 0, 0, 0], np.arange(40, dtype=np.float16))


_KILLED = textwrap.dedent(
    """
    import sys, time, numpy as np, zarr
    from migfuse.data_cache.store import TokenCache, GroupSpec, ArraySpec, DONE
    path, victim = sys.argv[1], int(sys.argv[2])
    ids = [f"0003_{i}" for i in range(4)]
    spec = GroupSpec("face/swinface", ids, {"features": ArraySpec((8, 512), "float16")}, {"run": 1})
    g = TokenCache(path).require_group(spec)
    for i in range(3):
        g.write(ids[i], {"features": np.full((8, 512), i, np.float16)})
    # Freeze the writer of clip `victim` after its arrays are on disk but before it is marked done.
    status = g._g["status"]
    original = type(status).__setitem__
    def hold(self, key, value):
        rows = range(key.start, key.stop) if isinstance(key, slice) else [key]  # rows are written as slices
        if self.path.endswith("status") and victim in rows and (np.asarray(value) == DONE).all():
            print("READY", flush=True)
            time.sleep(600)
        return original(self, key, value)
    type(status).__setitem__ = hold
    g.write(ids[victim], {"features": np.full((8, 512), 99, np.float16)})
    """
)


@pytest.mark.parametrize("victim", [3, 1], ids=["new-clip", "rewrite-of-done-clip"])
def test_writer_killed_mid_clip_leaves_store_readable_and_clip_not_done(tmp_path, victim):
    path = str(tmp_path / "c.zarr")
    p = subprocess.Popen([sys.executable, "-c", _KILLED, path, str(victim)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.strip() == "READY", p.stderr.read()
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)

    g = TokenCache(path).group("face/swinface")
    expected_done = {0, 1, 2} - {victim}
    assert set(g.done_ids()) == {f"0003_{i}" for i in expected_done}
    assert f"0003_{victim}" in g.pending_ids()
    for i in expected_done:
        assert (g.read(f"0003_{i}")["features"] == i).all()


_LOOP = textwrap.dedent(
    """
    import sys, numpy as np
    from migfuse.data_cache.store import TokenCache, GroupSpec, ArraySpec
    path = sys.argv[1]
    ids = [f"0004_{i}" for i in range(400)]
    g = TokenCache(path).require_group(GroupSpec("video/mvit_v2_s", ids, {"tokens": ArraySpec((393, 768), "float16")},
                                                 {"run": 1}))
    print("STARTED", flush=True)
    for i, cid in enumerate(ids):
        g.write(cid, {"tokens": np.full((393, 768), i % 1000, np.float16)})
    """
)


def test_kill_at_an_arbitrary_moment_then_every_done_clip_is_intact(tmp_path):
    path = str(tmp_path / "c.zarr")
    p = subprocess.Popen([sys.executable, "-c", _LOOP, path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "STARTED", p.stderr.read()
    time.sleep(1.0)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    g = TokenCache(path).group("video/mvit_v2_s")
    done = g.done_ids()
    assert 0 < len(done) < 400, "the kill should land while clips are being written"
    for cid in done:
        i = int(cid.split("_")[1])
        assert (g.read(cid)["tokens"] == i).all()
