"""`migfuse backbone train video --backbone NAME` beyond MViTv2-S: Video Swin, VideoMAE, V-JEPA 2.

Tiny models (a 2-stage Swin with 16x16 patches; one-layer VideoMAE / V-JEPA 2 folders at 32x32) keep
each run to a second or two on the CPU; the code paths (recipe input, optimiser groups, run folder,
best.pt, the loaders of `extract video` and `backbone info`) are the real models'.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from test_video_train_util import make_colour_dataset
from migfuse.backbones._torchvision import import_torchvision
from migfuse.backbones.checkpoints import sha256_file
from migfuse.backbones.swin3d import forward_features
from migfuse.backbones.video_input import normalise_clips
from migfuse.checkpoint_file import folder_sha256
from migfuse.cli import app
from migfuse.datasets.manifest import Manifest
from migfuse.errors import UserError
from migfuse.finetune import video as vt
from migfuse.finetune import video_data as vd
from migfuse.finetune.video_models import video_family

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]
FAST = ["workers=0", "drop_path=0", "head_dropout=0", "label_smoothing=0", "warmup_epochs=0.5", "lr=3e-3",
        "color_jitter=0.1", "epochs=1", "batch_size=2", "target_batch=2"]


def tiny_swin() -> torch.nn.Module:
    """torchvision SwinTransformer3d with 16x16 patches, 2 stages: the recipe's 32x224x224 clip is a
    16x14x14 then 16x7x7 token grid, cheap on the CPU (the published patch is 4x4)."""
    SwinTransformer3d = import_torchvision().models.video.swin_transformer.SwinTransformer3d
    torch.manual_seed(1)
    return SwinTransformer3d(patch_size=[2, 16, 16], embed_dim=16, depths=[1, 2], num_heads=[1, 2],
                             window_size=[4, 7, 7], mlp_ratio=2.0, num_classes=400).eval()


def hf_folders(root: Path) -> dict[str, Path]:
    """Tiny VideoMAE (encoder) and V-JEPA 2 (encoder + predictor) folders: 4 frames at 32x32."""
    from migfuse.backbones.hf_video import import_transformers

    tf = import_transformers()
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=16, tubelet_size=2)
    torch.manual_seed(0)
    videomae = tf.VideoMAEModel(tf.VideoMAEConfig(**tiny, intermediate_size=64, image_size=32, num_frames=4))
    vjepa2 = tf.VJEPA2Model(tf.VJEPA2Config(**tiny, crop_size=32, frames_per_clip=4, pred_hidden_size=16,
                                            pred_num_hidden_layers=1, pred_num_attention_heads=2))
    processors = {"videomae": ("preprocessor_config.json", {"size": {"shortest_edge": 40}, "crop_size": 32}),
                  "vjepa2": ("video_preprocessor_config.json", {"crop_size": 32})}
    out = {}
    for name, model in (("videomae", videomae), ("vjepa2", vjepa2)):
        model.save_pretrained(root / name)
        file, processor = processors[name]
        (root / name / file).write_text(json.dumps(processor))
        (root / name / "README.md").write_text(f"---\nlicense: {'cc-by-nc-4.0' if name == 'videomae' else 'mit'}\n"
                                                "---\n")
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """Base weights per backbone: a torchvision-layout tiny Swin file and the two HF folders."""
    root = tmp_path_factory.mktemp("bases")
    torch.save(tiny_swin().state_dict(), root / "swin_tiny.pth")
    found = {"swin3d_t": root / "swin_tiny.pth"}
    if _has_transformers():
        found.update(hf_folders(root))
    return found


def _has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """4 training clips (2 videos) and 2 validation clips of the colour classes."""
    return make_colour_dataset(tmp_path_factory.mktemp("data"), videos=3, clips_per_video=2, val_videos=1)


@pytest.fixture(scope="module")
def runs(prepared, bases, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """One 1-epoch run per backbone (trained once, read by several tests)."""
    root = tmp_path_factory.mktemp("runs")
    return {name: (root / name, vt.fine_tune_video(prepared, root / name, base, backbone=name, sets=FAST))
            for name, base in bases.items()}


NAMES = ["swin3d_t", pytest.param("videomae", marks=pytest.mark.skipif(not _has_transformers(), reason="vit extra")),
         pytest.param("vjepa2", marks=pytest.mark.skipif(not _has_transformers(), reason="vit extra"))]


def _base_sha(path: Path) -> str:
    return folder_sha256(path) if path.is_dir() else sha256_file(path)


@pytest.mark.parametrize("name", NAMES)
def test_best_pt_records_the_backbone_its_base_and_the_recipe_it_trained_on(runs, bases, name):
    from migfuse.backbones.registry import backbone_class

    run, summary = runs[name]
    assert [h["epoch"] for h in summary["history"]] == [1] and (summary["n_train"], summary["n_validation"]) == (4, 2)
    meta = torch.load(run / "best.pt", weights_only=True)["meta"]["migfuse"]
    assert meta["kind"] == f"{name} fine-tuned" and meta["backbone"] == name and meta["num_classes"] == 32
    assert meta["base_checkpoint"] == str(bases[name]) and meta["base_checkpoint_sha256"] == _base_sha(bases[name])
    assert meta["preprocessing"] == json.loads(json.dumps(backbone_class(name).recipe(bases[name])))
    assert meta["sampling"]["frames"] == meta["preprocessing"]["clip_len"] == (32 if name == "swin3d_t" else 4)
    assert json.loads((run / "config.json").read_text())["frames"] == meta["sampling"]["frames"]


@pytest.mark.parametrize("name", NAMES)
def test_extract_video_with_the_fine_tuned_file_stores_the_trained_models_tokens(runs, bases, prepared, name,
                                                                                  tmp_path):
    from migfuse.data_cache.store import TokenCache
    from migfuse.extract.entry import extract
    from migfuse.extract.interface import RunOptions

    run, _ = runs[name]
    manifest = Manifest.load(prepared)
    clips = [c.clip_id for c in manifest.clips if c.video_id == "0003"]
    cache = tmp_path / "c.zarr"
    assert extract("video", prepared, cache, options=RunOptions(workers=0), checkpoint=run / "best.pt",
                   backbone=name, row_ids=clips).ok
    group = TokenCache(cache).group(f"video/{name}")
    tokens = group.read_many(clips)["tokens"].astype(np.float32)
    fine = group.provenance["fine_tuned"]
    assert fine["backbone"] == name and fine["base_checkpoint_sha256"] == _base_sha(bases[name])
    assert fine["run_id"].startswith(str(run.resolve())) and group.provenance["checkpoint_sha256"] == sha256_file(
        run / "best.pt")
    # the trained weights (best.pt's state dict in the trainer's own module) on the validation input
    family = video_family(name)
    weights, _ = family.build(vt.resolve(sets=FAST, backbone=name, checkpoint=bases[name]), bases[name])
    weights.load_state_dict(torch.load(run / "best.pt", weights_only=True)["state_dict"])
    pre = family.preprocessing
    ds = vd.VideoClipDataset(manifest, clips, pre["clip_len"], pre)
    x = normalise_clips(torch.from_numpy(np.stack([ds[i][0] for i in range(len(clips))])), pre["mean"], pre["std"])
    with torch.no_grad():
        weights.eval()
        want = (forward_features(weights, x)[0].flatten(1, 3) if name == "swin3d_t"
                else weights.hidden_state(x.permute(0, 2, 1, 3, 4)))
    assert tokens.shape == tuple(want.shape)
    np.testing.assert_allclose(tokens, want.numpy(), rtol=2e-3, atol=2e-3)
    base, _ = family.build(vt.resolve(sets=FAST, backbone=name, checkpoint=bases[name]), bases[name])
    with torch.no_grad():  # the trained weights, not the base's
        base.eval()
        before = (forward_features(base, x)[0].flatten(1, 3) if name == "swin3d_t"
                  else base.hidden_state(x.permute(0, 2, 1, 3, 4)))
    assert np.abs(tokens - before.numpy()).max() > 1e-2


@pytest.mark.parametrize("name", NAMES)
def test_backbone_info_reads_the_fine_tuned_file_and_another_backbone_name_is_refused(runs, name):
    run, _ = runs[name]
    r = CliRunner().invoke(app, ["backbone", "info", name, "--checkpoint", str(run / "best.pt")])
    assert r.exit_code == 0, r.output
    assert "keys:" in r.stdout and "preprocess:  clip_len" in r.stdout
    top1 = torch.load(run / "best.pt", weights_only=True)["meta"]["migfuse"]["val_top1"]
    assert f"fine-tuned:  run {run.resolve()}@" in r.stdout and f"epoch 1, val top-1 {top1:.4f}" in r.stdout
    other = {"swin3d_t": "mmaction_swin3d_t", "videomae": "vjepa2", "vjepa2": "videomae"}[name]
    r = CliRunner().invoke(app, ["backbone", "info", other, "--checkpoint", str(run / "best.pt")])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.output, r.output
    assert f"was fine-tuned as {name}" in r.stderr and f"use --backbone {name}" in r.stderr


def test_a_swin_run_resumes_and_refuses_another_backbone_in_its_folder(runs, bases, prepared):
    run, _ = runs["swin3d_t"]
    again = vt.fine_tune_video(prepared, run, bases["swin3d_t"], backbone="swin3d_t", sets=FAST)
    assert again["epochs_run"] == 0 and [h["epoch"] for h in again["history"]] == [1]
    with pytest.raises(UserError, match="holds a run with other inputs"):
        vt.fine_tune_video(prepared, run, bases["swin3d_t"], backbone="mmaction_swin3d_t", sets=FAST)


def test_swin_layer_decay_groups_cover_every_parameter_once_by_stage_and_block():
    model = tiny_swin()
    model.head = torch.nn.Linear(32, 32)
    groups = vt.param_groups(model, lr=1.0, layer_decay=0.5, weight_decay=0.05, family=video_family("swin3d_t"))
    names = [n for g in groups for n in g["names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters()) and len(names) == len(set(names))
    lr = {n: g["lr"] for g in groups for n in g["names"]}
    wd = {n: g["weight_decay"] for g in groups for n in g["names"]}
    # 3 blocks: patch_embed 0, features.0.0 -> 1, merging features.1 -> 1, features.2.0 -> 2, .1 -> 3, head 4
    assert lr["head.weight"] == lr["norm.weight"] == 1.0
    assert lr["features.2.1.attn.qkv.weight"] == 0.5 and lr["features.2.0.mlp.0.weight"] == 0.25
    assert lr["features.1.reduction.weight"] == lr["features.0.0.attn.qkv.weight"] == 0.5 ** 3
    assert lr["patch_embed.proj.weight"] == 0.5 ** 4
    assert wd["features.0.0.attn.relative_position_bias_table"] == 0.0 == wd["features.2.1.norm1.weight"]
    assert wd["features.2.1.attn.qkv.weight"] == 0.05 == wd["head.weight"]


@pytest.mark.skipif(not _has_transformers(), reason="vit extra")
@pytest.mark.parametrize("name", ["videomae", "vjepa2"])
def test_vit_layer_decay_groups_cover_every_trainable_parameter_once_by_encoder_layer(bases, name):
    family = video_family(name)
    weights, _ = family.build(vt.resolve(sets=FAST, backbone=name, checkpoint=bases[name]), bases[name])
    groups = vt.param_groups(weights, lr=1.0, layer_decay=0.5, weight_decay=0.05, family=family)
    names = [n for g in groups for n in g["names"]]
    trainable = [n for n, p in weights.named_parameters() if p.requires_grad]
    assert sorted(names) == sorted(trainable) and len(names) == len(set(names))
    frozen = [n for n, p in weights.named_parameters() if not p.requires_grad]
    assert all(n.startswith("model.predictor.") for n in frozen) and bool(frozen) == (name == "vjepa2")
    lr = {n: g["lr"] for g in groups for n in g["names"]}
    prefix = "model.encoder." if name == "vjepa2" else "model."
    assert lr["head.1.weight"] == lr["head.0.weight"] == 1.0  # 2 layers: the head is depth 3
    assert {lr[n] for n in names if n.startswith("model.encoder.layer.1.")} == {0.5}
    assert {lr[n] for n in names if n.startswith("model.encoder.layer.0.")} == {0.25}
    assert {lr[n] for n in names if n.startswith(prefix + "embeddings.")} == {0.125}
    assert len(names) == sum(1 for n in names if n.startswith(("head.", prefix + "embeddings.",
                                                               "model.encoder.layer.", prefix + "layernorm.")))
    wd = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert wd["head.1.weight"] == 0.05 and wd["head.1.bias"] == 0.0


def test_a_backbone_that_cannot_be_trained_is_one_line_naming_the_trainable_ones(tmp_path):
    r = CliRunner().invoke(app, ["backbone", "train", "video", "--data", str(tmp_path), "--backbone", "agcn"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.output, r.output
    assert "--backbone agcn cannot be fine-tuned by `backbone train video`: choose one of mvit_v2_s, swin3d_t" \
        in r.stderr and "videomae, vjepa2" in r.stderr
    with pytest.raises(UserError, match="--backbone nonesuch is no backbone: choose one of mvit_v2_s"):
        vt.fine_tune_video(tmp_path, tmp_path / "run", backbone="nonesuch")
    assert not (tmp_path / "run").exists()


def test_settings_a_swin_cannot_take_are_refused(tmp_path):
    with pytest.raises(UserError, match="swin3d_t takes 32 frames per clip .* not frames=16"):
        vt.resolve(sets=["frames=16"], backbone="swin3d_t")
    with pytest.raises(UserError, match="width is a setting of mvit_v2_s"):
        vt.resolve(sets=["width=demo"], backbone="swin3d_t")
    assert vt.resolve(backbone="mmaction_swin3d_b")["frames"] == 32 and vt.resolve()["frames"] == 16
    r = CliRunner().invoke(app, ["backbone", "train", "video", "--data", str(tmp_path), "--backbone", "swin3d_s",
                                 "--show-config"])
    assert r.exit_code == 0 and json.loads(r.stdout)["frames"] == 32, r.output


def test_an_mmaction_layout_swin_trains_in_two_gloo_torchrun_processes(bases, prepared, tmp_path):
    """DDP on the CPU for a non-MViT family: an mmaction2-layout base, rank 0 writes one best.pt."""
    from migfuse.backbones.swin3d_keys import torchvision_to_mmaction

    sd = torch.load(bases["swin3d_t"], weights_only=True)
    base = tmp_path / "mm_swin.pth"
    torch.save({"meta": {}, "state_dict": OrderedDict(torchvision_to_mmaction(sd))}, base)
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "migfuse.cli", "backbone", "train", "video", "--backbone", "mmaction_swin3d_t", "--checkpoint", str(base),
           "--data", str(prepared), "--out", str(out), "--batch-size", "1", "--device", "cpu", "--precision",
           "fp32"] + [a for s in FAST if not s.startswith("batch_size") for a in ("--set", s)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("best epoch 1") == 1
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pt") == ["best.pt", "last.pt"]
    meta = torch.load(out / "best.pt", weights_only=True)["meta"]["migfuse"]
    assert meta["world_size"] == 2 and meta["kind"] == "mmaction_swin3d_t fine-tuned"
    assert meta["preprocessing"]["resize_short_side"] == 224  # mmaction2's recipe, not torchvision's 256


@pytest.mark.skipif(not _has_transformers(), reason="vit extra")
def test_a_pt_file_that_is_no_fine_tuned_vit_is_one_line(runs, tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    file = tmp_path / "other.pt"
    r = CliRunner().invoke(app, ["backbone", "info", "videomae", "--checkpoint", str(file)])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.output, r.output
    assert (f"{file} is a file, not a Hugging Face model folder nor the best.pt of `migfuse backbone train "
            "video --backbone videomae`") in r.stderr


def test_a_run_given_to_another_backbone_is_one_line_naming_the_one_it_trained(runs, tmp_path):
    """The likely slip: `extract video --checkpoint runs/swin3d_t/best.pt` without --backbone (mvit_v2_s)."""
    from migfuse.backbones.mvit import FINETUNE_KIND, build_mvit

    swin_run = runs["swin3d_t"][0] / "best.pt"
    torch.save({"meta": {"migfuse": {"kind": FINETUNE_KIND, "width": "demo"}},
                "state_dict": build_mvit("demo", 32).state_dict()}, tmp_path / "mvit_best.pt")
    cases = [("mvit_v2_s", swin_run, "swin3d_t"), ("swin3d_t", tmp_path / "mvit_best.pt", "mvit_v2_s")]
    if _has_transformers():
        cases += [("videomae", swin_run, "swin3d_t"), ("swin3d_b", runs["vjepa2"][0] / "best.pt", "vjepa2")]
    for name, file, trained in cases:
        r = CliRunner().invoke(app, ["backbone", "info", name, "--checkpoint", str(file)])
        assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.output, r.output
        assert f"{file} was fine-tuned as {trained} (with its input recipe), not {name}: use --backbone {trained}" \
            in r.stderr


@pytest.mark.parametrize("name", NAMES)
def test_activation_checkpointing_gives_the_same_loss_and_gradients(bases, name):
    from migfuse.finetune.video_models import video_family

    family = video_family(name)
    cfg = vt.resolve(sets=FAST, backbone=name, checkpoint=bases[name])
    weights, _ = family.build(cfg, bases[name])
    pre = family.preprocessing
    x = torch.randn(1, 3, pre["clip_len"], *pre["crop_size"], generator=torch.Generator().manual_seed(0))
    # a module inside what is checkpointed (transformers checkpoints a layer's forward, not its hooks); a
    # pre-hook, as the recomputation may stop once it has what the backward needs
    first_block = (weights.features[0] if name == "swin3d_t"
                   else next(iter(weights.model.encoder.layer[0].children())))
    calls = []
    first_block.register_forward_pre_hook(lambda *_: calls.append(1))
    grads, runs_of_block = [], []
    for checkpointing in (False, True):
        model = vt.FineTuneModel(weights, checkpointing, family).train()
        weights.zero_grad()
        calls.clear()
        model(x).square().sum().backward()
        runs_of_block.append(len(calls))
        grads.append({n: p.grad.clone() for n, p in weights.named_parameters() if p.grad is not None})
    assert runs_of_block == [1, 2]  # recomputed in the backward pass
    # every trainable weight takes part (DDP needs no find_unused_parameters), nothing frozen does
    assert set(grads[0]) == set(grads[1]) == {n for n, p in weights.named_parameters() if p.requires_grad}
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.skipif(not _has_transformers(), reason="vit extra")
def test_backbone_run_with_a_fine_tuned_vit_gives_the_trained_encoders_tokens(runs, bases, tmp_path):
    run, _ = runs["videomae"]
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 32, 32)).astype(np.float32)  # (N, T, 3, H, W)
    np.save(tmp_path / "x.npy", x)
    r = CliRunner().invoke(app, ["backbone", "run", "videomae", "--checkpoint", str(run / "best.pt"), "--input",
                                 str(tmp_path / "x.npy"), "--out", str(tmp_path / "out.npz"), "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    out = np.load(tmp_path / "out.npz")
    family = video_family("videomae")
    weights, _ = family.build(vt.resolve(sets=FAST, backbone="videomae", checkpoint=bases["videomae"]),
                              bases["videomae"])
    weights.load_state_dict(torch.load(run / "best.pt", weights_only=True)["state_dict"])
    with torch.no_grad():
        want = weights.eval().hidden_state(torch.from_numpy(x))
    assert out["tokens"].shape == (2, 2, 2, 2, 32)
    np.testing.assert_allclose(out["tokens"].reshape(2, 8, 32), want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_validation_input_is_exactly_what_extract_video_feeds_the_fine_tuned_model(runs, prepared, name):
    from migfuse.extract.interface import WorkItem
    from migfuse.extract.sampling import ClipSampling
    from migfuse.extract.video import VideoExtractor

    run, _ = runs[name]
    manifest = Manifest.load(prepared)
    ex = VideoExtractor(manifest, "video", backbone=name, checkpoint=run / "best.pt",
                        clip_sampling=ClipSampling(frames=32 if name == "swin3d_t" else 4))
    ex.setup()
    seen = []
    ex.model = lambda x: seen.append(x.clone()) or x[:, :1, :1, :1, :1]
    sample = next(iter(ex.loader()(WorkItem("0003", ("0003_1",)))))
    ex._tokens(sample.inputs["frames"])
    pre = torch.load(run / "best.pt", weights_only=True)["meta"]["migfuse"]["preprocessing"]  # what it trained on
    frames, label = vd.VideoClipDataset(manifest, ["0003_1"], pre["clip_len"], pre)[0]
    assert label == manifest.clip("0003_1").label
    assert torch.equal(normalise_clips(torch.from_numpy(frames)[None], pre["mean"], pre["std"]), seen[0])


@pytest.mark.parametrize("name", NAMES)
def test_a_bf16_autocast_step_trains_every_family(bases, name):
    """--precision bf16 (the trainer's `runtime.autocast()`) runs the adapter's forward and backward."""
    from migfuse.runtime import Precision, Runtime

    family = video_family(name)
    weights, _ = family.build(vt.resolve(sets=FAST, backbone=name, checkpoint=bases[name]), bases[name])
    pre = family.preprocessing
    x = torch.randn(2, 3, pre["clip_len"], *pre["crop_size"], generator=torch.Generator().manual_seed(0))
    model = vt.FineTuneModel(weights, False, family, 0.5).train()
    with Runtime(device="cpu", precision=Precision.BF16).autocast():
        logits = model(x)
    assert logits.dtype == torch.bfloat16 and logits.shape == (2, 32)
    torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1])).backward()
    grads = [p.grad for p in weights.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)


def test_the_summary_line_counts_one_epoch_in_the_singular(tmp_path, monkeypatch):
    summary = {"best": {"epoch": 1, "val_top1": 0.5}, "best_checkpoint": str(tmp_path / "run" / "best.pt"),
               "n_train": 3, "n_validation": 2, "validation_source": "split_miga validation", "epochs_run": 1}
    monkeypatch.setattr(vt, "fine_tune_video", lambda *a, **k: summary)  # the line, not the training
    r = CliRunner().invoke(app, ["backbone", "train", "video", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert f"3 train / 2 validation (split_miga validation); 1 epoch now; run in {tmp_path / 'run'}" in r.stdout


@pytest.mark.parametrize("name", NAMES[1:])
def test_a_fine_tuned_vit_names_its_original_folder_and_licence_once(runs, bases, name):
    from migfuse.backbones.registry import create_backbone
    from migfuse.checkpoint_file import CheckpointFile

    run, _ = runs[name]
    prov = create_backbone(name, run / "best.pt").provenance()
    licence = "cc-by-nc-4.0" if name == "videomae" else "mit"
    assert prov["model_folder"] == str(bases[name])  # the folder, not the best.pt file
    assert (prov["licence"], prov["licence_source"]) == (licence, f"README.md model card of the base folder "
                                                                  f"{bases[name]}")
    # fine-tuning that best.pt again records the same plain facts, so its best.pt names the folder once too
    _, info = video_family(name).build({"seed": 0, "drop_path": 0.0}, CheckpointFile(run / "best.pt"))
    assert (info["model_folder"], info["licence"], info["licence_source"]) == (str(bases[name]), licence,
                                                                               "README.md model card")
