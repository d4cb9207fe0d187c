"""MViTv2-S: golden outputs through migfuse's own loader, mmaction2 key mapping, checkpoint errors.

One model is built for the module (a build takes ~1 s, a forward on CPU ~2 s per clip).
"""
from __future__ import annotations

import re
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from golden import golden_state_dict, load_golden
from migfuse.errors import UserError
from migfuse.backbones.checkpoints import sha256_file
from migfuse.backbones.mvit import PREPROCESSING, preprocess
from migfuse.backbones.registry import create_backbone

TOL = dict(atol=1e-4, rtol=1e-4)


def save_with_hash_name(obj, folder: Path, stem: str) -> Path:
    """torch.save `obj` as `<stem>-<sha256[:8]>.pth`, the way torchvision and OpenMMLab name files."""
    tmp = folder / f"{stem}.tmp"
    torch.save(obj, tmp)
    final = folder / f"{stem}-{sha256_file(tmp)[:8]}.pth"
    tmp.rename(final)
    return final


# torchvision -> mmaction2 names, written from mmaction2's mvit.py / mvit_head.py independently of the
# loader's own rules (mmaction/models/backbones/mvit.py: PatchEmbed3D.projection, cls_token (1,1,C),
# attn.proj, attn.pool_x + attn.norm_x, mlp.fc1/fc2, block proj, norm3; heads/mvit_head.py: fc_cls).
_TO_MMACTION = [
    (r"^conv_proj\.", "backbone.patch_embed.projection."),
    (r"^pos_encoding\.class_token$", "backbone.cls_token"),
    (r"^blocks\.(\d+)\.attn\.project\.0\.", r"backbone.blocks.\1.attn.proj."),
    (r"^blocks\.(\d+)\.attn\.pool_([qkv])\.pool\.weight$", r"backbone.blocks.\1.attn.pool_\2.weight"),
    (r"^blocks\.(\d+)\.attn\.pool_([qkv])\.norm_act\.0\.", r"backbone.blocks.\1.attn.norm_\2."),
    (r"^blocks\.(\d+)\.mlp\.0\.", r"backbone.blocks.\1.mlp.fc1."),
    (r"^blocks\.(\d+)\.mlp\.3\.", r"backbone.blocks.\1.mlp.fc2."),
    (r"^blocks\.(\d+)\.project\.", r"backbone.blocks.\1.proj."),
    (r"^blocks\.", "backbone.blocks."),
    (r"^norm\.", "backbone.norm3."),
    (r"^head\.1\.", "cls_head.fc_cls."),
]


def to_mmaction(sd: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
    out = OrderedDict()
    for key, value in sd.items():
        for pattern, target in _TO_MMACTION:
            if re.match(pattern, key):
                key = re.sub(pattern, target, key)
                break
        out[key] = value.reshape(1, 1, -1) if key == "backbone.cls_token" else value
    return out


@pytest.fixture(scope="module")
def golden():
    meta, arrays = load_golden("mvit_v2_s")
    return golden_state_dict("mvit_v2_s"), arrays


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mvit")


@pytest.fixture(scope="module")
def tv_file(golden, folder) -> Path:
    return save_with_hash_name(golden[0], folder, "mvit_v2_s")


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("mvit_v2_s")


def assert_matches_golden(out, arrays):
    for name, ref in (("tokens", "norm_tokens"), ("logits", "logits")):
        diff = np.abs(out[name] - arrays[ref]).max()
        assert out[name].shape == arrays[ref].shape
        assert np.allclose(out[name], arrays[ref], **TOL), f"{name}: max abs diff {diff}"


def test_torchvision_checkpoint_reproduces_golden(backbone, golden, tv_file):
    report = backbone.load(tv_file)
    assert report.ok and len(report.matched) == 397
    assert backbone.checkpoint_sha256 == sha256_file(tv_file)
    out = backbone.run(golden[1]["input"])
    assert_matches_golden(out, golden[1])
    assert out["tokens"].dtype == np.float32


def test_sdpa_attention_reproduces_golden_and_the_torchvision_attention(golden, tv_file):
    """Extraction's attention path (`attention="sdpa"`) on the original checkpoint gives the golden
    outputs of torchvision's own model, and the same tokens as torchvision's attention to float rounding."""
    from migfuse.backbones.mvit import ATTENTIONS

    fast = create_backbone("mvit_v2_s", checkpoint=tv_file, attention="sdpa")
    assert sum(type(m).__name__ == "MultiscaleAttention" and "forward" in vars(m) for m in fast.model.modules()) == 16
    out = fast.run(golden[1]["input"])
    assert_matches_golden(out, golden[1])
    plain = create_backbone("mvit_v2_s", checkpoint=tv_file).run(golden[1]["input"])
    assert np.abs(out["tokens"] - plain["tokens"]).max() < 1e-4
    with pytest.raises(UserError, match="unknown MViTv2-S attention 'flash': choose torchvision or sdpa"):
        create_backbone("mvit_v2_s", attention="flash")
    assert ATTENTIONS == ("torchvision", "sdpa")


def test_sdpa_attention_survives_a_width_change_on_load(tmp_path):
    """A fine-tuned demo-width file rebuilds the model on load: the rebuilt one keeps the SDPA path."""
    from migfuse.backbones.mvit import FINETUNE_KIND, build_mvit

    torch.manual_seed(0)
    demo = build_mvit("demo", num_classes=32)
    path = tmp_path / "best.pt"
    torch.save({"meta": {"migfuse": {"kind": FINETUNE_KIND, "width": "demo"}}, "state_dict": demo.state_dict()}, path)
    bb = create_backbone("mvit_v2_s", checkpoint=path, attention="sdpa")
    assert bb.width == "demo"
    switched = [m for m in bb.model.modules() if type(m).__name__ == "MultiscaleAttention"]
    assert switched and all("forward" in vars(m) for m in switched)
    x = torch.randn(1, 3, 16, 224, 224)
    with torch.inference_mode():
        ref = build_mvit("demo", num_classes=32).eval()
        ref.load_state_dict(demo.state_dict())
        from migfuse.backbones.mvit import forward_tokens

        np.testing.assert_allclose(bb.tokens(x)[0].numpy(), forward_tokens(ref, x)[0].numpy(), atol=1e-5)


def test_mmaction_checkpoint_gives_the_same_model(backbone, golden, folder, tv_file):
    mm_sd = to_mmaction(golden[0])
    # the key names mmaction2's MViT(arch='small') defines for a dim-changing block, from its source
    assert {k for k in mm_sd if k.startswith("backbone.blocks.1.")} == {
        f"backbone.blocks.1.{k}" for k in [
            "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "proj.weight", "proj.bias",
            "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
            "attn.rel_pos_h", "attn.rel_pos_w", "attn.rel_pos_t",
            "attn.pool_q.weight", "attn.norm_q.weight", "attn.norm_q.bias",
            "attn.pool_k.weight", "attn.norm_k.weight", "attn.norm_k.bias",
            "attn.pool_v.weight", "attn.norm_v.weight", "attn.norm_v.bias",
            "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]}
    ckpt = {"meta": {"mmaction_version": "1.2.0", "epoch": 1}, "state_dict": mm_sd}
    mm_file = save_with_hash_name(ckpt, folder, "mvit-small-p244_16x4x1_kinetics400-rgb_20221021")
    # scramble the weights first so the check below proves the mmaction2 file set every one of them
    for p in backbone.model.parameters():
        torch.nn.init.zeros_(p)
    report = backbone.load(mm_file)
    assert report.ok and any("mmaction2" in n for n in report.notes)
    loaded = backbone.model.state_dict()
    # bit-identical weights in the same torchvision model give the golden outputs checked above
    # (a second 2 s forward would add nothing)
    assert loaded.keys() == golden[0].keys()
    for key, value in golden[0].items():
        assert torch.equal(loaded[key], value), key


def test_mmaction_ssv2_checkpoint_takes_its_head_size_from_the_file(backbone, golden, folder):
    mm_sd = to_mmaction(golden[0])
    g = torch.Generator().manual_seed(0)
    mm_sd["cls_head.fc_cls.weight"] = torch.randn(174, 768, generator=g) * 0.02
    mm_sd["cls_head.fc_cls.bias"] = torch.randn(174, generator=g) * 0.02
    path = folder / "mvit-small-p244_u16_sthv2-rgb.pth"
    torch.save({"meta": {}, "state_dict": mm_sd}, path)
    try:
        backbone.load(path)
        assert backbone.num_classes == 174
        # logits = head(class token after the final norm): check the head on the golden tokens
        cls = torch.from_numpy(golden[1]["norm_tokens"][:, 0])
        expected = cls.numpy() @ mm_sd["cls_head.fc_cls.weight"].numpy().T + mm_sd["cls_head.fc_cls.bias"].numpy()
        with torch.inference_mode():
            got = backbone.model.head(cls).numpy()
        assert got.shape == (1, 174)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    finally:
        backbone.load(save_with_hash_name(golden[0], folder, "restore"))
    assert backbone.num_classes == 400


def _one_line_error(backbone, path) -> str:
    with pytest.raises(UserError) as e:
        backbone.load(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_truncated_checkpoint_names_missing_keys(backbone, golden, folder):
    sd = OrderedDict((k, v) for k, v in golden[0].items() if not k.startswith("blocks.15."))
    path = folder / "truncated.pth"
    torch.save(sd, path)
    msg = _one_line_error(backbone, path)
    assert "not a torchvision mvit_v2_s checkpoint" in msg
    assert re.search(r"\d+ missing: blocks\.15\.", msg), msg


def test_renamed_key_is_reported_as_missing_and_unexpected(backbone, golden, folder):
    sd = OrderedDict(golden[0])
    sd["norm.gamma"] = sd.pop("norm.weight")
    path = folder / "renamed.pth"
    torch.save({"state_dict": sd}, path)
    msg = _one_line_error(backbone, path)
    assert "1 missing: norm.weight" in msg and "1 unexpected: norm.gamma" in msg


def test_mmaction_file_with_an_unknown_key_is_rejected(backbone, golden, folder):
    sd = to_mmaction(golden[0])
    sd["backbone.norm0.weight"] = torch.ones(96)
    sd["cls_head.fc_cls.weight"] = torch.zeros(174, 768)  # an SSv2 head: applied only if the file fits
    sd["cls_head.fc_cls.bias"] = torch.zeros(174)
    path = folder / "mm_extra.pth"
    torch.save({"meta": {}, "state_dict": sd}, path)
    msg = _one_line_error(backbone, path)
    assert "is not a mmaction2 MViTv2-S" in msg
    # the 174-way head fits (it is compared at the file's size); only the unknown key is reported
    assert msg.endswith("checkpoint: 397 keys matched; 1 unexpected: backbone.norm0.weight"), msg
    assert backbone.num_classes == 400


def test_wrong_hash_prefix_in_file_name(backbone, tv_file, folder):
    bad = folder / "mvit_v2_s-deadbeef.pth"
    shutil.copy(tv_file, bad)
    msg = _one_line_error(backbone, bad)
    assert f"its name says sha256 starts with deadbeef but the file's sha256 starts with {sha256_file(bad)[:8]}" in msg
    assert "download it again" in msg
    assert "checkpoint not found" in _one_line_error(backbone, folder / "absent-deadbeef.pth")


def test_wrapped_and_module_prefixed_state_dict_loads(backbone, golden, folder):
    path = folder / "wrapped.pth"
    torch.save({"model": OrderedDict((f"module.{k}", v) for k, v in golden[0].items()), "epoch": 3}, path)
    report = backbone.load(path)
    assert report.ok and len(report.matched) == 397
    assert torch.equal(backbone.model.state_dict()["norm.weight"], golden[0]["norm.weight"])


def test_run_rejects_a_wrong_input_shape(backbone):
    with pytest.raises(UserError, match=r"\(1, 3, 8, 224, 224\); expected \(N, 3, 16, 224, 224\) float32"):
        backbone.run(np.zeros((1, 3, 8, 224, 224), np.float32))


def test_preprocess_resizes_crops_and_normalises():
    frames = np.full((16, 240, 320, 3), 115, np.uint8)
    frames[:, :, 150:170] = 255  # a vertical band around the centre column (160)
    x = preprocess(frames)
    assert x.shape == (3, 16, 224, 224) and x.dtype == np.float32
    background = (115 / 255 - 0.45) / 0.225
    white = (1 - 0.45) / 0.225
    # resize 240x320 -> 256x341, centre crop from column 58: the band spans 160..181 scaled, 102..123 cropped
    np.testing.assert_allclose(x[:, :, :, 0], background, atol=1e-5)
    np.testing.assert_allclose(x[:, :, :, 112], white, atol=1e-5)
    assert PREPROCESSING["mean"] == [0.45] * 3 and PREPROCESSING["std"] == [0.225] * 3
    with pytest.raises(ValueError, match="uint8"):
        preprocess(frames.astype(np.float32))
