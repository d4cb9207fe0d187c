"""Video and context extraction end to end: real decoding and loaders, a tiny stand-in model for the
mechanics (kill + resume, parallel shards, failures), and real MViTv2-S on one clip via the CLI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_decode_util import frame_image
from test_extract_video_util import CORRUPT, GOOD, MISSING, PAST_END, TinyVideoExtractor, bad_ids, make_dataset

from migfuse.datasets.manifest import Manifest
from migfuse.data_cache.store import DONE, FAILED, TokenCache
from migfuse.extract.runner import run_extraction
from migfuse.extract.sampling import ClipSampling, ContextSampling, context_windows, uniform_indices
from migfuse.extract.video import resize_crop

HELPER = Path(__file__).with_name("test_extract_video_util.py")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("vid"))


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """An uninterrupted single-process run of the video track (the cache others must equal)."""
    cache = tmp_path_factory.mktemp("ref") / "cache.zarr"
    summary = run_extraction(TinyVideoExtractor(Manifest.load(dataset), "video"), cache, workers=0, batch_size=3)
    return cache, summary


def snapshot(cache: Path, group: str = "video/tiny") -> dict:
    """Everything a run leaves per row: status, arrays, failure stage + message (not time/pid)."""
    g = TokenCache(cache).group(group)
    fails = {f["clip_id"]: (f["stage"], f["message"]) for f in g.failures()}
    return {"status": dict(zip(g.ids, g.status().tolist())),
            "arrays": {i: {k: v.tolist() for k, v in g.read(i).items()} for i in g.done_ids()},
            "failures": fails}


def expected_tokens(ex: TinyVideoExtractor, indices: np.ndarray) -> np.ndarray:
    """What the stand-in model gives for these frame indices, computed without the runner."""
    frames = np.stack([resize_crop(frame_image(int(i))) for i in indices])[None]  # (1, F, 224, 224, 3)
    ex.setup()
    return ex._tokens(frames)[0]


def test_resize_crop_is_the_checkpoint_recipe_exactly():
    from migfuse.backbones.mvit import PREPROCESSING, preprocess

    rng = np.random.default_rng(0)
    for h, w in [(96, 128), (360, 640), (481, 333)]:
        clip = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        ours = np.stack([resize_crop(f) for f in clip]).astype(np.float32) / 255
        ours = ((ours - PREPROCESSING["mean"]) / PREPROCESSING["std"]).transpose(3, 0, 1, 2)
        np.testing.assert_allclose(ours, preprocess(clip), rtol=0, atol=1e-6)


def test_clip_tokens_come_from_the_annotated_frames(dataset, reference):
    cache, summary = reference
    g = TokenCache(cache).group("video/tiny")
    ex = TinyVideoExtractor(Manifest.load(dataset), "video")
    for cid, (start, end) in [("0001_2", GOOD["0001"][1][2]), ("0002_1", GOOD["0002"][1][1])]:
        want = expected_tokens(ex, uniform_indices(start, end, 16))
        np.testing.assert_allclose(g.read(cid)["tokens"], want, atol=2e-3)
    # a clip whose frames were sampled one frame off would not match
    off = expected_tokens(ex, uniform_indices(61, 120, 16).clip(max=119))
    assert not np.allclose(g.read("0001_2")["tokens"], off, atol=2e-3)
    assert g.provenance["sampling"]["frames"] == 16 and g.provenance["preprocessing"]["crop_size"] == [224, 224]


def test_bad_inputs_are_recorded_with_reasons_and_the_rest_is_done(reference):
    cache, summary = reference
    snap = snapshot(cache)
    assert {i for i, s in snap["status"].items() if s == FAILED} == bad_ids()
    assert all(s == DONE for i, s in snap["status"].items() if i not in bad_ids())
    f = snap["failures"]
    assert f[PAST_END] == ("decode", "clip 0003_2 (frames 180..260): frames [202, 207, 212]... are past the end of "
                                     "0003.mp4 (it decodes 200 frames at 25 fps); check the labels")
    assert f[f"{CORRUPT}_0"][0] == "open" and "cannot open" in f[f"{CORRUPT}_0"][1]
    assert f[f"{MISSING}_0"][0] == "open" and "not found" in f[f"{MISSING}_0"][1]
    assert not summary.ok and len(summary.failed) == 4


def test_context_track_windows_valid_mask_and_failures(dataset, tmp_path):
    m = Manifest.load(dataset)
    ex = TinyVideoExtractor(m, "context", context_sampling=ContextSampling(windows=3))
    s = run_extraction(ex, tmp_path / "c.zarr", workers=0, batch_size=4)
    g = TokenCache(tmp_path / "c.zarr").group("context/tiny")
    assert g.ids == sorted(GOOD) + [CORRUPT, MISSING]
    assert sorted(r for r, _, _ in s.failed) == [CORRUPT, MISSING]
    row = g.read("0002")
    assert row["tokens"].shape == (3, 5, 6) and row["valid"].tolist() == [True, True, True]
    want = expected_tokens(ex, context_windows(90, k=3)[2])
    np.testing.assert_allclose(row["tokens"][2], want, atol=2e-3)


def test_long_clips_get_several_windows_stored_ragged(dataset, tmp_path):
    m = Manifest.load(dataset)
    ex = TinyVideoExtractor(m, "video", clip_sampling=ClipSampling(max_windows=3, window_span=20),
                            row_ids=["0001_0", "0001_2"])
    run_extraction(ex, tmp_path / "c.zarr", workers=0)
    g = TokenCache(tmp_path / "c.zarr").group("video/tiny")
    assert g.read("0001_0")["tokens"].shape == (1, 5, 6)  # 16 frames -> one window
    long = g.read("0001_2")["tokens"]  # 60 frames / 20 -> 3 windows
    assert long.shape == (3, 5, 6)
    want = expected_tokens(ex, uniform_indices(80, 99, 16))  # the middle third of 60..119
    np.testing.assert_allclose(long[1], want, atol=2e-3)


def _run(dataset, cache, shard="-", workers=1, delay=0.0) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HELPER.parents[1]), str(HELPER.parent)]))
    return subprocess.Popen([sys.executable, str(HELPER), str(dataset), str(cache), shard, str(workers), str(delay)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def test_killed_run_resumes_to_the_same_cache(dataset, reference, tmp_path):
    cache = tmp_path / "cache.zarr"
    proc = _run(dataset, cache, delay=0.4)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        try:
            done = int((TokenCache(cache).group("video/tiny").status() == DONE).sum())
        except Exception:  # the group is not created yet
            continue
        if done >= 3:
            os.killpg(proc.pid, signal.SIGKILL)  # the run and its loader workers, like a preemption
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    partial = snapshot(cache)
    assert 3 <= sum(s == DONE for s in partial["status"].values()) < len(partial["status"]) - len(bad_ids())

    resumed = _run(dataset, cache, workers=0)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 1, err.decode()[-2000:]  # bad inputs -> non-zero exit
    assert b"already done or failed" in err
    assert snapshot(cache) == snapshot(reference[0])


def test_two_shards_in_parallel_equal_one_process(dataset, reference, tmp_path):
    cache = tmp_path / "cache.zarr"
    # one shard decodes in a worker process, the other in its main process: both paths write
    procs = [_run(dataset, cache, shard=f"{i}/2", workers=1 - i) for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode in (0, 1), err.decode()[-2000:]
    assert snapshot(cache) == snapshot(reference[0])


def test_cli_real_mvit_random_weights_one_clip(tmp_path, caplog):
    """`migfuse extract video` with real MViTv2-S (random weights) on one good clip + bad inputs."""
    from typer.testing import CliRunner

    from migfuse.cli import app

    dataset = make_dataset(tmp_path, good={"0001": (40, [(0, 30)])})
    cache = tmp_path / "cache.zarr"
    result = CliRunner().invoke(app, ["extract", "video", "--data", str(dataset), "--cache", str(cache),
                                      "--workers", "0", "--batch-size", "2", "--precision", "fp32"])
    assert result.exit_code == 1, result.output
    assert "1 written now" in result.output and f"{MISSING}_0" in result.output and "open" in result.output
    assert "RANDOM weights" in caplog.text
    g = TokenCache(cache).group("video/mvit_v2_s")
    assert g.provenance["weights"].startswith("RANDOM")
    tokens = g.read("0001_0")["tokens"]
    assert tokens.shape == (393, 768) and tokens.dtype == np.float16 and np.isfinite(tokens).all()

    # The same clip through the backbone directly (official preprocess, same seeded weights).
    import torch

    from migfuse.backbones.mvit import preprocess
    from migfuse.backbones.registry import create_backbone

    torch.manual_seed(0)
    bb = create_backbone("mvit_v2_s")
    clip = np.stack([frame_image(int(i)) for i in uniform_indices(0, 30, 16)])
    want = bb.run(preprocess(clip)[None])["tokens"][0]
    np.testing.assert_allclose(tokens.astype(np.float32), want, atol=2e-2, rtol=2e-2)
    assert json.loads(json.dumps(g.provenance))  # provenance is plain JSON


def test_progress_bar_shows_rate_and_eta_on_a_terminal(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # tqdm(disable=None) draws only on a terminal
    ex = TinyVideoExtractor(Manifest.load(dataset), "video", row_ids=["0001_0", "0002_0", f"{MISSING}_0"])
    run_extraction(ex, tmp_path / "c.zarr", workers=0)
    err = capsys.readouterr().err
    assert "video/tiny [0/1]" in err and "3/3" in err and "clip/s" in err and "<00:00" in err
    assert "failed=1" in err
