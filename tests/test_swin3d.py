"""Video Swin (swin3d_*, mmaction_swin3d_*): mmaction2's golden outputs, torchvision's own forward, the
architecture read from the file, and one-line errors for files that do not fit.

The golden forward (16x224x224 Swin-T) takes ~2 s on one CPU thread; every other model here is small.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from golden import golden_state_dict, load_golden
from shared_paths import GOLDEN
from migfuse.backbones._torchvision import import_torchvision
from migfuse.backbones.registry import create_backbone, list_backbones
from migfuse.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOL = dict(atol=1e-4, rtol=1e-4)

# mmaction2 1.x SwinTransformer3D + I3DHead names -> torchvision SwinTransformer3d names, written from
# mmaction/models/backbones/swin.py and torchvision/models/video/swin_transformer.py independently of the
# loader's rules: stage i is features.2i, its PatchMerging features.2i+1; Mlp fc1/fc2 are MLP's 0 and 3.
_TO_TORCHVISION = [
    (r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.", lambda m: f"features.{2 * int(m[1])}.{m[2]}.mlp.0."),
    (r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.", lambda m: f"features.{2 * int(m[1])}.{m[2]}.mlp.3."),
    (r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.", lambda m: f"features.{2 * int(m[1])}.{m[2]}."),
    (r"^backbone\.layers\.(\d+)\.downsample\.", lambda m: f"features.{2 * int(m[1]) + 1}."),
    (r"^backbone\.patch_embed\.", lambda m: "patch_embed."),
    (r"^backbone\.norm3\.", lambda m: "norm."),
    (r"^cls_head\.fc_cls\.", lambda m: "head."),
]


def to_torchvision(sd):
    out = OrderedDict()
    for key, value in sd.items():
        for pattern, target in _TO_TORCHVISION:
            if re.match(pattern, key):
                key = re.sub(pattern, target, key, count=1)
                break
        out[key] = value
    return out


def _mm_keys(tv_sd) -> list[str]:
    """mmaction2 names of a torchvision state dict, by the rules above read backwards (for small models)."""
    out = []
    for key in tv_sd:
        m = re.match(r"^features\.(\d+)\.(.*)$", key)
        if m and int(m[1]) % 2 == 0:
            block, rest = m[2].split(".", 1)
            rest = rest.replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
            out.append(f"backbone.layers.{int(m[1]) // 2}.blocks.{block}.{rest}")
        elif m:
            out.append(f"backbone.layers.{int(m[1]) // 2}.downsample.{m[2]}")
        elif key.startswith("head."):
            out.append("cls_head.fc_cls." + key[len("head."):])
        else:  # patch_embed.*, and the final norm as the 0.x release names it (1.x: norm3)
            out.append("backbone." + key)
    return out


def golden_names() -> list[str]:
    """Every mmaction2 Video Swin golden set in the shared folder (more may be added with other sizes,
    windows and patch sizes; each is checked the same way)."""
    return sorted(p.stem for p in GOLDEN.glob("mmaction_swin3d*.json")) or ["mmaction_swin3d_t"]


def backbone_for(meta: dict) -> str:
    """The registered name for a golden set's mmaction2 `arch` (a custom arch loads under any name)."""
    backbone = meta["constructor"].get("backbone_resolved") or meta["constructor"]["model_cfg"]["backbone"]
    size = {"tiny": "t", "small": "s", "base": "b"}.get(backbone.get("arch") if isinstance(backbone.get("arch"), str)
                                                         else None, "t")
    return f"mmaction_swin3d_{size}"


def mmaction_golden_file(name: str, folder: Path) -> tuple[Path, dict, dict]:
    """The golden set's state dict saved as mmengine does ({'meta', 'state_dict'}); (path, meta, arrays).
    Derived entries the npz does not hold are left out: the loader computes them."""
    meta, arrays = load_golden(name)
    sd = OrderedDict((k, v) for k, v in golden_state_dict(name).items() if v is not None)
    path = folder / f"{name}.pth"
    torch.save({"meta": {"epoch": 30, "mmengine_version": "0.10.7"}, "state_dict": sd}, path)
    return path, meta, arrays


def assert_matches_golden(out, arrays):
    features = out["tokens"].transpose(0, 4, 1, 2, 3)  # (N, T', H', W', C) -> mmaction's (N, C, T', H', W')
    np.testing.assert_allclose(features, arrays["backbone_features"], **TOL)
    np.testing.assert_allclose(out["pooled"], arrays["pooled"], **TOL)
    np.testing.assert_allclose(out["logits"], arrays["cls_scores"], **TOL)


def test_the_six_names_are_registered_video_and_context_backbones():
    for name in ("swin3d_t", "swin3d_s", "swin3d_b", "mmaction_swin3d_t", "mmaction_swin3d_s", "mmaction_swin3d_b"):
        assert name in list_backbones("video") and name in list_backbones("context")


@pytest.mark.parametrize("name", golden_names())
def test_mmaction_recognizer_checkpoint_reproduces_mmaction2_golden(name, tmp_path):
    path, meta, arrays = mmaction_golden_file(name, tmp_path)
    bb = create_backbone(backbone_for(meta), path)
    assert bb.key_report.ok and len(bb.key_report.matched) == len(meta["keys"])
    assert_matches_golden(bb.run(arrays["input"]), arrays)


def test_the_same_weights_in_torchvision_layout_load_identically(tmp_path):
    path, meta, arrays = mmaction_golden_file("mmaction_swin3d_t", tmp_path)
    mm = create_backbone("mmaction_swin3d_t", path)
    assert mm.token_shape == (16 * 7 * 7, 768)  # the recipe's 32 frames
    tv_path = tmp_path / "swin3d_t.pth"
    torch.save(to_torchvision(torch.load(path)["state_dict"]), tv_path)
    tv = create_backbone("swin3d_t", tv_path)
    assert tv.key_report.ok and tv.key_report.notes == []
    for key, value in mm.model.state_dict().items():
        assert torch.equal(value, tv.model.state_dict()[key]), key
    # the extraction hook gives `run`'s tokens, flattened in (t, h, w) order
    x = arrays["input"][:, :, :4, :64, :96]
    with torch.inference_mode():
        tokens = tv.clip_tokens(torch.from_numpy(np.ascontiguousarray(x)))
    np.testing.assert_array_equal(tokens.numpy(), tv.run(x)["tokens"].reshape(1, -1, 768))


def test_a_torchvision_file_gives_torchvisions_own_forward(tmp_path):
    tv = import_torchvision()
    torch.manual_seed(5)
    ref = tv.models.video.swin3d_t(num_classes=7).eval()
    path = tmp_path / "swin3d_t_k7.pth"
    torch.save(ref.state_dict(), path)
    bb = create_backbone("swin3d_t", path)
    assert bb.num_parameters() == sum(p.numel() for p in ref.parameters())
    x = torch.randn(2, 3, 6, 40, 56, generator=torch.Generator().manual_seed(1))  # pads time and space
    out = bb.run(x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(out["logits"], ref(x).numpy(), rtol=1e-5, atol=1e-5)
    assert out["tokens"].shape == (2, 3, 2, 2, 768) and out["logits"].shape == (2, 7)


def small_torchvision_swin(window=(2, 4, 4), patch=(1, 2, 2)):
    """A torchvision SwinTransformer3d of another window, patch, width and depth than any published one."""
    SwinTransformer3d = import_torchvision().models.video.swin_transformer.SwinTransformer3d
    torch.manual_seed(2)
    return SwinTransformer3d(patch_size=list(patch), embed_dim=16, depths=[1, 2, 1], num_heads=[1, 2, 4],
                             window_size=list(window), mlp_ratio=2.0, num_classes=5).eval()


@pytest.mark.parametrize("window", [(2, 4, 4), (3, 2, 5)])
def test_the_architecture_is_read_from_the_file_in_both_layouts(tmp_path, window):
    ref = small_torchvision_swin(window)
    x = torch.randn(1, 3, 8, 48, 40, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = ref(x).numpy()
    sd = ref.state_dict()
    torch.save(sd, tmp_path / "tv.pth")
    # mmaction2 layout with DDP's module. prefix, without the position-index buffers (recomputed): the
    # window then comes from the config text mmengine stores in meta["cfg"]
    mm = OrderedDict(("module." + k, v) for k, v in zip(_mm_keys(sd), sd.values())
                     if not k.endswith("relative_position_index"))
    cfg = f"model = dict(backbone=dict(type='SwinTransformer3D', window_size={window}, patch_size=(1, 2, 2)))"
    torch.save({"meta": {"cfg": cfg}, "state_dict": mm}, tmp_path / "mm.pth")
    for name, file in [("swin3d_t", "tv.pth"), ("mmaction_swin3d_t", "mm.pth")]:
        bb = create_backbone(name, tmp_path / file)
        assert bb.arch.window_size == window and bb.arch.patch_size == (1, 2, 2)
        assert bb.arch.depths == (1, 2, 1) and bb.arch.num_heads == (1, 2, 4) and bb.arch.mlp_ratio == 2.0
        assert any("not a published Swin size" in n for n in bb.key_report.notes)
        np.testing.assert_allclose(bb.run(x.numpy())["logits"], want, rtol=1e-5, atol=1e-5)
    assert any("computed 4 relative_position_index" in n for n in bb.key_report.notes)


def test_mmaction_variants_without_patch_norm_or_qkv_bias_load(tmp_path):
    ref = small_torchvision_swin()
    ref.patch_embed.norm = torch.nn.Identity()
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("attn.qkv.bias")}
    for k in [k for k in ref.state_dict() if k.endswith("attn.qkv.bias")]:
        ref.get_submodule(k[:-len(".bias")]).bias.data.zero_()  # no bias = a zero bias
    torch.save({"meta": {}, "state_dict": dict(zip(_mm_keys(sd), sd.values()))}, tmp_path / "mm.pth")
    bb = create_backbone("mmaction_swin3d_t", tmp_path / "mm.pth")
    assert not bb.arch.patch_norm and not bb.arch.qkv_bias and "no patch norm, no qkv bias" in bb.arch.describe()
    x = torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        np.testing.assert_allclose(bb.run(x.numpy())["logits"], ref(x).numpy(), rtol=1e-5, atol=1e-5)


def test_a_window_the_file_does_not_tell_is_refused(tmp_path):
    sd = {k: v for k, v in small_torchvision_swin((3, 2, 5)).state_dict().items()
          if not k.endswith("relative_position_index")}
    torch.save(sd, tmp_path / "noindex.pth")  # 135 table rows: (8, 2, 2) and (3, 2, 5) both fit
    with pytest.raises(UserError, match="the window size cannot be told from a 135-row position bias table"):
        create_backbone("swin3d_t", tmp_path / "noindex.pth")


def test_a_file_without_a_head_gives_tokens_and_pooled_only(tmp_path):
    ref = small_torchvision_swin()
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("head.")}
    torch.save(sd, tmp_path / "nohead.pth")
    bb = create_backbone("swin3d_t", tmp_path / "nohead.pth")
    out = bb.run(np.zeros((1, 3, 4, 16, 16), np.float32))
    assert set(out) == {"tokens", "pooled"} and out["pooled"].shape == (1, 64)


def fake_published(size_embed: int, depths, heads) -> dict:
    """The keys that define a Video Swin's size, with tiny placeholder tensors elsewhere."""
    sd = {"patch_embed.proj.weight": torch.zeros(size_embed, 3, 2, 4, 4)}
    for s, (d, h) in enumerate(zip(depths, heads)):
        for b in range(d):
            sd[f"features.{2 * s}.{b}.attn.qkv.weight"] = torch.zeros(1)
            sd[f"features.{2 * s}.{b}.attn.relative_position_bias_table"] = torch.zeros(15 * 13 * 13, h)
    return sd


def test_a_file_of_another_published_size_names_the_right_backbone(tmp_path):
    torch.save(fake_published(128, (2, 2, 18, 2), (4, 8, 16, 32)), tmp_path / "swin3d_b.pth")
    with pytest.raises(UserError) as e:
        create_backbone("swin3d_t", tmp_path / "swin3d_b.pth")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path / 'swin3d_b.pth'} is a Swin-B checkpoint")
    assert msg.endswith("not the Swin-T of swin3d_t: use backbone swin3d_b")
    with pytest.raises(UserError, match="use backbone mmaction_swin3d_b$"):
        create_backbone("mmaction_swin3d_t", tmp_path / "swin3d_b.pth")


def test_a_file_of_another_architecture_is_refused_naming_keys_and_closest_layout(tmp_path):
    mvit_like = {"conv_proj.weight": torch.zeros(96, 3, 3, 7, 7), "pos_encoding.class_token": torch.zeros(96),
                 "blocks.0.attn.qkv.weight": torch.zeros(288, 96), "norm.weight": torch.zeros(768)}
    torch.save(mvit_like, tmp_path / "mvit.pth")
    with pytest.raises(UserError) as e:
        create_backbone("swin3d_t", tmp_path / "mvit.pth")
    assert str(e.value) == (
        f"{tmp_path / 'mvit.pth'} is not a Video Swin checkpoint (no 5-D patch_embed.proj.weight): first unmatched "
        "keys conv_proj.weight, pos_encoding.class_token, blocks.0.attn.qkv.weight; closest known layout: "
        "torchvision swin3d_t/s/b state dict (patch_embed.proj, features.N.M.attn.qkv, norm, head), 1 of its 185 "
        "keys present")


def test_a_broken_mmaction_file_names_the_closest_layout_mmaction(tmp_path):
    sd = golden_state_dict("mmaction_swin3d_t")
    broken = OrderedDict((k.replace("backbone.patch_embed.proj", "backbone.stem.conv"), v) for k, v in sd.items())
    torch.save({"meta": {}, "state_dict": broken}, tmp_path / "renamed.pth")
    with pytest.raises(UserError) as e:
        create_backbone("mmaction_swin3d_t", tmp_path / "renamed.pth")
    msg = str(e.value)
    assert "first unmatched keys backbone.stem.conv.bias, backbone.stem.conv.weight;" in msg
    assert "closest known layout: mmaction2 Video Swin recognizer" in msg and "183 of its 185 keys present" in msg


def test_a_file_that_holds_no_state_dict_is_refused(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(UserError, match=r"list\.pth is not a Video Swin checkpoint: it holds a list, not a state "
                                        r"dict$"):
        create_backbone("swin3d_t", tmp_path / "list.pth")


def test_a_file_with_a_wrong_shape_names_the_key(tmp_path):
    ref = small_torchvision_swin()
    sd = ref.state_dict()
    sd["features.2.1.mlp.0.weight"] = torch.zeros(7, 32)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"1 wrong shape: features\.2\.1\.mlp\.0\.weight: file \(7, 32\) vs model "
                                        r"\(64, 32\)$"):
        create_backbone("swin3d_t", tmp_path / "bad.pth")


# -- the commands: backbone info / run, extract video ---------------------------------------------
def invoke(*args):
    from typer.testing import CliRunner

    from migfuse.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_backbone_info_shows_the_size_and_the_recipe_of_the_name():
    r = invoke("backbone", "info", "swin3d_t")
    assert r.exit_code == 0, r.output
    assert "parameters:  28,158,070" in r.stdout  # torchvision's Swin3D_T_Weights num_params
    assert "extracts:    video, context" in r.stdout and "preprocess:  clip_len = 32" in r.stdout
    assert "preprocess:  resize_short_side = 256" in r.stdout
    r = invoke("backbone", "info", "mmaction_swin3d_t")
    assert "preprocess:  resize_short_side = 224" in r.stdout


def test_backbone_info_refuses_another_architecture_in_one_line(tmp_path):
    torch.save({"conv_proj.weight": torch.zeros(96, 3, 3, 7, 7)}, tmp_path / "mvit.pth")
    r = invoke("backbone", "info", "swin3d_t", "--checkpoint", tmp_path / "mvit.pth")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.output
    assert "mvit.pth is not a Video Swin checkpoint" in r.stderr and "first unmatched keys conv_proj.weight" in r.stderr


def test_backbone_run_writes_tokens_pooled_and_logits(tmp_path):
    from migfuse.backbones.registry import create_seeded

    x = np.random.default_rng(0).standard_normal((2, 3, 4, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = invoke("backbone", "run", "mmaction_swin3d_t", "--input", tmp_path / "x.npy", "--out", tmp_path / "y.npz",
               "--precision", "fp32", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "tokens (2, 2, 1, 1, 768), pooled (2, 768), logits (2, 400)" in r.stdout
    want = create_seeded("mmaction_swin3d_t", warn=False).run(x)
    with np.load(tmp_path / "y.npz") as z:
        for name in ("tokens", "pooled", "logits"):
            np.testing.assert_allclose(z[name], want[name], rtol=1e-5, atol=1e-5)
    np.save(tmp_path / "gray.npy", x[:, :1])
    r = invoke("backbone", "run", "swin3d_t", "--input", tmp_path / "gray.npy", "--out", tmp_path / "z.npz")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "expects (N, 3, T, H, W)" in r.stderr
    assert not (tmp_path / "z.npz").exists()


def test_extract_video_stores_the_last_stage_tokens_of_32_frame_clips(tmp_path):
    from test_extract_video_util import make_dataset

    from migfuse.data_cache.store import TokenCache
    from migfuse.datasets.manifest import Manifest
    from migfuse.extract.interface import WorkItem
    from migfuse.extract.video import build_extractor

    prepared = make_dataset(tmp_path, good={"0001": (40, [(0, 30)])})
    cache = tmp_path / "c.zarr"
    r = invoke("extract", "video", "--data", prepared, "--cache", cache, "--backbone", "swin3d_t",
               "--workers", "0", "--batch-size", "1", "--precision", "fp32")
    assert r.exit_code == 1 and "1 written now" in r.stdout  # the dataset's bad clips fail
    g = TokenCache(cache).group("video/swin3d_t")
    tokens = g.read("0001_0")["tokens"]
    assert tokens.shape == (16 * 7 * 7, 768) and tokens.dtype == np.float16
    assert g.provenance["sampling"]["frames"] == 32 and g.provenance["preprocessing"]["resize_short_side"] == 256
    assert g.provenance["weights"].startswith("RANDOM") and "(t, h, w) order" in g.provenance["tokens"]
    assert g.provenance["architecture"]["window_size"] == [8, 7, 7] and g.provenance["architecture"]["embed_dim"] == 96
    assert g.provenance["token_layout"] == {"class_token": False, "grid": [16, 7, 7]}
    # the default video view pools one token per time step (no class token to keep)
    from migfuse.data_cache.views import make_view

    view = make_view(cache, "swin_time", "video/swin3d_t", "video_time")
    assert view.provenance["pooling"] == {"name": "video_time", "class_token": False, "grid": 49}
    pooled = view.read("0001_0")["tokens"].astype(np.float32)
    per_step = tokens.astype(np.float32).reshape(16, 49, 768).mean(1)
    assert pooled.shape == (16, 768)
    np.testing.assert_allclose(pooled, per_step, rtol=2e-3, atol=2e-3)
    # the stored tokens are the model's on the frames the loader serves, normalised with the recipe
    ex = build_extractor(Manifest.load(prepared), "video", backbone="swin3d_t")  # the recipe's 32 frames
    frames = next(iter(ex.loader()(WorkItem("0001", ("0001_0",))))).inputs["frames"]
    assert frames.shape == (1, 32, 224, 224, 3)
    x = torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float() / 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1, 1) for v in ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    with torch.inference_mode():
        want = ex.backbone.clip_tokens((x - mean) / std)[0].numpy()
    np.testing.assert_allclose(tokens.astype(np.float32), want, rtol=2e-2, atol=2e-2)


def test_extract_context_stores_windows_of_swin_tokens(tmp_path):
    from test_extract_video_util import make_dataset

    from migfuse.data_cache.store import TokenCache

    prepared = make_dataset(tmp_path, good={"0001": (40, [(0, 30)])})
    cache = tmp_path / "c.zarr"
    r = invoke("extract", "context", "--data", prepared, "--cache", cache, "--backbone", "mmaction_swin3d_t",
               "--context-windows", "1", "--workers", "0", "--batch-size", "1", "--precision", "fp32")
    assert "1 written now" in r.stdout, r.output
    g = TokenCache(cache).group("context/mmaction_swin3d_t")
    row = g.read("0001")
    assert row["tokens"].shape == (1, 784, 768) and row["valid"].tolist() == [True]
    assert np.isfinite(row["tokens"]).all() and row["tokens"].astype(np.float32).std() > 0.1
    assert g.provenance["sampling"]["frames"] == 32 and g.provenance["preprocessing"]["resize_short_side"] == 224
