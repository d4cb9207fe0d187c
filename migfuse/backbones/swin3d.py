"""Video Swin (T, S, B) video tokens: torchvision's `SwinTransformer3d`, loaded from local checkpoint files.

The model is torchvision's own Python `SwinTransformer3d` (built through `import_torchvision()`; it
uses none of torchvision's compiled ops). This module adds
  * the registered backbones: `swin3d_t`, `swin3d_s`, `swin3d_b` (torchvision's Kinetics-400 weights
    and recipe) and `mmaction_swin3d_t`, `mmaction_swin3d_s`, `mmaction_swin3d_b` (mmaction2's
    Kinetics-400 recognizers and their recipe). Either name loads either file layout
    (`swin3d_keys`); the name decides the input recipe and the size random weights get;
  * `forward_features()`: the last stage's tokens after the final LayerNorm (B, T', H', W', C), the
    pooled vector (B, C) and the head's logits, as mmaction2's `extract_feat(stage='head')` gives them;
  * the architecture is read from the checkpoint (patch, width, depths, heads, window), so files of
    other window or patch sizes load too; a file of another published size than the name says
    (a Swin-B file for `swin3d_t`) is refused in one line that names the right backbone.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from migfuse.backbones import fine_tuned
from migfuse.backbones import swin3d_keys as keys
from migfuse.backbones._torchvision import import_torchvision
from migfuse.backbones.checkpoints import KeyReport, compare_state_dict
from migfuse.backbones.mvit import _unwrap, check_hash_in_name
from migfuse.backbones.registry import Backbone, register_backbone
from migfuse.checkpoint_file import CheckpointFile, as_checkpoint
from migfuse.errors import UserError

log = logging.getLogger(__name__)

#: The published sizes (torchvision `swin3d_*`, mmaction2 `arch`): (embed_dim, depths, heads).
SIZES: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    "t": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "s": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "b": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
}
PATCH_SIZE = (2, 4, 4)
WINDOW_SIZE = (8, 7, 7)

_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]

#: torchvision Swin3D_{T,S,B}_Weights.KINETICS400_V1: `VideoClassification(crop_size=(224, 224),
#: resize_size=(256,))` with ImageNet mean/std; evaluated with clip_len=32 at frame_rate=15.
TORCHVISION_PREPROCESSING: dict[str, Any] = {
    "recipe": "torchvision Swin3D_*_Weights.KINETICS400_V1 transforms (VideoClassification)",
    "clip_len": 32,
    "reference_sampling": "32 consecutive frames at 15 fps (torchvision evaluated clip_len=32, frame_rate=15)",
    "resize_short_side": 256,
    "resize_interpolation": "bilinear",
    "resize_antialias": False,
    "crop": "center",
    "crop_size": [224, 224],
    "scale": "uint8 / 255 -> [0, 1]",
    "mean": _IMAGENET_MEAN,
    "std": _IMAGENET_STD,
    "channels": "RGB",
    "layout": "(N, 3, 32, 224, 224) float32",
}
#: mmaction2 configs/recognition/swin/swin-{tiny,small,base}-p244-w877_*_kinetics400-rgb.py: test pipeline
#: SampleFrames(clip_len=32, frame_interval=2), Resize((-1, 224)), centre/three crops of 224;
#: ActionDataPreprocessor mean [123.675, 116.28, 103.53], std [58.395, 57.12, 57.375] (= ImageNet / 255).
MMACTION_PREPROCESSING: dict[str, Any] = {
    **TORCHVISION_PREPROCESSING,  # the same frames, crop and normalisation; another resize and sampling
    "recipe": "mmaction2 swin-*-p244-w877 Kinetics-400 config (val/test pipeline, ActionDataPreprocessor)",
    "reference_sampling": "SampleFrames(clip_len=32, frame_interval=2), test: 4 clips x ThreeCrop",
    "resize_short_side": 224,
}


def published_arch(size: str, num_classes: int | None = 400) -> keys.SwinArch:
    """The architecture of a published size ("t", "s", "b")."""
    embed, depths, heads = SIZES[size]
    return keys.SwinArch(PATCH_SIZE, embed, depths, heads, WINDOW_SIZE, 4.0, num_classes)


def size_of(arch: keys.SwinArch) -> str | None:
    """The published size an architecture has ("t", "s", "b"), None for any other width or depth."""
    return next((s for s, (e, d, h) in SIZES.items()
                 if (arch.embed_dim, arch.depths, arch.num_heads) == (e, d, h)), None)


def build_swin3d(arch: keys.SwinArch, drop_path: float = 0.0) -> torch.nn.Module:
    """torchvision's `SwinTransformer3d` of `arch` with random weights, in eval mode; without a classifier
    head (`arch.num_classes` None) its `head` is the identity, without `patch_norm` its patch norm, and
    without `qkv_bias` the qkv projections have no bias (mmaction2 builds those variants)."""
    import_torchvision()  # first: it makes torchvision importable beside a CPU torch (see _torchvision.py)
    from torchvision.models.video.swin_transformer import SwinTransformer3d

    model = SwinTransformer3d(patch_size=list(arch.patch_size), embed_dim=arch.embed_dim, depths=list(arch.depths),
                              num_heads=list(arch.num_heads), window_size=list(arch.window_size),
                              mlp_ratio=arch.mlp_ratio, stochastic_depth_prob=drop_path,
                              num_classes=arch.num_classes or 1)
    if arch.num_classes is None:
        model.head = torch.nn.Identity()
    if not arch.patch_norm:
        model.patch_embed.norm = torch.nn.Identity()
    if not arch.qkv_bias:
        for module in model.modules():
            if hasattr(module, "qkv") and isinstance(module.qkv, torch.nn.Linear):
                module.qkv.bias = None  # F.linear without a bias, as mmaction2's Linear(bias=False)
    return model.eval()


def forward_features(model: torch.nn.Module, x: torch.Tensor,
                     checkpointing: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's `SwinTransformer3d.forward`, stopping to keep what extraction needs (and what
    fine-tuning trains: `finetune.video_models` runs this very function).

    Args:
        x: (B, 3, T, H, W) normalised clips.
        checkpointing: recompute each stage in the backward pass (activation checkpointing, training).
    Returns:
        tokens (B, T', H', W', C) after the final LayerNorm (T' = ceil(T / patch_t), H' = ceil(H / patch_h)
        halved by each PatchMerging), pooled (B, C) = their mean, logits (B, classes) = head(pooled)
        (= pooled itself for a file without a head).
    """
    t = model.pos_drop(model.patch_embed(x))
    for stage in model.features:
        if checkpointing and torch.is_grad_enabled():
            t = torch.utils.checkpoint.checkpoint(stage, t, use_reentrant=False)
        else:
            t = stage(t)
    t = model.norm(t)
    pooled = t.mean(dim=(1, 2, 3))
    return t, pooled, model.head(pooled)


class _Swin3DBackbone(Backbone):
    """Video Swin returning its last-stage tokens, pooled vector and logits; subclasses fix size and recipe."""

    size: ClassVar[str] = "t"
    input_doc = ("(N, 3, T, H, W) float32 RGB clip normalised with the recipe's mean/std (published recipe: "
                 "T = 32, H = W = 224)")
    outputs_doc = {
        "tokens": "(N, T', H', W', C) last stage after the final LayerNorm (T' = T/2, H' = H/32; (N, 16, 7, 7, 768) "
                  "for Swin-T/S at 32x224x224, C = 1024 for Swin-B)",
        "pooled": "(N, C) mean of the tokens (mmaction2 I3DHead's average pool)",
        "logits": "(N, num_classes) head output before softmax (only for a file with a head)",
    }
    tracks = ("video", "context")
    checkpoint_doc = ("Video Swin checkpoint: torchvision swin3d_{t,s,b}-*.pth or an mmaction2 Video Swin "
                      "recognizer .pth (meta + state_dict)")
    tokens_doc = "last stage after the final LayerNorm: T'xH'xW' patches in (t, h, w) order"

    def __init__(self, num_classes: int | None = 400, device: str = "cpu", batch_size: int = 2,
                 drop_path: float = 0.0, **options: Any):
        """
        Args:
            num_classes: head size of the random weights (a checkpoint's own head replaces it).
            device: torch device to run on ("cpu", "cuda").
            batch_size: clips per forward pass in `run`.
            drop_path: stochastic depth for training (inactive in eval mode).
        """
        super().__init__(num_classes=num_classes, device=device, batch_size=batch_size, **options)
        self.device = torch.device(device)
        self.batch_size, self.drop_path = batch_size, drop_path
        self.arch = published_arch(self.size, num_classes)
        self.model = build_swin3d(self.arch, drop_path).to(self.device)
        self.fine_tune: dict[str, Any] | None = None  # meta of a `backbone train video` best.pt, once loaded

    @property
    def embed_dim(self) -> int:
        return self.arch.num_features

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """(T', H', W') of one clip of the recipe (clip_len frames, crop_size): (16, 7, 7) as published."""
        merges = 2 ** (len(self.arch.depths) - 1)  # each PatchMerging pads an odd size, so ceil at every step
        t, (h, w) = int(self.preprocessing["clip_len"]), self.preprocessing["crop_size"]
        pt, ph, pw = self.arch.patch_size
        return (_ceil(t, pt), _ceil(_ceil(h, ph), merges), _ceil(_ceil(w, pw), merges))

    @property
    def token_shape(self) -> tuple[int, int]:
        t, h, w = self.token_grid
        return (t * h * w, self.embed_dim)

    def clip_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, clip_len, crop, crop) normalised clips -> (B, T'*H'*W', C) tokens in (t, h, w) order."""
        return forward_features(self.model, x)[0].flatten(1, 3)

    def provenance(self) -> dict[str, Any]:
        """The architecture the weights were built with (read from the checkpoint, or the name's size), and
        the token layout the views pool by (no class token; `data_cache.views.layout_params`)."""
        a = self.arch
        facts = fine_tuned.provenance(self.fine_tune)
        return {**({"fine_tuned": facts} if facts else {}),
                "token_layout": {"class_token": False, "grid": list(self.token_grid)},
                "architecture": {"patch_size": list(a.patch_size), "embed_dim": a.embed_dim,
                                 "depths": list(a.depths), "num_heads": list(a.num_heads),
                                 "window_size": list(a.window_size), "mlp_ratio": a.mlp_ratio,
                                 "patch_norm": a.patch_norm, "qkv_bias": a.qkv_bias}}

    # -- checkpoints ---------------------------------------------------------------------------
    def load(self, checkpoint: CheckpointFile | str | Path, trusted: bool = False) -> KeyReport:
        """Load a torchvision or mmaction2 Video Swin file, or the best.pt of `backbone train video --backbone
        NAME` (torchvision names, 32 classes; refused for another NAME, whose recipe it was trained on); the
        architecture comes from the file.

        Returns the KeyReport. Raises a one-line UserError for a file that is not a Video Swin (naming the
        first unmatched keys and the closest known layout) or of another published size than this backbone.
        """
        ckpt = as_checkpoint(checkpoint, trusted)
        path, sha = ckpt.path, ckpt.sha256  # hash first: a truncated download gets "download it again"
        check_hash_in_name(path, sha)
        sd = _unwrap(ckpt.contents, path, "Video Swin")
        meta = fine_tuned.read_meta(ckpt.contents)
        if meta is not None:
            fine_tuned.check_backbone(meta, self.name, path)
        file_keys = list(sd)
        notes: list[str] = []
        if meta is not None:
            what = f"migfuse fine-tuned {self.name}"
        elif keys.is_mmaction(sd):
            sd, notes = keys.mmaction_to_torchvision(sd)
            what = "mmaction2 Video Swin"
        else:
            what = "torchvision Video Swin"
        try:
            arch = keys.read_arch(sd, WINDOW_SIZE, str(path), _config_text(ckpt.contents))
        except UserError as e:
            raise self._not_a_swin(path, file_keys, str(e).removeprefix(f"{path}: ")) from None
        size = size_of(arch)
        if size is not None and size != self.size:
            family = "mmaction_swin3d" if self.name.startswith("mmaction") else "swin3d"
            raise UserError(f"{path} is a Swin-{size.upper()} checkpoint ({arch.describe()}), not the "
                            f"Swin-{self.size.upper()} of {self.name}: use backbone {family}_{size}")
        if size is None:
            notes.append(f"not a published Swin size: built from the file ({arch.describe()})")
        elif arch != published_arch(size, arch.num_classes):
            notes.append(f"built from the file: {arch.describe()}")
        if arch.num_classes is None:
            notes.append("the file has no classifier head: no logits")
        model = build_swin3d(arch, self.drop_path)
        expected = model.state_dict()
        filled = _fill_position_index(expected, sd)
        if filled:
            notes.append(f"computed {filled} relative_position_index buffers the file lacks")
        rep = compare_state_dict(expected, sd)
        rep.notes.extend(notes)
        rep.raise_if_bad(path, what + f" ({arch.describe()})")
        model.load_state_dict(sd, strict=True)
        self.arch, self.model, self.fine_tune = arch, model.to(self.device), meta
        self._loaded(ckpt)
        log.info("loaded %s checkpoint %s (sha256 %s): %s", what, path, sha[:12], rep.summary())
        return rep

    def _not_a_swin(self, path: Path, file_keys: list[str], reason: str) -> UserError:
        """One line: why the file is no Video Swin, its first keys no layout knows, the closest layout."""
        reference = build_swin3d(published_arch(self.size)).state_dict()
        layouts = {keys.TORCHVISION_LAYOUT: set(reference),
                   keys.MMACTION_LAYOUT: set(keys.torchvision_to_mmaction(reference))}
        known = layouts[keys.TORCHVISION_LAYOUT] | layouts[keys.MMACTION_LAYOUT]
        unmatched = [k for k in file_keys if k not in known][:3] or file_keys[:3]
        name, shared, total = keys.closest_layout(file_keys, layouts)
        return UserError(f"{path} is not a Video Swin checkpoint ({reason}): first unmatched keys "
                         f"{', '.join(unmatched) or '(none: the file is empty)'}; closest known layout: {name}, "
                         f"{shared} of its {total} keys present")

    # -- forward -------------------------------------------------------------------------------
    @torch.inference_mode()
    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward_features` on the backbone's model: tokens (B, T', H', W', C), pooled (B, C), logits."""
        return forward_features(self.model, x)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run on (N, 3, T, H, W) float32 clips -> {"tokens", "pooled", "logits" (with a head)}."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise UserError(f"{self.name} input has shape {tuple(x.shape)}; expected {self.input_doc}")
        parts: dict[str, list[np.ndarray]] = {"tokens": [], "pooled": [], "logits": []}
        for i in range(0, len(x), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(x[i:i + self.batch_size], dtype=np.float32))
            for name, value in zip(parts, self.features(batch.to(self.device))):
                parts[name].append(value.float().cpu().numpy())
        if self.arch.num_classes is None:
            del parts["logits"]
        return {k: np.concatenate(v) for k, v in parts.items() if v}


def _fill_position_index(model_sd: dict[str, torch.Tensor], file_sd: "OrderedDict[str, Any]") -> int:
    """Add the `relative_position_index` buffers (computed by the code, not learned) a file lacks."""
    filled = 0
    for key, value in model_sd.items():
        if key.endswith("attn.relative_position_index") and key not in file_sd:
            file_sd[key] = value.clone()
            filled += 1
    return filled


def _config_text(obj: Any) -> str | None:
    """The config text an mmengine checkpoint carries in `meta["cfg"]`, else None."""
    meta = obj.get("meta") if isinstance(obj, dict) else None
    cfg = meta.get("cfg") if isinstance(meta, dict) else None
    return cfg if isinstance(cfg, str) else None


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _register(name: str, size: str, preprocessing: dict[str, Any], source: str) -> type[_Swin3DBackbone]:
    cls = type(f"Swin3D{size.upper()}{'MM' if name.startswith('mmaction') else ''}Backbone", (_Swin3DBackbone,),
               {"size": size, "preprocessing": preprocessing, "__module__": __name__,
                "__doc__": f"Video Swin-{size.upper()} ({source} recipe) returning last-stage tokens, pooled "
                           "vector and logits."})
    return register_backbone(name)(cls)


for _size in SIZES:
    _register(f"swin3d_{_size}", _size, TORCHVISION_PREPROCESSING, "torchvision")
    _register(f"mmaction_swin3d_{_size}", _size, MMACTION_PREPROCESSING, "mmaction2")
