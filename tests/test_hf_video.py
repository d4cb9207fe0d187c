"""VideoMAE and V-JEPA 2 through transformers (`migfuse.backbones.hf_video`), on tiny random models saved
as local Hugging Face folders: tokens are transformers' own last_hidden_state, the recipe and licence
come from the folder, and every bad folder is one line with nothing written."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

from test_extract_video_util import bad_ids, make_dataset  # noqa: E402

from migfuse.backbones import hf_folder  # noqa: E402
from migfuse.backbones.hf_video import import_transformers  # noqa: E402
from migfuse.backbones.registry import create_backbone, list_backbones  # noqa: E402
from migfuse.checkpoint_file import folder_sha256  # noqa: E402
from migfuse.cli import app  # noqa: E402
from migfuse.data_cache.store import TokenCache  # noqa: E402
from migfuse.datasets.manifest import Manifest  # noqa: E402
from migfuse.extract.interface import WorkItem  # noqa: E402
from migfuse.extract.video import build_extractor  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, patch_size=16, tubelet_size=2)
VIDEOMAE_PROCESSOR = {"image_processor_type": "VideoMAEImageProcessor", "do_resize": True,
                      "size": {"shortest_edge": 40}, "do_center_crop": True, "crop_size": {"height": 32, "width": 32},
                      "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                      "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 2}
VIDEOMAE_CARD = "---\nlicense: cc-by-nc-4.0\ntags:\n- video-classification\n---\n\n# VideoMAE (tiny)\n"


def _save(model, folder: Path, processor: dict | None = None, processor_name: str = "preprocessor_config.json",
          card: str | None = None) -> Path:
    model.save_pretrained(folder)
    if processor is not None:
        (folder / processor_name).write_text(json.dumps(processor))
    if card is not None:
        (folder / "README.md").write_text(card)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Tiny folders: a VideoMAE video classifier (head keys the encoder ignores), a V-JEPA 2 encoder +
    predictor, and a V-JEPA 2 classifier (no predictor)."""
    tf = import_transformers()
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    videomae = tf.VideoMAEForVideoClassification(tf.VideoMAEConfig(**TINY, intermediate_size=64, image_size=32,
                                                                   num_frames=4, num_labels=3))
    vj_config = dict(**TINY, crop_size=32, frames_per_clip=4, pred_hidden_size=16, pred_num_hidden_layers=1,
                     pred_num_attention_heads=2, num_pooler_layers=1)
    return {
        "videomae": _save(videomae, root / "videomae", VIDEOMAE_PROCESSOR, card=VIDEOMAE_CARD),
        "vjepa2": _save(tf.VJEPA2Model(tf.VJEPA2Config(**vj_config)), root / "vjepa2",
                        {"video_processor_type": "VJEPA2VideoProcessor", "crop_size": 32},
                        "video_preprocessor_config.json", card="---\nlicense: mit\n---\n"),
        "vjepa2_classifier": _drop_predictor(_save(tf.VJEPA2ForVideoClassification(
            tf.VJEPA2Config(**vj_config, num_labels=3)), root / "vjepa2_classifier")),
    }


def _drop_predictor(folder: Path) -> Path:
    """The folder's weights without the predictor (which the tokens do not use): a probe-only export."""
    from safetensors.torch import load_file, save_file

    weights = folder / "model.safetensors"
    state = {k: v for k, v in load_file(weights).items() if not k.startswith("vjepa2.predictor.")}
    save_file(state, weights, metadata={"format": "pt"})
    return folder


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _reference(folder: Path, model_class: str, pixel_values: torch.Tensor) -> np.ndarray:
    """transformers' own last_hidden_state of the folder's encoder."""
    model = getattr(import_transformers(), model_class).from_pretrained(folder, local_files_only=True).eval()
    kwargs = {"skip_predictor": True} if model_class == "VJEPA2Model" else {}
    with torch.no_grad():
        return model(pixel_values, **kwargs).last_hidden_state.numpy()


def test_both_backbones_are_registered_for_the_video_tracks():
    assert {"videomae", "vjepa2"} <= set(list_backbones("video")) & set(list_backbones("context"))


@pytest.mark.parametrize("name,model_class", [("videomae", "VideoMAEModel"), ("vjepa2", "VJEPA2Model")])
def test_backbone_run_gives_transformers_last_hidden_state_on_its_grid(folders, tmp_path, name, model_class):
    x = np.random.default_rng(1).standard_normal((2, 4, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = invoke("backbone", "run", name, "--checkpoint", folders[name], "--input", tmp_path / "x.npy",
               "--out", tmp_path / "y.npz", "--precision", "fp32", "--device", "cpu", "--threads", "1")
    assert r.exit_code == 0, r.output
    expected = _reference(folders[name], model_class, torch.from_numpy(x))  # (2, 2*2*2, 32)
    with np.load(tmp_path / "y.npz") as z:
        assert z["tokens"].shape == (2, 2, 2, 2, 32) and z["pooled"].shape == (2, 32)
        np.testing.assert_array_equal(z["tokens"].reshape(2, 8, 32), expected)
        np.testing.assert_array_equal(z["pooled"], expected.mean(1))


def test_clip_tokens_take_the_tracks_layout_and_give_the_sequence(folders):
    bb = create_backbone("vjepa2", folders["vjepa2"])
    x = torch.randn(3, 3, 4, 32, 32)  # (B, 3, T, H, W) as the video loaders give it
    with torch.no_grad():
        tokens = bb.clip_tokens(x).numpy()
    assert bb.token_shape == (8, 32) and tokens.shape == (3, 8, 32)
    np.testing.assert_array_equal(tokens, _reference(folders["vjepa2"], "VJEPA2Model", x.permute(0, 2, 1, 3, 4)))


def test_the_recipe_comes_from_the_folders_processor_config(folders):
    videomae = create_backbone("videomae", folders["videomae"]).preprocessing
    assert (videomae["clip_len"], videomae["resize_short_side"], videomae["crop_size"]) == (4, 40, [32, 32])
    assert videomae["mean"] == [0.485, 0.456, 0.406] and videomae["std"] == [0.229, 0.224, 0.225]
    # V-JEPA 2's processor resizes to crop * 256 / 224 whatever its file says, with ImageNet mean/std
    vjepa2 = create_backbone("vjepa2", folders["vjepa2"]).preprocessing
    assert (vjepa2["clip_len"], vjepa2["resize_short_side"], vjepa2["crop_size"]) == (4, 36, [32, 32])
    assert vjepa2["mean"] == [0.485, 0.456, 0.406]
    assert "video_preprocessor_config.json" in vjepa2["recipe"]
    # no processor config: transformers' defaults, said so
    classifier = create_backbone("vjepa2", folders["vjepa2_classifier"]).preprocessing
    assert classifier["crop_size"] == [32, 32] and "defaults" in classifier["recipe"]


def test_backbone_info_names_the_licence_the_ignored_keys_and_the_recipe(folders):
    r = invoke("backbone", "info", "videomae", "--checkpoint", folders["videomae"])
    assert r.exit_code == 0, r.output
    assert "note:        licence: cc-by-nc-4.0 (README.md model card)" in r.stdout
    assert "note:        ignored 4 keys the encoder does not use (heads, decoder): classifier.bias" in r.stdout
    assert f"sha256:      {folder_sha256(folders['videomae'])}" in r.stdout
    assert "preprocess:  crop_size = [32, 32]" in r.stdout and "preprocess:  clip_len = 4" in r.stdout
    r = invoke("backbone", "info", "vjepa2", "--checkpoint", folders["vjepa2_classifier"])
    assert r.exit_code == 0, r.output
    assert "keys not in the folder are not used for tokens (kept random): predictor." in r.stdout
    assert "licence: unknown (" in r.stdout


def test_licence_is_read_from_config_json_or_the_model_card(tmp_path):
    assert hf_folder.licence(tmp_path)["licence"] == "unknown"
    (tmp_path / "README.md").write_text("---\nlicense: other\nlicense_name: 'fair-noncommercial'\n---\n")
    assert hf_folder.licence(tmp_path) == {"licence": "other: fair-noncommercial",
                                           "licence_source": "README.md model card"}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "videomae", "license": "apache-2.0"}))
    assert hf_folder.licence(tmp_path) == {"licence": "apache-2.0", "licence_source": "config.json"}
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "README.md").write_text("---\nlicense:\n- cc-by-nc-4.0\npipeline_tag: video-classification\n---\n")
    assert hf_folder.licence(tmp_path)["licence"] == "cc-by-nc-4.0"
    (tmp_path / "README.md").write_text("# no front matter\nlicense: mit\n")
    assert hf_folder.licence(tmp_path)["licence"] == "unknown"


def test_extract_video_stores_the_models_tokens_with_licence_and_recipe(folders, tmp_path):
    prepared = make_dataset(tmp_path / "data")
    cache = tmp_path / "c.zarr"
    args = ["extract", "video", "--data", prepared, "--cache", cache, "--backbone", "videomae",
            "--checkpoint", folders["videomae"], "--workers", "0", "--batch-size", "3", "--precision", "fp32"]
    r = invoke(*args)
    assert r.exit_code == 1 and "video/videomae shard 0/1" in r.stdout  # the dataset's bad clips failed
    g = TokenCache(cache).group("video/videomae")
    assert {f["clip_id"] for f in g.failures()} == bad_ids()
    p = g.provenance
    assert (p["licence"], p["licence_source"]) == ("cc-by-nc-4.0", "README.md model card")
    assert p["checkpoint_sha256"] == folder_sha256(folders["videomae"]) and p["model_type"] == "videomae"
    assert p["preprocessing"]["crop_size"] == [32, 32] and p["sampling"]["frames"] == 4
    ex = build_extractor(Manifest.load(prepared), "video", backbone="videomae", checkpoint=folders["videomae"])
    sample = next(iter(ex.loader()(WorkItem("0001", ("0001_1",)))))
    assert sample.inputs["frames"].shape == (1, 4, 32, 32, 3)
    frames = torch.from_numpy(sample.inputs["frames"]).float() / 255  # (1, T, H, W, 3)
    x = (frames - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    expected = _reference(folders["videomae"], "VideoMAEModel", x.permute(0, 1, 4, 2, 3))[0]
    np.testing.assert_allclose(g.read("0001_1")["tokens"].astype(np.float32), expected, rtol=2e-3, atol=2e-3)


def _broken(folders: dict[str, Path], tmp_path: Path, kind: str) -> Path:
    folder = tmp_path / kind
    folder.mkdir()
    if kind == "a file":
        return Path(next(iter(folders["videomae"].glob("*.safetensors"))))
    if kind != "no config":
        (folder / "config.json").write_text((folders["videomae"] / "config.json").read_text())
    if kind == "pickled weights":
        (folder / "pytorch_model.bin").write_bytes(b"not read")
    if kind == "another model":
        (folder / "config.json").write_text(json.dumps({"model_type": "vivit"}))
    if kind == "damaged weights":
        (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    return folder


@pytest.mark.parametrize("kind,message", [
    ("a file", "is not a folder: videomae takes a local Hugging Face model folder (config.json + model.safetensors)"),
    ("no config", "has no config.json, so it is not a Hugging Face model folder"),
    ("no weights", "has config.json but no weights (model.safetensors): the download is incomplete"),
    ("pickled weights", "holds pytorch_model.bin but no model.safetensors: migfuse reads safetensors only"),
    ("another model", "config.json is a vivit model, not videomae: videomae reads videomae folders only"),
    ("damaged weights", "into transformers' VideoMAEModel ("),
])
def test_a_bad_folder_is_one_line_and_nothing_is_written(folders, tmp_path, kind, message):
    folder = _broken(folders, tmp_path, kind)
    prepared = make_dataset(tmp_path / "data")
    cache = tmp_path / "c.zarr"
    r = invoke("extract", "video", "--data", prepared, "--cache", cache, "--backbone", "videomae",
               "--checkpoint", folder, "--workers", "0")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert message in r.stderr and str(folder) in r.stderr and "Traceback" not in r.output
    assert not cache.exists()


def test_a_vjepa2_folder_given_to_videomae_names_the_backbone_to_use(folders):
    r = invoke("backbone", "info", "videomae", "--checkpoint", folders["vjepa2"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1
    assert "config.json is a vjepa2 model, not videomae" in r.stderr and "choose the backbone for vjepa2" in r.stderr


def test_a_folder_given_to_a_file_backbone_is_one_line(folders):
    r = invoke("backbone", "info", "mvit_v2_s", "--checkpoint", folders["videomae"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert f"checkpoint {folders['videomae']} is a folder: this backbone takes one checkpoint file" in r.stderr


def test_extract_context_with_vjepa2_stores_one_token_grid_per_window(folders, tmp_path):
    prepared = make_dataset(tmp_path / "data")
    cache = tmp_path / "c.zarr"
    r = invoke("extract", "context", "--data", prepared, "--cache", cache, "--backbone", "vjepa2", "--checkpoint",
               folders["vjepa2"], "--workers", "0", "--context-windows", "2", "--precision", "bf16")
    assert r.exit_code == 1 and "context/vjepa2" in r.stdout, r.output  # the corrupt and the missing video fail
    g = TokenCache(cache).group("context/vjepa2")
    row = g.read("0001")
    assert row["tokens"].shape == (2, 8, 32) and row["valid"].tolist() == [True, True]
    assert np.isfinite(row["tokens"].astype(np.float32)).all() and np.abs(row["tokens"]).max() > 0
    assert g.provenance["licence"] == "mit" and g.provenance["preprocessing"]["resize_short_side"] == 36


def test_without_transformers_the_backbone_says_which_extra_to_install(folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # what a missing package looks like to an import
    r = invoke("backbone", "info", "videomae", "--checkpoint", folders["videomae"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert "transformers is not installed: the VideoMAE / V-JEPA 2 backbones need the vit extra" in r.stderr


@pytest.mark.parametrize("change,message", [
    ({"crop_size": {"height": 32, "width": 48}}, "crop_size {'height': 32, 'width': 48} is not a square size"),
    ({"crop_size": 48, "size": {"shortest_edge": 48}}, "crop 48 does not fit the model's image_size 32 in config.json"),
    ({"rescale_factor": 1.0}, "rescale_factor 1.0 (do_rescale True) is not 1/255"),
])
def test_a_processor_config_migfuse_cannot_follow_is_one_line(folders, tmp_path, change, message):
    import shutil

    folder = Path(shutil.copytree(folders["videomae"], tmp_path / "videomae"))
    (folder / "preprocessor_config.json").write_text(json.dumps({**VIDEOMAE_PROCESSOR, **change}))
    r = invoke("backbone", "info", "videomae", "--checkpoint", folder)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert f"{folder}/preprocessor_config.json: {message}" in r.stderr


@pytest.mark.parametrize("name,processor_class", [("videomae", "VideoMAEVideoProcessor"),
                                                  ("vjepa2", "VJEPA2VideoProcessor")])
def test_the_loaders_input_is_transformers_processors_output(folders, name, processor_class):
    """Same sizes, crop box and normalisation as transformers' own processor read from the folder, on frames
    whose short side is already the resize target and whose crop margin is even: the two known differences
    (antialiasing; the crop offset of an odd margin, floor vs rounding) are recorded in the recipe."""
    from migfuse.backbones.video_input import normalise_clips
    from migfuse.extract.video import resize_crop

    pre = create_backbone(name, folders[name]).preprocessing
    processor = getattr(import_transformers(), processor_class).from_pretrained(folders[name], local_files_only=True)
    short, crop = pre["resize_short_side"], pre["crop_size"][0]
    frames = np.random.default_rng(2).integers(0, 256, (4, short, short + 12, 3), dtype=np.uint8)
    ours = normalise_clips(torch.from_numpy(np.stack([resize_crop(f, short, crop) for f in frames]))[None],
                           pre["mean"], pre["std"])  # (1, 3, T, S, S)
    out = processor(list(frames), return_tensors="pt")
    theirs = out["pixel_values"] if "pixel_values" in out else out["pixel_values_videos"]  # (1, T, 3, S, S)
    np.testing.assert_allclose(ours.permute(0, 2, 1, 3, 4).numpy(), theirs.numpy(), rtol=0, atol=1e-6)


def test_a_folder_missing_encoder_weights_is_one_line_naming_them(folders, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = Path(shutil.copytree(folders["videomae"], tmp_path / "videomae"))
    state = load_file(folder / "model.safetensors")
    dropped = next(k for k in state if k.endswith("query.weight"))  # videomae.encoder.layer.0.[...]query.weight
    del state[dropped]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    r = invoke("backbone", "info", "videomae", "--checkpoint", folder)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert f"{folder} is not a videomae checkpoint: 16 keys matched; 1 missing: " \
           f"{dropped.removeprefix('videomae.')}\n" in r.stderr
