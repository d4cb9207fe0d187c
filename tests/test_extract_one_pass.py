"""`extract all`: the four video tracks from one decode per video write exactly what the four separate
commands write (tokens bit for bit, failures, provenance), resume after kill -9, and a video that
cannot be read fails every track's rows of it with the same reason while the others go on.

Data: the synthetic dataset (faces the face tracks find) plus a corrupt and a missing video; the
video tracks run the `tiny` stand-in backbone (tests/test_extract_video_util.py), the face tracks
real MTCNN + SwinFace (random weights)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from migfuse.errors import UserError
from test_decode_util import write_corrupt

from migfuse.data_cache.store import DONE, TokenCache
from migfuse.extract.interface import RunOptions

HERE = Path(__file__).resolve()
TRACKS = ["video", "context", "face", "face_context"]
GROUPS = {"video": "video/tiny", "context": "context/tiny", "face": "face/swinface",
          "face_context": "face_context/swinface"}
OPTIONS = {"video": {"backbone": "tiny"}, "context": {"backbone": "tiny", "context_windows": 3},
           "face": {"frames": 3}, "face_context": {"frames": 2, "context_windows": 3}}
CORRUPT, MISSING = "0998", "0999"
#: every forward of every track (a face batch of 32, the CPU default, would be mostly padding here)
BATCH = 4


def make_prepared(root: Path) -> Path:
    """Two synthetic videos with two clips each, plus a corrupt file and a missing one (one clip each)."""
    from migfuse.datasets.manifest import Clip, Manifest, VideoInfo
    from migfuse.datasets.prepare import prepare
    from migfuse.synth import generate_dataset

    data = generate_dataset(root / "data", videos=2, clips_per_video=2, progress=False)
    prepare(data, root / "prepared0", progress=False)
    m = Manifest.load(root / "prepared0")
    videos = {v: m.videos[v] for v in m.videos}
    videos[CORRUPT] = VideoInfo(CORRUPT, video_path=write_corrupt(root / f"{CORRUPT}.mp4"))
    videos[MISSING] = VideoInfo(MISSING, video_path=root / f"{MISSING}.mp4")  # never written
    clips = list(m.clips) + [Clip.make(v, 0, 0, 10, raw_class=2) for v in (CORRUPT, MISSING)]
    Manifest(clips=clips, videos=videos).save(root / "prepared")
    return root / "prepared"


def snapshot(cache: Path, group: str) -> dict:
    """Everything a run leaves per row: status, arrays, failure stage + message, provenance."""
    g = TokenCache(cache).group(group)
    return {"status": dict(zip(g.ids, g.status().tolist())),
            "arrays": {i: {k: v.tolist() for k, v in g.read(i).items()} for i in g.done_ids()},
            "failures": {f["clip_id"]: (f["stage"], f["message"]) for f in g.failures()},
            "provenance": g.provenance}


def one_pass(prepared: Path, cache: Path, workers: int = 1, tracks: list[str] = TRACKS):
    import test_extract_video_util  # noqa: F401 - registers the `tiny` backbone

    from migfuse.extract.multi_run import extract_in_one_pass

    return extract_in_one_pass(tracks, prepared, cache, options=RunOptions(workers=workers, batch_size=BATCH),
                               track_options={t: OPTIONS[t] for t in tracks})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The four separate commands into one cache, and `extract all` into another (loading in this
    process, so the videos it decodes are counted: `test_killed_run...` runs the worker path)."""
    import test_extract_video_util  # noqa: F401 - registers the `tiny` backbone
    import torch

    from migfuse.extract import decode
    from migfuse.extract.entry import extract

    root = tmp_path_factory.mktemp("onepass")
    torch.set_num_threads(1)
    prepared = make_prepared(root)
    separate = root / "separate.zarr"
    for t in TRACKS:
        extract(t, prepared, separate, options=RunOptions(workers=0, batch_size=BATCH), **OPTIONS[t])
    decoded: list[str] = []
    real = decode.read_frames

    def counting(path, *args, **kwargs):
        decoded.append(Path(path).stem)
        return real(path, *args, **kwargs)

    decode.read_frames = counting
    try:
        summaries = one_pass(prepared, root / "one.zarr", workers=0)
    finally:
        decode.read_frames = real
    return prepared, separate, root / "one.zarr", summaries, decoded


def test_every_track_equals_its_own_command_exactly(runs):
    prepared, separate, one, summaries, _ = runs
    assert [s.group for s in summaries] == [GROUPS[t] for t in TRACKS]
    for t in TRACKS:
        want, got = snapshot(separate, GROUPS[t]), snapshot(one, GROUPS[t])
        assert got == want, t
        assert len(got["arrays"]) == (4 if t in ("video", "face") else 2)
    faces = snapshot(one, "face/swinface")["arrays"]
    assert any(any(r["mask"]) for r in faces.values())  # faces were found: the features compared are real


def test_a_video_that_fails_fails_every_track_with_the_same_reason(runs):
    _, _, one, summaries, _ = runs
    for video, stage, reason in [(CORRUPT, "open", "cannot open the file, it is not a readable media file"),
                                 (MISSING, "open", "video file not found: ")]:
        for t in TRACKS:
            fails = snapshot(one, GROUPS[t])["failures"]
            row = f"{video}_0" if t in ("video", "face") else video
            assert fails[row][0] == stage and reason in fails[row][1], (t, fails[row])
    for s in summaries:
        assert {row[:4] for row, _, _ in s.failed} == {CORRUPT, MISSING}  # the other videos went on


def test_each_video_is_decoded_once_for_all_tracks(runs):
    decoded = runs[4]
    good = TokenCache(runs[2]).group("context/tiny").done_ids()
    assert len(good) == 2 and sorted(decoded) == sorted(good)  # once each; the corrupt and missing files never
    assert [s.done for s in runs[3]] == [4, 2, 4, 2]


def test_a_group_started_by_its_own_command_is_finished_by_extract_all(runs, tmp_path):
    import test_extract_video_util  # noqa: F401 - registers the `tiny` backbone

    from migfuse.extract.entry import extract

    prepared, separate, _, _, _ = runs
    cache = tmp_path / "c.zarr"
    first = extract("video", prepared, cache, options=RunOptions(workers=0, batch_size=BATCH), **OPTIONS["video"])
    summaries = one_pass(prepared, cache, workers=0, tracks=["video", "context"])
    assert summaries[0].done == 0 and summaries[0].skipped == first.total  # nothing of video redone
    assert snapshot(cache, "context/tiny") == snapshot(separate, "context/tiny")


def test_killed_run_resumes_to_the_same_cache(runs, tmp_path):
    prepared, separate, _, _, _ = runs
    cache = tmp_path / "c.zarr"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent.parent), str(HERE.parent)])}
    proc = subprocess.Popen([sys.executable, str(HERE), str(prepared), str(cache), "0.5"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline, done = time.monotonic() + 120, 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        try:
            done = int((TokenCache(cache).group("video/tiny").status() == DONE).sum())
        except Exception:  # noqa: BLE001 - the group is not created yet
            continue
        if done >= 1:
            os.killpg(proc.pid, signal.SIGKILL)  # the run and its loader worker, like a preemption
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    partial = {t: snapshot(cache, GROUPS[t])["status"] for t in TRACKS}
    assert any(partial[t] != snapshot(separate, GROUPS[t])["status"] for t in TRACKS)  # killed mid-run
    resumed = one_pass(prepared, cache, workers=0)
    assert sum(s.skipped for s in resumed) >= 1  # rows written before the kill were kept, not redone
    for t in TRACKS:
        assert snapshot(cache, GROUPS[t]) == snapshot(separate, GROUPS[t]), t


def test_cli_refuses_a_track_it_cannot_run_in_one_line(runs, tmp_path):
    from typer.testing import CliRunner

    from migfuse.cli import app

    r = CliRunner().invoke(app, ["extract", "all", "--data", str(runs[0]), "--cache", str(tmp_path / "c.zarr"),
                                 "--tracks", "video,joint", "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert "'joint' is not a video track decoded in one pass; choose from video,context,face,face_context" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "c.zarr").exists()


def main(argv: list[str]) -> None:
    """`python tests/test_extract_one_pass.py PREPARED CACHE DELAY`: `extract all` whose video forward
    sleeps DELAY s per batch (so a test can kill it mid-run)."""
    import test_extract_video_util  # noqa: F401 - registers the `tiny` backbone

    from migfuse.extract.video import VideoExtractor

    prepared, cache, delay = argv
    forward = VideoExtractor.forward

    def slow(self, inputs):
        time.sleep(float(delay))
        return forward(self, inputs)

    VideoExtractor.forward = slow
    one_pass(Path(prepared), Path(cache), workers=1)


if __name__ == "__main__":
    main(sys.argv[1:])


class _PyAVAsTorchcodec:
    """torchcodec's `VideoDecoder` stood in by PyAV (torchcodec is not installed on the CPU test
    machine): every frame of the small test video decoded when it is opened."""

    opened: list[str] = []
    #: the frame indices of every `get_frames_played_at` call
    calls: list[list[int]] = []

    def __init__(self, path, device="cpu", **kwargs):
        import av
        import torch

        with av.open(str(path)) as c:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        self.frames = torch.from_numpy(frames).permute(0, 3, 1, 2)
        self.metadata = types.SimpleNamespace(average_fps=25.0, begin_stream_seconds=0.0,
                                              end_stream_seconds=len(frames) / 25, rotation=0)
        _PyAVAsTorchcodec.opened.append(Path(path).stem)

    def get_frames_played_at(self, seconds):
        index = [min(int(s * 25), len(self.frames) - 1) for s in seconds]
        _PyAVAsTorchcodec.calls.append(index)
        return types.SimpleNamespace(data=self.frames[index])


class _NoNvdec:
    """torchcodec's `VideoDecoder` for a codec NVDEC lacks: every open fails."""

    tried: list[str] = []

    def __init__(self, path, **kwargs):
        _NoNvdec.tried.append(Path(path).stem)
        raise RuntimeError("unsupported codec")


def _gpu_tracks(tmp_path: Path, monkeypatch, decoder: type) -> tuple[dict, dict, dict]:
    """The four tracks' loaders with `--decoder gpu`, torchcodec's decoder stood in by `decoder`, over one
    120-frame video (0001, two clips) and a corrupt one; -> (loaders, video files, video -> track -> rows)."""
    from test_extract_video_util import CORRUPT as BAD
    from test_extract_video_util import make_dataset

    from migfuse.datasets.manifest import Manifest
    from migfuse.extract.face.extractor import FaceLoader
    from migfuse.extract.sampling import ClipSampling, ContextSampling
    from migfuse.extract.video import ClipLoader, ContextLoader

    decoders = types.ModuleType("torchcodec.decoders")
    decoders.VideoDecoder = decoder
    monkeypatch.setitem(sys.modules, "torchcodec", types.ModuleType("torchcodec"))
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", decoders)
    m = Manifest.load(make_dataset(tmp_path, good={"0001": (120, [(0, 15), (60, 119)])}))
    paths, clips = m.video_files(), {c.clip_id: (c.start_frame, c.end_frame) for c in m.clips}
    common = dict(paths=paths, short_side=40, crop=32, decoder="gpu", device="cpu")
    ctx = ContextSampling(windows=2, frames=4)
    loaders = {"video": ClipLoader(**common, clips=clips, sampling=ClipSampling(frames=4)),
               "context": ContextLoader(**common, sampling=ctx),
               "face": FaceLoader(paths=paths, scope="clip", frames=2, clips=clips, decoder="gpu"),
               "face_context": FaceLoader(paths=paths, scope="context", frames=2, context=ctx, decoder="gpu")}
    rows = {video: {t: ((video,) if t.endswith("context") else tuple(c for c in clips if c.startswith(video)))
                    for t in loaders} for video in ("0001", BAD)}
    return loaders, paths, rows


def _assert_same_samples(together: dict, separate: dict) -> None:
    assert together.keys() == separate.keys()
    for key, s in separate.items():
        assert together[key].failure == s.failure, key
        if s.inputs is not None:
            assert {k: v.tolist() for k, v in together[key].inputs.items()} == \
                {k: v.tolist() for k, v in s.inputs.items()}, key


def test_gpu_decoding_follows_the_same_plan_one_decode_per_video(tmp_path, monkeypatch):
    """--decoder gpu: one torchcodec decode per video for every track, each frame decoded once (the
    crops made on the GPU from it, the face tracks' full frames); every sample equals the one of the
    track's own loader on the GPU path."""
    from migfuse.extract.interface import WorkItem
    from migfuse.extract.one_pass import OnePassLoader

    loaders, paths, rows = _gpu_tracks(tmp_path, monkeypatch, _PyAVAsTorchcodec)
    one = OnePassLoader(loaders, decoder="gpu")
    for video, mine in rows.items():
        _PyAVAsTorchcodec.opened.clear()
        separate = {(t, s.id): s for t, ldr in loaders.items() for s in ldr(WorkItem(video, mine[t]))}
        assert len(_PyAVAsTorchcodec.opened) == (4 if video == "0001" else 0)
        _PyAVAsTorchcodec.opened.clear()
        _PyAVAsTorchcodec.calls.clear()
        together = {s.id: s for s in one(WorkItem(video, tuple((t, r) for t in loaders for r in mine[t])))}
        assert _PyAVAsTorchcodec.opened == ([video] if video == "0001" else [])
        played = [i for call in _PyAVAsTorchcodec.calls for i in call]
        assert len(played) == len(set(played))  # no frame decoded twice
        if video == "0001":  # ... and every frame some track needs decoded
            needed = {int(i) for t, ldr in loaders.items()
                      for idx in ldr.rows(WorkItem(video, mine[t]), Path(paths[video]), None).requests.values()
                      for i in np.ravel(idx)}
            assert set(played) == needed
        _assert_same_samples(together, separate)
        if video != "0001":
            assert {s.failure.stage for s in together.values()} == {"open"}


def test_gpu_decoding_of_a_video_torchcodec_cannot_open_falls_back_to_one_pyav_pass(tmp_path, monkeypatch):
    """A video NVDEC cannot open is decoded once with PyAV for every track (tried once on the GPU), and
    every sample equals the track's own loader's, which falls back to PyAV alike."""
    import migfuse.extract.decode as decode
    from migfuse.extract.interface import WorkItem
    from migfuse.extract.one_pass import OnePassLoader

    loaders, _, rows = _gpu_tracks(tmp_path, monkeypatch, _NoNvdec)
    pyav_passes = []
    stream_clips = decode.stream_clips

    def counted(path, requests, **kwargs):
        pyav_passes.append(Path(path).stem)
        return stream_clips(path, requests, **kwargs)

    monkeypatch.setattr(decode, "stream_clips", counted)
    mine = rows["0001"]
    separate = {(t, s.id): s for t, ldr in loaders.items() for s in ldr(WorkItem("0001", mine[t]))}
    assert len(pyav_passes) == 4 and all(s.failure is None for s in separate.values())
    _NoNvdec.tried.clear()
    pyav_passes.clear()
    together = {s.id: s for s in OnePassLoader(loaders, decoder="gpu")(
        WorkItem("0001", tuple((t, r) for t in loaders for r in mine[t])))}
    assert _NoNvdec.tried == ["0001"] and pyav_passes == ["0001"]
    _assert_same_samples(together, separate)


def test_cli_reports_each_track_and_exits_1_when_a_row_failed(runs, tmp_path):
    import test_extract_video_util  # noqa: F401 - registers the `tiny` backbone
    from typer.testing import CliRunner

    from migfuse.cli import app

    prepared, separate, _, _, _ = runs
    cache = tmp_path / "c.zarr"
    r = CliRunner().invoke(app, ["extract", "all", "--data", str(prepared), "--cache", str(cache), "--tracks",
                                 "video,context", "--backbone", "tiny", "--context-windows", "3", "--workers", "0",
                                 "--batch-size", str(BATCH), "--device", "cpu", "--precision", "fp32"])
    assert r.exit_code == 1, r.output  # the corrupt and the missing video
    assert "video/tiny shard 0/1: 6 rows, 4 written now" in r.output
    assert "context/tiny shard 0/1: 4 rows, 2 written now" in r.output
    assert "Traceback" not in r.output
    for t in ("video", "context"):
        assert snapshot(cache, GROUPS[t]) == snapshot(separate, GROUPS[t])


@pytest.mark.parametrize("command", [["all"], ["video"], ["context"]])
@pytest.mark.parametrize("backbone", ["agcn", "posec3d"])
def test_a_skeleton_backbone_for_a_video_track_is_refused_in_one_line(runs, tmp_path, command, backbone):
    from typer.testing import CliRunner

    from migfuse.cli import app

    r = CliRunner().invoke(app, ["extract", *command, "--data", str(runs[0]), "--cache", str(tmp_path / "c.zarr"),
                                 "--backbone", backbone, "--device", "cpu"])
    track = "context" if command == ["context"] else "video"
    assert r.exit_code == 2, r.output
    assert f"error: backbone {backbone} does not extract the {track} track; choose one of " in r.output
    assert "mvit_v2_s" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "c.zarr").exists()


@pytest.mark.parametrize("tracks, given, option, users", [
    ("face", ["--checkpoint", "x.pt"], "--checkpoint", "video / context tracks"),
    ("face,face_context", ["--backbone", "tiny"], "--backbone", "video / context tracks"),
    ("face", ["--frames", "16"], "--frames", "video / context tracks"),
    ("context", ["--windows", "2"], "--windows", "video track"),
    ("video,face", ["--context-windows", "3"], "--context-windows", "context / face_context tracks"),
    ("video,context", ["--face-checkpoint", "f.pt"], "--face-checkpoint", "face / face_context tracks"),
    ("video", ["--face-frames", "4"], "--face-frames", "face / face_context tracks"),
])
def test_extract_all_refuses_an_option_no_chosen_track_uses(runs, tmp_path, tracks, given, option, users):
    from typer.testing import CliRunner

    from migfuse.cli import app

    r = CliRunner().invoke(app, ["extract", "all", "--data", str(runs[0]), "--cache", str(tmp_path / "c.zarr"),
                                 "--tracks", tracks, *given, "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert r.output.strip() == (f"error: {option} is not used by --tracks {tracks}: it is for the {users}; "
                                "drop it or add such a track")
    assert not (tmp_path / "c.zarr").exists()


def test_extract_all_warns_once_about_random_face_weights_naming_face_checkpoint(runs, tmp_path, monkeypatch,
                                                                                 caplog):
    import logging

    from migfuse.extract import multi_run

    monkeypatch.setattr(multi_run, "run_in_one_pass", lambda extractors, *a, **k: [])  # the models are enough
    with caplog.at_level(logging.WARNING):
        multi_run.extract_in_one_pass(["face", "face_context"], runs[0], tmp_path / "c.zarr",
                                      checkpoint_options={"face": "--face-checkpoint",
                                                          "face_context": "--face-checkpoint"})
    said = [r.getMessage() for r in caplog.records if "NO CHECKPOINT" in r.getMessage()]
    assert len(said) == 1 and "Pass --face-checkpoint:" in said[0], said


def test_extract_all_errors_name_the_option_to_change(runs, tmp_path):
    import shutil

    import test_extract_video_util  # noqa: F401 - registers the `tiny` backbone
    from typer.testing import CliRunner

    from migfuse.cli import app

    prepared, separate = runs[0], runs[1]
    cache = tmp_path / "c.zarr"
    shutil.copytree(separate, cache)  # context/tiny was written with 3 context windows
    common = ["extract", "all", "--data", str(prepared), "--cache", str(cache), "--workers", "0", "--batch-size",
              str(BATCH), "--device", "cpu", "--precision", "fp32"]
    r = CliRunner().invoke(app, [*common, "--tracks", "context", "--backbone", "tiny", "--context-windows", "2"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert (f"error: cache group 'context/tiny' in {cache} was written with sampling.windows=3 but this run has "
            "sampling.windows=2; rerun with --context-windows 3 to resume it, or use another --cache") in r.stderr
    r = CliRunner().invoke(app, [*common, "--tracks", "face", "--face-frames", "4"])
    assert ("was written with sampling.frames=3 but this run has sampling.frames=4; rerun with --frames 3 "
            "(`extract all`: --face-frames 3) to resume it") in r.stderr, r.output
    r = CliRunner().invoke(app, [*common, "--tracks", "face", "--face-checkpoint", str(tmp_path / "nothere.pt")])
    assert r.exit_code == 2 and r.stderr.strip() == (f"error: checkpoint not found: --face-checkpoint "
                                                     f"{tmp_path / 'nothere.pt'} (pass the path of a local "
                                                     "checkpoint file)"), r.output


def test_a_group_that_refuses_the_run_refuses_it_before_another_track_s_group_is_created(runs, tmp_path):
    """`extract all --tracks video,context` on a cache whose context group was made with other windows:
    the one-line refusal comes before the video group (listed first) is created."""
    import test_extract_video_util  # noqa: F401 - registers the `tiny` backbone

    from migfuse.data_cache.store import TokenCache
    from migfuse.extract.multi_run import extract_in_one_pass

    prepared = runs[0]
    cache = tmp_path / "c.zarr"
    extract_in_one_pass(["context"], prepared, cache, options=RunOptions(workers=0, batch_size=BATCH),
                        track_options={"context": {**OPTIONS["context"], "context_windows": 2}})
    with pytest.raises(UserError, match="was written with sampling.windows=2 but this run has sampling.windows=3"):
        one_pass(prepared, cache, workers=0, tracks=["video", "context"])
    assert not TokenCache(cache).has_group("video/tiny")


def test_tracks_given_the_same_checkpoint_file_share_one_reader(runs, tmp_path, monkeypatch):
    """Video and context with one --checkpoint get one CheckpointFile: the file is read and hashed once."""
    from migfuse.extract import entry, multi_run

    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"weights")
    seen = {}

    class Registry:
        @staticmethod
        def get(track):
            return lambda manifest, t, checkpoint=None, **kw: seen.setdefault(t, checkpoint)

    monkeypatch.setattr(entry, "TRACK_EXTRACTORS", Registry)
    monkeypatch.setattr(multi_run, "run_in_one_pass", lambda extractors, *a, **k: extractors)
    multi_run.extract_in_one_pass(["video", "context"], runs[0], tmp_path / "c.zarr",
                                  checkpoints={"video": ckpt, "context": tmp_path / "." / "w.pt"})
    assert seen["video"] is seen["context"] and seen["video"].path == ckpt
