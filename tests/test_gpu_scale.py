"""benchmarks/gpu_scale.py --quick on the CPU: every track measured through the real extract path,
and the table's derived numbers (ratio, projection, total) follow from the measured ones."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRACKS = ["video", "context", "face", "face_context", "joint", "bone"]


@pytest.mark.slow
def test_quick_scale_run_measures_every_track_and_projects_imigue(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_scale.py"), "--quick", "--device", "cpu",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_scale.json").read_text())
    table = (tmp_path / "gpu_scale.md").read_text()
    assert [t["track"] for t in data["tracks"]] == TRACKS
    imigue = {"video": 18498, "context": 359, "face": 18498, "face_context": 359, "joint": 18498, "bone": 18498}
    for t in data["tracks"]:
        assert t["error"] == "" and t["marginal"] > 0 and t["decode_ceiling"] > 0 and t["forward_ceiling"] > 0
        assert t["ratio"] == pytest.approx(t["marginal"] / min(t["decode_ceiling"], t["forward_ceiling"]))
        assert t["projected_s"] == pytest.approx(t["fixed_s"] + imigue[t["track"]] / t["marginal"])
        assert set(t["timings"]) == {"start", "loaders", "forward", "writes"}
        assert f"| {t['track']} | {t['rows'][0]}, {t['rows'][1]} |" in table
        assert f"**{t['ratio']:,.2f}**" in table
    assert data["total_projected_s"] == pytest.approx(sum(t["projected_s"] for t in data["tracks"]))
    assert f"| {data['total_projected_s']:,.2f} | <= 600 |" in table
    assert "video tokens bf16 vs fp32 (same clips) | cosine 0.99" in table and "within the tolerance" in table
    assert "--decoder gpu vs cpu | not measured: the extraction runs on cpu" in table
    assert not (tmp_path / "work").exists() and math.isfinite(data["total_projected_s"])
