"""MViTv2-S video tokens: torchvision's `mvit_v2_s` architecture, loaded from local checkpoint files.

The model is torchvision's own `mvit_v2_s()` (built through `import_torchvision()`); this module adds
  * `tokens()`: the (B, 393, 768) sequence after the final LayerNorm (class token + 8x7x7 patches),
  * a checkpoint loader for torchvision's `mvit_v2_s-ae3be167.pth` and for mmaction2 MViTv2-S files
    (K400 or SSv2), mapped onto torchvision's key names without importing mmaction2,
  * `PREPROCESSING`, the input recipe of the Kinetics-400 weights, which the extraction runner records
    in the cache provenance, and `preprocess()`, which applies it to decoded frames,
  * `build_mvit(width)`: the full MViTv2-S or a "demo" width (4 narrow blocks with the same token
    layout, (393, 128)) for fast tests and benchmarks,
  * loading of fine-tuned runs (`migfuse backbone train video` best.pt): the width and the fine-tuning
    provenance (base checkpoint sha256, run id) come from the file's `meta["migfuse"]`.
"""
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from migfuse.errors import UserError
from migfuse.backbones import fine_tuned
from migfuse.backbones._torchvision import import_torchvision
from migfuse.backbones.checkpoints import KeyReport, compare_state_dict
from migfuse.checkpoint_file import CheckpointFile, as_checkpoint
from migfuse.backbones.registry import Backbone, register_backbone

log = logging.getLogger(__name__)

CLIP_LEN = 16
CROP = 224
NUM_TOKENS = 1 + 8 * 7 * 7  # class token + (T', H', W') = (8, 7, 7) patches
EMBED_DIM = 768
WIDTHS = ("full", "demo")
#: How the attention product is computed (`MViTBackbone(attention=...)`); both give the same tokens.
ATTENTIONS = ("torchvision", "sdpa")
#: `meta["migfuse"]["kind"]` of a checkpoint written by `migfuse backbone train video`.
FINETUNE_KIND = fine_tuned.kind_of("mvit_v2_s")

# The demo width: 4 narrow blocks and a coarser patch embedding (stride (2, 16, 16): 8x14x14 patches,
# not 8x56x56), pooled to the same final 8x7x7 grid, so the tokens keep MViTv2-S's layout
# (class token + 392 patches) with 128 channels instead of 768; ~100x cheaper than MViTv2-S.
# (heads, in, out, stride_q, stride_kv) per block; kernels are 3x3x3 as in MViTv2-S.
_DEMO_PATCH_STRIDE = (2, 16, 16)
_DEMO_BLOCKS = [
    (1, 16, 32, (1, 1, 1), (1, 2, 2)),
    (2, 32, 64, (1, 2, 2), (1, 1, 1)),
    (2, 64, 128, (1, 1, 1), (1, 1, 1)),
    (4, 128, 128, (1, 1, 1), (1, 1, 1)),
]

#: The input recipe of torchvision's MViT_V2_S_Weights.KINETICS400_V1 (its `VideoClassification`
#: transform). mmaction2's K400 config uses the same numbers on a 0-255 scale (mean 114.75, std 57.375).
PREPROCESSING: dict[str, Any] = {
    "recipe": "torchvision MViT_V2_S_Weights.KINETICS400_V1 transforms (VideoClassification)",
    "clip_len": CLIP_LEN,
    "reference_sampling": "16 frames every 4th frame (16x4x1; torchvision evaluated at frame_rate 7.5)",
    "resize_short_side": 256,
    "resize_interpolation": "bilinear",
    "resize_antialias": False,
    "crop": "center",
    "crop_size": [CROP, CROP],
    "scale": "uint8 / 255 -> [0, 1]",
    "mean": [0.45, 0.45, 0.45],
    "std": [0.225, 0.225, 0.225],
    "channels": "RGB",
    "layout": "(N, 3, 16, 224, 224) float32",
}

# torch.hub / OpenMMLab convention: `<name>-<first hex digits of the file's sha256>.pth`.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


def preprocess(frames: np.ndarray) -> np.ndarray:
    """Apply `PREPROCESSING` to one decoded clip.

    Args:
        frames: (T, H, W, 3) uint8 RGB frames (T = 16 for one clip).
    Returns:
        (3, T, 224, 224) float32, ready to stack into `MViTBackbone.run`'s input.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    tv = import_torchvision()
    from torchvision.transforms._presets import VideoClassification

    transform = VideoClassification(
        crop_size=tuple(PREPROCESSING["crop_size"]),
        resize_size=(PREPROCESSING["resize_short_side"],),
        mean=tuple(PREPROCESSING["mean"]),
        std=tuple(PREPROCESSING["std"]),
        interpolation=tv.transforms.InterpolationMode.BILINEAR,
    )
    vid = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (T, 3, H, W)
    return transform(vid).numpy()


def embed_dim(width: str = "full") -> int:
    """Channels of the tokens of a model of this width: 768 (full MViTv2-S) or 128 (demo)."""
    check_width(width)
    return EMBED_DIM if width == "full" else _DEMO_BLOCKS[-1][2]


def check_width(width: str) -> None:
    if width not in WIDTHS:
        raise UserError(f"unknown MViTv2-S width '{width}': choose full (the real model) or demo (tests)")


def build_mvit(width: str = "full", num_classes: int = 400, drop_path: float = 0.0,
               head_dropout: float = 0.5) -> torch.nn.Module:
    """torchvision's MViT module at `width` with random weights.

    "full" is exactly `torchvision.models.video.mvit_v2_s(weights=None)` (its block settings, 34.5M
    parameters); "demo" is the same class with 4 narrow blocks (`_DEMO_BLOCKS`, about 0.4M
    parameters) and the same input (B, 3, 16, 224, 224) and token grid (B, 393, 128), so tests and
    CPU benchmarks exercise the same code paths. `drop_path` is the stochastic-depth rate of the last
    block (linear in depth, as torchvision); both it and `head_dropout` only act in train mode.
    """
    check_width(width)
    tv = import_torchvision()
    if width == "full":
        return tv.models.video.mvit_v2_s(weights=None, num_classes=num_classes, stochastic_depth_prob=drop_path,
                                         dropout=head_dropout)
    from torchvision.models.video.mvit import MSBlockConfig, MViT

    blocks = [MSBlockConfig(num_heads=h, input_channels=i, output_channels=o, kernel_q=[3, 3, 3],
                            kernel_kv=[3, 3, 3], stride_q=list(sq), stride_kv=list(skv))
              for h, i, o, sq, skv in _DEMO_BLOCKS]
    # the keyword arguments mvit_v2_s passes to torchvision's `_mvit`
    return MViT(spatial_size=(CROP, CROP), temporal_size=CLIP_LEN, block_setting=blocks, residual_pool=True,
                residual_with_cls_embed=False, rel_pos_embed=True, proj_after_attn=True, dropout=head_dropout,
                stochastic_depth_prob=drop_path, num_classes=num_classes, patch_embed_stride=_DEMO_PATCH_STRIDE)


def forward_tokens(model: torch.nn.Module, x: torch.Tensor,
                   checkpointing: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens after the final norm, and the logits, of a torchvision MViT module.

    Replicates `MViT.forward` up to `norm` (conv_proj -> flatten -> pos_encoding -> blocks -> norm)
    so the tokens come without hooks; the logits are `head(tokens[:, 0])` as in torchvision. Used
    by extraction (under inference mode) and by fine-tuning (with gradients), so both run the same
    maths. `checkpointing` recomputes each block's activations in the backward pass (saves memory).

    Args:
        x: (B, 3, 16, 224, 224) float on the model's device.
    Returns:
        tokens (B, 393, embed_dim), logits (B, num_classes).
    """
    x = model.conv_proj(x)  # (B, C0, 8, 56, 56)
    x = x.flatten(2).transpose(1, 2)  # (B, 8*56*56, C0)
    x = model.pos_encoding(x)  # prepends the class token
    thw = (model.pos_encoding.temporal_size,) + tuple(model.pos_encoding.spatial_size)
    for block in model.blocks:
        if checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            x, thw = checkpoint(block, x, thw, use_reentrant=False)
        else:
            x, thw = block(x, thw)
    tokens = model.norm(x)
    return tokens, model.head(tokens[:, 0])


def _sdpa_attention_forward(self, x: torch.Tensor,
                            thw: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """torchvision's `MultiscaleAttention.forward` with the softmax(q k^T + rel-pos) v product done by
    `scaled_dot_product_attention`, the relative-position term passed as its additive mask.

    Same maths as torchvision (the bias is `_add_rel_pos` applied to zeros: class-token rows and
    columns get none), so fp32 tokens agree to float rounding (tests/test_mvit.py). On a GPU the
    fused kernel avoids writing the scores and the softmax out separately.
    """
    from torchvision.models.video.mvit import _add_rel_pos, _add_shortcut

    B, N, _ = x.shape
    q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).transpose(1, 3).unbind(dim=2)
    k, k_thw = self.pool_k(k, thw) if self.pool_k is not None else (k, thw)
    if self.pool_v is not None:
        v = self.pool_v(v, thw)[0]
    if self.pool_q is not None:
        q, thw = self.pool_q(q, thw)
    bias = None
    if self.rel_pos_h is not None and self.rel_pos_w is not None and self.rel_pos_t is not None:
        zeros = q.new_zeros(B, self.num_heads, q.shape[2], k.shape[2])
        bias = _add_rel_pos(zeros, q, thw, k_thw, self.rel_pos_h, self.rel_pos_w, self.rel_pos_t).to(q.dtype)
    x = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scaler)
    if self.residual_pool:
        _add_shortcut(x, q, self.residual_with_cls_embed)
    x = x.transpose(1, 2).reshape(B, -1, self.output_dim)
    return self.project(x), thw


def use_sdpa_attention(model: torch.nn.Module) -> int:
    """Route every MultiscaleAttention of a torchvision MViT through `_sdpa_attention_forward`.

    Changes no weight or key (checkpoints load as before); returns how many attention modules were
    switched. Extraction uses it by default (`MViTBackbone(attention="sdpa")`).
    """
    import types

    from torchvision.models.video.mvit import MultiscaleAttention

    switched = 0
    for module in model.modules():
        if isinstance(module, MultiscaleAttention):
            module.forward = types.MethodType(_sdpa_attention_forward, module)
            switched += 1
    return switched


def fine_tune_meta(obj: Any) -> dict[str, Any] | None:
    """`meta["migfuse"]` of a checkpoint object written by `migfuse backbone train video`, else None."""
    if isinstance(obj, Mapping):
        meta = obj.get("meta")
        if isinstance(meta, Mapping) and isinstance(meta.get("migfuse"), Mapping):
            if meta["migfuse"].get("kind") == FINETUNE_KIND:
                return dict(meta["migfuse"])
    return None


def checkpoint_facts(checkpoint: CheckpointFile | str | Path) -> dict[str, Any]:
    """What a MViTv2-S checkpoint says about the model it fits, before any model is built.

    Returns {"width": "full" | "demo", "embed_dim": 768 | 128, "fine_tune": provenance dict or None},
    where the provenance (base checkpoint sha256, run id, epoch, validation top-1) belongs in the
    cache provenance. Raises UserError for a missing or unreadable file.
    """
    meta = fine_tune_meta(as_checkpoint(checkpoint).contents)
    width = str(meta.get("width", "full")) if meta else "full"
    check_width(width)
    return {"width": width, "embed_dim": embed_dim(width), "fine_tune": fine_tune_provenance(meta)}


def fine_tune_provenance(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The part of a fine-tuned run's `meta["migfuse"]` that the cache provenance records."""
    if not meta:
        return None
    provenance = {k: meta.get(k) for k in ("run_id", "run_dir", "epoch", "base_checkpoint",
                                           "base_checkpoint_sha256", "width", "num_classes", "split")}
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), Mapping) else {}
    provenance["val_top1"] = metrics.get("val_top1")
    return provenance


def check_hash_in_name(path: Path, sha256: str) -> None:
    """If the file name carries a `-<hex>.` hash prefix (torch.hub, OpenMMLab), it must match the file."""
    m = _HASH_IN_NAME.search(path.name)
    if m and not sha256.startswith(m.group(1)):
        raise UserError(
            f"checkpoint {path}: its name says sha256 starts with {m.group(1)} but the file's sha256 starts with "
            f"{sha256[:len(m.group(1))]} (corrupt or incomplete download: download it again; if -{m.group(1)} is not "
            "a hash, rename the file)"
        )


def _unwrap(obj: Any, path: Path, what: str = "MViTv2-S") -> Mapping[str, Any]:
    """The state dict inside a checkpoint object: a plain dict, or one wrapped in `state_dict`/`model`
    (`what`: the model the error names, e.g. "Video Swin")."""
    if isinstance(obj, torch.nn.Module):  # a whole pickled model, as `torch.save(model)` writes
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise UserError(f"{path} is not a {what} checkpoint: it holds a {type(obj).__name__}, not a state dict")
    for wrapper in ("state_dict", "model"):
        if wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    # DataParallel / DDP saves prefix every key with `module.`.
    if obj and all(k.startswith("module.") for k in obj):
        obj = OrderedDict((k[len("module."):], v) for k, v in obj.items())
    return obj


@register_backbone("mvit_v2_s")
class MViTBackbone(Backbone):
    """torchvision MViTv2-S (34.5M parameters) returning its token sequence and logits."""

    input_doc = "(N, 3, 16, 224, 224) float32 (RGB clip, normalised as PREPROCESSING: mean 0.45, std 0.225)"
    outputs_doc = {
        "tokens": "(N, 393, 768) after the final LayerNorm (128 channels at the demo width): class token, then "
                  "8x7x7 patches in (t, h, w) order",
        "logits": "(N, num_classes) head output (400 for Kinetics-400, 174 for SSv2, 32 fine-tuned on iMiGUE)",
    }
    tracks = ("video", "context")
    checkpoint_doc = ("MViTv2-S checkpoint (torchvision mvit_v2_s-ae3be167.pth, mmaction2, or a migfuse fine-tuned "
                      "best.pt)")
    # SDPA: torchvision's attention maths through the fused kernel (same tokens to float rounding)
    extract_options = {"attention": "sdpa"}
    #: recorded in the cache provenance by the extraction runner
    preprocessing = PREPROCESSING
    tokens_doc = "after the final LayerNorm: class token, then 8x7x7 patches in (t, h, w) order"

    def __init__(self, num_classes: int = 400, device: str = "cpu", batch_size: int = 4, width: str = "full",
                 drop_path: float = 0.0, attention: str = "torchvision", **options: Any):
        """
        Args:
            num_classes: head size before loading (a checkpoint's head size replaces it).
            device: torch device to run on ("cpu", "cuda").
            batch_size: clips per forward pass in `run`.
            width: "full" (MViTv2-S) or "demo" (see `build_mvit`); a fine-tuned run's file sets its own.
            drop_path: stochastic depth for training (inactive in eval mode).
            attention: "torchvision" (its own matmul + softmax) or "sdpa" (`use_sdpa_attention`: the
                same maths through `scaled_dot_product_attention`, faster on a GPU).
        """
        super().__init__(num_classes=num_classes, device=device, batch_size=batch_size, width=width, **options)
        if attention not in ATTENTIONS:
            raise UserError(f"unknown MViTv2-S attention '{attention}': choose {' or '.join(ATTENTIONS)}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.width, self.drop_path, self.attention = width, drop_path, attention
        self.fine_tune: dict[str, Any] | None = None  # provenance of a fine-tuned run, once loaded
        self.model = self._build(width, num_classes)

    def _build(self, width: str, num_classes: int) -> torch.nn.Module:
        model = build_mvit(width, num_classes, self.drop_path).eval().to(self.device)
        if self.attention == "sdpa":
            use_sdpa_attention(model)
        return model

    @property
    def embed_dim(self) -> int:
        return self.model.norm.normalized_shape[0]

    @property
    def num_classes(self) -> int:
        return self.model.head[1].out_features

    @property
    def token_shape(self) -> tuple[int, int]:
        return (NUM_TOKENS, self.embed_dim)

    def clip_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 16, 224, 224) normalised clips -> (B, 393, embed_dim) tokens (`forward_tokens`)."""
        return forward_tokens(self.model, x)[0]

    def provenance(self) -> dict[str, Any]:
        """The fine-tuning run a migfuse best.pt came from (base checkpoint sha256, run, epoch, top-1)."""
        facts = fine_tune_provenance(self.fine_tune)
        return {"fine_tuned": facts} if facts else {}

    def _set_num_classes(self, n: int) -> None:
        """Replace the classifier with an n-way one (its weights come from the checkpoint next)."""
        old = self.model.head[1]
        self.model.head[1] = torch.nn.Linear(old.in_features, n).to(self.device)

    # -- checkpoints ---------------------------------------------------------------------------
    def load(self, checkpoint: CheckpointFile | str | Path, trusted: bool = False) -> KeyReport:
        """Load a torchvision or mmaction2 MViTv2-S checkpoint file (strict: every key must fit).

        Returns the KeyReport; raises a one-line UserError naming the missing / unexpected keys.
        """
        ckpt = as_checkpoint(checkpoint, trusted)
        path = ckpt.path
        # hash first: a truncated download then gets the "download it again" message, not an unpickling error
        sha = ckpt.sha256
        check_hash_in_name(path, sha)
        obj = ckpt.contents
        trained = fine_tuned.read_meta(obj)
        if trained is not None:  # a run of `backbone train video --backbone OTHER`: name it
            fine_tuned.check_backbone(trained, self.name, path)
        meta = fine_tune_meta(obj)
        sd = _unwrap(obj, path)
        notes: list[str] = []
        if meta is not None:
            width = str(meta.get("width", "full"))
            if width != self.width:  # a fine-tuned run knows its width: rebuild before comparing keys
                self.width = width
                self.model = self._build(width, self.num_classes)
                notes.append(f"width {width} from the fine-tuned run")
            what = f"migfuse fine-tuned MViTv2-S ({width} width)"
        elif any(k.startswith("backbone.") for k in sd):
            sd, notes = mmaction_to_torchvision(sd)
            what = "mmaction2 MViTv2-S (mvit-small; missing keys named as in torchvision)"
        else:
            what = "torchvision mvit_v2_s"
        if self.width != "full" and meta is None:
            what += f" (this model is the {self.width} width: published files fit only --width full)"
        # The head size comes from the file (400 for Kinetics-400, 174 for SSv2): compare against a
        # model with that head, and resize the real one only once the whole file fits.
        expected = dict(self.model.state_dict())
        head = sd.get("head.1.weight")
        n_file = int(head.shape[0]) if getattr(head, "ndim", 0) == 2 else self.num_classes
        if n_file != self.num_classes:
            expected["head.1.weight"] = torch.empty(n_file, self.model.head[1].in_features)
            expected["head.1.bias"] = torch.empty(n_file)
            notes.append(f"head resized from {self.num_classes} to {n_file} classes by the file")
        rep = compare_state_dict(expected, sd)
        rep.notes.extend(notes)
        rep.raise_if_bad(path, what)
        if n_file != self.num_classes:
            self._set_num_classes(n_file)
        self.model.load_state_dict(sd, strict=True)
        self._loaded(ckpt)
        self.fine_tune = meta
        log.info("loaded %s checkpoint %s (sha256 %s): %s", what, path, sha[:12], rep.summary())
        return rep

    # -- forward -------------------------------------------------------------------------------
    @torch.inference_mode()
    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The token sequence after the final norm, and the logits (see `forward_tokens`).

        Args:
            x: (B, 3, 16, 224, 224) float on the model's device.
        Returns:
            tokens (B, 393, embed_dim), logits (B, num_classes).
        """
        return forward_tokens(self.model, x)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run on (N, 3, 16, 224, 224) float32 clips -> {"tokens": (N, 393, 768), "logits": (N, C)}."""
        if x.ndim != 5 or tuple(x.shape[1:]) != (3, CLIP_LEN, CROP, CROP):
            raise UserError(f"mvit_v2_s input has shape {tuple(x.shape)}; expected {self.input_doc}")
        toks, logits = [], []
        for i in range(0, len(x), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(x[i:i + self.batch_size], dtype=np.float32))
            t, lg = self.tokens(batch.to(self.device))
            toks.append(t.float().cpu().numpy())
            logits.append(lg.float().cpu().numpy())
        if not toks:
            return {"tokens": np.zeros((0, NUM_TOKENS, self.embed_dim), np.float32),
                    "logits": np.zeros((0, self.num_classes), np.float32)}
        return {"tokens": np.concatenate(toks), "logits": np.concatenate(logits)}


# mmaction2 `MViT(arch='small')` + `MViTHead` key -> torchvision `mvit_v2_s` key. Evidence:
# mmaction/models/backbones/mvit.py (open-mmlab/mmaction2 @08de558): `patch_embed.projection` (PatchEmbed3D),
# `cls_token` (1, 1, 96), per block `norm1`, `norm2`, `attn.qkv`, `attn.proj`, `attn.pool_{q,k,v}`
# (depthwise Conv3d, no bias) + `attn.norm_{q,k,v}` (LN), `attn.rel_pos_{h,w,t}` (same shapes as
# torchvision), `mlp.fc1`/`mlp.fc2`, `proj` (only where dims change), final `norm3` (out_scales=-1);
# heads/mvit_head.py: `fc_cls`. The forward maths is the same (the rel-pos index formula, residual
# pooling without the class token, projection of norm1's output, LN eps 1e-6).
_MMACTION_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^backbone\.patch_embed\.projection\.(weight|bias)$"), r"conv_proj.\1"),
    (re.compile(r"^backbone\.cls_token$"), "pos_encoding.class_token"),
    (re.compile(r"^backbone\.blocks\.(\d+)\.attn\.proj\.(weight|bias)$"), r"blocks.\1.attn.project.0.\2"),
    (re.compile(r"^backbone\.blocks\.(\d+)\.attn\.pool_([qkv])\.weight$"), r"blocks.\1.attn.pool_\2.pool.weight"),
    (re.compile(r"^backbone\.blocks\.(\d+)\.attn\.norm_([qkv])\.(weight|bias)$"),
     r"blocks.\1.attn.pool_\2.norm_act.0.\3"),
    (re.compile(r"^backbone\.blocks\.(\d+)\.mlp\.fc1\.(weight|bias)$"), r"blocks.\1.mlp.0.\2"),
    (re.compile(r"^backbone\.blocks\.(\d+)\.mlp\.fc2\.(weight|bias)$"), r"blocks.\1.mlp.3.\2"),
    (re.compile(r"^backbone\.blocks\.(\d+)\.proj\.(weight|bias)$"), r"blocks.\1.project.\2"),
    (re.compile(r"^backbone\.blocks\.(\d+)\.(norm1|norm2|attn\.qkv)\.(weight|bias)$"), r"blocks.\1.\2.\3"),
    (re.compile(r"^backbone\.blocks\.(\d+)\.attn\.(rel_pos_[hwt])$"), r"blocks.\1.attn.\2"),
    (re.compile(r"^backbone\.norm3\.(weight|bias)$"), r"norm.\1"),
    (re.compile(r"^cls_head\.fc_cls\.(weight|bias)$"), r"head.1.\1"),
]
# Entries of an mmaction2 recognizer that are not weights of the network (none are persistent in
# mmaction2 1.x, but older files may carry them).
_MMACTION_IGNORED = ("data_preprocessor.",)


def mmaction_to_torchvision(sd: Mapping[str, Any]) -> tuple["OrderedDict[str, torch.Tensor]", list[str]]:
    """Rename an mmaction2 MViTv2-S state dict (`backbone.*`, `cls_head.*`) to torchvision's keys.

    Keys no rule knows keep their mmaction2 name, so the key report lists them as unexpected.
    `backbone.cls_token` (1, 1, 96) becomes `pos_encoding.class_token` (96,).

    Returns:
        (state dict in torchvision naming, notes for the KeyReport)
    """
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    ignored = 0
    for key, value in sd.items():
        if key.startswith(_MMACTION_IGNORED):
            ignored += 1
            continue
        for pattern, target in _MMACTION_RULES:
            if pattern.match(key):
                key = pattern.sub(target, key)
                break
        if key == "pos_encoding.class_token" and getattr(value, "ndim", 0) == 3 and value.shape[:2] == (1, 1):
            value = value.reshape(-1)
        out[key] = value
    notes = [f"renamed {len(out)} mmaction2 keys to torchvision names"]
    if ignored:
        notes.append(f"ignored {ignored} data_preprocessor entries")
    return out, notes


