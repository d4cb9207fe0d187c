"""Every bad command-line value ends in one line naming the option, before any work starts (found by
fuzzing each command's options with empty, zero, negative, huge, NaN/inf, wrong-type and path-traversal
values); and the good values at the edges of each range still work."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from migfuse.cli import app
from migfuse.commands.options import SEED_MAX, parse_path
from migfuse.synth.tokens import write_synthetic

HUGE_SEED = "1234567890123456789012"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """A prepared folder and cache, a plain file, a folder, two scores files: the {names} of the cases."""
    root = tmp_path_factory.mktemp("values")
    prepared, cache = write_synthetic(root / "s", n_videos=4, clips_per_video=4, tracks=("video", "joint", "bone"))
    afile = root / "afile.txt"
    afile.write_text("x")
    (root / "adir").mkdir()
    from migfuse.datasets import classes
    from migfuse.fuse.scores import Scores

    for name in ("a.npz", "b.npz"):
        Scores(["0001_0"], np.full((1, 32), 1 / 32, np.float32), "mg", "test", list(classes.CLASS_NAMES)).save(
            root / name)
    return {"P": str(prepared), "C": str(cache), "F": str(afile), "D": str(root / "adir"), "T": str(root),
            "A": str(root / "a.npz"), "B": str(root / "b.npz")}


TRAIN_FUSE = "fuse train --cache {C} --data {P} --task mg --out {T}/run"
TRAIN_SKEL = "backbone train skeleton --data {P} --out {T}/skel"
TRAIN_VIDEO = "backbone train video --data {P} --show-config"
EXTRACT = "extract video --data {P} --cache {T}/x.zarr"
SYNTH = "data synth --out {T}/synth"

# (command line with {names} from `world`, a bad value as its last words; text the one line must hold)
CASES: list[tuple[str, str]] = [
    # an empty path is refused wherever a path is taken (it would be the current folder)
    *[(line, f"Invalid value for '{opt}': the path is empty") for line, opt in [
        ("data synth --out ''", "--out"),
        ("data prepare --out {T}/p --root ''", "--root"),
        ("data prepare --root {P} --out ''", "--out"),
        ("data export-pyskl {P} ''", "OUT"),
        ("data export-pyskl '' {T}/x.pkl", "PREPARED"),
        ("extract skeleton --data {P} --checkpoint {F} --cache ''", "--cache"),
        ("extract video --cache {T}/x.zarr --data ''", "--data"),
        ("extract video --data {P} --cache {T}/x.zarr --checkpoint ''", "--checkpoint"),
        ("extract face --data {P} --cache {T}/x.zarr --checkpoint ''", "--checkpoint"),
        ("cache info ''", "CACHE"),
        ("cache view '' --defaults", "CACHE"),
        ("cache export-views {C} ''", "OUT"),
        ("cache export-views '' {T}/v.zarr", "CACHE"),
        (f"{TRAIN_FUSE} --config ''", "--config"),
        ("fuse train --data {P} --task mg --out {T}/run --cache ''", "--cache"),
        ("fuse train --cache {C} --task mg --out {T}/run --data ''", "--data"),
        ("fuse train --cache {C} --data {P} --task mg --out ''", "--out"),
        ("fuse eval ''", "RUN"),
        ("fuse eval {T}/run --cache ''", "--cache"),
        ("fuse eval {T}/run --data ''", "--data"),
        ("fuse predict {T}/run --split test --out ''", "--out"),
        ("fuse late {A} {B} --out ''", "--out"),
        ("fuse late '' {B} --out {T}/l.npz", "SCORES"),
        ("fuse import {F} --out ''", "--out"),
        ("fuse import '' --out {T}/i.npz", "RESULTS"),
        ("fuse import {F} --out {T}/i.npz --ann ''", "--ann"),
        ("backbone info agcn --checkpoint ''", "--checkpoint"),
        ("backbone run agcn --out {T}/o.npz --input ''", "--input"),
        ("backbone run agcn --input {F} --out ''", "--out"),
        (f"{TRAIN_SKEL} --init ''", "--init"),
        ("backbone train skeleton --out {T}/skel --data ''", "--data"),
        ("backbone train skeleton --data {P} --out ''", "--out"),
        ("backbone train video --data {P} --out ''", "--out"),
        ("backbone train video --data {P} --checkpoint ''", "--checkpoint"),
        ("export miga2025 {A} --data {P} --out ''", "--out"),
        ("export miga2025 '' --data {P}", "SCORES"),
        ("score '' --data {P}", "FILE"),
        ("score {A} --data {P} --out ''", "--out"),
        ("demo --out ''", "--out"),
        ("data synth --out ' '", "--out"),
    ]],
    ("data synth --out {T}/a\x00b", "holds a NUL character"),
    ("extract context --data {P} --cache {T}/x.zarr --video-root ''",
     "'--video-root' (env var: 'MIGFUSE_VIDEO_ROOT'): the path is empty"),
    # an output folder that is a file, an output file that is a folder
    *[(line, f"Invalid value for '{opt}': cannot use {{F}}: a file is in the way") for line, opt in [
        ("data synth --out {F}", "--out"), ("data prepare --root {P} --out {F}", "--out"),
        ("fuse train --cache {C} --data {P} --task mg --out {F}", "--out"), ("demo --out {F}", "--out"),
        ("cache export-views {C} {F}", "OUT"), ("score {A} --data {P} --out {F}", "--out"),
        ("backbone train skeleton --data {P} --out {F}", "--out"), ("extract video --data {P} --cache {F}", "--cache"),
        ("backbone train video --data {P} --out {F}", "--out"),
    ]],
    *[(line, f"Invalid value for '{opt}': cannot use {{D}}: it is a folder, not a file") for line, opt in [
        ("fuse predict {T}/run --split test --out {D}", "--out"), ("fuse late {A} {B} --out {D}", "--out"),
        ("fuse import {F} --out {D}", "--out"), ("backbone run agcn --input {F} --out {D}", "--out"),
        ("data export-pyskl {P} {D}", "OUT"),
    ]],
    (f"{EXTRACT} --video-root {{F}}", "Invalid value for '--video-root' (env var: 'MIGFUSE_VIDEO_ROOT'): "),
    (f"{EXTRACT} --video-root {{T}}/absent", "is not a folder (it does not exist)"),
    # seeds: numpy takes 0 <= seed < 2**32
    *[(f"{cmd} --seed {v}", "Invalid value for '--seed'") for cmd in (TRAIN_FUSE, TRAIN_SKEL, TRAIN_VIDEO, SYNTH)
      for v in ("-5", HUGE_SEED, "abc")],
    ("demo --seed " + HUGE_SEED, "Invalid value for '--seed'"),
    ("demo --seed -5", "--seed -5: the seed must be 0 or more"),
    # learning rate: finite and > 0
    *[(f"{cmd} --lr {v}", "Invalid value for '--lr'") for cmd in (TRAIN_FUSE, TRAIN_SKEL, TRAIN_VIDEO)
      for v in ("-1", "0", "nan", "inf", "-inf", "abc", "''")],
    # counts
    *[(f"{cmd} --epochs {v}", "Invalid value for '--epochs'") for cmd in (TRAIN_FUSE, TRAIN_SKEL, TRAIN_VIDEO)
      for v in ("0", "-1", "1000000000")],
    *[(f"{cmd} --batch-size {v}", "Invalid value for '--batch-size'") for cmd in (TRAIN_FUSE, TRAIN_SKEL, EXTRACT)
      for v in ("0", "-3", "99999999")],
    *[(f"{cmd} --threads {v}", "Invalid value for '--threads'") for cmd in (TRAIN_FUSE, EXTRACT)
      for v in ("0", "99999")],
    *[(f"{cmd} --workers {v}", "Invalid value for '--workers'") for cmd in (TRAIN_SKEL, EXTRACT)
      for v in ("-1", "1000")],
    ("data prepare --root {P} --out {T}/p --workers 0", "Invalid value for '--workers'"),
    (f"{SYNTH} --clips-per-video 1000000000", "Invalid value for '--clips-per-video'"),
    (f"{SYNTH} --clips-per-video 0", "Invalid value for '--clips-per-video'"),
    (f"{SYNTH} --videos 0", "Invalid value for '--videos'"),
    (f"{SYNTH} --videos 1.5", "Invalid value for '--videos'"),
    ("data prepare --root {P} --out {T}/p --frame-base 5", "Invalid value for '--frame-base'"),
    ("data prepare --root {P} --out {T}/p --frame-base -1", "Invalid value for '--frame-base'"),
    ("cache view {C} --name v --group joint/agcn --time-steps 0", "Invalid value for '--time-steps'"),
    ("cache view {C} --name v --group joint/agcn --time-steps -1", "Invalid value for '--time-steps'"),
    ("cache view {C} --name v --group joint/agcn --parts 0", "Invalid value for '--parts'"),
    ("cache info {C} --failures -1", "Invalid value for '--failures'"),
    (f"{EXTRACT} --windows 0", "Invalid value for '--windows'"),
    (f"{EXTRACT} --frames -1", "Invalid value for '--frames'"),
    ("extract context --data {P} --cache {T}/x.zarr --context-windows 0", "Invalid value for '--context-windows'"),
    ("extract face --data {P} --cache {T}/x.zarr --frames 0", "Invalid value for '--frames'"),
    ("extract skeleton --data {P} --cache {T}/x.zarr --checkpoint {F} --length 2", "Invalid value for '--length'"),
    (f"{TRAIN_SKEL} --base-channels 0", "Invalid value for '--base-channels'"),
    (f"{TRAIN_SKEL} --length 100000", "Invalid value for '--length'"),
    ("score {A} --data {P} --win-label 2", "Invalid value for '--win-label'"),
    ("export emotion {A} --data {P} --win-label -1", "Invalid value for '--win-label'"),
    # shards: I/N with 0 <= I < N
    *[(f"{EXTRACT} --shard {v}", "Invalid value for '--shard'") for v in ("''", "a", "5/3", "0/0", "-1/2",
                                                                         "1/99999999999999999999", "1/2/3")],
    # names that become one folder
    *[(f"cache view {{C}} --group joint/agcn --name {v}", "Invalid value for '--name'")
      for v in ("../../x", "a/b", "''", "..", "/abs")],
    *[(f"{TRAIN_FUSE} --head {v}", "Invalid value for '--head'") for v in ("''", "../x")],
    # the trainers' settings (--set) and the heads' options
    *[(f"{TRAIN_FUSE} --set {kv}", text) for kv, text in [
        ("head_options.width=0", "head_options of cmtf: width must be a finite number >= 1"),
        ("head_options.heads=3", "head_options of cmtf: width 64 must be a multiple of heads 3"),
        ("head_options.dropout=2", "head_options of cmtf: dropout must be a finite number >= 0 and < 1, not 2.0"),
        ("head_options.dropout=-0.1", "head_options of cmtf: dropout must be"),
        ("head_options.modality_dropout=1", "head_options of cmtf: modality_dropout must be"),
        ("head_options.depth=-1", "head_options of cmtf: depth must be"),
        ("head_options.width=abc", "head_options of cmtf: width must be an integer"),
        ("head_options.video_inputs=[5]", "head_options of cmtf: video_inputs must be a list of input names"),
        ("head_options.video_inputs=[]", "head_options of cmtf: video_inputs must be a list of input names"),
        ("head_options.width=100000", "head_options of cmtf: width must be a finite number >= 1 and <= 1024"),
        ("head_options.depth=1000", "head_options of cmtf: depth must be"),
        ("lr=-1", "--set: lr must be a finite number > 0, not -1.0"),
        ("lr=Infinity", "--set: lr must be a finite number > 0, not inf"),
        ("lr=NaN", "--set: lr must be a finite number > 0, not nan"),
        ("epochs=0", "--set: epochs must be a finite number >= 1"),
        ("label_smoothing=1", "--set: label_smoothing must be"),
        ("val_fraction=1.5", "--set: val_fraction must be"),
        ("weight_decay=-1", "--set: weight_decay must be"),
        ("seed=-1", "--set: seed must be"),
        ("threads=-1", "--set: threads must be"),
        ("warmup_epochs=-1", "--set: warmup_epochs must be"),
        ("split_scheme=zzz", "the config: split_scheme must be one of auto, split_miga, split_cs, not 'zzz'"),
    ]],
    (f"{TRAIN_SKEL} --set weight_decay=-1", "--set: weight_decay must be"),
    (f"{TRAIN_VIDEO} --set drop_path=1.5", "--set: drop_path must be"),
    (f"{TRAIN_VIDEO} --set layer_decay=0", "--set: layer_decay must be"),
    (f"{TRAIN_VIDEO} --set target_batch=0", "--set: target_batch must be"),
    # values read by the command itself
    ("fuse late {A} {B} --out {T}/l.npz --weights nan,1", "--weights 'nan,1': each weight must be"),
    ("fuse late {A} {B} --out {T}/l.npz --weights -1,1", "--weights '-1,1': each weight must be"),
    ("fuse late {A} {B} --out {T}/l.npz --weights 0,0", "--weights '0,0': each weight must be"),
    ("fuse late {A} {B} --out {T}/l.npz --weights inf,1", "--weights 'inf,1': each weight must be"),
    ("data export-pyskl {P} {T}/x.pkl --img-shape 0x5", "--img-shape '0x5' must be HEIGHTxWIDTH"),
    ("data export-pyskl {P} {T}/x.pkl --img-shape 99999999x9", "--img-shape '99999999x9' must be HEIGHTxWIDTH"),
    (f"{EXTRACT} --device nonsense", "--device 'nonsense' is not auto, cpu, cuda or cuda:N"),
    ("backbone info agcn --layout ''", "Invalid value for '--layout': the value is empty"),
    ("backbone run agcn --input {A} --out {T}/o.npz", "{A} is an .npz archive, not one .npy array"),
    (f"{TRAIN_FUSE} --precision fp16", "--precision fp16: the trainers run in fp32 or bf16"),
]


def _args(line: str, world: dict[str, str]) -> list[str]:
    import shlex

    return [a.format(**world) for a in shlex.split(line)]


def test_there_are_over_a_hundred_cases():
    assert len(CASES) >= 100


@pytest.mark.parametrize("line,text", CASES, ids=[c[0] for c in CASES])
def test_a_bad_value_is_one_line_naming_it_before_any_work(line, text, world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty path would be this folder: it must stay empty
    r = CliRunner().invoke(app, _args(line, world))
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.output and text.format(**world) in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []
    made = {"synth", "p", "run", "skel", "x.zarr", "l.npz", "x.pkl", "o.npz", "i.npz", "v.zarr", "views"}
    assert made & {p.name for p in Path(world["T"]).iterdir()} == set()


def test_parse_path_keeps_a_default_and_a_plain_path(tmp_path):
    assert parse_path("folder", Path("demo_out")) == Path("demo_out")  # a default is not typed: kept
    assert parse_path("read", ".") == Path(".")  # the current folder said outright is fine
    assert parse_path("file", str(tmp_path / "new.npz")) == tmp_path / "new.npz"


def test_the_values_at_the_edges_of_the_ranges_work(world, tmp_path):
    """Seed 2**32 - 1, the smallest lr, a width its heads divide, dropout 0, a dotted view name: all run."""
    r = CliRunner().invoke(app, _args(
        f"fuse train --cache {{C}} --data {{P}} --task mg --out {tmp_path / 'r'} --epochs 1 --lr 1e-30 "
        f"--seed {SEED_MAX} --set head_options.width=48 --set head_options.heads=4 "
        "--set head_options.dropout=0 --set label_smoothing=0 --set val_fraction=0", world))
    assert r.exit_code == 0, r.output
    import json

    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["seed"] == SEED_MAX and cfg["lr"] == 1e-30 and cfg["head_options"]["width"] == 48
    assert math.isfinite(json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])["train_loss"])
    r = CliRunner().invoke(app, _args("cache view {C} --name my.view-1 --group joint/agcn --parts 6 "
                                      "--time-steps 4", world))
    assert r.exit_code == 0, r.output
    assert "views/my.view-1: 16/16 rows" in r.stdout
    r = CliRunner().invoke(app, _args(f"fuse late {{A}} {{B}} --out {tmp_path / 'l.npz'} --weights 0,1", world))
    assert r.exit_code == 0 and (tmp_path / "l.npz").is_file(), r.output
