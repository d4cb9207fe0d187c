"""mmaction2 1.x 2s-AGCN (`AAGCN(gcn_attention=False)` + `GCNHead`), and the `aagcn` backbone.

Differs from lshiwjx/2s-AGCN (see agcn.py): each block owns a learnable A (initialised from the graph,
no separate PA) and the data-dependent term is `alpha * tanh(theta^T phi / (Ci*T))` instead of a softmax.
Attribute names follow mmaction2 so the state dict has its keys (`backbone.gcn.4.gcn.A`,
`cls_head.fc.weight`, ...) and its released checkpoints (dict with `meta` + `state_dict`) load as they are.
Input as `RecognizerGCN.extract_feat` takes it: (N, num_clips, M, T, V, C).
"""
from __future__ import annotations


import numpy as np
import torch
from torch import nn

from migfuse.errors import UserError
from migfuse.backbones.registry import register_backbone
from migfuse.backbones.agcn import SkeletonBackbone, TemporalConv, _Zero
from migfuse.backbones.graphs import Layout, spatial_adjacency


class AdaptiveGraphConvMM(nn.Module):
    """mmaction2 `unit_aagcn(adaptive=True, attention=False)`: (N, C, T, V) -> (N, C', T, V)."""

    def __init__(self, in_channels: int, out_channels: int, A: torch.Tensor, coff_embedding: int = 4):
        super().__init__()
        self.inter_c = out_channels // coff_embedding
        subsets = A.shape[0]
        self.conv_d = nn.ModuleList(nn.Conv2d(in_channels, out_channels, 1) for _ in range(subsets))
        self.A = nn.Parameter(A.clone())
        self.alpha = nn.Parameter(torch.zeros(1))  # starts as the plain graph, attention grows in training
        self.conv_a = nn.ModuleList(nn.Conv2d(in_channels, self.inter_c, 1) for _ in range(subsets))
        self.conv_b = nn.ModuleList(nn.Conv2d(in_channels, self.inter_c, 1) for _ in range(subsets))
        self.down = (nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))
                     if in_channels != out_channels else nn.Identity())
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, v = x.shape
        flat = x.view(n, c * t, v)
        y = None
        for k in range(self.A.shape[0]):
            theta = self.conv_a[k](x).permute(0, 3, 1, 2).reshape(n, v, self.inter_c * t)
            phi = self.conv_b[k](x).view(n, self.inter_c * t, v)
            attn = self.A[k] + torch.tanh(theta @ phi / theta.shape[-1]) * self.alpha
            z = self.conv_d[k]((flat @ attn).view(n, c, t, v))
            y = z if y is None else y + z
        return self.relu(self.bn(y) + self.down(x))


class AAGCNBlock(nn.Module):
    """mmaction2 `AAGCNBlock`: relu(tcn(gcn(x)) + residual(x))."""

    def __init__(self, in_channels: int, out_channels: int, A: torch.Tensor, stride: int = 1,
                 residual: bool = True):
        super().__init__()
        self.gcn = AdaptiveGraphConvMM(in_channels, out_channels, A)
        self.tcn = TemporalConv(out_channels, out_channels, stride=stride)
        self.relu = nn.ReLU()
        if not residual:
            self.residual: nn.Module = _Zero()
        elif in_channels == out_channels and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = TemporalConv(in_channels, out_channels, kernel_size=1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.tcn(self.gcn(x)) + self.residual(x))


class AAGCNBackboneNet(nn.Module):
    """mmaction2 `AAGCN` (data_bn 'MVC', 10 stages, inflate/down at stages 5 and 8):
    (N, M, T, V, C) -> (N, M, 4*base, ceil(T/4), V)."""

    def __init__(self, layout: Layout, num_person: int = 2, in_channels: int = 3, base_channels: int = 64):
        super().__init__()
        A = torch.tensor(spatial_adjacency(layout), dtype=torch.float32)
        self.register_buffer("A", A)  # in mmaction2's state dict; only seeds the per-block A
        self.data_bn = nn.BatchNorm1d(num_person * in_channels * layout.num_node)
        blocks = [AAGCNBlock(in_channels, base_channels, A, residual=False)]
        c = base_channels
        for stage in range(2, 11):
            out = c * 2 if stage in (5, 8) else c
            blocks.append(AAGCNBlock(c, out, A, stride=2 if stage in (5, 8) else 1))
            c = out
        self.gcn = nn.ModuleList(blocks)
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, m, t, v, c = x.shape
        x = self.data_bn(x.permute(0, 1, 3, 4, 2).reshape(n, m * v * c, t))
        x = x.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)
        for block in self.gcn:
            x = block(x)
        return x.reshape((n, m) + x.shape[1:])


class GCNHead(nn.Module):
    """mmaction2 `GCNHead`: average over (T', V), mean over persons, fc -> (N, num_class)."""

    def __init__(self, num_class: int, in_channels: int):
        super().__init__()
        self.fc = nn.Linear(in_channels, num_class)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, m, c = x.shape[:3]
        return self.fc(x.reshape(n, m, c, -1).mean(3).mean(1))


class RecognizerGCN(nn.Module):
    """backbone + cls_head, named as mmaction2's RecognizerGCN so the keys match."""

    def __init__(self, layout: Layout, num_class: int = 32, num_person: int = 1, base_channels: int = 64):
        super().__init__()
        self.backbone = AAGCNBackboneNet(layout, num_person=num_person, base_channels=base_channels)
        self.cls_head = GCNHead(num_class, self.backbone.out_channels)
        self.out_channels = self.backbone.out_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, V, M) (the 2s-AGCN layout, used by training and extraction) -> (N*M, C', T', V)."""
        feats = self.backbone(x.permute(0, 4, 2, 3, 1))
        return feats.reshape((-1,) + feats.shape[2:])

    def head(self, feats: torch.Tensor, num_person: int) -> torch.Tensor:
        return self.cls_head(feats.reshape((-1, num_person) + feats.shape[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x), x.shape[-1])


@register_backbone("aagcn")
class AAGCNBackbone(SkeletonBackbone):
    """mmaction2 2s-AGCN. Checkpoint: mmengine dict with `meta` and `state_dict` (`backbone.*`, `cls_head.*`)."""
    input_doc = "(N, num_clips, M, T, V, C=3) float32 (mmaction2 RecognizerGCN layout)"
    outputs_doc = {"backbone_features": "(N*num_clips, M, 256, ceil(T/4), V)",
                   "cls_scores": "(N*num_clips, num_class) raw logits"}
    joints_key, fc_key, bn_key, what = "backbone.gcn.0.gcn.A", "cls_head.fc.weight", \
        "backbone.data_bn.running_mean", "mmaction2 2s-AGCN"
    source = "open-mmlab/mmaction2 models/backbones/aagcn.py"

    def build(self, layout: Layout, num_class: int, num_person: int | None, base_channels: int) -> nn.Module:
        return RecognizerGCN(layout, num_class=num_class, num_person=num_person or 1, base_channels=base_channels)

    @torch.no_grad()
    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """(N, clips, M, T, V, C) -> backbone_features (N*clips, M, 256, T', V), cls_scores (N*clips, classes)."""
        x = np.asarray(x, dtype=np.float32)
        v = self.layout.num_node
        if x.ndim != 6 or x.shape[4] != v:
            raise UserError(f"aagcn input must be (N, clips, M, T, V={v}, C) for layout '{self.layout.name}', "
                            f"got {x.shape} (pass --layout matching the data)")
        feats = self.model.backbone(torch.from_numpy(x).reshape((-1,) + x.shape[2:]).to(self.device))
        return {"backbone_features": feats.float().cpu().numpy(),
                "cls_scores": self.model.cls_head(feats).float().cpu().numpy()}
