"""`migfuse.fuse` runs on a laptop with torch and the cache alone: no torchvision, timm, av, and
nothing from migfuse.extract; `migfuse.data_cache.views` does not even need torch."""
from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKER = """
import sys
class Block:
    def __init__(self, names):
        self.names = names
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ImportError("blocked for this test: " + name)
sys.meta_path.insert(0, Block(BLOCKED))
"""


def _run(blocked: set[str], body: str, tmp_path) -> subprocess.CompletedProcess:
    code = f"BLOCKED = {sorted(blocked)!r}\n" + BLOCKER + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)


def test_fuse_trains_and_predicts_without_torchvision_timm_av(tmp_path):
    r = _run({"torchvision", "timm", "av"}, f"""
        import sys
        import migfuse.fuse.heads, migfuse.fuse.train, migfuse.fuse.evaluate, migfuse.fuse.predict
        from migfuse.data_cache.views import default_views
        from migfuse.synth.tokens import write_synthetic
        from migfuse.fuse.train import train
        from migfuse.fuse.predict import predict
        prepared, cache = write_synthetic({str(tmp_path)!r}, n_videos=4, clips_per_video=3, num_classes=2,
                                          tracks=("joint", "bone"), joints=8)
        default_views(cache)
        train(cache, prepared, "mg", {str(tmp_path / "run")!r}, head="pose", config={{"epochs": 1, "threads": 1}})
        scores = predict({str(tmp_path / "run")!r}, "test")
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm", "av")
                        or m.startswith("migfuse.extract"))
        assert not leaked, leaked
        print("OK", len(scores))
    """, tmp_path)
    assert r.returncode == 0 and "OK 3" in r.stdout, r.stderr[-3000:]


def test_views_need_no_torch(tmp_path):
    r = _run({"torch", "torchvision", "timm", "av"}, """
        import migfuse.data_cache.views
        print("OK")
    """, tmp_path)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_cache_import_needs_no_torch(tmp_path):
    """`cache import` (npz and a pickle here) runs where only the cache is installed."""
    r = _run({"torch", "torchvision", "timm", "av"}, """
        import pickle
        import numpy as np
        from typer.testing import CliRunner
        from migfuse.cli import app
        from migfuse.synth.tokens import synthetic_manifest

        m = synthetic_manifest(2, 2, 2)
        m.save("prepared")
        feats = {c.clip_id: np.full(4, k, np.float32) for k, c in enumerate(m.clips)}
        np.savez("f.npz", **feats)
        with open("f.pkl", "wb") as f:
            pickle.dump(feats, f)
        for src, name in (("f.npz", "a"), ("f.pkl", "b")):
            out = CliRunner().invoke(app, ["cache", "import", "c.zarr", src, "--data", "prepared", "--as", "video",
                                           "--name", name])
            assert out.exit_code == 0, out.output
        assert "torch" not in sys.modules
        print("OK")
    """, tmp_path)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
