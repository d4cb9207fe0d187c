"""Reading a checkpoint never runs code from it (issue #11 section 1) and fails in one line when damaged.

A planted pickle whose `__reduce__` writes a marker file is read through `read_checkpoint` and the
CLI commands that load checkpoints; the marker must never appear unless the user says
`--trust-checkpoint`. Real checkpoints keep loading: an mmaction2-style file whose `meta` holds numpy
values, an OrderedDict state dict, a legacy (non-zip) file.
"""
from __future__ import annotations

import collections
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from golden import golden_state_dict, load_golden
from migfuse.cli import app
from migfuse.errors import UserError
from migfuse import checkpoint_file
from migfuse.backbones.checkpoints import read_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _WritesMarker:
    """Unpickling this runs code: exec writes `marker` (an attacker would call os.system)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def _planted(path: Path, marker: Path, payload_key: str = "meta") -> Path:
    torch.save({"state_dict": {"w": torch.zeros(2)}, payload_key: _WritesMarker(marker)}, path)
    return path


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_planted_pickle_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "MARKER"
    ckpt = _planted(tmp_path / "evil.pth", marker)
    with pytest.raises(UserError) as e:
        read_checkpoint(ckpt)
    msg = str(e.value)
    assert not marker.exists()
    assert "\n" not in msg and str(ckpt) in msg and "--trust-checkpoint" in msg
    assert "holds exec," in msg  # names what the file wanted to call


@pytest.mark.parametrize("backbone", ["mvit_v2_s", "agcn", "aagcn", "swinface"])
def test_backbone_info_refuses_a_planted_pickle_in_one_line(tmp_path, backbone):
    marker = tmp_path / "MARKER"
    ckpt = _planted(tmp_path / f"{backbone}.pth", marker)
    res = invoke("backbone", "info", backbone, "--checkpoint", ckpt)
    assert res.exit_code == 2, res.output
    assert not marker.exists()
    assert res.stderr.count("\n") == 1 and str(ckpt) in res.stderr and "--trust-checkpoint" in res.stderr


def test_extract_skeleton_refuses_a_planted_pickle(tmp_path):
    marker = tmp_path / "MARKER"
    ckpt = _planted(tmp_path / "sk.pt", marker)
    prepared = tmp_path / "prepared"  # the checkpoint is read before anything of the dataset is used
    res = invoke("extract", "skeleton", "--data", prepared, "--cache", tmp_path / "c.zarr", "--checkpoint", ckpt)
    assert res.exit_code == 2
    assert not marker.exists()


def test_trust_checkpoint_unpickles_only_the_file_the_user_named(tmp_path):
    marker = tmp_path / "MARKER"
    trusted = _planted(tmp_path / "trusted.pth", marker)
    other = _planted(tmp_path / "other.pth", tmp_path / "OTHER")
    res = invoke("backbone", "info", "agcn", "--checkpoint", trusted, "--trust-checkpoint")
    assert marker.read_text() == "code ran"  # the user asked for it: the file is unpickled fully
    assert res.exit_code == 2 and "is not a 2s-AGCN checkpoint" in res.stderr  # then checked as usual
    with pytest.raises(UserError, match="--trust-checkpoint"):
        read_checkpoint(other)
    with pytest.raises(UserError, match="--trust-checkpoint"):  # nothing of the command's trust stayed behind
        read_checkpoint(trusted)
    assert not (tmp_path / "OTHER").exists()


def test_trust_travels_with_the_call_never_in_module_state(tmp_path):
    marker = tmp_path / "MARKER"
    ckpt = _planted(tmp_path / "t.pth", marker)
    file = checkpoint_file.CheckpointFile(ckpt, trusted=True)
    assert file.contents["state_dict"]["w"].shape == (2,) and marker.read_text() == "code ran"
    marker.unlink()
    with pytest.raises(UserError, match="--trust-checkpoint"):
        checkpoint_file.CheckpointFile(ckpt).contents
    assert not marker.exists()
    module_state = {k: v for k, v in vars(checkpoint_file).items() if isinstance(v, (set, dict, list)) and v
                    and not k.startswith("__")}
    assert module_state == {}, "trust must not be kept in the module"


def test_an_mmaction2_checkpoint_with_numpy_meta_loads_without_the_flag(tmp_path):
    """mmcv/mmengine `meta`: numpy scalars (hook_msgs.best_score), dtypes, arrays, OrderedDict, tuples."""
    sd = golden_state_dict("mmaction_agcn_ntu3d_fanin")
    meta = {
        "mmengine_version": "0.10.7", "epoch": 80, "iter": np.int64(12000), "seed": 1234, "time": "20221222_101010",
        "hook_msgs": {"best_score": np.float64(0.886), "best_ckpt": "work_dirs/best.pth"},
        "dataset_meta": {"classes": ("a", "b")}, "dtype": np.dtype("float32"), "mean": np.array([0.5, 0.5]),
        "order": collections.OrderedDict(a=1),
    }
    ckpt = tmp_path / "2s-agcn_8xb16-joint-u100-80e_ntu60-xsub-keypoint-3d.pth"
    torch.save({"meta": meta, "state_dict": sd}, ckpt)
    loaded = read_checkpoint(ckpt)
    assert loaded["meta"]["hook_msgs"]["best_score"] == np.float64(0.886)
    assert loaded["meta"]["dtype"] == np.dtype("float32") and loaded["meta"]["mean"].tolist() == [0.5, 0.5]
    res = invoke("backbone", "info", "aagcn", "--checkpoint", ckpt, "--layout", "nturgb+d")
    assert res.exit_code == 0, res.output
    assert "363 keys matched" in res.stdout


def test_a_legacy_non_zip_checkpoint_still_loads(tmp_path):
    path = tmp_path / "old.pth"
    sd = collections.OrderedDict(w=torch.arange(3.0))
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(path)["w"], torch.arange(3.0))


@pytest.mark.parametrize("damage", ["empty", "cut_short", "not_a_checkpoint"])
def test_a_damaged_checkpoint_ends_in_one_line_naming_the_file_and_the_fix(tmp_path, damage):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(1000)}, good)
    bad = tmp_path / f"{damage}.pth"
    data = {"empty": b"", "cut_short": good.read_bytes()[:2000], "not_a_checkpoint": b"hello, I am a text file\n"}
    bad.write_bytes(data[damage])
    with pytest.raises(UserError) as e:
        read_checkpoint(bad)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and "download it again" in msg
    assert "--trust-checkpoint" not in msg  # damage is not a reason to unpickle fully
    res = invoke("backbone", "info", "agcn", "--checkpoint", bad)
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and str(bad) in res.stderr


def test_the_skeleton_golden_checkpoints_still_load(tmp_path):
    """The formats the original code saves (flat OrderedDict; mmengine dict) pass the safe loader."""
    from migfuse.backbones.registry import create_backbone

    path = tmp_path / "agcn.pt"
    torch.save(collections.OrderedDict(golden_state_dict("agcn_kinetics_fanin")), path)
    bb = create_backbone("agcn", path)
    _, arrays = load_golden("agcn_kinetics_fanin")
    assert bb.layout.name == "openpose-18"
    assert os.path.getsize(path) > 0 and np.isfinite(bb.run(arrays["input"])["logits"]).all()


def test_a_checkpoint_pickled_under_numpy_1_loads(tmp_path):
    """numpy 1.x names its scalar/array rebuilders `numpy.core.multiarray.*` (numpy 2: `numpy._core`)."""
    path = tmp_path / "np2.pth"
    meta = {"best_score": np.float64(0.5), "mean": np.arange(3), "dtype": np.dtype("float32")}
    torch.save({"meta": meta, "state_dict": {"w": torch.zeros(2)}}, path, _use_new_zipfile_serialization=False,
               pickle_protocol=2)  # legacy + protocol 2: global names are plain text lines
    data = path.read_bytes()
    assert data.count(b"numpy._core.multiarray\n") == 2
    old = tmp_path / "np1.pth"
    old.write_bytes(data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    loaded = read_checkpoint(old)
    assert loaded["meta"]["best_score"] == 0.5 and loaded["meta"]["mean"].tolist() == [0, 1, 2]
    assert loaded["meta"]["dtype"] == np.dtype("float32")


def test_fuse_and_shared_training_code_can_read_checkpoints_without_extract():
    """read_checkpoint lives outside extract (fuse and extract never import each other)."""
    import subprocess
    import sys

    code = ("import sys; import migfuse.checkpoint_file as c; "
            "assert c.read_checkpoint and not any(m.startswith('migfuse.extract') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_trainers_read_their_start_files_with_the_users_trust_only(tmp_path):
    """`backbone train skeleton --init` and `backbone train video --checkpoint` pass --trust-checkpoint on."""
    from migfuse.finetune.skeleton import TrainConfig, build_model, load_init
    from migfuse.finetune.video import build_model as build_mvit_model

    marker = tmp_path / "MARKER"
    evil = _planted(tmp_path / "init.pt", marker)
    model = build_model(TrainConfig(base_channels=4, length=16))
    with pytest.raises(UserError, match="--trust-checkpoint"):
        load_init(model, evil)
    with pytest.raises(UserError, match="--trust-checkpoint"):
        build_mvit_model({"seed": 0, "width": "demo", "drop_path": 0.0, "head_dropout": 0.5}, evil)
    assert not marker.exists()
    with pytest.raises(UserError, match="does not fit"):  # the user vouched for it: unpickled, then checked
        load_init(model, evil, trusted=True)
    assert marker.read_text() == "code ran"
