"""2s-AGCN as lshiwjx/2s-AGCN model/agcn.py builds it, and the `agcn` backbone.

Attribute names follow the original so `model.state_dict()` has the original keys (`data_bn.*`,
`l1.gcn1.PA`, `l5.residual.conv.weight`, `fc.*`, ...) and the published flat checkpoints load as they
are. The fixed graph `A` is a non-persistent buffer: the original keeps it outside the state dict.

Per unit: y = relu(tcn(gcn(x)) + residual(x)); gcn sums, over the 3 subsets k,
conv_d[k](x @ (A[k] + PA[k] + softmax_{dim -2}(theta_k(x)^T phi_k(x) / (Ci*T)))), then BN, plus `down`, relu.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from migfuse.errors import UserError
from migfuse.backbones.checkpoints import KeyReport, apply_renames, compare_state_dict, fill_batchnorm_counters
from migfuse.checkpoint_file import CheckpointFile, as_checkpoint
from migfuse.backbones.registry import Backbone, register_backbone
from migfuse.backbones.graphs import LAYOUT_BY_JOINTS, Layout, get_layout, spatial_adjacency

log = logging.getLogger(__name__)


class TemporalConv(nn.Module):
    """Conv (k, 1) over time + BN, no activation (2s-AGCN `unit_tcn`): (N, C, T, V) -> (N, C', T/s, V)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 9, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, (kernel_size, 1), padding=((kernel_size - 1) // 2, 0),
                              stride=(stride, 1))
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class AdaptiveGraphConv(nn.Module):
    """2s-AGCN `unit_gcn`: fixed A + learned PA (B) + data-dependent softmax attention (C)."""

    def __init__(self, in_channels: int, out_channels: int, A: np.ndarray, coff_embedding: int = 4):
        super().__init__()
        self.inter_c = out_channels // coff_embedding
        subsets = A.shape[0]
        self.register_buffer("A", torch.from_numpy(A.astype(np.float32)), persistent=False)
        self.PA = nn.Parameter(torch.full(A.shape, 1e-6, dtype=torch.float32))
        self.conv_a = nn.ModuleList(nn.Conv2d(in_channels, self.inter_c, 1) for _ in range(subsets))
        self.conv_b = nn.ModuleList(nn.Conv2d(in_channels, self.inter_c, 1) for _ in range(subsets))
        self.conv_d = nn.ModuleList(nn.Conv2d(in_channels, out_channels, 1) for _ in range(subsets))
        self.down = (nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))
                     if in_channels != out_channels else nn.Identity())
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, v = x.shape
        graph = self.A + self.PA
        flat = x.view(n, c * t, v)
        y = None
        for k in range(graph.shape[0]):
            theta = self.conv_a[k](x).permute(0, 3, 1, 2).reshape(n, v, self.inter_c * t)
            phi = self.conv_b[k](x).view(n, self.inter_c * t, v)
            # softmax over dim -2: each target joint's incoming weights sum to one
            attn = torch.softmax(theta @ phi / theta.shape[-1], dim=-2) + graph[k]
            z = self.conv_d[k]((flat @ attn).view(n, c, t, v))
            y = z if y is None else y + z
        return self.relu(self.bn(y) + self.down(x))


class _Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), dtype=x.dtype, device=x.device)


class AGCNUnit(nn.Module):
    """2s-AGCN `TCN_GCN_unit`: relu(tcn1(gcn1(x)) + residual(x))."""

    def __init__(self, in_channels: int, out_channels: int, A: np.ndarray, stride: int = 1, residual: bool = True):
        super().__init__()
        self.gcn1 = AdaptiveGraphConv(in_channels, out_channels, A)
        self.tcn1 = TemporalConv(out_channels, out_channels, stride=stride)
        self.relu = nn.ReLU()
        if not residual:
            self.residual: nn.Module = _Zero()
        elif in_channels == out_channels and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = TemporalConv(in_channels, out_channels, kernel_size=1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.tcn1(self.gcn1(x)) + self.residual(x))


class AGCN(nn.Module):
    """2s-AGCN `Model`: data_bn over M*V*C, 10 units (64, 64x3, 128 s2, 128x2, 256 s2, 256x2), mean pool, fc.

    `base_channels` scales the widths (64 as published; smaller for quick CPU runs).
    """

    def __init__(self, layout: Layout, num_class: int = 32, num_person: int = 1, in_channels: int = 3,
                 base_channels: int = 64):
        super().__init__()
        A = spatial_adjacency(layout)
        v, b = layout.num_node, base_channels
        self.data_bn = nn.BatchNorm1d(num_person * in_channels * v)
        widths = [(in_channels, b, 1), (b, b, 1), (b, b, 1), (b, b, 1), (b, 2 * b, 2), (2 * b, 2 * b, 1),
                  (2 * b, 2 * b, 1), (2 * b, 4 * b, 2), (4 * b, 4 * b, 1), (4 * b, 4 * b, 1)]
        for i, (cin, cout, stride) in enumerate(widths, start=1):
            self.add_module(f"l{i}", AGCNUnit(cin, cout, A, stride=stride, residual=i > 1))
        self.fc = nn.Linear(4 * b, num_class)
        self.out_channels = 4 * b

    def units(self) -> list[nn.Module]:
        return [getattr(self, f"l{i}") for i in range(1, 11)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, V, M) -> l10 output (N*M, 4*base, ceil(T/4), V); row n*M + m = sample n, person m."""
        n, c, t, v, m = x.shape
        x = self.data_bn(x.permute(0, 4, 3, 1, 2).reshape(n, m * v * c, t))
        x = x.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)
        for unit in self.units():
            x = unit(x)
        return x

    def head(self, feats: torch.Tensor, num_person: int) -> torch.Tensor:
        """(N*M, C, T', V) -> logits (N, num_class): mean over T'V, then over persons, then fc."""
        nm, c = feats.shape[:2]
        return self.fc(feats.reshape(nm // num_person, num_person, c, -1).mean(3).mean(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x), x.shape[-1])


def strip_module_prefix(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Drop DataParallel's 'module.' prefix as the original loaders do."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def unwrap_state_dict(obj: Any, path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, meta) from a checkpoint object: a flat dict of tensors, or {'state_dict', 'meta'?}."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        meta = obj.get("meta") if isinstance(obj.get("meta"), Mapping) else {}
        return strip_module_prefix(obj["state_dict"]), dict(meta)
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return strip_module_prefix(obj), {}
    raise UserError(f"{path} holds no state dict (expected a flat key->tensor dict or a dict with 'state_dict')")


def layout_from_options(options: dict, sd: Mapping[str, Any], meta: Mapping, joints_key: str) -> str:
    """The layout to build: the user's, else the checkpoint's migfuse meta, else guessed from the joint count."""
    if options.get("layout"):
        return options["layout"]
    if isinstance(meta.get("migfuse"), Mapping) and meta["migfuse"].get("layout"):
        return meta["migfuse"]["layout"]
    v = int(sd[joints_key].shape[-1]) if joints_key in sd else None
    if v in LAYOUT_BY_JOINTS:
        return LAYOUT_BY_JOINTS[v]
    return "imigue"


class SkeletonBackbone(Backbone):
    """Shared loading logic of the two AGCN backbones; subclasses build the model and run it."""

    #: a state-dict key whose last axis is the joint count, and the classifier weight key
    joints_key: str = ""
    fc_key: str = ""
    bn_key: str = ""  # data_bn running mean: its size gives the person count
    what: str = ""
    #: the original code (named in errors)
    source: str = ""
    #: renamings of older releases of the same model: (regex on a file key, replacement)
    renames: tuple[tuple[str, str], ...] = ()
    tracks = ("joint", "bone")
    checkpoint_doc = ("best.pt of `migfuse backbone train skeleton` (or a published 2s-AGCN / mmaction2 file)")

    def __init__(self, layout: str | None = None, num_class: int = 32, num_person: int | None = None,
                 base_channels: int = 64, device: str = "cpu", **options: Any):
        super().__init__(layout=layout, num_class=num_class, num_person=num_person, base_channels=base_channels,
                         device=device, **options)
        self.layout = get_layout(layout or "imigue")
        self.device = device
        self.model = self.build(self.layout, num_class, num_person, base_channels).to(device).eval()
        self.meta: dict = {}

    @property
    def num_person(self) -> int:
        """Persons the model's data_bn expects (2 in the published NTU / Kinetics files, 1 in migfuse's)."""
        bn = self.model.data_bn if hasattr(self.model, "data_bn") else self.model.backbone.data_bn
        return bn.num_features // (3 * self.layout.num_node)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """Shown by `migfuse backbone info`: the graph and, for migfuse checkpoints, how they were trained."""
        info: dict[str, Any] = {"layout": f"{self.layout.name} ({self.layout.num_node} joints)",
                                "persons": self.num_person}
        trained = self.meta.get("migfuse") if isinstance(self.meta.get("migfuse"), Mapping) else {}
        for key in ("stream", "preprocess", "split", "seed", "epoch", "val_top1"):
            if key in trained:
                info[key] = trained[key]
        return info

    def build(self, layout: Layout, num_class: int, num_person: int | None, base_channels: int) -> nn.Module:
        raise NotImplementedError

    def expected_keys(self) -> list[str]:
        """The key names of the model as built now (the targets a renaming may produce)."""
        return list(self.model.state_dict())

    def load(self, checkpoint: CheckpointFile | str | Path, trusted: bool = False) -> KeyReport:
        """Load a checkpoint as the original code saves it; the head size, person count, width and
        (when not given) layout follow the file. One-line UserError when it does not fit."""
        ckpt = as_checkpoint(checkpoint, trusted)
        path = ckpt.path
        sd, meta = unwrap_state_dict(ckpt.contents, path)
        sd, renamed = apply_renames({self.joints_key: None, **{k: None for k in self.expected_keys()}}, sd,
                                    self.renames)
        if self.fc_key not in sd or self.joints_key not in sd:
            missing = self.fc_key if self.fc_key not in sd else self.joints_key
            raise UserError(f"{path} is not a {self.what} checkpoint: key '{missing}' is missing "
                            f"(pick the backbone that matches the file: agcn for lshiwjx/2s-AGCN, aagcn for mmaction2)")
        layout = get_layout(layout_from_options(self.options, sd, meta, self.joints_key))
        num_class, width = sd[self.fc_key].shape
        num_person = int(sd[self.bn_key].shape[0]) // (3 * layout.num_node) if self.bn_key in sd else 1
        num_person = max(num_person, 1)
        model = self.build(layout, int(num_class), num_person, int(width) // 4)
        sd, filled = fill_batchnorm_counters(model.state_dict(), sd)
        rep = compare_state_dict(model.state_dict(), sd)
        if renamed:
            rep.notes.append(f"renamed {len(renamed)} keys of an older {self.what} release (e.g. {renamed[0][0]} -> "
                             f"{renamed[0][1]})")
        if filled:
            rep.notes.append(f"filled {filled} BatchNorm num_batches_tracked counters the file lacks (saved by "
                             "PyTorch before 0.4.1; not weights)")
        if not rep.ok:
            file_joints = sd[self.joints_key].shape[-1]
            if file_joints != layout.num_node:
                raise UserError(f"{path} is not a {self.what} checkpoint for layout '{layout.name}' "
                                f"({layout.num_node} joints; the file has {file_joints}): {rep.summary()} "
                                "(pass --layout matching the file)")
            raise UserError(f"{path} does not fit {self.what} ({self.source}) for layout '{layout.name}': "
                            f"{rep.summary()}; the file's names or shapes differ from that code's")
        for note in rep.notes:
            log.info("%s: %s", path, note)
        model.load_state_dict(sd, strict=True)
        self.model, self.layout, self.meta = model.to(self.device).eval(), layout, meta
        self._loaded(ckpt)
        log.info("loaded %s (%s, layout %s): %s", path, self.name, layout.name, rep.summary())
        return rep


@register_backbone("agcn")
class AGCNBackbone(SkeletonBackbone):
    """lshiwjx/2s-AGCN; options: layout, num_class, num_person, base_channels. Checkpoint: flat
    OrderedDict (optionally `module.`-prefixed), or a migfuse file."""

    input_doc = "(N, C=3, T, V, M) float32 (2s-AGCN layout: x, y, confidence or x, y, z)"
    outputs_doc = {"l10_features": "(N*M, 256, ceil(T/4), V) after the 10th unit", "logits": "(N, num_class)"}
    joints_key, fc_key, bn_key, what = "l1.gcn1.PA", "fc.weight", "data_bn.running_mean", "2s-AGCN"
    source = "lshiwjx/2s-AGCN model/agcn.py"
    # Older releases of lshiwjx/2s-AGCN name the residual branch of unit_gcn `conv_res` (today `down`;
    # the unexpected keys reported for the published NTU bone weights list l1.gcn1.conv_res.1.*) and
    # the first unit `l1a`.
    renames = ((r"(^|\.)conv_res\.", r"\1down."), (r"^l(\d+)a\.", r"l\1."))

    def build(self, layout: Layout, num_class: int, num_person: int | None, base_channels: int) -> nn.Module:
        return AGCN(layout, num_class=num_class, num_person=num_person or 1, base_channels=base_channels)

    @torch.no_grad()
    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """(N, C, T, V, M) -> l10_features (N*M, 256, T', V) and logits (N, num_class)."""
        x = np.asarray(x, dtype=np.float32)
        v = self.layout.num_node
        if x.ndim != 5 or x.shape[3] != v:
            raise UserError(f"agcn input must be (N, C, T, V={v}, M) for layout '{self.layout.name}', "
                            f"got {x.shape} (pass --layout matching the data)")
        feats = self.model.features(torch.from_numpy(x).to(self.device))
        logits = self.model.head(feats, x.shape[-1])
        return {"l10_features": feats.float().cpu().numpy(), "logits": logits.float().cpu().numpy()}
