"""Adding a backbone to an existing track is one module and its registry entry, nothing else.

`ToyVideo` below is a complete video backbone defined and registered in this test file: with no edit
anywhere else it is listed and checked by `backbone info`, runs with `backbone run`, and extracts
the video track with `extract video --backbone toy_video`, checkpoint loading, provenance, resume
and the report included (the README's "Add a backbone" section follows this file).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from test_extract_video_util import bad_ids, make_dataset  # noqa: E402

from migfuse.backbones.checkpoints import KeyReport, as_checkpoint, compare_state_dict  # noqa: E402
from migfuse.backbones.registry import Backbone, list_backbones, register_backbone  # noqa: E402
from migfuse.cli import app  # noqa: E402
from migfuse.data_cache.store import TokenCache  # noqa: E402
from migfuse.datasets.manifest import Manifest  # noqa: E402
from migfuse.extract.interface import WorkItem  # noqa: E402
from migfuse.extract.video import VideoExtractor  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ToyNet(torch.nn.Module):
    """(B, 3, 16, 64, 64) -> (B, 4, 8): a strided 3-D convolution, its 4 time steps as tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 8, kernel_size=(4, 64, 64), stride=(4, 64, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(2).transpose(1, 2)  # (B, 8, 4, 1, 1) -> (B, 4, 8)


@register_backbone("toy_video")
class ToyVideo(Backbone):
    """A video backbone as a plug-in would write it: model, official checkpoint format, recipe, hooks."""

    input_doc = "(N, 3, 16, 64, 64) float32"
    outputs_doc = {"tokens": "(N, 4, 8) one token per 4 frames"}
    tracks = ("video", "context")
    checkpoint_doc = "a toy state dict (conv.weight, conv.bias)"
    preprocessing = {"clip_len": 16, "resize_short_side": 72, "crop_size": [64, 64],
                     "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    tokens_doc = "one token per 4 frames"

    def __init__(self, device: str = "cpu", **options):
        super().__init__(device=device, **options)
        self.model = ToyNet().eval().to(device)

    def load(self, checkpoint, trusted: bool = False) -> KeyReport:
        ckpt = as_checkpoint(checkpoint, trusted)
        report = compare_state_dict(self.model.state_dict(), ckpt.contents)
        report.raise_if_bad(ckpt.path, "toy_video")
        self.model.load_state_dict(ckpt.contents)
        self._loaded(ckpt)
        return report

    @property
    def token_shape(self) -> tuple[int, int]:
        return (4, 8)

    def clip_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @torch.no_grad()
    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"tokens": self.model(torch.from_numpy(x)).float().numpy()}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("toy")
    torch.manual_seed(3)
    ckpt = root / "toy.pt"
    torch.save(ToyNet().state_dict(), ckpt)
    return make_dataset(root), ckpt


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_the_registered_backbone_is_listed_and_checked_by_backbone_info(toy):
    _, ckpt = toy
    assert "toy_video" in list_backbones("video") and "toy_video" not in list_backbones("face")
    r = invoke("backbone", "info", "toy_video", "--checkpoint", ckpt)
    assert r.exit_code == 0, r.output
    assert "keys:        2 keys matched" in r.stdout and "extracts:    video, context" in r.stdout
    assert "preprocess:  crop_size = [64, 64]" in r.stdout


def test_backbone_run_gives_the_models_own_outputs(toy, tmp_path):
    _, ckpt = toy
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 64, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = invoke("backbone", "run", "toy_video", "--checkpoint", ckpt, "--input", tmp_path / "x.npy",
               "--out", tmp_path / "y.npz", "--precision", "fp32", "--device", "cpu")
    assert r.exit_code == 0, r.output
    net = ToyNet()
    net.load_state_dict(torch.load(ckpt))
    with np.load(tmp_path / "y.npz") as z, torch.no_grad():
        np.testing.assert_allclose(z["tokens"], net(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-6)


def test_extract_video_with_the_new_backbone_stores_its_tokens_with_provenance(toy, tmp_path):
    prepared, ckpt = toy
    cache = tmp_path / "c.zarr"
    args = ["extract", "video", "--data", prepared, "--cache", cache, "--backbone", "toy_video",
            "--checkpoint", ckpt, "--workers", "0", "--batch-size", "3", "--precision", "fp32"]
    r = invoke(*args)
    assert r.exit_code == 1 and "video/toy_video shard 0/1" in r.stdout  # the bad clips of the dataset failed
    g = TokenCache(cache).group("video/toy_video")
    assert {f["clip_id"] for f in g.failures()} == bad_ids()
    assert g.provenance["backbone"] == "toy_video" and g.provenance["preprocessing"]["crop_size"] == [64, 64]
    assert g.provenance["checkpoint_sha256"] == as_checkpoint(ckpt).sha256
    # the stored tokens are the toy model's, on the frames the video track's loader serves
    ex = VideoExtractor(Manifest.load(prepared), "video", backbone="toy_video", checkpoint=ckpt)
    sample = next(iter(ex.loader()(WorkItem("0001", ("0001_1",)))))
    frames = torch.from_numpy(sample.inputs["frames"]).permute(0, 4, 1, 2, 3).float() / 255
    x = (frames - 0.5) / 0.25
    with torch.no_grad():
        expected = ex.backbone.model(x)[0].numpy()
    np.testing.assert_allclose(g.read("0001_1")["tokens"].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    again = invoke(*args)  # resumed: nothing left to do but the failed rows
    assert "0 written now" in again.stdout


def test_a_backbone_for_another_track_is_refused_in_one_line(toy, tmp_path):
    prepared, _ = toy
    r = invoke("extract", "video", "--data", prepared, "--cache", tmp_path / "c.zarr", "--backbone", "swinface")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1
    assert "backbone swinface does not extract the video track; choose one of" in r.stderr
    assert "toy_video" in r.stderr and "mvit_v2_s" in r.stderr
    assert not (tmp_path / "c.zarr").exists()


def test_a_whole_extraction_reads_and_hashes_its_checkpoint_once(toy, tmp_path, monkeypatch):
    from migfuse import checkpoint_file
    from migfuse.extract.entry import extract
    from migfuse.extract.interface import RunOptions

    prepared, ckpt = toy
    reads, hashes = [], []
    read, sha = checkpoint_file.read_checkpoint, checkpoint_file.sha256_file
    monkeypatch.setattr(checkpoint_file, "read_checkpoint", lambda *a, **k: reads.append(a) or read(*a, **k))
    monkeypatch.setattr(checkpoint_file, "sha256_file", lambda *a, **k: hashes.append(a) or sha(*a, **k))
    extract("video", prepared, tmp_path / "c.zarr", options=RunOptions(workers=0), backbone="toy_video",
            checkpoint=ckpt)
    assert (len(reads), len(hashes)) == (1, 1)
