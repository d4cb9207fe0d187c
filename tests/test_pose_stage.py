"""`migfuse data pose` around a scripted estimator: main-subject tracking, the written arrays, resume
after kill -9, shards and workers, failures recorded per video, the output read by the skeleton readers
and the exports, and the refusals."""
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
from pose_fakes import ScriptedEstimator, crossing, expected_points, seated, twins
from test_decode_util import write_corrupt, write_video
from typer.testing import CliRunner

from migfuse.cli import app
from migfuse.datasets.manifest import Clip, Manifest, VideoInfo
from migfuse.errors import UserError
from migfuse.pose_estimation import run as run_module
from migfuse.pose_estimation.run import run_pose
from migfuse.pose_estimation.tracking import follow_main_subject

TESTS = Path(__file__).resolve().parent


# ----- tracking ---------------------------------------------------------------------------------
def test_the_tracker_keeps_the_subject_through_a_crossing_of_two_people():
    frames, truth = zip(*(crossing(t) for t in range(20)))
    subject = follow_main_subject(list(frames), (96, 128))
    assert subject.person.tolist() == list(truth)
    assert subject.tracks == 2 and not subject.ambiguous.any()
    # matching last boxes (no prediction) would swap the two at the crossing: B's box in frame 10 overlaps
    # A's box of frame 9 more than A's own does
    from migfuse.pose_estimation.tracking import iou

    a9, b10, a10 = frames[9].boxes[truth[9]], frames[10].boxes[1 - truth[10]], frames[10].boxes[truth[10]]
    assert iou(a9[None], b10[None])[0, 0] > iou(a9[None], a10[None])[0, 0]


def test_two_equally_likely_people_are_flagged_not_decided_silently():
    frames = [twins(t)[0] for t in range(10)]
    subject = follow_main_subject(frames, (96, 128))
    assert subject.ambiguous.all() and subject.tracks == 2
    assert set(subject.person.tolist()) == {0}  # still one choice written (the first of equals), flagged


# ----- stored layouts ------------------------------------------------------------------------------
def test_wholebody_points_land_on_openpose_s_feet_face_and_hands_and_fit_the_imigue_layout():
    from migfuse.datasets.pose_layouts import as_openpose137, check_readable
    from migfuse.datasets.skeleton_layouts import get_layout

    points = np.zeros((1, 133, 3), np.float32)
    points[0, :, 0] = np.arange(133)
    points[0, :, 2] = 0.5
    skel = as_openpose137(points, "coco-wholebody-133")[0]
    assert skel[[19, 24, 25, 92, 95, 115, 116, 136], 0].tolist() == [17, 22, 23, 90, 91, 111, 112, 132]
    assert skel[[93, 94], 2].tolist() == [0, 0]  # OpenPose's pupils: not in WholeBody
    assert skel[1, 0] == (5 + 6) / 2 and skel[8, 0] == (11 + 12) / 2  # neck, mid-hip: midpoints
    for name in ("imigue", "openpose22", "openpose-18", "coco-17"):
        check_readable(name, get_layout(name).source, {"coco-wholebody-133", "openpose-137"})
    with pytest.raises(UserError, match="layout openpose22 needs points that the coco-17 skeletons do not have "
                                        r"\(e.g. hands, face\): use --layout openpose-18 or coco-17; hands and face "
                                        "need the OpenPose skeletons of `migfuse data prepare`"):
        check_readable("openpose22", get_layout("openpose22").source, {"coco-17", "openpose-137"})


def test_a_derived_neck_needs_both_shoulders():
    from migfuse.datasets.pose_layouts import as_openpose137

    points = np.zeros((2, 17, 3), np.float32)
    points[:, 5] = (10, 20, 0.9)
    points[:, 6] = (30, 40, 0.4)
    points[1, 6, 2] = 0  # right shoulder not found in frame 1
    skel = as_openpose137(points, "coco-17")
    assert skel[0, 1].tolist() == pytest.approx([20, 30, 0.4]) and skel[1, 1].tolist() == [0, 0, 0]


# ----- the run ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Three videos: 0001 (60 frames, two clips), 0002 (50 frames, one clip), 0003 (not a video)."""
    root = tmp_path_factory.mktemp("pose")
    write_video(root / "0001.mp4", 60)
    write_video(root / "0002.mp4", 50)
    write_corrupt(root / "0003.mp4")
    clips = [Clip.make("0001", 0, 5, 24, raw_class=1, subject=1), Clip.make("0001", 1, 30, 49, raw_class=2, subject=1),
             Clip.make("0002", 0, 0, 39, raw_class=3, subject=2), Clip.make("0003", 0, 0, 9, raw_class=4, subject=3)]
    videos = {v: VideoInfo(v, subject=int(v), video_path=root / f"{v}.mp4") for v in ("0001", "0002", "0003")}
    out = root / "prepared"
    out.mkdir()
    Manifest(clips=clips, videos=videos).save(out)
    return out


@pytest.fixture(scope="module")
def estimated(prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("estimated") / "poses"
    run_pose(prepared, out, ScriptedEstimator(seated), batch_size=8, progress=False)
    return out


def test_the_subject_of_every_clip_frame_is_written_and_the_rest_is_empty(estimated):
    arrays = {v: np.load(estimated / "skeletons" / f"{v}.npy") for v in ("0001", "0002")}
    masks = {v: np.load(estimated / "skeletons" / f"{v}.mask.npy") for v in ("0001", "0002")}
    assert arrays["0001"].shape == (60, 17, 3) and arrays["0002"].shape == (50, 17, 3)
    clip_frames = {"0001": set(range(5, 25)) | set(range(30, 50)), "0002": set(range(0, 40))}
    for vid, frames in clip_frames.items():
        for t in range(len(arrays[vid])):
            want = expected_points(seated, t) if t in frames else None
            if want is None:
                assert not masks[vid][t] and not arrays[vid][t].any(), (vid, t)
            else:
                assert masks[vid][t] and np.array_equal(arrays[vid][t], want), (vid, t)
    report = json.loads((estimated / "pose_report.json").read_text())
    assert report["videos_done"] == 2 and report["videos_failed"] == 1 and report["videos_not_done"] == 0
    assert report["frames_estimated"] == 80 and report["frames_without_person"] == 6  # frames 10-12 of both
    assert report["per_video"]["0001"]["without_person"] == 3 and report["ambiguous_clips"] == {}
    assert report["mean_confidence"] == pytest.approx(float(np.mean(0.95 - np.arange(17) * 0.01)), abs=1e-6)
    assert report["failed"]["0003"].startswith(("open: ", "decode: ")) and "0003.mp4" in report["failed"]["0003"]


def test_the_output_folder_names_the_pose_source_per_video_and_keeps_the_clips(prepared, estimated):
    m = Manifest.load(estimated)
    assert [c.clip_id for c in m.clips] == [c.clip_id for c in Manifest.load(prepared).clips]
    assert {v: (i.skeleton_layout, i.pose_source) for v, i in m.videos.items()} == {
        "0001": ("coco-17", "estimated: scripted-pose + scripted-detector"),
        "0002": ("coco-17", "estimated: scripted-pose + scripted-detector"), "0003": ("", "")}
    report = json.loads((estimated / "prepare_report.json").read_text())
    assert report["pose_sources"] == {"0001": "estimated: scripted-pose + scripted-detector",
                                      "0002": "estimated: scripted-pose + scripted-detector"}
    assert report["videos_with_skeleton"] == 2 and not (Path(prepared) / "skeletons").exists()


def test_the_skeleton_readers_see_the_estimated_points_at_their_openpose_places(estimated):
    from migfuse.datasets.skeleton_layouts import get_layout
    from migfuse.extract.skeleton.preprocess import PreprocessConfig, clip_input

    m = Manifest.load(estimated)
    stored = np.load(estimated / "skeletons" / "0001.npy")
    skel, mask = m.skeleton("0001")
    assert skel.shape == (60, 137, 3) and len(skel) == 60
    # a view over the memory-mapped file: frames are placed when indexed, the same as the whole array
    whole = np.asarray(skel)
    assert isinstance(skel._points, np.memmap)
    assert np.array_equal(skel[7], whole[7]) and np.array_equal(skel[5:9, 2:4], whole[5:9, 2:4])
    coco = list(get_layout("coco-17").source)
    assert np.array_equal(skel[:, coco], stored)  # --layout coco-17 reads exactly the stored points
    neck = (stored[:, 5, :2] + stored[:, 6, :2]) / 2  # derived: the shoulders' midpoint, the lower confidence
    assert np.array_equal(skel[mask, 1, :2], neck[mask])
    assert np.array_equal(skel[mask, 1, 2], np.minimum(stored[mask, 5, 2], stored[mask, 6, 2]))
    # the model input: centred on the (derived) neck, scaled by the shoulder width, as for OpenPose
    x = clip_input(skel[5:25], mask[5:25], "joint", PreprocessConfig(layout="coco-17", length=20)).x
    frame = stored[5]
    centre = np.median(neck[5:25][mask[5:25]], axis=0)
    width = np.median(np.linalg.norm(stored[5:25, 6, :2] - stored[5:25, 5, :2], axis=-1)[mask[5:25]])
    assert np.allclose(x[:2, 0, :, 0].T, (frame[:, :2] - centre) / width, atol=1e-5)
    assert np.allclose(x[2, 0, :, 0], frame[:, 2])


def test_a_graph_layout_needing_points_the_estimates_lack_is_refused_in_one_line(estimated, tmp_path):
    import torch

    from migfuse.backbones.agcn import AGCN
    from migfuse.datasets.pyskl import export_pyskl
    from migfuse.datasets.skeleton_layouts import get_layout

    torch.save(AGCN(get_layout("imigue"), base_channels=8).state_dict(), tmp_path / "agcn.pt")
    r = CliRunner().invoke(app, ["extract", "skeleton", "--data", str(estimated), "--cache", str(tmp_path / "c.zarr"),
                                 "--checkpoint", str(tmp_path / "agcn.pt"), "--layout", "imigue", "--stream", "joint",
                                 "--device", "cpu"])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert r.output.strip().splitlines()[-1].endswith(
        f"layout imigue needs points that the coco-17 skeletons of {estimated} do not have (e.g. hands, face): use "
        "--layout openpose-18 or coco-17; hands and face need the OpenPose skeletons of `migfuse data prepare` (the "
        "pose models of `data pose` give coco-17 only)")
    with pytest.raises(UserError, match="layout openpose22 needs points that the coco-17 skeletons"):
        export_pyskl(estimated, tmp_path / "x.pkl", layout="openpose22")
    assert not (tmp_path / "x.pkl").exists()


def test_export_pyskl_writes_the_estimated_coco_points(estimated, tmp_path):
    import pickle

    from migfuse.datasets.pyskl import export_pyskl

    export_pyskl(estimated, tmp_path / "poses.pkl", layout="coco-17")
    data = pickle.loads((tmp_path / "poses.pkl").read_bytes())
    ann = {a["frame_dir"]: a for a in data["annotations"]}
    stored = np.load(estimated / "skeletons" / "0001.npy")
    assert set(ann) == {"0001_0", "0001_1", "0002_0"}  # 0003 failed: no skeleton
    assert np.array_equal(ann["0001_1"]["keypoint"][0], stored[30:50, :, :2])
    assert np.array_equal(ann["0001_1"]["keypoint_score"][0], stored[30:50, :, 2])


def test_export_openpose_json_reads_back_through_data_prepare_s_reader(estimated, tmp_path):
    from migfuse.datasets.openpose import read_openpose_folder

    r = CliRunner().invoke(app, ["data", "export-openpose", str(estimated), str(tmp_path / "json")])
    assert r.exit_code == 0, r.output
    assert "wrote 110 frame files of 2 videos" in r.output and "left out 1 videos" in r.output
    doc = json.loads((tmp_path / "json" / "0001" / "0001_000000000007_keypoints.json").read_text())
    assert len(doc["people"]) == 1 and len(doc["people"][0]["pose_keypoints_2d"]) == 75
    assert doc["people"][0]["person_id"] == [-1]  # as OpenPose 1.7 writes it: no tracking id
    assert json.loads((tmp_path / "json" / "0001" / "0001_000000000011_keypoints.json").read_text())["people"] == []
    points, mask, _ = read_openpose_folder(tmp_path / "json" / "0001", progress=False)
    skel, want_mask = Manifest.load(estimated).skeleton("0001")
    assert np.array_equal(points, skel) and np.array_equal(mask, want_mask)


def test_a_run_killed_with_sigkill_resumes_to_identical_arrays(prepared, estimated, tmp_path):
    out = tmp_path / "killed"
    script = (f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
              "from pose_fakes import ScriptedEstimator, seated\n"
              "from migfuse.pose_estimation.run import run_pose\n"
              f"run_pose({str(prepared)!r}, {str(out)!r}, ScriptedEstimator(seated, delay=0.15), batch_size=4, "
              "progress=False)\n")
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 60
        while not (out / "pose" / "0001.json").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # into video 0002
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / "pose" / "0001.json").is_file() and not (out / "pose" / "0002.json").is_file()
    estimator = ScriptedEstimator(seated)
    result = run_pose(prepared, out, estimator, batch_size=4, progress=False)
    assert result.skipped == 1 and sorted(result.done) == ["0002"] and list(result.failed) == ["0003"]
    for name in ("0001.npy", "0001.mask.npy", "0002.npy", "0002.mask.npy"):
        assert (out / "skeletons" / name).read_bytes() == (estimated / "skeletons" / name).read_bytes(), name
    assert not [p for p in out.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]
    calls = estimator.calls
    again = run_pose(prepared, out, estimator, batch_size=4, progress=False)  # all kept; failed kept unless asked
    assert (again.done, again.skipped, estimator.calls) == ([], 3, calls)


def test_shards_and_a_decoding_worker_give_the_same_arrays(prepared, estimated, tmp_path):
    out = tmp_path / "sharded"
    first = run_pose(prepared, out, ScriptedEstimator(seated), batch_size=8, shard="0/2", workers=1, progress=False)
    assert first.done == ["0001"] and first.report["not_done"] == ["0002"]
    second = run_pose(prepared, out, ScriptedEstimator(seated), batch_size=8, shard="1/2", progress=False)
    assert second.done == ["0002"] and second.report["videos_done"] == 2 and second.report["not_done"] == []
    for name in ("0001.npy", "0001.mask.npy", "0002.npy", "0002.mask.npy"):
        assert (out / "skeletons" / name).read_bytes() == (estimated / "skeletons" / name).read_bytes(), name


def test_an_ambiguous_clip_is_recorded_in_the_report(prepared, tmp_path):
    out = tmp_path / "twins"
    result = run_pose(prepared, out, ScriptedEstimator(twins), batch_size=8, progress=False)
    assert result.report["ambiguous_clips"] == {"0001": {"0001_0": [5, 24], "0001_1": [30, 49]},
                                                "0002": {"0002_0": [0, 39]}}


def test_refusals_come_before_any_work(prepared, estimated, tmp_path):
    with pytest.raises(UserError, match="is the input PREPARED folder: its OpenPose skeletons would be replaced"):
        run_pose(prepared, prepared, ScriptedEstimator(), progress=False)
    with pytest.raises(UserError) as e:
        run_pose(prepared, estimated, ScriptedEstimator(twins), progress=False)
    assert str(e.value) == (f'{estimated} holds poses of another run (estimator.scene "seated" there, "twins" now; '
                            f"see {estimated / 'pose_run.json'}): pass a new --out, or the same models and settings "
                            "to resume it")
    with pytest.raises(UserError, match=r'holds poses of another run \(scope "clips" there, "videos" now; see '):
        run_pose(prepared, estimated, ScriptedEstimator(seated), scope="videos", progress=False)

    class Stricter(ScriptedEstimator):
        def provenance(self) -> dict:
            return {**super().provenance(), "thresholds": {"box": 0.5}}

    with pytest.raises(UserError, match=r"\(estimator.thresholds.box 0.3 there, 0.5 now; see "):
        run_pose(prepared, estimated, Stricter(seated), progress=False)

    class Moved(ScriptedEstimator):  # the same models in another folder, a newer transformers: the run resumes
        def provenance(self) -> dict:
            p = super().provenance()
            return {**p, "transformers": "9.9.9", "models": [{**m, "path": "/elsewhere"} for m in p["models"]]}

    kept = run_pose(prepared, estimated, Moved(seated), progress=False)
    assert (kept.done, kept.skipped) == ([], 3)
    assert json.loads((estimated / "pose_report.json").read_text())["estimator_provenance"]["models"][0]["path"] \
        == "/elsewhere"

    class Wrong(ScriptedEstimator):
        layout = "openpose-137"

    with pytest.raises(UserError, match="the pose model gives layout 'openpose-137'; data pose writes coco-17, "
                                        "coco-wholebody-133"):
        run_pose(prepared, tmp_path / "new", Wrong(), progress=False)
    assert not (tmp_path / "new").exists()


def test_the_command_runs_the_estimator_it_loads_and_prints_the_report(prepared, tmp_path, monkeypatch):
    seen = {}

    def fake_load(pose_model, detector, **options):
        seen.update(options, pose_model=pose_model, detector=detector)
        return ScriptedEstimator(seated)

    monkeypatch.setattr(run_module, "load_estimator", fake_load)
    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["data", "pose", "--data", str(prepared), "--out", str(out), "--pose-model",
                                 str(tmp_path / "pose"), "--detector", str(tmp_path / "det"), "--device", "cpu",
                                 "--workers", "0", "--batch-size", "8", "--max-persons", "3", "--precision", "bf16"])
    assert r.exit_code == 1, r.output  # video 0003 failed: as `extract`, after the report
    assert seen == {"pose_model": tmp_path / "pose", "detector": tmp_path / "det", "device": "cpu",
                    "box_threshold": 0.3, "max_persons": 3, "batch_size": 8, "precision": "bf16"}
    assert f"{out}: 2 of 3 videos done (coco-17, estimated: scripted-pose + scripted-detector), 1 failed, 0 not yet; " \
           "6 of 80 frames without a person; mean confidence 0.870" in r.output
    assert "  video 0003 failed: " in r.output


@pytest.mark.parametrize("args, message", [
    (["--data", "{tmp}/nowhere"], "no PREPARED folder at {tmp}/nowhere: run `migfuse data prepare"),
    (["--data", "{prepared}", "--out", "{prepared}"], "--out {prepared} is the input PREPARED folder"),
    (["--shard", "2/2"], "Invalid value for '--shard': '2/2' is not I/N"),
    (["--scope", "frames"], "Invalid value for '--scope'"),
    (["--out", "{root}"], "--out {root} is not empty and holds no earlier `data pose` run (pose_run.json): pass a new "
                          "or empty folder (data pose writes a whole PREPARED folder into it)"),
    (["--out", "{root}/0001.mp4"], "Invalid value for '--out': cannot use {root}/0001.mp4: a file is in the way"),
])
def test_bad_command_lines_end_in_one_line_before_any_model_loads(prepared, tmp_path, monkeypatch, args, message):
    monkeypatch.setattr(run_module, "load_estimator", lambda *a, **k: pytest.fail("models loaded"))
    base = {"--data": str(prepared), "--out": str(tmp_path / "out"), "--pose-model": str(tmp_path / "pose")}
    fill = {"tmp": tmp_path, "prepared": prepared, "root": prepared.parent}
    given = [a.format(**fill) for a in args]
    for option, value in base.items():
        if option not in given:
            given += [option, value]
    r = CliRunner().invoke(app, ["data", "pose", *given])
    assert r.exit_code != 0 and "Traceback" not in r.output
    lines = [line for line in r.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message.format(**fill) in lines[0], r.output


def test_scope_videos_estimates_every_frame(prepared, tmp_path):
    out = tmp_path / "videos"
    result = run_pose(prepared, out, ScriptedEstimator(seated), scope="videos", batch_size=16, progress=False)
    assert result.report["frames_estimated"] == 110 and result.report["frames_without_person"] == 6
    points, mask = np.load(out / "skeletons" / "0002.npy"), np.load(out / "skeletons" / "0002.mask.npy")
    assert mask.sum() == 47 and np.array_equal(points[45], expected_points(seated, 45))  # past the clip's end


def test_an_unfinished_output_is_named_as_such_not_as_a_missing_or_failed_one(prepared, estimated, tmp_path):
    """Killed before its first video ended, OUT has no manifest.csv yet; after one shard of two, the other
    shard's videos are "not estimated yet": readers say so and `extract skeleton` refuses, instead of
    recording failures the user would have to --retry-failed."""
    from migfuse.backbones.agcn import AGCN
    from migfuse.datasets.skeleton_layouts import get_layout
    from migfuse.pose_estimation.outputs import check_run

    killed = tmp_path / "killed"
    killed.mkdir()
    check_run(killed, {"format": 1})  # what a run has written when it is killed in its first video
    with pytest.raises(UserError) as e:
        Manifest.load(killed)
    assert str(e.value) == (f"{killed} is an unfinished `migfuse data pose` output (no manifest.csv yet): run the "
                            f"same `migfuse data pose --out {killed}` command again to finish it")

    out = tmp_path / "half"
    run_pose(prepared, out, ScriptedEstimator(seated), batch_size=8, shard="0/2", progress=False)
    m = Manifest.load(out)
    assert m.pending_poses() == ["0002"] and m.videos["0002"].pose_source == "not estimated yet"
    with pytest.raises(UserError) as e:
        m.skeleton("0002")
    assert str(e.value) == (f"video 0002 is not estimated yet in {out}: run `migfuse data pose` for the other "
                            "shards (or run it again to finish), then read it")
    torch = pytest.importorskip("torch")
    torch.save(AGCN(get_layout("coco-17"), base_channels=8).state_dict(), tmp_path / "agcn.pt")
    r = CliRunner().invoke(app, ["extract", "skeleton", "--data", str(out), "--cache", str(tmp_path / "c.zarr"),
                                 "--checkpoint", str(tmp_path / "agcn.pt"), "--layout", "coco-17", "--stream", "joint",
                                 "--device", "cpu"])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert r.output.strip().splitlines()[-1].endswith(
        f"{out} is an unfinished `migfuse data pose` output: 1 videos (e.g. 0002) are not estimated yet; run "
        "`migfuse data pose` for the other shards (or run it again to finish) before extracting")
    assert Manifest.load(estimated).pending_poses() == []
    from migfuse.datasets.openpose_export import export_openpose

    assert export_openpose(m, tmp_path / "json", progress=False).skipped == {
        "0002": "not estimated yet: run `migfuse data pose` for the other shards",
        "0003": "no skeleton (see prepare_report.json)"}


def test_export_openpose_refuses_a_folder_that_is_not_empty_and_not_an_earlier_export(prepared, estimated, tmp_path):
    def export(out: Path):
        return CliRunner().invoke(app, ["data", "export-openpose", str(estimated), str(out)])

    for out, holds in ((estimated, "manifest.csv"), (prepared.parent, "0001.mp4")):
        before = sorted(p.name for p in out.iterdir())
        r = export(out)
        assert r.exit_code != 0 and "Traceback" not in r.output
        assert r.output.strip().splitlines() == [
            f"error: OUT {out} is not empty and is not an earlier OpenPose export of these videos (it holds "
            f"{holds}): pass a new or empty folder"]
        assert sorted(p.name for p in out.iterdir()) == before
    again = tmp_path / "json"
    assert export(again).exit_code == 0 and export(again).exit_code == 0  # an earlier export is written again
    assert sorted(p.name for p in again.iterdir()) == ["0001", "0002"]


def test_pose_help_says_folders_and_what_leaving_out_the_detector_does():
    import typer.main

    command = typer.main.get_command(app).commands["data"].commands["pose"]
    helps = {p.name: p.help for p in command.params}
    assert helps["pose_model"].startswith("Local Hugging Face folder of the top-down pose model")
    assert helps["detector"] == ("Local Hugging Face folder of the person detector (e.g. RT-DETR). Left out: the "
                                 "whole frame is the one person box (for videos cropped to their subject); "
                                 "--box-threshold and --max-persons are then unused.")
    assert not any("or file" in (h or "") or "wholebody" in (h or "") for h in helps.values())
    assert "coco-wholebody-133" not in (command.help or "") and "exit code 1 when any video failed" in command.help


def test_a_damaged_run_identity_is_refused_in_one_line(prepared, tmp_path):
    out = tmp_path / "damaged"
    out.mkdir()
    (out / "pose_run.json").write_text("{")
    with pytest.raises(UserError) as e:
        run_pose(prepared, out, ScriptedEstimator(seated), progress=False)
    assert str(e.value) == (f"{out / 'pose_run.json'} is damaged (not a JSON object): this run's settings are "
                            "unknown; pass a new --out")
    assert sorted(p.name for p in out.iterdir()) == ["pose_run.json"]


def test_a_damaged_estimated_skeleton_names_the_status_file_to_delete_and_data_pose(estimated, tmp_path):
    """Re-running `data prepare` cannot mend an estimated skeleton: the fix is to redo that video in data pose."""
    import shutil

    out = tmp_path / "poses"
    shutil.copytree(estimated, out)
    (out / "skeletons" / "0002.npy").write_bytes(b"cut")
    with pytest.raises(UserError) as e:
        Manifest.load(out).skeleton("0002")
    assert str(e.value).startswith(f"cannot read skeleton {out / 'skeletons' / '0002.npy'} (")
    assert str(e.value).endswith(f"; delete {out / 'pose' / '0002.json'} and rerun `migfuse data pose`")
    assert (out / "pose" / "0002.json").is_file()
