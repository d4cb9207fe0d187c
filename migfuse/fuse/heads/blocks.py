"""Building blocks shared by the fusion heads: token embedding, (cross-)attention, FFN, pooling.

Every head sees its inputs as token sets: ``tokens`` (B, N, D) float with a ``mask`` (B, N) bool
(True = real token). Per-video inputs carry a window axis, (B, W, N, D) and (B, W, N); the heads
fold it into the batch where they work per window.
"""
from __future__ import annotations

import torch
from torch import nn


class TokenEmbed(nn.Module):
    """LayerNorm + Linear from the input width to the shared width, plus learned modality and
    position embeddings (one position per token index of the view, so order inside a view - time
    steps, body parts - is available to attention, which is otherwise permutation-invariant).

    (..., N, in_dim) -> (..., N, width)
    """

    def __init__(self, in_dim: int, width: int, n_tokens: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, width)
        self.modality = nn.Parameter(torch.zeros(width))
        self.position = nn.Parameter(torch.zeros(n_tokens, width))
        nn.init.normal_(self.modality, std=0.02)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x)) + self.modality + self.position


class FeedForward(nn.Module):
    """Pre-norm MLP with a residual-friendly output: (B, N, d) -> (B, N, d)."""

    def __init__(self, width: int, mult: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, width * mult), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(width * mult, width), nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Pre-norm multi-head attention of `query` tokens over `context` tokens.

    query (B, Nq, d), context (B, Nk, d), context_mask (B, Nk) bool -> (B, Nq, d).
    Rows whose context is entirely masked (a window without a face, a dropped modality) get a zero
    output instead of the NaN that softmax over no keys would give, so a missing modality simply
    contributes nothing to the residual stream.
    """

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm_q = nn.LayerNorm(width)
        self.norm_k = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)

    def forward(self, query: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        empty = ~context_mask.any(dim=1)  # (B,)
        # Unmask one key of empty rows so softmax stays finite; their output is zeroed below.
        safe_mask = context_mask.clone()
        safe_mask[empty, 0] = True
        out, _ = self.attn(self.norm_q(query), self.norm_k(context), self.norm_k(context),
                           key_padding_mask=~safe_mask, need_weights=False)
        return out.masked_fill(empty[:, None, None], 0.0)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over axis -2 of real tokens: (..., N, d), (..., N) -> (..., d); zeros when none is real."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(-2) / m.sum(-2).clamp(min=1.0)


class AttentionPool(nn.Module):
    """Learned-query attention pooling over a masked axis: (B, N, d), (B, N) -> (B, d).

    Used for temporal pooling over a video's windows: a softmax weight per window lets the head
    focus on the informative windows instead of averaging them all.
    """

    def __init__(self, width: int):
        super().__init__()
        self.score = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s = self.score(x).squeeze(-1).masked_fill(~mask, float("-inf"))
        empty = ~mask.any(dim=1)
        s = s.masked_fill(empty[:, None], 0.0)  # no valid window: plain mean instead of NaN
        w = torch.softmax(s, dim=1)
        return (w.unsqueeze(-1) * x).sum(1)


def drop_modality(mask: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Modality dropout: with probability `p` per sample, mask every token of this input.

    mask (B, ...) bool -> same shape. Teaches a head to predict when a modality is absent (no face
    found in a video, a stream missing) instead of relying on it always being there.
    """
    if not training or p <= 0:
        return mask
    keep = torch.rand(mask.shape[0], device=mask.device) >= p
    return mask & keep.view(-1, *([1] * (mask.dim() - 1)))


def classifier(in_dim: int, num_classes: int, dropout: float) -> nn.Module:
    """LN -> Dropout -> Linear, the head shared by every fusion model."""
    return nn.Sequential(nn.LayerNorm(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, num_classes))
