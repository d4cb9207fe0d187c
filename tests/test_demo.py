"""`migfuse demo` runs every stage end to end (shrunk: one clip per video, one context window)."""
from __future__ import annotations

import zipfile

import pytest

from migfuse import demo as demo_module
from migfuse.data_cache.store import TokenCache
from migfuse.errors import UserError


def test_demo_runs_every_stage_and_writes_the_submissions(tmp_path, monkeypatch):
    small = {**demo_module.DEMO, "clips_per_video": 1, "context_windows": 1, "face_frames": 2, "fuse_epochs": 2,
             "skeleton": {**demo_module.DEMO["skeleton"], "epochs": 1}}
    monkeypatch.setattr(demo_module, "DEMO", small)
    artifacts = demo_module.run_demo(tmp_path / "demo")
    cache = TokenCache(artifacts["token cache (migfuse cache info)"])
    for group in ("video/mvit_v2_s", "context/mvit_v2_s", "joint/agcn", "bone/agcn", "face/swinface",
                  "face_context/swinface"):
        g = cache.group(group)
        assert len(g.done_ids()) == len(g.ids) > 0, group
    with zipfile.ZipFile(artifacts["MiGA 2025 submission"]) as z:
        rows = z.read("prediction.csv").decode().splitlines()
    assert rows[0] == "Id,Target" and len(rows) == 1 + 3  # the 3 generated test videos, one clip each
    assert artifacts["CMTF confusion matrix (validation)"].is_file()
    with zipfile.ZipFile(artifacts["emotion submission"]) as z:
        assert z.namelist() == ["prediction.csv"]
    # a rerun reuses the dataset and the cache (extraction resumes) and trains the heads again
    again = demo_module.run_demo(tmp_path / "demo")
    assert again["MiGA 2025 submission"].read_bytes() == artifacts["MiGA 2025 submission"].read_bytes()


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "mine.txt").write_text("do not delete")
    with pytest.raises(UserError, match="holds no earlier demo"):
        demo_module.run_demo(tmp_path)
