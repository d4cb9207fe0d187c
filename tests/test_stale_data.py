"""Tokens, views and runs are tied to the prepared data they came from, where the data is consumed:
another --data, rows extracted again under a view, a run evaluated on other data, a damaged group,
and `migfuse cache drop`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from migfuse.cli import app
from migfuse.data_cache.group import DamagedGroup
from migfuse.data_cache.store import TokenCache
from migfuse.data_cache.tracks import TRACKS, row_definition
from migfuse.data_cache.views import default_views
from migfuse.datasets.manifest import Manifest
from migfuse.errors import UserError
from migfuse.fuse.scores import Scores
from migfuse.synth.tokens import write_synthetic

torch = pytest.importorskip("torch")

from migfuse.fuse.evaluate import evaluate  # noqa: E402
from migfuse.fuse.predict import predict  # noqa: E402
from migfuse.fuse.train import train  # noqa: E402

FAST = {"epochs": 1, "batch_size": 16, "threads": 1, "head": "pose"}  # pose: the skeleton tracks, small and fast


def _data(root):
    """A: 4 videos x 4 clips with views; B: the same ids, frames shifted by 5 and other labels;
    LB: A's rows with other labels; COPY: A prepared again."""
    prepared, cache = write_synthetic(root / "a", n_videos=4, clips_per_video=4, num_classes=4,
                                      tracks=("joint", "bone"), joints=10)
    default_views(cache)
    b, lb = Manifest.load(prepared), Manifest.load(prepared)
    for c in b.clips:
        c.start_frame, c.end_frame, c.label = c.start_frame + 5, c.end_frame + 5, (c.label + 1) % 4
    for c in lb.clips:
        c.label = (c.label + 1) % 4
    return prepared, cache, b.save(root / "b"), lb.save(root / "lb"), Manifest.load(prepared).save(root / "copy")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stale")
    prepared, cache, b, lb, copy = _data(root)
    train(cache, prepared, "mg", root / "run", config=FAST)
    evaluate(root / "run", "test")
    return prepared, cache, b, lb, copy, root / "run"


def _one_line_error(args):
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    return r.output


def test_train_with_data_of_other_frame_ranges_is_refused_before_the_run_folder_is_made(data, tmp_path):
    prepared, cache, b, *_ = data
    out = _one_line_error(["fuse", "train", "--cache", str(cache), "--data", str(b), "--task", "mg",
                           "--out", str(tmp_path / "rb"), "--set", "epochs=1", "--head", "pose"])
    out = " ".join(out.split())
    assert (f"cache group 'views/joint' in {cache} holds 8 of the 8 train rows as other data than {b} defines "
            f"(e.g. 0001_0: cached 'video=0001 frames=0-39', {b} has 'video=0001 frames=5-44')") in out
    assert (f"`migfuse extract skeleton --stream joint --data {b} --cache {cache} --checkpoint CHECKPOINT` with the "
            f"checkpoint it was extracted with, then `migfuse cache view {cache} --defaults`") in out
    assert not (tmp_path / "rb").exists()


def test_only_other_labels_train_with_the_labels_of_data(data, tmp_path):
    prepared, cache, _, lb, *_ = data
    summary = train(cache, lb, "mg", tmp_path / "r", config=FAST)
    assert summary["n_train"] == 8
    doc = json.loads((tmp_path / "r" / "config.json").read_text())
    assert doc["run"]["provenance"]["data_fingerprint"]["train"]["labelled"] == 8


def test_predict_with_data_of_other_frame_ranges_writes_nothing(data, tmp_path):
    _, cache, b, _, _, run = data
    with pytest.raises(UserError, match=r"holds 4 of the 4 test rows as other data than .*0004_0: cached "
                                        r"'video=0004 frames=0-39'"):
        predict(run, "test", tmp_path / "s.npz", data=b)
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.parametrize("which, why", [("b", "other clips or frame ranges"), ("lb", "other labels")])
def test_eval_on_other_data_keeps_the_run_s_evaluation(data, which, why):
    prepared, _, b, lb, _, run = data
    other = {"b": b, "lb": lb}[which]
    before = (run / "eval_test" / "metrics.json").read_bytes()
    out = _one_line_error(["fuse", "eval", str(run), "--data", str(other)])
    assert f"--data {other} has {why} in split test than {prepared}" in " ".join(out.split())
    assert (run / "eval_test" / "metrics.json").read_bytes() == before


def test_eval_on_the_same_data_prepared_again_passes(data):
    prepared, _, _, _, copy, run = data
    assert evaluate(run, "test", data=copy)["n"] == evaluate(run, "test")["n"] == 4


def test_a_view_of_rows_extracted_again_is_refused_until_cache_view_pools_them_again(tmp_path):
    prepared, cache, b, _, _ = _data(tmp_path)
    # `extract video --data B`: every row's frame range changed, so the runner writes them again
    tc = TokenCache(cache)
    m = Manifest.load(b)
    for stream in ("joint", "bone"):
        s = tc.group(f"{stream}/agcn")
        for i in s.ids:
            s.write(i, {"features": np.full((256, 16, 10), 0.5, np.float32)},
                    rowdef=row_definition(TRACKS[stream], m, i))
    with pytest.raises(UserError, match=r"view 'views/joint' in .* was pooled from other rows than 'joint/agcn' "
                                        r"holds now \(8 of the 8 train rows, e.g. 0001_0: pooled from 'video=0001 "
                                        r"frames=0-39', now 'video=0001 frames=5-44'\); run "
                                        r"`migfuse cache view .* --defaults` again"):
        train(cache, b, "mg", tmp_path / "r", config=FAST)
    assert not (tmp_path / "r").exists()
    default_views(cache)
    view = tc.group("views/joint")
    assert view.rowdefs(["0001_0"]) == ["video=0001 frames=5-44"]
    assert np.allclose(view.read("0001_0")["tokens"].astype(np.float32), 0.5)
    assert train(cache, b, "mg", tmp_path / "r", config=FAST)["n_train"] == 8


def test_a_deleted_array_metadata_file_names_the_group_and_the_fix_everywhere(tmp_path):
    prepared, cache = write_synthetic(tmp_path, n_videos=2, clips_per_video=2, num_classes=2,
                                      tracks=("joint", "bone"), joints=5)
    (cache / "joint" / "agcn" / "features" / "zarr.json").unlink()
    want = (f"cache group 'joint/agcn' in {cache} is damaged (array 'features' has no usable metadata: "
            f"{cache}/joint/agcn/features/zarr.json is missing); rebuild it: `migfuse cache drop {cache} joint/agcn`, "
            f"then `migfuse extract skeleton --stream joint --data PREPARED --cache {cache} --checkpoint CHECKPOINT` "
            f"with the checkpoint it was extracted with")
    with pytest.raises(DamagedGroup) as e:
        TokenCache(cache).group("joint/agcn")
    assert str(e.value) == want
    r = CliRunner().invoke(app, ["cache", "info", str(cache)])  # the sound group's table, and the damage
    assert r.exit_code == 0 and f"DAMAGED: {want}" in " ".join(r.output.split()), r.output
    for args in (["cache", "view", str(cache), "--defaults"],
                 ["fuse", "train", "--cache", str(cache), "--data", str(prepared), "--task", "mg", "--out",
                  str(tmp_path / "r"), "--head", "pose"]):
        assert " ".join(_one_line_error(args).split()) == f"error: {want}"


def test_a_deleted_status_array_metadata_is_damage_and_cache_info_lists_it_beside_sound_groups(tmp_path):
    _, cache = write_synthetic(tmp_path, n_videos=2, clips_per_video=2, num_classes=2, tracks=("joint", "bone"),
                               joints=5)
    (cache / "bone" / "agcn" / "status" / "zarr.json").unlink()
    r = CliRunner().invoke(app, ["cache", "info", str(cache)])
    assert r.exit_code == 0, r.output
    assert f"DAMAGED: cache group 'bone/agcn' in {cache} is damaged (array 'status'" in r.output
    assert any(line.startswith("joint/agcn") for line in r.output.splitlines())


def test_a_deleted_group_metadata_is_listed_as_incomplete_and_rebuilt_or_dropped(tmp_path):
    _, cache = write_synthetic(tmp_path, n_videos=2, clips_per_video=2, num_classes=2, tracks=("joint", "bone"),
                               joints=5)
    (cache / "bone" / "agcn" / "zarr.json").unlink()
    r = CliRunner().invoke(app, ["cache", "info", str(cache)])
    assert r.exit_code == 0 and "INCOMPLETE: bone/agcn has no group metadata" in r.output, r.output
    r = CliRunner().invoke(app, ["cache", "drop", str(cache), "bone/agcn", "--yes"])
    assert r.exit_code == 0, r.output
    assert not (cache / "bone").exists() and TokenCache(cache).group_names() == ["joint/agcn"]


def test_a_deleted_root_metadata_is_named_and_consolidate_restores_it(tmp_path):
    _, cache = write_synthetic(tmp_path, n_videos=2, clips_per_video=2, num_classes=2, tracks=("joint",), joints=5)
    (cache / "zarr.json").unlink()
    out = _one_line_error(["cache", "view", str(cache), "--defaults"])
    assert f"{cache}/zarr.json, the root metadata of cache {cache}, is missing while its groups are there; restore " \
           f"it with `migfuse cache info {cache} --consolidate`" in " ".join(out.split())
    r = CliRunner().invoke(app, ["cache", "info", str(cache), "--consolidate"])
    assert r.exit_code == 0 and "joint/agcn" in r.output, r.output
    assert "joint/agcn" in json.loads((cache / "zarr.json").read_text())["consolidated_metadata"]["metadata"]


def test_a_deleted_chunk_file_of_a_done_row_is_named_and_verify_mark_failed_makes_it_retryable(tmp_path):
    _, cache = write_synthetic(tmp_path, n_videos=2, clips_per_video=2, num_classes=2, tracks=("joint",), joints=5)
    g = TokenCache(cache).group("joint/agcn")
    chunk = g.chunk_file("features", g.row("0001_1"))
    chunk.unlink()
    # one shard file holds the features of all 4 rows (cache format 3): the first row read is named,
    # and --mark-failed fails every row the file held
    with pytest.raises(UserError, match=rf"corrupt chunk {chunk} in cache group 'joint/agcn' \(array features, "
                                        r"row 0001_0\): FileNotFoundError: chunk file missing"):
        g.read_many(["0001_0", "0001_1"])
    out = _one_line_error(["cache", "info", str(cache), "--verify", "--mark-failed"])
    assert "marked 4 rows failed" in out
    assert g.status(["0001_0", "0001_1"]).tolist() == [2, 2]


def test_cache_drop_asks_refuses_unknown_names_and_unlists_the_group(tmp_path):
    _, cache = write_synthetic(tmp_path, n_videos=2, clips_per_video=2, num_classes=2, tracks=("joint", "bone"),
                               joints=5)
    out = _one_line_error(["cache", "drop", str(cache), "video/x"])
    assert f"cache {cache} has no group 'video/x' to drop (groups: bone/agcn, joint/agcn)" in out
    r = CliRunner().invoke(app, ["cache", "drop", str(cache), "bone/agcn"], input="n\n")
    assert r.exit_code == 1 and "nothing dropped" in r.output and (cache / "bone" / "agcn").is_dir()
    r = CliRunner().invoke(app, ["cache", "drop", str(cache), "bone/agcn"], input="y\n")
    assert r.exit_code == 0 and f"dropped bone/agcn from {cache}" in r.output, r.output
    assert TokenCache(cache).group_names() == ["joint/agcn"] and not (cache / "bone").exists()
    listed = json.loads((cache / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    assert not [k for k in listed if k.startswith("bone")] and "joint/agcn" in listed


def test_an_interrupted_drop_leaves_no_half_group_and_the_next_drop_clears_the_rest(tmp_path, monkeypatch):
    _, cache = write_synthetic(tmp_path, n_videos=2, clips_per_video=2, num_classes=2, tracks=("joint", "bone"),
                               joints=5)
    tc = TokenCache(cache)

    def killed(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(TokenCache, "_consolidate", killed)
    with pytest.raises(KeyboardInterrupt):
        tc.drop_group("bone/agcn")
    monkeypatch.undo()
    assert tc.group_names() == ["joint/agcn"]
    leftovers = list(cache.parent.glob("cache.zarr.dropped-*"))
    assert len(leftovers) == 1
    tc.drop_group("joint/agcn")
    assert tc.group_names() == [] and not list(cache.parent.glob("cache.zarr.dropped-*"))


def test_drop_is_refused_while_an_extraction_holds_a_claim_on_the_group(tmp_path):
    from migfuse.extract.claims import Claims

    _, cache = write_synthetic(tmp_path, n_videos=2, clips_per_video=2, num_classes=2, tracks=("joint",), joints=5)
    claims = Claims(cache, "joint/agcn")
    assert claims.take("0001")
    try:
        with pytest.raises(UserError, match="an extraction is writing group 'joint/agcn' right now"):
            TokenCache(cache).drop_group("joint/agcn")
    finally:
        claims.close()
    TokenCache(cache).drop_group("joint/agcn")
    assert not (cache / ".claims" / "joint__agcn").exists()


def test_export_views_copies_row_definitions_and_replaces_rows_pooled_again(tmp_path):
    from migfuse.data_cache.views import export_views

    prepared, cache, b, _, _ = _data(tmp_path)
    export_views(cache, tmp_path / "laptop.zarr")
    laptop = TokenCache(tmp_path / "laptop.zarr")
    assert laptop.group("views/joint").rowdefs(["0002_3"]) == ["video=0002 frames=150-189"]
    with pytest.raises(UserError, match=r"holds 8 of the 8 train rows as other data .* `migfuse extract skeleton "
                                        r"--stream joint --data .* --cache FULL_CACHE --checkpoint CHECKPOINT` with "
                                        r"the checkpoint it was extracted with, then `migfuse cache view "
                                        r"FULL_CACHE --defaults` and `migfuse cache export-views FULL_CACHE "
                                        r".*laptop.zarr`"):
        train(laptop.path, b, "mg", tmp_path / "r", config=FAST)
    assert not (tmp_path / "r").exists()
    # rows pooled again in the full cache replace the copied ones on the next export
    view = TokenCache(cache).group("views/joint")
    view.write_many(["0002_3"], view.read_many(["0002_3"]), rowdefs=["video=0002 frames=151-190"])
    export_views(cache, laptop.path)
    assert laptop.group("views/joint").rowdefs(["0002_3"]) == ["video=0002 frames=151-190"]


def test_a_deleted_id_array_chunk_is_damage_named_on_open(tmp_path):
    _, cache = write_synthetic(tmp_path, n_videos=2, clips_per_video=2, num_classes=2, tracks=("joint",), joints=5)
    (cache / "joint" / "agcn" / "clip" / "c" / "0").unlink()
    with pytest.raises(DamagedGroup, match=r"damaged \(its id array 'clip' reads empty or repeated ids"):
        TokenCache(cache).group("joint/agcn")


def test_a_view_pooled_before_row_definitions_were_recorded_is_pooled_again_once(tmp_path):
    prepared, cache = write_synthetic(tmp_path, n_videos=4, clips_per_video=4, num_classes=4,
                                      tracks=("joint", "bone"), joints=10)
    default_views(cache)
    tc = TokenCache(cache)
    for name in ("views/joint", "views/bone"):  # as an earlier release wrote them: no row definitions
        view = tc.group(name)
        view._g["rowdef"][:] = np.array([""] * len(view.ids), dtype=object)
    with pytest.raises(UserError, match=r"view 'views/(bone|joint)' .* pooled from 'a row of an earlier release'"):
        train(cache, prepared, "mg", tmp_path / "r", config=FAST)
    default_views(cache)
    assert tc.group("views/joint").rowdefs(["0001_0"]) == ["video=0001 frames=0-39"]
    assert train(cache, prepared, "mg", tmp_path / "r", config=FAST)["n_train"] == 8


def test_a_track_that_failed_entirely_points_to_cache_drop(tmp_path, caplog):
    prepared, cache = write_synthetic(tmp_path, n_videos=4, clips_per_video=4, num_classes=4,
                                      tracks=("joint", "bone"), joints=10)
    bone = TokenCache(cache).group("bone/agcn")
    for i in bone.ids:
        bone.write_failure(i, "load", "no skeleton")
    assert default_views(cache) == {"joint": "views/joint"}
    assert f"or remove it: `migfuse cache drop {cache} bone/agcn`" in caplog.text
    out = " ".join(_one_line_error(["fuse", "train", "--cache", str(cache), "--data", str(prepared), "--task", "mg",
                                    "--out", str(tmp_path / "r"), "--head", "pose"]).split())
    assert (f"input 'bone': group 'bone/agcn' in {cache} has no finished rows (`migfuse cache info {cache}` says "
            f"why); rerun its extract, or remove it with `migfuse cache drop {cache} bone/agcn`") in out
    assert CliRunner().invoke(app, ["cache", "drop", str(cache), "bone/agcn", "--yes"]).exit_code == 0
    out = _one_line_error(["fuse", "train", "--cache", str(cache), "--data", str(prepared), "--task", "mg",
                           "--out", str(tmp_path / "r"), "--head", "pose"])
    assert " ".join(out.split()) == (
        f"error: cache {cache} has no 'bone' tokens (groups: joint/agcn, views/joint); run `migfuse extract skeleton "
        f"--stream bone --data PREPARED --cache {cache}` (its -h lists the rest), or choose a head that does not need "
        f"bone")
    from migfuse.fuse.data import open_inputs

    with pytest.raises(UserError) as e:
        open_inputs(TokenCache(cache), ["nosuch"])
    assert str(e.value) == (f"unknown input 'nosuch': no track and no view views/nosuch in {cache}; the tracks are "
                            f"{', '.join(TRACKS)} (views: joint)")


def test_eval_after_the_run_s_own_data_was_prepared_again_with_other_labels_is_refused(tmp_path):
    prepared, cache, _, lb, copy = _data(tmp_path)
    train(cache, copy, "mg", tmp_path / "run", config=FAST)
    Manifest.load(lb).save(copy)  # the same folder, prepared again with other labels
    with pytest.raises(UserError, match=rf"{copy} has other labels in split test than when run .* was trained, so "
                                        r"its evaluation in .*eval_test is kept"):
        evaluate(tmp_path / "run", "test")
    assert not (tmp_path / "run" / "eval_test").exists()


def test_eval_with_labels_added_to_a_split_that_had_none_passes(tmp_path):
    prepared, cache, _, _, copy = _data(tmp_path)
    unlabelled = Manifest.load(copy)
    for c in unlabelled.clips:
        if c.split_miga == "test":
            c.label = None
    train(cache, unlabelled.save(tmp_path / "nolabels"), "mg", tmp_path / "run", config=FAST)
    assert evaluate(tmp_path / "run", "test", data=copy)["n"] == 4


def test_predict_out_without_npz_says_the_file_written_and_score_reads_it_by_the_same_name(data, tmp_path):
    prepared, _, _, _, _, run = data
    out = tmp_path / "val.txt"
    r = CliRunner().invoke(app, ["fuse", "predict", str(run), "--split", "test", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1] == f"wrote 4 mg scores (test) to {out}.npz"
    assert not out.exists() and (tmp_path / "val.txt.npz").is_file()
    r = CliRunner().invoke(app, ["score", str(out), "--data", str(prepared), "--split", "test"])
    assert r.exit_code == 0, r.output
    assert Scores.load(out).ids == Scores.load(tmp_path / "val.txt.npz").ids


def _copy_run(run, to, **splits):
    import shutil

    shutil.copytree(run, to)
    doc = json.loads((to / "splits.json").read_text())
    (to / "splits.json").write_text(json.dumps({**doc, **{k: doc[k][:n] for k, n in splits.items()}}))
    return to


def test_a_run_trained_without_validation_clips_says_the_cache_held_none_not_the_labels(data, tmp_path):
    prepared, *_, run = data
    bare = _copy_run(run, tmp_path / "bare", validation=0)
    with pytest.raises(UserError) as e:
        evaluate(bare, "validation")
    assert str(e.value) == (f"run {bare} was trained with no validation clips: its cache held none of the 4 "
                            f"validation clips of {prepared} (see {bare / 'splits.json'}); extract them into the "
                            f"cache and train again")


def test_predict_on_part_of_a_trained_split_says_how_many_and_why(data, tmp_path, caplog):
    prepared, *_, run = data
    part = _copy_run(run, tmp_path / "part", train=2)
    assert len(predict(part, "train")) == 2
    assert (f"scoring 2 of the 8 train clips of {prepared}: the run was trained on those its cache held "
            f"({part / 'splits.json'})") in caplog.messages


def test_val_fraction_0_holds_out_no_video_and_says_so(data, tmp_path, caplog):
    prepared, cache, *_ = data
    caplog.set_level("INFO")
    s = train(cache, prepared, "mg", tmp_path / "r", config={**FAST, "val_fraction": 0, "split_scheme": "split_cs"})
    assert (s["n_train"], s["n_validation"]) == (12, 0)
    assert s["validation_source"] == ("0% of split_cs train videos held out (seed 0); split_cs of the manifest "
                                      "has no validation clips")
    assert (f"no validation set, so no best epoch: best.pt holds the last one, epoch 1; run in {tmp_path / 'r'}"
            in caplog.messages)
    r = CliRunner().invoke(app, ["fuse", "train", "--cache", str(cache), "--data", str(prepared), "--task", "mg",
                                 "--out", str(tmp_path / "r"), "--head", "pose", "--set", "val_fraction=0", "--set",
                                 "split_scheme=split_cs", "--set", "batch_size=16", "--epochs", "2"])
    assert r.exit_code == 0, r.output
    assert "; 1 epoch now," in r.output  # resumed: epoch 1 was run before


def test_eval_on_a_backbone_training_run_names_the_trainer_not_a_damaged_config(tmp_path):
    run = tmp_path / "joint"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"epochs": 2, "run": {"trainer": "skeleton", "provenance": {}}}))
    (run / "best.pt").write_bytes(b"")
    out = _one_line_error(["fuse", "eval", str(run), "--split", "validation"])
    assert out.strip() == (f"error: {run} holds a 'skeleton' training run, not a fusion head; pass a run folder "
                           f"of `migfuse fuse train`")


def test_the_extract_command_of_a_fix_names_the_recorded_checkpoint_and_is_bare_for_random_weights():
    from migfuse.data_cache.tracks import extract_command

    prov = {"checkpoint": "best.pt", "checkpoint_sha256": "4a6454b24ca3575033f679b6"}
    assert extract_command(TRACKS["bone"], "p1", "c0.zarr", prov) == (
        "`migfuse extract skeleton --stream bone --data p1 --cache c0.zarr --checkpoint CHECKPOINT` with the "
        "checkpoint it was extracted with (best.pt, checkpoint_sha256 4a6454b24ca3)")
    assert extract_command(TRACKS["video"], "p1", "c0.zarr", {"checkpoint_sha256": "ab" * 32}).endswith(
        "--checkpoint CHECKPOINT` with the checkpoint it was extracted with (checkpoint_sha256 abababababab)")
    assert extract_command(TRACKS["video"], "p1", "c0.zarr", {"weights": "RANDOM"}) == (
        "`migfuse extract video --data p1 --cache c0.zarr`")


def test_scoring_a_run_on_rows_of_other_data_gives_one_fix_that_works_not_the_other_command(data, tmp_path):
    prepared, cache, b, _, _, run = data
    with pytest.raises(UserError) as e:
        predict(run, "test", data=b)
    assert str(e.value).endswith(
        f"it was extracted from another prepared dataset; score that one with `migfuse fuse predict {run} --data "
        f"OTHER --split test --out SCORES.npz` and `migfuse score SCORES.npz --data OTHER --split test`, or extract "
        f"again for this one: `migfuse extract skeleton --stream joint --data {b} --cache {cache} --checkpoint "
        f"CHECKPOINT` with the checkpoint it was extracted with, then `migfuse cache view {cache} --defaults`")
    out = " ".join(_one_line_error(["fuse", "eval", str(run), "--data", str(b)]).split())
    assert "leave out --data" not in out
    assert out.endswith(f"so its evaluation in {run}/eval_test is kept (`fuse eval` scores a run on the data it was "
                        f"trained with): score that data with `migfuse fuse predict {run} --data {b} --split test "
                        f"--out SCORES.npz`, then `migfuse score SCORES.npz --data {b} --split test`")


def test_cache_view_pools_again_the_rows_of_a_lost_view_chunk(tmp_path, caplog):
    _, cache = write_synthetic(tmp_path, n_videos=2, clips_per_video=2, num_classes=2, tracks=("joint",), joints=5)
    default_views(cache)
    view = TokenCache(cache).group("views/joint")
    before = view.read_many(view.ids)["tokens"]
    chunk = view.chunk_file("tokens", 0)
    chunk.unlink()
    r = CliRunner().invoke(app, ["cache", "view", str(cache), "--defaults"])
    assert r.exit_code == 0, r.output
    assert (f"views/joint: 4 rows sat in a damaged or missing chunk file (e.g. {chunk}); pooling them again"
            in caplog.messages)
    view = TokenCache(cache).group("views/joint")
    np.testing.assert_array_equal(view.read_many(view.ids)["tokens"], before)
