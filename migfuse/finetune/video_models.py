"""The per-backbone parts of `backbone train video`: one adapter per family of trainable video backbones.

    family = video_family("swin3d_t")               # UserError naming the trainable ones for any other name
    weights, base = family.build(cfg, checkpoint)   # base weights + a fresh 32-class head; base provenance
    logits = family.forward(weights, x, dropout)    # (B, 3, T, H, W) normalised clips -> (B, 32)
    n, layer_id = family.layers(weights)            # layer_id(name): depth 0..n+1 for layer-wise lr decay
    family.no_weight_decay(name, param)

`weights` is the module whose `state_dict()` goes into best.pt, in the key names the backbone's own
loader reads (so `extract video --backbone NAME --checkpoint RUN/best.pt` takes it):
  * mvit_v2_s: torchvision's MViT (as before: kind "mvit_v2_s fine-tuned", `width` in the meta);
  * swin3d_* / mmaction_swin3d_*: torchvision's SwinTransformer3d, `head` a 32-class Linear; the
    architecture is the base file's (`swin3d.py` reads it back from the shapes);
  * videomae / vjepa2: `HFClassifier`, `model.*` = transformers' encoder model, `head.*` = LayerNorm +
    Linear on the mean of the last hidden state; the base folder's config.json (`hf_config`) and
    recipe go into the meta, so `hf_video` rebuilds the model from best.pt alone.
The input is each backbone's registry recipe (`Backbone.preprocessing`, or the folder's for the
transformers ViTs): frames, resize, crop and mean/std exactly as extraction feeds it.

A plug-in makes its backbone trainable with `register_family(name, adapter)`.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Callable

import torch
from torch import nn

from migfuse.backbones import fine_tuned
from migfuse.checkpoint_file import CheckpointFile
from migfuse.datasets.classes import NUM_CLASSES
from migfuse.errors import UserError

log = logging.getLogger(__name__)


class VideoFamily:
    """How `backbone train video` builds, runs and groups the parameters of one backbone."""

    def __init__(self, backbone: str):
        self.backbone = backbone
        self.kind = fine_tuned.kind_of(backbone)
        #: the input recipe (clip_len, resize_short_side, crop_size, mean, std) of the built model, set by `build`
        self.preprocessing: dict[str, Any] = {}

    def recipe(self, checkpoint: CheckpointFile | None) -> dict[str, Any]:
        """The registry recipe of the backbone with this base checkpoint (known before building)."""
        from migfuse.backbones.registry import backbone_class

        return dict(backbone_class(self.backbone).recipe(checkpoint))

    def build(self, cfg: dict[str, Any], base: CheckpointFile | None) -> tuple[nn.Module, dict[str, Any]]:
        """(weights module with a fresh NUM_CLASSES head, provenance of the base and the model)."""
        raise NotImplementedError

    def forward(self, weights: nn.Module, x: torch.Tensor, dropout: nn.Module,
                checkpointing: bool = False) -> torch.Tensor:
        """(B, 3, T, H, W) normalised clips -> (B, NUM_CLASSES) logits."""
        raise NotImplementedError

    def layers(self, weights: nn.Module) -> tuple[int, Callable[[str], int]]:
        """(N, depth of a parameter name): N blocks between the embedding (depth 0) and the final norm +
        head (depth N + 1), for layer-wise lr decay."""
        raise NotImplementedError

    def no_weight_decay(self, name: str, param: torch.Tensor) -> bool:
        """Norms and biases (1-D) get none; subclasses add tokens and position tables."""
        return param.ndim <= 1


def _fresh_head(in_features: int) -> nn.Linear:
    head = nn.Linear(in_features, NUM_CLASSES)
    nn.init.trunc_normal_(head.weight, std=0.02)  # torchvision's MViT / Swin initialisation
    nn.init.zeros_(head.bias)
    return head


def _base_info(base: CheckpointFile | None, bb: Any) -> dict[str, Any]:
    info = {"base_checkpoint": str(base) if base is not None else None,
            "base_checkpoint_sha256": bb.checkpoint_sha256 if base is not None else None}
    chain = getattr(bb, "fine_tune", None)
    if chain:  # fine-tuning a fine-tuned run again: keep the chain
        info["base_fine_tune"] = {k: chain.get(k) for k in ("run_id", "base_checkpoint_sha256")}
    return info


def _random_warning(backbone: str) -> None:
    from migfuse.backbones.registry import backbone_class

    log.warning("NO BASE CHECKPOINT: fine-tuning %s starts from RANDOM weights; pass --checkpoint (%s) for a "
                "real run", backbone, backbone_class(backbone).checkpoint_doc)


class MViTFamily(VideoFamily):
    """torchvision MViTv2-S: the weights module is the MViT itself (head = head[1] after head[0]'s dropout)."""

    def __init__(self, backbone: str = "mvit_v2_s"):
        super().__init__(backbone)

    def build(self, cfg: dict[str, Any], base: CheckpointFile | None) -> tuple[nn.Module, dict[str, Any]]:
        from migfuse.backbones.mvit import MViTBackbone

        torch.manual_seed(cfg["seed"])
        bb = MViTBackbone(num_classes=400, width=cfg["width"], drop_path=cfg["drop_path"])
        if base is not None:
            bb.load(base)
            if bb.width != cfg["width"]:
                raise UserError(f"{base} is a {bb.width}-width model; train it with --set width={bb.width}")
        else:
            _random_warning(self.backbone)
        model = bb.model
        model.head[0].p = cfg["head_dropout"]
        model.head[1] = _fresh_head(model.head[1].in_features)
        self.preprocessing = dict(bb.preprocessing)
        return model, _base_info(base, bb)

    def forward(self, weights: nn.Module, x: torch.Tensor, dropout: nn.Module,
                checkpointing: bool = False) -> torch.Tensor:
        from migfuse.backbones.mvit import forward_tokens

        return forward_tokens(weights, x, checkpointing)[1]  # the head's own dropout (head[0])

    def layers(self, weights: nn.Module) -> tuple[int, Callable[[str], int]]:
        """conv_proj and pos_encoding 0, blocks.i -> i + 1, the final norm and head N + 1."""
        n = len(weights.blocks)

        def layer_id(name: str) -> int:
            if name.startswith(("conv_proj.", "pos_encoding.")):
                return 0
            if name.startswith("blocks."):
                return int(name.split(".")[1]) + 1
            return n + 1

        return n, layer_id

    def no_weight_decay(self, name: str, param: torch.Tensor) -> bool:
        """Also the class token and the relative position tables."""
        return param.ndim <= 1 or name.startswith("pos_encoding.") or ".rel_pos_" in name


class SwinFamily(VideoFamily):
    """torchvision SwinTransformer3d (swin3d_* and mmaction_swin3d_*: the name decides the recipe)."""

    def build(self, cfg: dict[str, Any], base: CheckpointFile | None) -> tuple[nn.Module, dict[str, Any]]:
        from migfuse.backbones.registry import backbone_class

        torch.manual_seed(cfg["seed"])
        bb = backbone_class(self.backbone)(drop_path=cfg["drop_path"])
        if base is not None:
            bb.load(base)
        else:
            _random_warning(self.backbone)
        model = bb.model
        model.head = _fresh_head(bb.arch.num_features)
        self.preprocessing = dict(bb.preprocessing)
        return model, {**_base_info(base, bb), "architecture": bb.provenance()["architecture"]}

    def forward(self, weights: nn.Module, x: torch.Tensor, dropout: nn.Module,
                checkpointing: bool = False) -> torch.Tensor:
        """`swin3d.forward_features` (tokens, mean pool: extraction's own function), then dropout and the head."""
        from migfuse.backbones.swin3d import forward_features

        _, pooled, _ = forward_features(weights, x, checkpointing)
        return weights.head(dropout(pooled))

    def layers(self, weights: nn.Module) -> tuple[int, Callable[[str], int]]:
        """patch_embed 0; block j of stage s -> (blocks of the stages before) + j + 1; the patch merging
        after stage s (features.2s+1) -> the depth of that stage's last block; the final norm and head N + 1."""
        depths = [len(stage) for i, stage in enumerate(weights.features) if i % 2 == 0]
        n = sum(depths)

        def layer_id(name: str) -> int:
            if name.startswith("patch_embed."):
                return 0
            m = re.match(r"^features\.(\d+)\.(\d+)?", name)
            if not m:
                return n + 1
            stage, merging = divmod(int(m.group(1)), 2)
            if merging:
                return sum(depths[:stage + 1])
            return sum(depths[:stage]) + int(m.group(2)) + 1

        return n, layer_id

    def no_weight_decay(self, name: str, param: torch.Tensor) -> bool:
        """Also the relative position bias tables."""
        return param.ndim <= 1 or name.endswith("relative_position_bias_table")



class HFClassifier(nn.Module):
    """A transformers video encoder (`model`) with a classifier on the mean of its last hidden state:
    `head` = LayerNorm + Linear. The encoder's keys are `model.<its own key>` in best.pt."""

    def __init__(self, model: nn.Module, hidden_state: Callable[[torch.Tensor], torch.Tensor], hidden_size: int):
        super().__init__()
        self.model = model
        self.hidden_state = hidden_state  # the backbone's own: (B, T, 3, H, W) -> last hidden state, on `model`
        self.head = nn.Sequential(nn.LayerNorm(hidden_size), _fresh_head(hidden_size))
        self.checkpointing = False  # transformers' gradient checkpointing is on (`HFFamily.forward`)


def _switch_checkpointing(model: nn.Module, on: bool) -> None:
    """transformers' activation checkpointing on or off (its older name where that is all there is)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_disable()


def _set_drop_path(model: nn.Module, rate: float) -> None:
    """Stochastic depth linear in depth up to `rate` on the encoder layers of a transformers model that
    has it (V-JEPA 2's `drop_path`, built as Identity when the folder's config says 0; VideoMAE has
    none). The drop-path modules hold no weights, so best.pt's keys stay the folder's."""
    import sys

    modeling = sys.modules[type(model).__module__]
    drop_path = next((getattr(modeling, n) for n in dir(modeling) if n.endswith("DropPath")), None)
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if drop_path is None or layers is None or rate <= 0:
        return
    for i, layer in enumerate(layers):
        if hasattr(layer, "drop_path"):
            layer.drop_path = drop_path(rate * i / max(1, len(layers) - 1))


class HFFamily(VideoFamily):
    """VideoMAE / V-JEPA 2 through transformers, from a local model folder (or a best.pt of one)."""

    def build(self, cfg: dict[str, Any], base: CheckpointFile | None) -> tuple[nn.Module, dict[str, Any]]:
        from migfuse.backbones.registry import backbone_class

        torch.manual_seed(cfg["seed"])
        bb = backbone_class(self.backbone)()
        if base is not None:
            bb.load(base)
        else:
            _random_warning(self.backbone)
        model = bb.model.train()
        _set_drop_path(model, cfg["drop_path"])
        for name, p in model.named_parameters():
            if name.startswith(getattr(bb, "unused_prefixes", ())):
                p.requires_grad_(False)  # V-JEPA 2's predictor: the tokens never pass through it
        weights = HFClassifier(model, bb.hidden_state, int(bb.config.hidden_size))  # bb.model is `model`
        self.preprocessing = dict(bb.preprocessing)
        # the config that rebuilds the model from best.pt (`hf_video`); not the transformers version that wrote
        # it, so a run resumes after an upgrade
        hf_config = {k: v for k, v in bb.config.to_dict().items() if k != "transformers_version"}
        info = {**_base_info(base, bb), "hf_config": hf_config, "model_type": bb.model_type,
                "model_folder": bb.model_folder, **bb.folder_licence}
        return weights, info

    def forward(self, weights: nn.Module, x: torch.Tensor, dropout: nn.Module,
                checkpointing: bool = False) -> torch.Tensor:
        if checkpointing != weights.checkpointing:  # transformers' own, per encoder layer (in train mode)
            _switch_checkpointing(weights.model, checkpointing)
            weights.checkpointing = checkpointing
        hidden = weights.hidden_state(x.permute(0, 2, 1, 3, 4))  # transformers: frames first
        return weights.head[1](dropout(weights.head[0](hidden.mean(1))))

    def layers(self, weights: nn.Module) -> tuple[int, Callable[[str], int]]:
        """The embeddings 0, encoder layer i -> i + 1, the final norm and the head N + 1."""
        n = int(weights.model.config.num_hidden_layers)

        def layer_id(name: str) -> int:
            if "embeddings." in name:
                return 0
            m = re.search(r"(?:^|\.)layer\.(\d+)\.", name)
            return int(m.group(1)) + 1 if m else n + 1

        return n, layer_id

    def no_weight_decay(self, name: str, param: torch.Tensor) -> bool:
        """Also position embeddings and class / mask tokens."""
        return param.ndim <= 1 or "position_embeddings" in name or name.endswith(("cls_token", "mask_token"))


#: name -> adapter factory; `list(TRAINABLE)` is what the errors name.
TRAINABLE: dict[str, Callable[[str], VideoFamily]] = {
    "mvit_v2_s": MViTFamily,
    **{f"{family}_{size}": SwinFamily for family in ("swin3d", "mmaction_swin3d") for size in "tsb"},
    "videomae": HFFamily,
    "vjepa2": HFFamily,
}


def register_family(name: str, adapter: Callable[[str], VideoFamily]) -> None:
    """Make a registered video backbone trainable by `backbone train video --backbone NAME`."""
    TRAINABLE[name] = adapter


def video_family(name: str) -> VideoFamily:
    """The adapter of backbone `name`. UserError (one line) for a name that is not trainable here."""
    if name not in TRAINABLE:
        from migfuse.backbones.registry import BACKBONES

        what = "cannot be fine-tuned by `backbone train video`" if name in BACKBONES.names() else "is no backbone"
        raise UserError(f"--backbone {name} {what}: choose one of {', '.join(TRAINABLE)}")
    return TRAINABLE[name](name)
