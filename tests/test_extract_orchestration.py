"""What every extract track shares, carried once by the track table and the runner: device choice
(auto, cuda:LOCAL_RANK, one-line errors), torchrun ranks (a real `torchrun --nproc_per_node 2` run of
each track equals one process), row definitions, fixed forward batches, and two runs on one cache."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_extract_video_util import HELPER_PATH, bad_ids, make_dataset

from migfuse.datasets.manifest import Manifest
from migfuse.data_cache.store import DONE, FAILED, TokenCache
from migfuse.data_cache.tracks import (TRACKS, RowUnit, axis_names_of_group, get_track, row_definition,
                                       track_of_group)
from migfuse.errors import UserError
from migfuse.extract import runner
from migfuse.extract.interface import Extractor
from migfuse.extract.runner import parse_shard
from migfuse.runtime import Precision, Runtime, resolve_device, resolve_precision
from migfuse.synth.skeletons import make_toy_dataset
from migfuse.finetune.skeleton import TrainConfig, build_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """A prepared folder of generated skeletons (3 videos x 4 clips) and a tiny joint checkpoint."""
    root = tmp_path_factory.mktemp("orch")
    make_toy_dataset(root / "prep", classes=4, videos=3, clips_per_video=4, val_videos=1, seed=0)
    cfg = TrainConfig(stream="joint", base_channels=4, length=16)
    meta = {"migfuse": {"arch": "agcn", "stream": "joint", "layout": "imigue",
                        "preprocess": cfg.preprocess().to_dict()}}
    torch.manual_seed(0)
    torch.save({"meta": meta, "state_dict": build_model(cfg).state_dict()}, root / "joint.pt")
    return root


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("orchvid"))


def snapshot(cache: Path, group: str) -> dict:
    g = TokenCache(cache).group(group)
    fails = {f["clip_id"]: (f["stage"], f["message"]) for f in g.failures()}
    return {"status": dict(zip(g.ids, g.status().tolist())),
            "arrays": {i: {k: v.tolist() for k, v in g.read(i).items()} for i in g.done_ids()},
            "failures": fails, "rowdef": g.rowdefs(g.ids)}


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**e, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1", **extra}


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env(), capture_output=True, text=True, timeout=600, **kw)


def torchrun(args: list[str]) -> subprocess.CompletedProcess:
    """A real torchrun launch (2 local processes, CPU) of `args` (a script, or -m module ...)."""
    return run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args])


# ----- the track table ----------------------------------------------------------------------------
def test_track_table_gives_units_groups_and_default_poolings():
    from migfuse.data_cache.views import DEFAULT_POOLING, PER_VIDEO_TRACKS

    assert {t for t in TRACKS if get_track(t).unit is RowUnit.VIDEO} == {"context", "face_context"}
    assert set(PER_VIDEO_TRACKS) == {"context", "face_context"}
    assert DEFAULT_POOLING["joint"] == "pose_parts" and DEFAULT_POOLING["face_context"] == "face_keep"
    assert get_track("bone").group("aagcn") == "bone/aagcn"
    assert get_track("face_context").axis_names == get_track("face").axis_names
    assert axis_names_of_group("joint/agcn")["features"] == ("channel", "time", "joint")
    assert axis_names_of_group("views/joint")["tokens"] == ("token", "channel") and axis_names_of_group("x/y") == {}
    assert track_of_group("face_context/swinface").name == "face_context" and track_of_group("views/video") is None
    with pytest.raises(UserError, match="unknown track 'faces'; the tracks are video, joint"):
        get_track("faces")


def test_no_track_name_tests_outside_the_table():
    """Which rows a track has, or how it is laid out, is read from the table, never from its name.
    (--scope clip/context and the bone-vector rule of --stream bone are option values, not tracks.)"""
    pattern = re.compile(r'(==|!=|\bin)\s*\(?\s*"(video|context|face_context|joint|bone|face)"')
    cache_modules = [p for p in (ROOT / "migfuse" / "data_cache").glob("*.py") if p.name != "tracks.py"]
    files = [*(ROOT / "migfuse" / "extract").rglob("*.py"), ROOT / "migfuse/fuse/data.py", *cache_modules,
             ROOT / "migfuse/demo.py", ROOT / "migfuse/cli.py"]
    assert ROOT / "migfuse/data_cache/store.py" in files and ROOT / "migfuse/data_cache/spec.py" in files
    hits = [f"{f.relative_to(ROOT)}:{n}" for f in files for n, line in enumerate(f.read_text().splitlines(), 1)
            if pattern.search(line) and not re.search(r"\b(scope|stream)\b", line)]
    assert hits == []


def test_row_definition_of_a_clip_is_its_video_and_frame_range(toy):
    m = Manifest.load(toy / "prep")
    c = m.clips[0]
    assert row_definition(get_track("joint"), m, c.clip_id) == \
        f"video={c.video_id} frames={c.start_frame}-{c.end_frame}"
    assert row_definition(get_track("context"), m, c.video_id) == f"video={c.video_id}"


# ----- device, precision, ranks -------------------------------------------------------------------
def _entry_points(toy: Path, videos: Path) -> dict:
    """Each track through the one extraction door (what its CLI command calls), with its prepared folder;
    the runtime is resolved from `device` as the command does."""
    from migfuse.extract.entry import extract

    def door(track: str, data: Path, **track_options):
        return lambda c, device="auto": extract(track, data, c, Runtime.resolve(device=device), **track_options)

    return {"video": door("video", videos), "context": door("context", videos), "face": door("face", videos),
            "face_context": door("face_context", videos),
            "joint": door("joint", toy / "prep", checkpoint=toy / "joint.pt")}


@pytest.mark.parametrize("track", ["video", "context", "face", "face_context", "joint"])
def test_every_track_takes_cuda_local_rank_under_torchrun(track, toy, videos, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)

    def fake_run(ex, cache, **kw):
        seen.update(kw, group=ex.group, device=kw["runtime"].device)
        return runner.RunSummary(ex.group, kw["shard"])

    monkeypatch.setattr(runner, "run_extraction", fake_run)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    go = _entry_points(toy, videos)[track]
    go(tmp_path / "c.zarr")  # --device auto on a CUDA machine
    assert seen["device"] == "cuda:1" and seen["shard"] == (1, 2) and seen["group"].startswith(f"{track}/")
    go(tmp_path / "c.zarr", device="cuda")
    assert seen["device"] == "cuda:1"
    go(tmp_path / "c.zarr", device="cpu")
    assert seen["device"] == "cpu"
    monkeypatch.setenv("LOCAL_RANK", "2")  # a third process per node with two GPUs
    with pytest.raises(UserError, match="LOCAL_RANK 2 but only 2 CUDA devices"):
        go(tmp_path / "c.zarr")


@pytest.mark.parametrize("track", ["video", "face_context", "joint"])
def test_cuda_without_cuda_is_one_line_before_the_cache_is_touched(track, toy, videos, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    go = _entry_points(toy, videos)[track]
    with pytest.raises(UserError, match=r"--device cuda but this torch \(.*\) has no CUDA device; use --device cpu"):
        go(tmp_path / "c.zarr", device="cuda")
    assert not (tmp_path / "c.zarr").exists()
    caplog.set_level("DEBUG", logger="migfuse.runtime")
    assert resolve_device("auto", {}) == "cpu" and "device: cpu (asked for auto)" in caplog.text


def test_cli_device_cuda_without_cuda_exits_with_one_line(toy, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from migfuse.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = CliRunner().invoke(app, ["extract", "skeleton", "--data", str(toy / "prep"),
                                 "--cache", str(tmp_path / "c.zarr"),
                                 "--checkpoint", str(toy / "joint.pt"), "--device", "cuda"])
    assert r.exit_code == 2 and "has no CUDA device" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "c.zarr").exists()


def test_auto_precision_is_bf16_where_the_device_has_it_in_hardware(monkeypatch):
    from migfuse import runtime

    monkeypatch.setattr(runtime, "cpu_has_amx", lambda: False)
    assert resolve_precision(None, "cpu") is Precision.FP32 and resolve_precision("auto", "cpu") is Precision.FP32
    monkeypatch.setattr(runtime, "cpu_has_amx", lambda: True)
    assert resolve_precision("auto", "cpu") is Precision.BF16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision(None, "cuda:1") is Precision.BF16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", "cuda:1") is Precision.FP32
    assert resolve_precision("FP16", "cuda") is Precision.FP16 and resolve_precision("fp32", "cpu") is Precision.FP32
    with pytest.raises(UserError, match="--precision 'fp8' is not one of auto, fp32, bf16, fp16"):
        resolve_precision("fp8", "cpu")
    with torch.inference_mode(), Runtime("cpu", Precision.BF16).autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_rank_outside_the_world_is_an_error_not_an_empty_run(toy, tmp_path):
    with pytest.raises(UserError, match=r"RANK=2 is outside 0..WORLD_SIZE-1 \(WORLD_SIZE=2\)"):
        parse_shard(None, {"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(UserError, match="RANK=1 is outside"):
        parse_shard(None, {"RANK": "1"})
    assert parse_shard(None, {"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    r = subprocess.run([sys.executable, "-m", "migfuse.cli", "extract", "skeleton", "--data", str(toy / "prep"),
                        "--cache", str(tmp_path / "c.zarr"), "--checkpoint", str(toy / "joint.pt")],
                       env=env(RANK="3", WORLD_SIZE="2"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "RANK=3 is outside" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "c.zarr").exists()


# ----- real torchrun launches equal one process ---------------------------------------------------
def test_torchrun_two_ranks_skeleton_equals_one_process(toy, tmp_path):
    from migfuse.extract.entry import extract
    from migfuse.extract.interface import RunOptions

    args = ["-m", "migfuse.cli", "extract", "skeleton", "--data", str(toy / "prep"), "--checkpoint",
            str(toy / "joint.pt"), "--batch-size", "4", "--precision", "fp32"]
    assert extract("joint", toy / "prep", tmp_path / "one.zarr", options=RunOptions(batch_size=4),
                   checkpoint=toy / "joint.pt").ok
    two = torchrun([*args, "--cache", str(tmp_path / "two.zarr")])
    assert two.returncode == 0, two.stderr[-3000:]
    assert "shard 0/2" in two.stdout and "shard 1/2" in two.stdout
    assert snapshot(tmp_path / "two.zarr", "joint/agcn") == snapshot(tmp_path / "one.zarr", "joint/agcn")


@pytest.mark.parametrize("track", ["video", "context"])
def test_torchrun_two_ranks_video_tracks_equal_one_process(track, videos, tmp_path):
    """The runner's entry point under torchrun with the tiny stand-in model (MViTv2-S takes ~10 s a clip here)."""
    from test_extract_video_util import main

    script = [str(HELPER_PATH), str(videos)]
    assert main([str(videos), str(tmp_path / "one.zarr"), "-", "0", "0", track, "2"]) == 1  # the bad inputs fail
    two = torchrun([*script, str(tmp_path / "two.zarr"), "-", "1", "0", track, "2"])
    # bad inputs on one rank: every rank finishes its rows and reports, then all exit 1 together
    assert "shard 0/2" in two.stdout and "shard 1/2" in two.stdout, two.stderr[-3000:]
    assert two.stdout.count("all torchrun ranks: ") == 2 and two.returncode != 0
    group = f"{track}/tiny"
    assert snapshot(tmp_path / "two.zarr", group) == snapshot(tmp_path / "one.zarr", group)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    from migfuse.datasets.prepare import prepare
    from migfuse.synth import generate_dataset

    root = tmp_path_factory.mktemp("orchface")
    data = generate_dataset(root / "data", videos=2, clips_per_video=1, progress=False)
    prepare(data, root / "prepared", progress=False)
    return root / "prepared"


@pytest.mark.parametrize("scope", ["clip", "context"])
def test_torchrun_two_ranks_face_equals_one_process(scope, faces, tmp_path):
    from migfuse.extract.entry import extract
    from migfuse.extract.interface import RunOptions

    args = ["-m", "migfuse.cli", "extract", "face", "--data", str(faces), "--scope", scope, "--frames", "1",
            "--context-windows", "1", "--batch-size", "2", "--workers", "0", "--precision", "fp32"]
    track = "face" if scope == "clip" else "face_context"
    assert extract(track, faces, tmp_path / "one.zarr", options=RunOptions(batch_size=2, workers=0), frames=1,
                   context_windows=1).ok
    two = torchrun([*args, "--cache", str(tmp_path / "two.zarr")])
    assert two.returncode == 0, two.stderr[-3000:]
    group = get_track("face" if scope == "clip" else "face_context").group("swinface")
    snap = snapshot(tmp_path / "one.zarr", group)
    assert len(snap["arrays"]) == 2 and snapshot(tmp_path / "two.zarr", group) == snap


# ----- what a resumed run may reuse -------------------------------------------------------------
def test_a_clip_whose_frame_range_changed_is_extracted_again(toy, tmp_path):
    from migfuse.extract.entry import extract
    from migfuse.extract.interface import RunOptions

    prep = tmp_path / "prep"
    m = Manifest.load(toy / "prep")
    m.save(prep)
    os.symlink(toy / "prep" / "skeletons", prep / "skeletons")
    first = extract("joint", prep, tmp_path / "c.zarr", options=RunOptions(batch_size=4), checkpoint=toy / "joint.pt")
    assert first.ok and first.done == 12
    g = TokenCache(tmp_path / "c.zarr").group("joint/agcn")
    clip = m.clips[1]
    before = g.read(clip.clip_id)["features"]
    clip.end_frame -= 5  # a corrected label file: same id, other frames
    m.save(prep)
    again = extract("joint", prep, tmp_path / "c.zarr", options=RunOptions(batch_size=4), checkpoint=toy / "joint.pt")
    assert again.done == 1 and again.redone == 1 and again.skipped == 11
    assert g.rowdefs([clip.clip_id]) == [f"video={clip.video_id} frames={clip.start_frame}-{clip.end_frame}"]
    after = g.read(clip.clip_id)["features"]
    assert not np.array_equal(after, before)
    fresh = extract("joint", prep, tmp_path / "fresh.zarr", options=RunOptions(batch_size=4),
                    checkpoint=toy / "joint.pt")
    assert fresh.ok
    np.testing.assert_array_equal(
        TokenCache(tmp_path / "fresh.zarr").group("joint/agcn").read(clip.clip_id)["features"], after)
    assert extract("joint", prep, tmp_path / "c.zarr", options=RunOptions(batch_size=4),
                   checkpoint=toy / "joint.pt").done == 0


def test_forward_runs_on_fixed_batches_so_rows_do_not_depend_on_their_neighbours():
    calls = []

    def fn(x):
        calls.append(x.shape)
        return {"y": x * 2, "n": x[:, :1]}

    class Batched(Extractor):
        ids = work_items = arrays = provenance = loader = setup = forward = None

    ex = Batched()
    ex.batch = 4
    out = ex.in_fixed_batches(fn, np.arange(18, dtype=np.float32).reshape(9, 2))
    assert calls == [(4, 2)] * 3 and out["y"].shape == (9, 2) and out["y"][8].tolist() == [32, 34]
    ex.batch = 0
    assert ex.in_fixed_batches(lambda x: x + 1, np.zeros((3, 1))).shape == (3, 1)


def test_skeleton_rows_equal_across_batch_composition_and_other_batch_size_is_refused(toy, tmp_path):
    from migfuse.extract.skeleton.extractor import SkeletonExtractor
    from migfuse.extract.runner import run_extraction

    def ex():
        return SkeletonExtractor(toy / "prep", toy / "joint.pt", "joint")

    run_extraction(ex(), tmp_path / "a.zarr", batch_size=5, workers=0)  # the default runtime: CPU, fp32
    for i in range(3):  # three shards, one after the other: other rows share each batch
        run_extraction(ex(), tmp_path / "b.zarr", batch_size=5, workers=1 if i else 0, shard=(i, 3))
    assert snapshot(tmp_path / "b.zarr", "joint/agcn") == snapshot(tmp_path / "a.zarr", "joint/agcn")
    g = TokenCache(tmp_path / "a.zarr").group("joint/agcn")
    assert g.provenance["compute"] == {"device": "cpu", "precision": "fp32", "forward_batch": 5}
    with pytest.raises(UserError, match=r"was written with forward_batch=5, but this run has forward_batch=4: "
                                        r"rerun with --batch-size 5 to resume it, or use another --cache"):
        run_extraction(ex(), tmp_path / "a.zarr", batch_size=4, workers=0)
    # a cache written in fp32 (the CPU default before --precision auto) and a run in bf16: both options named
    with pytest.raises(UserError, match=r"was written with precision='fp32', forward_batch=5, but this run has "
                                        r"precision='bf16', forward_batch=4: "
                                        r"rerun with --precision fp32 --batch-size 5"):
        run_extraction(ex(), tmp_path / "a.zarr", runtime=Runtime("cpu", Precision.BF16), batch_size=4, workers=0)


def test_skeleton_clip_running_past_the_skeleton_fails_instead_of_being_clamped(toy, tmp_path):
    from migfuse.extract.entry import extract
    from migfuse.extract.interface import RunOptions

    prep = tmp_path / "prep"
    m = Manifest.load(toy / "prep")
    n = m.skeleton(m.clips[0].video_id)[0].shape[0]
    m.clips[0].end_frame = n + 2  # starts inside the file, ends 3 frames after it
    m.save(prep)
    os.symlink(toy / "prep" / "skeletons", prep / "skeletons")
    s = extract("joint", prep, tmp_path / "c.zarr", options=RunOptions(batch_size=4), checkpoint=toy / "joint.pt")
    assert s.done == 11
    assert s.failed == [(m.clips[0].clip_id, "skeleton",
                         f"clip {m.clips[0].clip_id} (frames {m.clips[0].start_frame}-{n + 2}) "
                         f"runs past the {n} frames "
                         f"of video {m.clips[0].video_id}'s skeleton; check the labels (or the skeleton files) and "
                         "re-run `migfuse data prepare`")]


# ----- two runs on one cache ------------------------------------------------------------------------
def test_the_same_unsharded_run_twice_splits_the_work(videos, tmp_path):
    """Two real processes, same command, same cache: every row is written once, by one of them."""
    cache = tmp_path / "c.zarr"
    cmd = [sys.executable, str(HELPER_PATH), str(videos), str(cache), "-", "0", "0.5"]
    procs = [subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    written = [int(re.search(r"(\d+) written now", out).group(1)) for out, _ in outs]
    good = 13 - len(bad_ids())
    assert sum(written) == good and min(written) > 0, outs
    assert any("left to another process" in out for out, _ in outs)
    g = TokenCache(cache).group("video/tiny")
    status = dict(zip(g.ids, g.status().tolist()))
    assert {i for i, s in status.items() if s == FAILED} == bad_ids()
    assert sum(s == DONE for s in status.values()) == good


def test_the_skeleton_track_reads_and_hashes_its_checkpoint_once(toy, tmp_path, monkeypatch):
    from migfuse import checkpoint_file
    from migfuse.extract.entry import extract
    from migfuse.extract.interface import RunOptions

    reads, hashes = [], []
    read, sha = checkpoint_file.read_checkpoint, checkpoint_file.sha256_file
    monkeypatch.setattr(checkpoint_file, "read_checkpoint", lambda *a, **k: reads.append(a) or read(*a, **k))
    monkeypatch.setattr(checkpoint_file, "sha256_file", lambda *a, **k: hashes.append(a) or sha(*a, **k))
    assert extract("joint", toy / "prep", tmp_path / "c.zarr", options=RunOptions(batch_size=4),
                   checkpoint=toy / "joint.pt").ok
    assert (len(reads), len(hashes)) == (1, 1)


# ----- choosing rows: --only-available, --split; no input at all ---------------------------------------
def test_cli_only_available_and_split_choose_the_rows_and_the_group_keeps_every_row(toy, tmp_path):
    from typer.testing import CliRunner

    from migfuse.cli import app

    prep = tmp_path / "prep"
    shutil.copytree(toy / "prep", prep)
    m = Manifest.load(prep)
    gone = m.videos[m.clips[0].video_id].skeleton
    (prep / gone).unlink()  # the first video's skeleton is missing
    cache = tmp_path / "c.zarr"
    base = ["extract", "skeleton", "--data", str(prep), "--cache", str(cache), "--checkpoint", str(toy / "joint.pt"),
            "--batch-size", "4"]
    r = CliRunner().invoke(app, [*base, "--only-available", "--split", "validation"])
    assert r.exit_code == 0, r.output
    validation = set(m.ids("validation"))
    wanted = {c.clip_id for c in m.clips if c.clip_id in validation and c.video_id != m.clips[0].video_id}
    assert wanted and len(wanted) < len(m.clips)
    g = TokenCache(cache).group("joint/agcn")
    assert set(g.done_ids()) == wanted and g.failures() == [] and len(g.ids) == len(m.clips)
    assert f"{len(m.clips) - len(validation)} clips outside --split were left alone" in r.output

    r = CliRunner().invoke(app, [*base, "--only-available"])
    assert r.exit_code == 0, r.output
    left_out = [c.clip_id for c in m.clips if c.video_id == m.clips[0].video_id]
    assert f"{len(left_out)} clips have no input file and were left out (--only-available)" in r.output
    g = TokenCache(cache).group("joint/agcn")
    assert set(g.pending_ids()) == set(left_out) and g.failures() == []

    r = CliRunner().invoke(app, [*base, "--scheme", "split_cs"])
    assert r.exit_code == 2 and r.output.strip() == "error: --scheme split_cs needs --split (e.g. --split test)"


def test_cli_extract_video_without_a_single_video_file_is_one_line_before_a_model_or_a_cache(toy, tmp_path):
    from typer.testing import CliRunner

    from migfuse.cli import app

    cache = tmp_path / "c.zarr"
    for track in ("video", "context", "face"):
        r = CliRunner().invoke(app, ["extract", track, "--data", str(toy / "prep"), "--cache", str(cache)])
        assert r.exit_code == 2, r.output
        assert r.output.strip() == (f"error: not one of the 3 videos of {toy / 'prep'} has a video file: put the "
                                    "videos under the dataset root and rerun `migfuse data prepare`, or pass "
                                    "--video-root DIR (or set MIGFUSE_VIDEO_ROOT) to the folder that holds them")
    assert not cache.exists()


def test_skeleton_track_without_a_single_skeleton_is_one_line(toy, tmp_path):
    from migfuse.extract.entry import extract

    prep = tmp_path / "prep"
    shutil.copytree(toy / "prep", prep)
    shutil.rmtree(prep / "skeletons")
    with pytest.raises(UserError, match=rf"^not one of the 3 videos of {prep} has a skeleton \(prepare_report.json "
                                        r"says why\): check the skeleton files"):
        extract("joint", prep, tmp_path / "c.zarr", checkpoint=toy / "joint.pt")
    assert not (tmp_path / "c.zarr").exists()
