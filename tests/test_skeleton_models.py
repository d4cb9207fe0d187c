"""2s-AGCN / AAGCN against the golden outputs of the original code; graphs; checkpoint errors; CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from golden import golden_state_dict, load_golden
from migfuse.errors import UserError
from migfuse.backbones.registry import create_backbone
from migfuse.backbones.graphs import get_layout, list_layouts, spatial_adjacency
from migfuse.extract.skeleton.preprocess import bones_2s_agcn

ATOL = RTOL = 1e-4
# golden set -> (backbone, layout, how the original saves it)
SETS = {
    "agcn_kinetics": ("agcn", "openpose-18"),
    "agcn_ntu": ("agcn", "ntu-25"),
    "mmaction_agcn_ntu3d": ("aagcn", "nturgb+d"),
    "mmaction_agcn_coco2d": ("aagcn", "coco-17"),
}
ALL = [n + s for n in SETS for s in ("", "_fanin")]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _save_original(name: str, path: Path, prefix: str = "") -> Path:
    """Write the golden weights the way the original code saves them (see README checkpoint_format)."""
    sd = golden_state_dict(name)
    if name.startswith("agcn"):
        torch.save({prefix + k: v for k, v in sd.items()}, path)  # flat OrderedDict, no graph.A
    else:
        torch.save({"meta": {"epoch": 80, "mmengine_version": "0.10.7"}, "state_dict": sd}, path)
    return path


@pytest.fixture(scope="module")
def golden_runs(tmp_path_factory) -> dict:
    """name -> (outputs of our backbone on the golden input, golden arrays, backbone)."""
    tmp = tmp_path_factory.mktemp("golden")
    runs = {}
    for name in ALL:
        bb_name, layout = SETS[name.replace("_fanin", "")]
        _, arrays = load_golden(name)
        bb = create_backbone(bb_name, _save_original(name, tmp / f"{name}-49-0.pt"), layout=layout)
        out = bb.run(arrays["input"])
        if bb_name == "agcn":
            bone = bb.run(bones_2s_agcn(arrays["input"], bb.layout))
            out["bone_l10_features"], out["bone_logits"] = bone["l10_features"], bone["logits"]
            out["fused_logits"] = out["logits"] + bone["logits"]  # ensemble.py, alpha = 1
        runs[name] = (out, arrays, bb)
    return runs


@pytest.mark.parametrize("name", ALL)
def test_outputs_match_original(golden_runs, name):
    out, arrays, _ = golden_runs[name]
    expected = ({"l10_features", "logits", "bone_l10_features", "bone_logits", "fused_logits"}
                if name.startswith("agcn") else {"backbone_features", "cls_scores"})
    assert set(out) == expected
    for key in sorted(expected):
        assert out[key].shape == arrays[key].shape, key
        diff = float(np.abs(out[key] - arrays[key]).max())
        assert np.allclose(out[key], arrays[key], atol=ATOL, rtol=RTOL), f"{name} {key}: max abs diff {diff}"


@pytest.mark.parametrize("name", ["agcn_kinetics", "agcn_ntu", "agcn_kinetics_fanin", "agcn_ntu_fanin"])
def test_bone_input_is_gen_bone_data_rule(name):
    _, arrays = load_golden(name)
    layout = get_layout(SETS[name.replace("_fanin", "")][1])
    np.testing.assert_allclose(bones_2s_agcn(arrays["input"], layout), arrays["bone_input"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name,layout,key", [
    ("agcn_kinetics", "openpose-18", "graph/A"), ("agcn_ntu", "ntu-25", "graph/A"),
    ("mmaction_agcn_ntu3d", "nturgb+d", "derived/backbone.A"),
    ("mmaction_agcn_coco2d", "coco-17", "derived/backbone.A"),
])
def test_spatial_adjacency_matches_original_graph(name, layout, key):
    _, arrays = load_golden(name)
    np.testing.assert_allclose(spatial_adjacency(get_layout(layout)), arrays[key], atol=1e-7, rtol=0)


def test_layouts_are_trees_with_one_bone_per_joint():
    for name in list_layouts():
        lay = get_layout(name)
        assert sorted(c for c, _ in lay.bone_pairs) == list(range(lay.num_node)), name
        assert len(lay.inward) == lay.num_node - 1, name  # a spanning tree: every node but the centre has a parent
        assert lay.source is None or len(lay.source) == lay.num_node
    imigue = get_layout("imigue")
    assert imigue.num_node == 55
    node = {n: i for i, n in enumerate(imigue.nodes)}
    # hand wrists hang off the body wrists of the same side (OpenPose: 4 right wrist, 7 left wrist)
    assert (node["l_hand_wrist"], node["l_wrist"]) in imigue.inward
    assert (node["r_hand_wrist"], node["r_wrist"]) in imigue.inward
    assert imigue.source[node["l_hand_wrist"]] == 95 and imigue.source[node["r_hand_wrist"]] == 116
    assert get_layout("kinetics").name == "openpose-18" and get_layout("coco").name == "coco-17"
    # openpose22 reads only points the MiGA 2023 light_hand files carry (BODY_25 + 5 + 5 fingertips)
    from migfuse.datasets.layouts.skeletons import LIGHT_HAND_POINTS

    assert set(get_layout("openpose22").source) <= set(LIGHT_HAND_POINTS)


def test_module_prefixed_checkpoint_loads_like_the_original_loader(tmp_path):
    path = _save_original("agcn_kinetics_fanin", tmp_path / "dp-1-2.pt", prefix="module.")
    bb = create_backbone("agcn", path)  # layout guessed from the 18 joints of the file
    assert bb.layout.name == "openpose-18" and bb.num_person == 2
    loaded = bb.model.state_dict()
    for key, value in golden_state_dict("agcn_kinetics_fanin").items():
        assert torch.equal(loaded[key], value), key


def test_wrong_checkpoint_and_layout_give_one_line_errors(tmp_path):
    mm = _save_original("mmaction_agcn_coco2d", tmp_path / "mm.pth")
    with pytest.raises(UserError) as e:
        create_backbone("agcn", mm)
    msg = str(e.value)
    assert "\n" not in msg and str(mm) in msg and "not a 2s-AGCN checkpoint" in msg and "aagcn" in msg
    ki = _save_original("agcn_kinetics", tmp_path / "ki-0-0.pt")
    with pytest.raises(UserError) as e:
        create_backbone("agcn", ki, layout="ntu-25")
    msg = str(e.value)
    assert "\n" not in msg and str(ki) in msg and "wrong shape" in msg and "25 joints; the file has 18" in msg
    assert "--layout" in msg
    with pytest.raises(UserError, match="unknown skeleton layout 'body25'"):
        get_layout("body25")
    with pytest.raises(UserError, match=r"agcn input must be \(N, C, T, V=18, M\)"):
        create_backbone("agcn", ki).run(np.zeros((1, 3, 8, 25, 1), np.float32))


def test_backbone_cli_run_and_info(tmp_path):
    from typer.testing import CliRunner

    from migfuse.cli import app

    _, arrays = load_golden("mmaction_agcn_ntu3d_fanin")
    ckpt = _save_original("mmaction_agcn_ntu3d_fanin", tmp_path / "mm.pth")
    np.save(tmp_path / "x.npy", arrays["input"])
    runner = CliRunner()
    res = runner.invoke(app, ["backbone", "run", "aagcn", "--checkpoint", str(ckpt), "--layout", "nturgb+d",
                              "--input", str(tmp_path / "x.npy"), "--out", str(tmp_path / "y.npz"),
                              "--precision", "fp32"])
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / "y.npz") as z:
        assert np.allclose(z["backbone_features"], arrays["backbone_features"], atol=ATOL, rtol=RTOL)
        assert np.allclose(z["cls_scores"], arrays["cls_scores"], atol=ATOL, rtol=RTOL)
    res = runner.invoke(app, ["backbone", "info", "aagcn", "--checkpoint", str(ckpt), "--layout", "nturgb+d"])
    assert res.exit_code == 0, res.output
    assert "363 keys matched" in res.output and "nturgb+d (25 joints)" in res.output
    res = runner.invoke(app, ["backbone", "info", "agcn", "--checkpoint", str(ckpt)])
    assert res.exit_code == 2 and "is not a 2s-AGCN checkpoint" in res.output


def _older_release_file(path: Path, drop_counters: bool = True, renames: tuple = ()) -> Path:
    """The golden 2s-AGCN NTU weights as an older file: without BatchNorm counters (PyTorch < 0.4.1)
    and/or with older key names."""
    sd = golden_state_dict("agcn_ntu_fanin")
    out = {}
    for k, v in sd.items():
        if drop_counters and k.endswith("num_batches_tracked"):
            continue
        for old, new in renames:
            k = k.replace(old, new)
        out[k] = v
    torch.save(out, path)
    return path


@pytest.mark.parametrize("renames", [(), ((".down.", ".conv_res."),), (("l1.", "l1a."),)],
                         ids=["no-counters", "conv_res", "l1a"])
def test_files_of_older_2s_agcn_releases_load_and_give_the_golden_outputs(tmp_path, renames):
    """Counters missing (saved before PyTorch 0.4.1) are filled; the older names are mapped; the model
    then computes exactly what the original code computes on the golden input."""
    path = _older_release_file(tmp_path / "old-1-1.pt", renames=renames)
    bb = create_backbone("agcn", path, layout="ntu-25")
    notes = " ".join(bb.key_report.notes)
    assert "filled 26 BatchNorm num_batches_tracked counters" in notes
    assert ("renamed" in notes) == bool(renames)
    _, arrays = load_golden("agcn_ntu_fanin")
    out = bb.run(arrays["input"])
    np.testing.assert_allclose(out["logits"], arrays["logits"], atol=ATOL, rtol=RTOL)


def test_a_file_whose_names_differ_otherwise_is_not_blamed_on_the_layout(tmp_path):
    sd = golden_state_dict("agcn_ntu_fanin")
    sd = {k.replace("tcn1.conv.", "tcn1.convolution."): v for k, v in sd.items()}
    torch.save(sd, tmp_path / "odd-1-1.pt")
    with pytest.raises(UserError) as e:
        create_backbone("agcn", tmp_path / "odd-1-1.pt", layout="ntu-25")
    msg = str(e.value)
    assert "does not fit 2s-AGCN (lshiwjx/2s-AGCN model/agcn.py) for layout 'ntu-25'" in msg
    assert "tcn1.convolution" in msg and "--layout" not in msg
