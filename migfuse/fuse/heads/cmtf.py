"""CMTF: Cross-Modal Token Fusion of video tokens with pose (joint + bone) tokens.

The seed paper (Martirosyan et al., MiGA@IJCAI 2025, arXiv 2512.23291) names the module but publishes
no internals: only its abstract is public ("integrated through a Cross-Modal Token Fusion module to
combine spatial and pose information"), and no code. This is our reconstruction, sized for a laptop
CPU: a training step costs about tokens x width^2 x depth (measured with a CMTF-like head on 2 cores:
width 256, 2 blocks, 33 video + 64 pose tokens = 13.6 ms per clip, 186 s per epoch of 13,670 clips).

    video tokens (B, Nv, 768) --LN+Linear+modality/pos emb--> (B, Nv, d) ----+
    joint tokens (B, Nj, 256) --LN+Linear+modality/pos emb--+                |  depth x block:
    bone  tokens (B, Nb, 256) --LN+Linear+modality/pos emb--+-> concat (B, Np, d)   v <- v + XAttn(v -> p)
                                                                                    p <- p + XAttn(p -> v)
                                                                                    v, p <- + FFN
    [masked mean(v) ; masked mean(p)] (B, 2d) -> LN -> Dropout -> Linear -> (B, C)

Design reasons:
  * Bidirectional cross-attention (not self-attention over the union) is what "cross-modal token
    fusion" suggests, and it costs Nv*Np instead of (Nv+Np)^2 attention scores.
  * Joint and bone streams share the pose side but keep their own projection and modality
    embedding, so attention can tell them apart; each view token keeps a position embedding.
  * Separate pooled video and pose vectors are concatenated, so a clip where one side is
    uninformative still has the other side's summary (and modality dropout can train for that).
  * Defaults (width 64, one block, FFN x2, 9 video + 28 pose tokens from the default views): ~40x
    less arithmetic than the width 256 / 2-block measurement above, so the default recipe trains on
    iMiGUE in minutes on 2 CPU cores (benchmarks/RESULTS.md, fuse section).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from migfuse.fuse.heads import FusionHead, register_head
from migfuse.fuse.heads.blocks import Attention, FeedForward, TokenEmbed, classifier, masked_mean


#: (video side, pose side, the test that runs the pair) for every pair run end to end by the test suite:
#: extraction or import -> `cache view --defaults` -> CMTF -> predict -> export. Only these were tried;
#: any per-clip video-like and pose-like groups fit (`video_inputs`, `pose_inputs`). `fuse heads` lists them.
TRIED_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("MViTv2-S (video/mvit_v2_s)", "2s-AGCN joint + bone (trained by the demo)", "tests/test_demo.py"),
    ("Video Swin (video/swin3d_t)", "PoseC3D joint + bone (joint/posec3d, bone/posec3d)",
     "tests/test_e2e_swin_posec3d.py"),
    ("V-JEPA 2 (video/vjepa2)", "2s-AGCN joint (joint/agcn)", "tests/test_e2e_swin_posec3d.py"),
    ("imported HDF5 features (`cache import --as video`)", "joint tokens in the 2s-AGCN layout (generated)",
     "tests/test_cache_import.py"),
)


class _CrossBlock(nn.Module):
    """One bidirectional cross-attention block: (v, p) -> (v', p'), shapes unchanged."""

    def __init__(self, width: int, heads: int, ffn_mult: int, dropout: float):
        super().__init__()
        self.v_from_p = Attention(width, heads, dropout)
        self.p_from_v = Attention(width, heads, dropout)
        self.ffn_v = FeedForward(width, ffn_mult, dropout)
        self.ffn_p = FeedForward(width, ffn_mult, dropout)

    def forward(self, v, v_mask, p, p_mask):
        # Both directions read the block's input (not each other's update): symmetric by design.
        v, p = v + self.v_from_p(v, p, p_mask), p + self.p_from_v(p, v, v_mask)
        return v + self.ffn_v(v), p + self.ffn_p(p)


@register_head("cmtf")
class CMTF(FusionHead):
    """Video <-> pose bidirectional cross-attention head for micro-gesture classification."""

    tried_pairs = TRIED_PAIRS
    DEFAULTS = {
        "width": 64,               # shared token width d (step time ~ tokens x d^2 x depth, module doc)
        "depth": 1,                # number of bidirectional cross-attention blocks
        "heads": 4,                # attention heads (width must be divisible by it)
        "ffn_mult": 2,             # FFN hidden width = ffn_mult x width
        "dropout": 0.1,            # dropout in attention, FFN and before the classifier
        "modality_dropout": 0.1,   # training only: prob. per sample of hiding all video or all pose tokens
        "video_inputs": ["video"],           # inputs on the video side (cache modalities)
        "pose_inputs": ["joint", "bone"],    # inputs on the pose side; e.g. ["joint"] for one stream
    }

    @classmethod
    def required_inputs(cls, options: Mapping[str, Any]) -> list[str]:
        return list(options["video_inputs"]) + list(options["pose_inputs"])

    def __init__(self, shapes, num_classes, options):
        super().__init__(shapes, num_classes, options)
        d = options["width"]
        self.video_inputs = list(options["video_inputs"])
        self.pose_inputs = list(options["pose_inputs"])
        for name in self.video_inputs + self.pose_inputs:
            if len(self.shapes[name]) != 2:
                raise ValueError(f"CMTF takes per-clip tokens (N, D); input {name!r} has shape {self.shapes[name]}")
        self.embed = nn.ModuleDict({name: TokenEmbed(self.shapes[name][1], d, self.shapes[name][0])
                                    for name in self.video_inputs + self.pose_inputs})
        self.blocks = nn.ModuleList([_CrossBlock(d, options["heads"], options["ffn_mult"], options["dropout"])
                                     for _ in range(options["depth"])])
        self.head = classifier(2 * d, num_classes, options["dropout"])

    def _side(self, names: list[str], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([self.embed[n](batch[n]) for n in names], dim=1)
        m = torch.cat([batch[f"{n}_mask"] for n in names], dim=1)
        return x, m

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        v, v_mask = self._side(self.video_inputs, batch)
        p, p_mask = self._side(self.pose_inputs, batch)
        pd = self.options["modality_dropout"]
        if self.training and pd > 0:
            # Hide one side of a sample, never both: half of the dropped samples lose video, half pose.
            dropped = torch.rand(v.shape[0]) < pd
            drop_video = dropped & (torch.rand(v.shape[0]) < 0.5)
            v_mask = v_mask & ~drop_video[:, None]
            p_mask = p_mask & ~(dropped & ~drop_video)[:, None]
        for block in self.blocks:
            v, p = block(v, v_mask, p, p_mask)
        return self.head(torch.cat([masked_mean(v, v_mask), masked_mean(p, p_mask)], dim=-1))

