"""InterFusion: gated bidirectional fusion of face-frame features and scene-context tokens, per
window, then temporal pooling over a video's windows (binary win/lose emotion head).

The seed paper (arXiv 2512.23291) names the module but publishes no internals (only its abstract is
public, and no code); this is our reconstruction of "facial and contextual embeddings ... fused by
InterFusion":

    per window w of a video (folded into the batch):
      face    (K, 512+7) masked --embed--> f (K, d)        context (Nc, 768) --embed--> c (Nc, d)
      depth x:  f <- f + g_f * XAttn(f -> c)      g_f = sigmoid(Linear([f ; XAttn(f -> c)]))
                c <- c + g_c * XAttn(c -> f)      g_c likewise; keys of absent faces masked
                f, c <- + FFN
      window vector = [masked mean(f) (or a learned "no face" vector) ; masked mean(c)]   (2d)
    attention pooling over valid windows (B, W, 2d) -> (B, 2d) -> LN -> Dropout -> Linear -> (B, 2)

Design reasons:
  * Gates: per-token, per-channel sigmoid gates decide how much of the other modality to mix in,
    so a window with blurry or few faces can fall back on context ("gated residual mixing").
  * Faces are often missing (profile views, no detection): attention over an empty face set
    contributes zero, the window uses a learned "no face" vector, and `face_dropout` hides all
    faces of a training video with some probability, so the head learns to predict without them.
  * Temporal attention pooling: an emotion is expressed in a few moments of a press conference,
    not uniformly; a softmax over windows lets the head weight them.
  * Small (width 64, one block): emotion has ~100 training videos, a big head would overfit.
Inputs may also be per clip, (N, D): they are then treated as one window.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from migfuse.fuse.heads import FusionHead, register_head
from migfuse.fuse.heads.blocks import (Attention, AttentionPool, FeedForward, TokenEmbed, classifier,
                                       drop_modality, masked_mean)


class _GatedCross(nn.Module):
    """x <- x + sigmoid(W[x ; a]) * a with a = XAttn(x -> y): (B, Nx, d) -> (B, Nx, d)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.attn = Attention(width, heads, dropout)
        self.gate = nn.Linear(2 * width, width)
        nn.init.constant_(self.gate.bias, -1.0)  # start mostly closed: each side first learns alone

    def forward(self, x, y, y_mask):
        a = self.attn(x, y, y_mask)
        return x + torch.sigmoid(self.gate(torch.cat([x, a], dim=-1))) * a


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, ffn_mult: int, dropout: float):
        super().__init__()
        self.f_from_c = _GatedCross(width, heads, dropout)
        self.c_from_f = _GatedCross(width, heads, dropout)
        self.ffn_f = FeedForward(width, ffn_mult, dropout)
        self.ffn_c = FeedForward(width, ffn_mult, dropout)

    def forward(self, f, f_mask, c, c_mask):
        f, c = self.f_from_c(f, c, c_mask), self.c_from_f(c, f, f_mask)
        return f + self.ffn_f(f), c + self.ffn_c(c)


def as_windows(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-clip (B, N, D)/(B, N) -> one window (B, 1, N, D)/(B, 1, N); per-video inputs unchanged."""
    return (x.unsqueeze(1), mask.unsqueeze(1)) if x.dim() == 3 else (x, mask)


@register_head("interfusion")
class InterFusion(FusionHead):
    """Face x context gated cross-attention per window + temporal pooling, for emotion."""

    DEFAULTS = {
        "width": 64,             # shared token width d
        "depth": 1,              # gated bidirectional cross-attention blocks
        "heads": 4,              # attention heads
        "ffn_mult": 2,           # FFN hidden width = ffn_mult x width
        "dropout": 0.2,          # dropout in attention, FFN and before the classifier
        "face_dropout": 0.3,     # training only: prob. per video of hiding all its faces
        "context_dropout": 0.1,  # training only: prob. per video of hiding all its context tokens
        "face_input": "face_context",  # cache modality of the face-frame features (per video window)
        "context_input": "context",  # cache modality of the scene-context tokens
    }

    @classmethod
    def required_inputs(cls, options: Mapping[str, Any]) -> list[str]:
        return [options["face_input"], options["context_input"]]

    def __init__(self, shapes, num_classes, options):
        super().__init__(shapes, num_classes, options)
        d = options["width"]
        self.face_key, self.ctx_key = options["face_input"], options["context_input"]
        fs, cs = self.shapes[self.face_key], self.shapes[self.ctx_key]
        if len(fs) == 3 and len(cs) == 3 and fs[0] != cs[0]:
            raise ValueError(f"face has {fs[0]} windows but context has {cs[0]}: they must be the same windows")
        self.embed_face = TokenEmbed(fs[-1], d, fs[-2])
        self.embed_ctx = TokenEmbed(cs[-1], d, cs[-2])
        self.blocks = nn.ModuleList([_Block(d, options["heads"], options["ffn_mult"], options["dropout"])
                                     for _ in range(options["depth"])])
        self.no_face = nn.Parameter(torch.zeros(d))
        self.pool = AttentionPool(2 * d)
        self.head = classifier(2 * d, num_classes, options["dropout"])

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        face, f_mask = as_windows(batch[self.face_key], batch[f"{self.face_key}_mask"])
        ctx, c_mask = as_windows(batch[self.ctx_key], batch[f"{self.ctx_key}_mask"])
        f_mask = drop_modality(f_mask, self.options["face_dropout"], self.training)
        c_mask = drop_modality(c_mask, self.options["context_dropout"], self.training)
        B, W = ctx.shape[:2]
        window_valid = c_mask.any(-1) | f_mask.any(-1)  # (B, W)
        # Fold windows into the batch: fusion happens inside one window.
        f = self.embed_face(face).flatten(0, 1)
        c = self.embed_ctx(ctx).flatten(0, 1)
        fm, cm = f_mask.flatten(0, 1), c_mask.flatten(0, 1)
        for block in self.blocks:
            f, c = block(f, fm, c, cm)
        has_face = fm.any(-1, keepdim=True)
        f_vec = torch.where(has_face, masked_mean(f, fm), self.no_face)
        window = torch.cat([f_vec, masked_mean(c, cm)], dim=-1).view(B, W, -1)
        return self.head(self.pool(window, window_valid))
