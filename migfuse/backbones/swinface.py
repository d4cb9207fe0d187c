"""SwinFace (Qian & Li 2023, lxq1000/SwinFace, MIT code): Swin-T face backbone + multi-task heads.

The backbone is timm's `SwinTransformer` (img 112, patch 2, window 7, embed 96, depths 2-2-6-2),
which reproduces SwinFace's own Swin bit-exactly (max abs diff 0.0 on the golden outputs, timm 1.0.31)
once the checkpoint goes through timm's `checkpoint_filter_fn` (`_backbone_state_dict`). Written here,
after the paper and the original layer layout (so that the original checkpoint keys load unchanged):

* `feature`: the 512-d recognition embedding MLP (Linear-BN-Linear-BN) on the pooled last stage;
* FAM: 11 task-group branches, each a split 3x3 conv over the 2112-channel local+global stack,
  a CBAM channel gate, ReLU, global max pool and BatchNorm1d;
* TSS: one 2-layer MLP per branch;
* OM: 42 linear heads over the TSS features, returned under the original task names.

migfuse stores only the expression branch (TSS output 2, 512-d) and its 7 logits per face: the
recognition embedding encodes identity and iMiGUE is an identity-free benchmark.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from migfuse.errors import UserError
from migfuse.backbones._torchvision import import_timm
from migfuse.backbones.checkpoints import KeyReport, compare_state_dict
from migfuse.checkpoint_file import CheckpointFile, as_checkpoint
from migfuse.backbones.registry import Backbone, register_backbone

log = logging.getLogger(__name__)

N_BRANCHES = 11
FEATURE_DIM = 512
#: TSS branch that feeds the expression head, and that head's index in `OutputModule.output_fcs`.
EXPRESSION_BRANCH = 2
EXPRESSION_HEAD = 3
#: RAF-DB order of the 7 expression logits (the original trains on RAF-DB labels 1..7 minus 1).
EXPRESSIONS = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")

# Output heads per TSS branch, as in the original OutputModule: (output dict key, classes).
_HEADS: tuple[tuple[tuple[str, int], ...], ...] = (
    (("Gender", 2),),
    (("Age", 1), ("Young", 2)),
    (("Expression", 7), ("Smiling", 2)),
    tuple((n, 2) for n in ("Attractive", "Blurry", "Chubby", "Heavy Makeup", "Oval Face", "Pale Skin")),
    tuple((n, 2) for n in ("Bald", "Bangs", "Black Hair", "Blond Hair", "Brown Hair", "Gray Hair",
                           "Receding Hairline", "Straight Hair", "Wavy Hair", "Wearing Hat")),
    tuple((n, 2) for n in ("Arched Eyebrows", "Bags Under Eyes", "Bushy Eyebrows", "Eyeglasses", "Narrow Eyes")),
    (("Big Nose", 2), ("Pointy Nose", 2)),
    tuple((n, 2) for n in ("High Cheekbones", "Rosy Cheeks", "Wearing Earrings", "Sideburns")),
    tuple((n, 2) for n in ("Five O'Clock Shadow", "Big Lips", "Mouth Slightly Open", "Mustache",
                           "Wearing Lipstick", "No Beard")),
    (("Double Chin", 2), ("Goatee", 2)),
    (("Wearing Necklace", 2), ("Wearing Necktie", 2)),
)
#: (in, out) channels of the split FAM conv: stage-1/2/3 local features + the global features.
_SPLIT_IN = (192, 384, 768, 768)
_SPLIT_OUT = (47, 93, 186, 186)
_CKPT_PARTS = ("backbone", "fam", "tss", "om")


class SplitConv(nn.Module):
    """3x3 convs (no bias) over consecutive channel groups, concatenated. (N,2112,7,7) -> (N,512,7,7)."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1, bias=False) for i, o in zip(_SPLIT_IN, _SPLIT_OUT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, list(_SPLIT_IN), dim=1)
        return torch.cat([conv(p) for conv, p in zip(self.convs, parts)], dim=1)


class ChannelGate(nn.Module):
    """CBAM channel attention: x * sigmoid(mlp(avgpool x) + mlp(maxpool x)), mlp 512 -> 32 -> 512."""

    def __init__(self, channels: int = FEATURE_DIM, reduction: int = 16) -> None:
        super().__init__()
        # index 0 is a flatten in the original, hence keys mlp.1 / mlp.3
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels, channels // reduction), nn.ReLU(),
                                 nn.Linear(channels // reduction, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))
        return x * torch.sigmoid(att)[:, :, None, None]


class FamBranch(nn.Module):
    """One FAM branch. (N,2112,7,7) -> (N,512)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = SplitConv()
        self.channel_attention = ChannelGate()
        self.norm = nn.BatchNorm1d(FEATURE_DIM, eps=2e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.channel_attention(self.conv(x)))
        return self.norm(x.amax(dim=(2, 3)))


class Fam(nn.Module):
    """Feature attention module: 11 branches, state-dict keys `nets.<i>.*`."""

    def __init__(self) -> None:
        super().__init__()
        self.nets = nn.ModuleList(FamBranch() for _ in range(N_BRANCHES))


class TssBranch(nn.Module):
    """Task-specific subnet: Linear-ReLU-Dropout-Linear-ReLU-Dropout (keys feature.0 / feature.3)."""

    def __init__(self) -> None:
        super().__init__()
        self.feature = nn.Sequential(nn.Linear(FEATURE_DIM, FEATURE_DIM), nn.ReLU(), nn.Dropout(0.5),
                                     nn.Linear(FEATURE_DIM, FEATURE_DIM), nn.ReLU(), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature(x)


class Tss(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.nets = nn.ModuleList(TssBranch() for _ in range(N_BRANCHES))


class Om(nn.Module):
    """Output module: one Linear(512, n) per task, flattened over the branches (keys output_fcs.<k>)."""

    def __init__(self) -> None:
        super().__init__()
        self.output_fcs = nn.ModuleList(nn.Linear(FEATURE_DIM, n) for heads in _HEADS for _, n in heads)


def om_task_names() -> list[str]:
    """The 42 analysis task names in `Om.output_fcs` order."""
    return [name for heads in _HEADS for name, _ in heads]


class SwinFace(nn.Module):
    """SwinFace with a timm Swin-T backbone. Input (N,3,112,112) RGB in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        import_timm()  # makes torchvision importable first
        from timm.models.swin_transformer import SwinTransformer

        self.backbone = SwinTransformer(img_size=112, patch_size=2, window_size=7, embed_dim=96,
                                        depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), num_classes=0)
        # the recognition embedding head, kept outside timm under the original key names feature.0-3
        self.feature = nn.Sequential(nn.Linear(768, 768, bias=False), nn.BatchNorm1d(768, eps=2e-5),
                                     nn.Linear(768, FEATURE_DIM, bias=False), nn.BatchNorm1d(FEATURE_DIM, eps=2e-5))
        self.fam = Fam()
        self.tss = Tss()
        self.om = Om()

    def backbone_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,3,112,112) -> local (N,1344,7,7), global (N,768,7,7) (last stage, before the final norm).

        SwinFace's local features are the patch-merged tokens entering stages 1-3; timm merges at the
        start of a stage, so they are the outputs of `layers[1..3].downsample`.
        """
        x = self.backbone.patch_embed(x)  # NHWC
        local = []
        for i, stage in enumerate(self.backbone.layers):
            x = stage.downsample(x)
            if i > 0:
                t = x.permute(0, 3, 1, 2)
                k = t.shape[-1] // 7
                local.append(F.avg_pool2d(t, k) if k > 1 else t)
            x = stage.blocks(x)
        return torch.cat(local, dim=1), x.permute(0, 3, 1, 2).contiguous()

    def pooled(self, global_features: torch.Tensor) -> torch.Tensor:
        """(N,768,7,7) -> (N,768): final LayerNorm, then the mean over the 49 tokens."""
        return self.backbone.norm(global_features.permute(0, 2, 3, 1)).mean(dim=(1, 2))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every output of the original model. (N,3,112,112) -> dict of tensors (shapes in outputs_doc)."""
        local, glob = self.backbone_features(x)
        pooled = self.pooled(glob)
        stack = torch.cat([local, glob], dim=1)
        fam = torch.stack([net(stack) for net in self.fam.nets])
        tss = torch.stack([net(f) for net, f in zip(self.tss.nets, fam)])
        out = {"embedding": self.feature(pooled), "global_features": glob, "local_features": local,
               "backbone_pooled": pooled, "fam_features": fam, "tss_features": tss}
        k = 0
        for branch, heads in enumerate(_HEADS):
            for name, _ in heads:
                out[f"om/{name}"] = self.om.output_fcs[k](tss[branch])
                k += 1
        out["om/Recognition"] = out["embedding"]
        out["expression_logits"] = out["om/Expression"]
        return out

    def expression(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Only what migfuse stores, skipping the 10 other branches (about half the compute).

        (N,3,112,112) -> expression feature (N,512) = TSS output 2, logits (N,7), global tokens (N,49,768).
        """
        local, glob = self.backbone_features(x)
        fam = self.fam.nets[EXPRESSION_BRANCH](torch.cat([local, glob], dim=1))
        feat = self.tss.nets[EXPRESSION_BRANCH](fam)
        logits = self.om.output_fcs[EXPRESSION_HEAD](feat)
        return feat, logits, glob.flatten(2).transpose(1, 2)


def _backbone_state_dict(sd: dict[str, torch.Tensor], model: SwinFace) -> dict[str, torch.Tensor]:
    """SwinFace `state_dict_backbone` -> keys of `model.backbone` + `model.feature`.

    timm's own filter drops the derived buffers (attn_mask, relative_position_index; timm rebuilds
    identical ones) and moves `layers.i.downsample` to `layers.i+1.downsample`. The unused `head`
    (Linear 768->512, never applied by the original forward) is dropped.
    """
    from timm.models.swin_transformer import checkpoint_filter_fn

    swin = {k: v for k, v in sd.items() if not k.startswith("feature.")}
    out = {f"backbone.{k}": v for k, v in checkpoint_filter_fn(swin, model.backbone).items()
           if not k.startswith("head.")}
    out.update({k: v for k, v in sd.items() if k.startswith("feature.")})
    return out


def load_swinface_checkpoint(model: SwinFace, checkpoint: CheckpointFile | str | Path) -> KeyReport:
    """Load an original SwinFace checkpoint (`torch.save`d dict with `state_dict_backbone/fam/tss/om`).

    Other top-level entries (epoch, optimizer, softmax_fc, ...) are ignored. Raises a one-line
    UserError naming the file when it is not a SwinFace checkpoint or its keys do not fit.
    """
    file = as_checkpoint(checkpoint)
    path, ckpt = file.path, file.contents
    if not isinstance(ckpt, dict) or not any(f"state_dict_{p}" in ckpt for p in _CKPT_PARTS):
        found = ", ".join(list(ckpt)[:5]) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(
            f"{path} is not a SwinFace checkpoint: expected a dict with state_dict_backbone/_fam/_tss/_om "
            f"(as SwinFace's train.py saves, e.g. checkpoint_step_79999_gpu_0.pt), found {found}"
        )
    missing = [f"state_dict_{p}" for p in _CKPT_PARTS if f"state_dict_{p}" not in ckpt]
    if missing:
        raise UserError(f"{path} is an incomplete SwinFace checkpoint: {', '.join(missing)} missing "
                        "(pass the full checkpoint_step_*_gpu_0.pt file)")
    sd = _backbone_state_dict(ckpt["state_dict_backbone"], model)
    for part in ("fam", "tss", "om"):
        sd.update({f"{part}.{k}": v for k, v in ckpt[f"state_dict_{part}"].items()})
    rep = compare_state_dict(model.state_dict(), sd)
    rep.raise_if_bad(path, "SwinFace")
    model.load_state_dict(sd, strict=True)
    rep.notes.append("backbone keys remapped by timm checkpoint_filter_fn; derived buffers and unused head dropped")
    return rep


@register_backbone("swinface")
class SwinFaceBackbone(Backbone):
    """Registered `swinface`: the full original model, run on aligned 112x112 faces."""

    tracks = ("face", "face_context")
    checkpoint_doc = "SwinFace .pt (the original file with state_dict_backbone/fam/tss/om)"
    input_doc = "(N, 3, 112, 112) float32 RGB face crops normalised to [-1, 1] ((x/255 - 0.5) / 0.5)"
    outputs_doc = {
        "embedding": "(N, 512) recognition embedding (identity; not stored by migfuse)",
        "global_features": "(N, 768, 7, 7) last Swin stage before the final norm",
        "local_features": "(N, 1344, 7, 7) pooled stage 1-3 tokens",
        "backbone_pooled": "(N, 768)",
        "fam_features": "(11, N, 512) FAM branch outputs",
        "tss_features": "(11, N, 512) task-specific subnet outputs",
        "expression_features": "(N, 512) = tss_features[2], what migfuse stores",
        "expression_logits": "(N, 7) RAF-DB order: " + ", ".join(EXPRESSIONS),
        "om/<task>": "(N, n) each of the 43 original output-dict entries",
    }

    def __init__(self, device: str = "cpu", **options: Any):
        super().__init__(device=device, **options)
        self.device = device
        self.model = SwinFace().eval()

    def load(self, checkpoint: CheckpointFile | str | Path, trusted: bool = False) -> KeyReport:
        ckpt = as_checkpoint(checkpoint, trusted)
        rep = load_swinface_checkpoint(self.model, ckpt)
        self._loaded(ckpt)
        return rep

    @torch.no_grad()
    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (3, 112, 112):
            raise UserError(f"swinface takes input {self.input_doc}, got shape {x.shape}")
        self.model.to(self.device)
        out = self.model(torch.from_numpy(x).to(self.device))
        out["expression_features"] = out["tss_features"][EXPRESSION_BRANCH]
        return {k: v.float().cpu().numpy() for k, v in out.items()}
