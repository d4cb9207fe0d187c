"""`migfuse backbone info|run`: golden MViTv2-S through the CLI, one-line errors, options passed through."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from golden import golden_state_dict, load_golden
from migfuse.cli import app
from migfuse.backbones import registry
from migfuse.backbones.checkpoints import KeyReport, as_checkpoint, sha256_file


@pytest.fixture(scope="module")
def golden_files(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(checkpoint named like torchvision's, input .npy, golden arrays)."""
    folder = tmp_path_factory.mktemp("backbone_cli")
    tmp = folder / "ckpt.tmp"
    torch.save(golden_state_dict("mvit_v2_s"), tmp)
    ckpt = folder / f"mvit_v2_s-{sha256_file(tmp)[:8]}.pth"
    tmp.rename(ckpt)
    _, arrays = load_golden("mvit_v2_s")
    x = folder / "input.npy"
    np.save(x, arrays["input"])
    return ckpt, x, arrays


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_run_mvit_writes_the_golden_outputs(golden_files, tmp_path):
    ckpt, x, arrays = golden_files
    out = tmp_path / "sub" / "y.npz"
    res = invoke("backbone", "run", "mvit_v2_s", "--checkpoint", ckpt, "--input", x, "--out", out,
                 "--precision", "fp32")
    assert res.exit_code == 0, res.output
    assert "tokens (1, 393, 768), logits (1, 400)" in res.stdout
    with np.load(out) as z:
        assert sorted(z.files) == ["logits", "tokens"]
        np.testing.assert_allclose(z["tokens"], arrays["norm_tokens"], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(z["logits"], arrays["logits"], atol=1e-4, rtol=1e-4)


def test_info_reports_keys_hash_and_layout(golden_files):
    ckpt, _, _ = golden_files
    res = invoke("backbone", "info", "mvit_v2_s", "--checkpoint", ckpt)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert "parameters:  34,537,744" in lines
    assert f"sha256:      {sha256_file(ckpt)}" in lines
    assert "keys:        397 keys matched" in lines
    assert any(line.startswith("input:       (N, 3, 16, 224, 224) float32") for line in lines)
    assert any(line.startswith("output:      tokens (N, 393, 768)") for line in lines)
    assert "preprocess:  mean = [0.45, 0.45, 0.45]" in lines


def test_info_without_checkpoint_warns_about_random_weights():
    res = invoke("backbone", "info", "mvit_v2_s")
    assert res.exit_code == 0, res.output
    assert "RANDOM weights" in res.stderr
    assert "checkpoint:  none (random weights)" in res.stdout


def test_info_on_a_truncated_checkpoint_fails_in_one_line(tmp_path):
    sd = OrderedDict((k, v) for k, v in golden_state_dict("mvit_v2_s").items() if k != "head.1.bias")
    path = tmp_path / "cut.pth"
    torch.save(sd, path)
    res = invoke("backbone", "info", "mvit_v2_s", "--checkpoint", path)
    assert res.exit_code == 2
    assert res.stderr.strip().count("\n") == 0
    assert res.stderr.startswith(f"error: {path} is not a torchvision mvit_v2_s checkpoint")
    assert "1 missing: head.1.bias" in res.stderr


def test_run_with_a_missing_or_misshaped_input_names_the_layout(tmp_path):
    res = invoke("backbone", "run", "mvit_v2_s", "--input", tmp_path / "none.npy", "--out", tmp_path / "y.npz")
    assert res.exit_code == 2
    assert "input not found" in res.stderr and "(N, 3, 16, 224, 224) float32" in res.stderr
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((1, 3, 16, 112, 112), np.float32))
    res = invoke("backbone", "run", "mvit_v2_s", "--input", bad, "--out", tmp_path / "y.npz")
    assert res.exit_code == 2
    assert f"error: {bad} has shape (1, 3, 16, 112, 112); mvit_v2_s expects (N, 3, 16, 224, 224)" in res.stderr
    assert not (tmp_path / "y.npz").exists()


def test_unknown_backbone_lists_the_registered_ones(tmp_path):
    res = invoke("backbone", "info", "resnet")
    assert res.exit_code == 2
    assert "unknown backbone 'resnet': choose one of aagcn, agcn, " in res.stderr
    choices = res.stderr.split("choose one of ")[1].strip().split(", ")
    assert choices == sorted(choices)  # every registered name, sorted (built-in ones listed before import)
    assert {"mvit_v2_s", "swinface", "swin3d_t", "mmaction_swin3d_b", "posec3d"} <= set(choices)


class _Doubler(registry.Backbone):
    """A tiny registered backbone: shows that the commands are generic and pass --layout through."""

    input_doc = "(N, C=3, T, V, M) float32"
    outputs_doc = {"double": "(N, C, T, V, M)"}

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.model = torch.nn.Linear(2, 3)

    def load(self, checkpoint, trusted=False) -> KeyReport:
        self._loaded(as_checkpoint(checkpoint, trusted))
        return KeyReport(matched=["weight", "bias"], notes=[f"layout {self.options.get('layout')}"])

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if x.shape[-1] != 2:  # like a BatchNorm built for M=2 persons
            raise RuntimeError(f"running_mean should contain 2 elements not {x.shape[-1]}\nsecond line")
        scale = 3.0 if self.options.get("layout") == "triple" else 2.0
        return {"double": (x * scale).astype(np.float32)}


@pytest.fixture
def doubler(monkeypatch):
    monkeypatch.setitem(registry.BACKBONES._objects, "test_doubler", _Doubler)


def test_commands_are_generic_over_the_registry(doubler, tmp_path):
    x = np.arange(2 * 3 * 4 * 5 * 2, dtype=np.float64).reshape(2, 3, 4, 5, 2)
    np.save(tmp_path / "x.npy", x)
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"weights")
    res = invoke("backbone", "run", "test_doubler", "--layout", "triple", "--checkpoint", ckpt,
                 "--input", tmp_path / "x.npy", "--out", tmp_path / "y.npz")
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / "y.npz") as z:
        assert z["double"].dtype == np.float32
        np.testing.assert_array_equal(z["double"], x * 3)
    res = invoke("backbone", "info", "test_doubler", "--layout", "openpose", "--checkpoint", ckpt)
    assert res.exit_code == 0, res.output
    assert "note:        layout openpose" in res.stdout and "parameters:  9" in res.stdout
    # a 4-d array, or C=2, does not fit "(N, C=3, T, V, M)"
    for bad in (x[0], x[:, :2]):
        np.save(tmp_path / "bad.npy", bad)
        res = invoke("backbone", "run", "test_doubler", "--input", tmp_path / "bad.npy", "--out", tmp_path / "z.npz")
        assert res.exit_code == 2
        assert f"has shape {bad.shape}; test_doubler expects (N, C=3, T, V, M) float32" in res.stderr
    # a size the model rejects at run time (M=1 here) becomes one line with the layout, no traceback
    np.save(tmp_path / "m1.npy", x[..., :1])
    res = invoke("backbone", "run", "test_doubler", "--input", tmp_path / "m1.npy", "--out", tmp_path / "z.npz")
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    assert res.stderr.splitlines()[0].startswith("WARNING: no --checkpoint given: test_doubler has RANDOM weights")
    error = res.stderr.splitlines()[1]
    assert error.startswith(f"error: test_doubler cannot run on {tmp_path / 'm1.npy'} of shape (2, 3, 4, 5, 1)")
    assert ("(RuntimeError: running_mean should contain 2 elements not 1); it expects (N, C=3, T, V, M) float32"
            in error)
