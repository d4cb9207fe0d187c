"""Single-modality heads (video, pose, face, context): the baselines each fusion head must beat.

    tokens of the listed inputs --embed (own projection + modality/pos emb)--> concat (B, N, d)
    depth x pre-norm self-attention + FFN -> masked mean -> LN -> Dropout -> Linear -> (B, C)

Per-video inputs (B, W, N, D) are encoded per window and the windows mean-pooled (masked), so the
same head serves clip-level micro-gestures and video-level emotion. `inputs` may list several
modalities: "pose" is joint + bone, and listing e.g. video + joint + bone gives a plain
concatenation-fusion baseline for CMTF.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from migfuse.fuse.heads import FusionHead, register_head
from migfuse.fuse.heads.blocks import Attention, FeedForward, TokenEmbed, classifier, masked_mean


class _SelfBlock(nn.Module):
    def __init__(self, width: int, heads: int, ffn_mult: int, dropout: float):
        super().__init__()
        self.attn = Attention(width, heads, dropout)
        self.ffn = FeedForward(width, ffn_mult, dropout)

    def forward(self, x, mask):
        x = x + self.attn(x, x, mask)
        return x + self.ffn(x)


class TokenHead(FusionHead):
    """Self-attention over the tokens of the listed inputs (one modality, or a plain concatenation)."""

    DEFAULTS = {
        "width": 64,        # token width d
        "depth": 1,         # self-attention blocks (0 = mean of projected tokens, a linear probe)
        "heads": 4,         # attention heads
        "ffn_mult": 2,      # FFN hidden width = ffn_mult x width
        "dropout": 0.1,     # dropout in attention, FFN and before the classifier
        "inputs": [],       # cache modalities read; set by each registered variant below
    }

    @classmethod
    def required_inputs(cls, options: Mapping[str, Any]) -> list[str]:
        return list(options["inputs"])

    def __init__(self, shapes, num_classes, options):
        super().__init__(shapes, num_classes, options)
        d = options["width"]
        self.inputs = list(options["inputs"])
        ranks = {len(self.shapes[n]) for n in self.inputs}
        if len(ranks) != 1:
            raise ValueError(f"inputs {self.inputs} mix per-clip and per-video tokens")
        self.embed = nn.ModuleDict({n: TokenEmbed(self.shapes[n][-1], d, self.shapes[n][-2]) for n in self.inputs})
        self.blocks = nn.ModuleList([_SelfBlock(d, options["heads"], options["ffn_mult"], options["dropout"])
                                     for _ in range(options["depth"])])
        self.head = classifier(d, num_classes, options["dropout"])

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([self.embed[n](batch[n]) for n in self.inputs], dim=-2)
        mask = torch.cat([batch[f"{n}_mask"] for n in self.inputs], dim=-1)
        per_video = x.dim() == 4
        if per_video:
            B, W = x.shape[:2]
            x, mask = x.flatten(0, 1), mask.flatten(0, 1)
        for block in self.blocks:
            x = block(x, mask)
        pooled = masked_mean(x, mask)
        if per_video:
            pooled = masked_mean(pooled.view(B, W, -1), mask.view(B, W, -1).any(-1))
        return self.head(pooled)


def _variant(name: str, inputs: list[str]) -> type[TokenHead]:
    cls = type(f"{name.capitalize()}Head", (TokenHead,), {
        "DEFAULTS": {**TokenHead.DEFAULTS, "inputs": inputs},
        "__doc__": f"Single-modality head on {' + '.join(inputs)} tokens.",
    })
    return register_head(name)(cls)


VideoHead = _variant("video", ["video"])
PoseHead = _variant("pose", ["joint", "bone"])
FaceHead = _variant("face", ["face"])
ContextHead = _variant("context", ["context"])
