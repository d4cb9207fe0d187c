"""Training, evaluation and prediction end to end on caches written through the store API
(real token shapes), with a planted class signal; plus the CLI and the cache/manifest checks."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from migfuse.cli import app
from migfuse.data_cache.views import default_views
from migfuse.errors import UserError
from migfuse.fuse.evaluate import evaluate
from migfuse.fuse.predict import predict
from migfuse.fuse.scores import Scores
from migfuse.synth.tokens import write_synthetic
from migfuse.fuse.train import resolve_config, train

FAST = {"epochs": 6, "batch_size": 16, "patience": 6, "threads": 1}


@pytest.fixture(scope="module")
def mg_data(tmp_path_factory):
    """6 videos x 8 clips, 4 classes: train 4 videos, validation 1, test 1; default views made."""
    root = tmp_path_factory.mktemp("mg")
    prepared, cache = write_synthetic(root, n_videos=6, clips_per_video=8, num_classes=4, signal=0.1,
                                      tracks=("video", "joint", "bone"), joints=55, seed=1)
    default_views(cache)
    return prepared, cache


@pytest.fixture(scope="module")
def emo_data(tmp_path_factory):
    """16 videos, 3 context windows; every third video has no face at all."""
    root = tmp_path_factory.mktemp("emo")
    prepared, cache = write_synthetic(root, n_videos=16, clips_per_video=1, windows=3, faces=4, signal=0.3,
                                      tracks=("context", "face_context"), seed=2)
    default_views(cache)
    return prepared, cache


def test_cmtf_learns_planted_signal_and_writes_run(mg_data, tmp_path):
    prepared, cache = mg_data
    out = tmp_path / "run"
    summary = train(cache, prepared, "mg", out, config=FAST)
    assert summary["validation_source"] == "split_miga validation"
    assert (summary["n_train"], summary["n_validation"]) == (32, 8)
    for name in ("config.json", "metrics.jsonl", "metrics.csv", "curves.png", "best.pt", "last.pt", "train.log",
                 "splits.json", "summary.json"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "config.json").read_text())
    cfg, prov = {k: v for k, v in doc.items() if k != "run"}, doc["run"]["provenance"]
    assert doc["run"]["trainer"] == "fuse" and doc["run"]["ended"] and doc["run"]["versions"]["torch"]
    assert cfg["head"] == "cmtf" and prov["inputs"]["video"] == "views/video" and cfg["head_options"]["width"] == 64
    # Bar: 4 classes (chance 25%); the planted signal must give >= 75% on the 8 unseen test clips.
    m = evaluate(out, "test")
    assert m["n"] == 8 and m["top1"] >= 0.75, m["top1"]
    assert (out / "eval_test" / "confusion.png").stat().st_size > 1000
    scores = predict(out, "test", tmp_path / "s.npz")
    loaded = Scores.load(tmp_path / "s.npz")
    assert loaded.ids == scores.ids and len(loaded.ids) == 8 and loaded.ids[0].startswith("0006_")
    assert loaded.scores.shape == (8, 32) and np.allclose(loaded.scores.sum(1), 1, atol=1e-5)


def test_same_seed_same_metrics(mg_data, tmp_path):
    prepared, cache = mg_data
    config = {**FAST, "epochs": 2, "balance": "sampler"}
    runs = []
    for name in ("a", "b"):
        train(cache, prepared, "mg", tmp_path / name, config=config)
        lines = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs.append([{k: v for k, v in r.items() if k != "seconds"} for r in lines])
    assert runs[0] == runs[1]
    train(cache, prepared, "mg", tmp_path / "c", config={**config, "seed": 1})
    other = [json.loads(line)["train_loss"] for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert other != [r["train_loss"] for r in runs[0]]


def test_the_runtime_decides_where_the_head_trains_and_fp32_on_the_cpu_changes_nothing(mg_data, tmp_path, caplog):
    from migfuse.runtime import Precision, Runtime

    prepared, cache = mg_data
    config = {**FAST, "epochs": 2}

    def history(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]

    train(cache, prepared, "mg", tmp_path / "default", config=config)
    # an fp32 runtime on the CPU (what the demo passes) is no autocast: the same numbers to the last bit;
    # "device" in a settings file of an earlier release is read with one warning and not used
    train(cache, prepared, "mg", tmp_path / "fp32", config={**config, "device": "cuda"}, runtime=Runtime())
    assert history("fp32") == history("default")
    assert sum("device is a command option now" in r.getMessage() for r in caplog.records) == 1
    prov = json.loads((tmp_path / "fp32" / "config.json").read_text())["run"]["provenance"]
    assert prov["compute"] == {"device": "cpu", "precision": "fp32"}
    # bf16 autocast (what --precision auto gives on a GPU or an AMX CPU): trains, recorded
    summary = train(cache, prepared, "mg", tmp_path / "bf16", config=config, runtime=Runtime(precision=Precision.BF16))
    assert np.isfinite(summary["best"]["val_loss"]) and history("bf16") != history("default")
    prov = json.loads((tmp_path / "bf16" / "config.json").read_text())["run"]["provenance"]
    assert prov["compute"] == {"device": "cpu", "precision": "bf16"}
    with pytest.raises(UserError, match="--precision fp16: the trainers run in fp32 or bf16"):
        train(cache, prepared, "mg", tmp_path / "fp16", config=config, runtime=Runtime(precision=Precision.FP16))


def test_train_eval_and_predict_each_open_every_cache_group_once(mg_data, tmp_path, monkeypatch):
    """Opening a group reads its attributes and its id array: each command opens the groups it reads
    once (the three views, and for train the views' source groups, to check they are current) and
    passes the handles on."""
    from migfuse.data_cache.group import TokenGroup

    prepared, cache = mg_data
    opened: list[str] = []
    real_init = TokenGroup.__init__

    def counting_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        opened.append(self.name)

    monkeypatch.setattr(TokenGroup, "__init__", counting_init)
    out = tmp_path / "run"
    views = ["views/bone", "views/joint", "views/video"]
    train(cache, prepared, "mg", out, config={**FAST, "epochs": 1})
    assert sorted(opened) == sorted([*views, "bone/agcn", "joint/agcn", "video/mvit_v2_s"]), opened
    for command in (evaluate, predict):
        opened.clear()
        command(out, "test")
        assert sorted(opened) == views, (command.__name__, opened)


def test_interfusion_learns_emotion_without_faces_in_some_videos(emo_data, tmp_path):
    prepared, cache = emo_data
    summary = train(cache, prepared, "emotion", tmp_path / "emo", config={"epochs": 15, "threads": 1})
    assert summary["n_train"] + summary["n_validation"] == 8
    # Bar: chance 50%; >= 75% of the 8 test videos (a third of them without any face).
    m = evaluate(tmp_path / "emo", "test")
    assert m["n"] == 8 and m["accuracy"] >= 0.75, m
    scores = predict(tmp_path / "emo", "test")
    assert scores.classes == ["Lose", "Win"] and all(len(i) == 4 for i in scores.ids)


def test_missing_clips_refused_unless_allowed(tmp_path):
    # Raw pose groups (small V) are read directly, without views; one training clip never extracted.
    prepared, cache = write_synthetic(tmp_path, n_videos=4, clips_per_video=4, num_classes=2, joints=10,
                                      tracks=("joint", "bone"), skip=["0001_2"], with_validation=False)
    with pytest.raises(UserError, match=r"joint/agcn.* lacks 1 of the .*0001_2.*--allow-missing"):
        train(cache, prepared, "mg", tmp_path / "r", head="pose", config=FAST)
    summary = train(cache, prepared, "mg", tmp_path / "r", head="pose", config={**FAST, "epochs": 1},
                    allow_missing=True)
    assert summary["n_train"] + summary["n_validation"] == 11  # 3 train videos x 4 clips - 1
    assert "held out" in summary["validation_source"]
    assert "lacks 1" in (tmp_path / "r" / "train.log").read_text()


def test_bad_config_is_one_line_user_error(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text('{"epochs": 3, "lr_max": 1}')
    with pytest.raises(UserError, match=f"{bad}: unknown setting 'lr_max'"):
        resolve_config("mg", bad)
    with pytest.raises(UserError, match="the config: balance must be one of loss, sampler, none, not 'oversample'"):
        resolve_config("mg", {"balance": "oversample"})
    assert resolve_config("mg", {"balance": "weights"})["balance"] == "loss"  # the word of earlier releases
    with pytest.raises(UserError, match="select_metric for task emotion"):
        resolve_config("emotion", {"select_metric": "top1"})


def test_cli_view_train_eval_predict(mg_data, tmp_path):
    prepared, cache = mg_data
    runner = CliRunner()
    r = runner.invoke(app, ["cache", "view", str(cache), "--name", "video_cls", "--group", "video/mvit_v2_s",
                            "--pool", "video_cls"])
    assert r.exit_code == 0, r.output
    assert "views/video_cls" in r.output
    config = tmp_path / "c.json"
    config.write_text(json.dumps({**FAST, "epochs": 1, "inputs": {"video": "views/video_cls"}}))
    run = tmp_path / "run"
    r = runner.invoke(app, ["fuse", "train", "--cache", str(cache), "--data", str(prepared), "--task", "mg",
                            "--head", "video", "--config", str(config), "--out", str(run)])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "config.json").read_text())["run"]["provenance"]["shapes"]["video"] == [1, 768]
    r = runner.invoke(app, ["fuse", "eval", str(run), "--split", "validation"])
    assert r.exit_code == 0 and "top-1" in r.output, r.output
    r = runner.invoke(app, ["fuse", "predict", str(run), "--split", "test", "--out", str(tmp_path / "s.npz")])
    assert r.exit_code == 0 and Scores.load(tmp_path / "s.npz").task == "mg", r.output
    r = runner.invoke(app, ["fuse", "eval", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not a finished training run" in r.output
    # A view rebuilt with other settings no longer matches the run: refused, not silently mixed.
    r = runner.invoke(app, ["cache", "view", str(cache), "--name", "video_cls", "--group", "video/mvit_v2_s",
                            "--pool", "video_time", "--overwrite"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["fuse", "predict", str(run), "--split", "test", "--out", str(tmp_path / "t.npz")])
    assert r.exit_code == 2 and "rebuilt with other settings" in r.output, r.output


# ----- run-folder safety (the shared folder's realworld/fuse_repro.sh, issue #11 §2) -----------------------
def _metric_rows(run):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_kill_during_a_checkpoint_save_keeps_the_previous_best_pt(mg_data, tmp_path, monkeypatch):
    import torch

    prepared, cache = mg_data
    run = tmp_path / "r"
    train(cache, prepared, "mg", run, config={**FAST, "epochs": 1})
    before = predict(run, "test").scores

    def killed_while_writing(obj, f):
        f.write(b"PK\x03\x04 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        train(cache, prepared, "mg", run, config={**FAST, "epochs": 3})  # resumes, dies saving epoch 2
    monkeypatch.undo()
    assert np.array_equal(predict(run, "test").scores, before)
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert [r["epoch"] for r in _metric_rows(run)] == [1, 2]  # epoch 2 is redone by the next rerun
    assert train(cache, prepared, "mg", run, config={**FAST, "epochs": 3})["epochs_run"] == 2


def test_rerun_with_another_config_is_refused_unless_overwrite(mg_data, tmp_path):
    prepared, cache = mg_data
    run, runner = tmp_path / "r", CliRunner()
    small, big = tmp_path / "a.json", tmp_path / "big.json"
    small.write_text(json.dumps({**FAST, "epochs": 1}))
    big.write_text(json.dumps({**FAST, "epochs": 2, "head_options": {"width": 32}}))
    args = ["fuse", "train", "--cache", str(cache), "--data", str(prepared), "--task", "mg", "--out", str(run)]
    assert runner.invoke(app, args + ["--config", str(small)]).exit_code == 0
    best, config = (run / "best.pt").read_bytes(), (run / "config.json").read_text()
    r = runner.invoke(app, args + ["--config", str(big)])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert f"error: {run} holds a run with other settings (head_options.width=64, not 32); " in r.output
    assert "--overwrite" in r.output
    assert (run / "best.pt").read_bytes() == best and (run / "config.json").read_text() == config
    r = runner.invoke(app, args + ["--config", str(big), "--overwrite"])
    assert r.exit_code == 0, r.output
    doc = json.loads((run / "config.json").read_text())
    assert doc["head_options"]["width"] == 32 and [x["epoch"] for x in _metric_rows(run)] == [1, 2]
    assert predict(run, "test").scores.shape == (8, 32)


def test_rerun_of_a_killed_train_resumes_with_the_final_metrics_of_an_uninterrupted_one(mg_data, tmp_path,
                                                                                       monkeypatch):
    import migfuse.fuse.train as fuse_train

    prepared, cache = mg_data
    config = {**FAST, "epochs": 3, "balance": "sampler"}
    real, calls = fuse_train.validate, []

    def killed_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fuse_train, "validate", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cache, prepared, "mg", tmp_path / "a", config=config)
    monkeypatch.undo()
    resumed = train(cache, prepared, "mg", tmp_path / "a", config=config)
    straight = train(cache, prepared, "mg", tmp_path / "b", config=config)
    assert (resumed["epochs_run"], straight["epochs_run"]) == (2, 3)
    assert _metric_rows(tmp_path / "a") == _metric_rows(tmp_path / "b")
    assert np.array_equal(predict(tmp_path / "a", "test").scores, predict(tmp_path / "b", "test").scores)


def test_a_second_train_into_a_folder_in_use_is_refused_in_one_line(mg_data, tmp_path):
    from filelock import FileLock

    prepared, cache = mg_data
    run = tmp_path / "r"
    run.mkdir()
    with FileLock(str(run / ".lock")):  # what a first `fuse train` holds while it runs
        r = CliRunner().invoke(app, ["fuse", "train", "--cache", str(cache), "--data", str(prepared), "--task", "mg",
                                     "--out", str(run), "--epochs", "1"])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert f"error: run folder {run} is in use by another training run" in r.output
    assert sorted(p.name for p in run.iterdir()) == [".lock"]


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_predict_with_a_damaged_best_pt_is_one_line_naming_it(mg_data, tmp_path, damage):
    prepared, cache = mg_data
    run = tmp_path / "r"
    train(cache, prepared, "mg", run, config={**FAST, "epochs": 1})
    data = (run / "best.pt").read_bytes()
    (run / "best.pt").write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    r = CliRunner().invoke(app, ["fuse", "predict", str(run), "--split", "test", "--out", str(tmp_path / "t.npz")])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith(f"error: checkpoint {run / 'best.pt'} is ")


def test_a_planted_last_pt_that_runs_code_is_refused(mg_data, tmp_path):
    import subprocess
    import sys

    prepared, cache = mg_data
    run, marker = tmp_path / "r", tmp_path / "PWNED"
    train(cache, prepared, "mg", run, config={**FAST, "epochs": 1})
    subprocess.run([sys.executable, "-c", f"""
import os, torch
class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > {marker}",))
torch.save({{"format": "migfuse-checkpoint/1", "state_dict": {{}}, "x": Evil()}}, {str(run / "last.pt")!r})
"""], check=True)
    with pytest.raises(UserError, match=r"last.pt holds objects other than tensors and plain values"):
        train(cache, prepared, "mg", run, config={**FAST, "epochs": 2})
    assert not marker.exists()


def test_lr_of_the_wrong_type_names_file_key_and_type(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text('{"lr": "fast"}')
    with pytest.raises(UserError) as e:
        resolve_config("mg", bad)
    assert str(e.value) == f"{bad}: lr must be a number (like the default 0.001), not 'fast'"
    with pytest.raises(UserError, match="--set: epochs must be an integer"):
        resolve_config("mg", sets=["epochs=many"])
    assert resolve_config("mg", {"epochs": 3}, sets=["lr=0.01"], flags={"epochs": 5})["epochs"] == 5


def test_a_warm_up_as_long_as_the_run_is_refused_in_one_line():
    with pytest.raises(UserError) as e:
        resolve_config("mg", sets=["warmup_epochs=100"], flags={"epochs": 2})
    assert str(e.value) == ("the config: warmup_epochs (100) must be less than epochs (2), or the warm-up never "
                            "finishes; lower warmup_epochs or raise epochs")
    with pytest.raises(UserError, match=r"warmup_epochs \(3\) must be less than epochs \(3\)"):
        resolve_config("mg", {"warmup_epochs": 3, "epochs": 3})
    assert resolve_config("mg", flags={"epochs": 1})["warmup_epochs"] == 1  # a one-epoch run keeps the default
