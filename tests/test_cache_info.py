"""`migfuse cache info` prints what the cache holds, and fails in one line on a wrong path."""
from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from migfuse.cli import app
from migfuse.data_cache.store import ArraySpec, GroupSpec, TokenCache


def test_cache_info_table(tmp_path):
    cache = TokenCache(tmp_path / "c.zarr")
    ids = ["0001_0", "0001_1", "0001_2"]
    g = cache.require_group(GroupSpec("joint/agcn", ids, {"features": ArraySpec((256, 16, 55), "float16")},
                                      {"backbone": "agcn", "checkpoint_sha256": "f00d"}))
    g.write("0001_0", {"features": np.ones((256, 16, 55))})
    g.write_failure("0001_2", "skeleton", "no person in any frame")
    res = CliRunner().invoke(app, ["cache", "info", str(tmp_path / "c.zarr")])
    assert res.exit_code == 0, res.output
    header, _, row = res.output.splitlines()[1:4]
    assert header.split() == ["group", "array", "per-clip", "shape", "dtype",
                              "clips", "done", "failed", "missing", "size"]
    assert row.split()[:9] == ["joint/agcn", "features", "(256,", "16,", "55)", "float16", "3", "1", "1"]
    assert "checkpoint_sha256: f00d" in res.output
    assert "FAILED 0001_2 [skeleton] no person in any frame" in res.output


def test_cache_info_on_missing_path_is_one_line(tmp_path):
    res = CliRunner().invoke(app, ["cache", "info", str(tmp_path / "none.zarr")])
    assert res.exit_code == 2
    assert res.output.strip().startswith("error: no token cache at")
    assert len(res.output.strip().splitlines()) == 1
