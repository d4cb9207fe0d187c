"""PoseC3D: mmaction2 / pyskl `ResNet3dSlowOnly` + `I3DHead` on keypoint or limb heatmap volumes, the
`posec3d` backbone.

Modules are named as mmaction2 builds them (mmcv `ConvModule` -> `.conv` / `.bn`), so a Recognizer3D
state dict (`backbone.conv1.conv.weight`, `backbone.layer3.2.conv3.bn.running_var`, `cls_head.fc_cls.weight`)
loads as it is, from mmaction2 1.x, 0.x and pyskl files alike (mmengine / mmcv dict with `meta` and
`state_dict`). Files saved without ConvModule names (`conv1.weight` + `bn1.*`, `downsample.0/1`) are renamed.

The architecture is read from the checkpoint: input channels, width, blocks per stage, every conv's
kernel (the inflation), classes. Strides are not in the weights: they come from the file's `meta.cfg`
text when it has one (read with a literal parser, never run), else from the mmaction2 / pyskl config
`.py` saved beside the checkpoint (`config_beside`; read as text the same way), else from the PoseC3D
configs (3 stages: conv1 / pool1 stride 1, spatial strides (2, 2, 2), temporal (1, 1, 2)) or mmaction2's
ResNet3dSlowOnly defaults (4 stages: stride-2 stem and pool, spatial (1, 2, 2, 2), temporal 1).
Each Bottleneck3d ('pytorch' style: the stride is on conv2): relu(bn(conv3(relu(bn(conv2(relu(bn(conv1
(x))))))) + downsample(x)); the stem is conv1 -> max-pool (1, 3, 3) (with stride 1 it still filters).
"""
from __future__ import annotations

import ast
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from migfuse.backbones.agcn import unwrap_state_dict
from migfuse.backbones.checkpoints import KeyReport, apply_renames, compare_state_dict, fill_batchnorm_counters
from migfuse.backbones.pose_heatmaps import HeatmapConfig, build_volume, check_annotation
from migfuse.backbones.registry import Backbone, register_backbone
from migfuse.checkpoint_file import CheckpointFile, as_checkpoint
from migfuse.errors import UserError

log = logging.getLogger(__name__)

BN_EPS = 1e-5  # mmcv BN3d default


@dataclass
class SlowOnlyArch:
    """Everything that decides the network's shapes (the mmaction2 constructor's names)."""

    in_channels: int = 17
    base_channels: int = 32
    stage_blocks: tuple[int, ...] = (4, 6, 3)
    num_classes: int = 60
    conv1_kernel: tuple[int, int, int] = (1, 7, 7)
    conv1_stride_t: int = 1
    conv1_stride_s: int = 1
    with_pool1: bool = True
    pool1_stride_t: int = 1
    pool1_stride_s: int = 1
    with_pool2: bool = False
    spatial_strides: tuple[int, ...] = (2, 2, 2)
    temporal_strides: tuple[int, ...] = (1, 1, 2)
    dilations: tuple[int, ...] = (1, 1, 1)
    inflate: tuple[int, ...] = (0, 1, 1)  # per stage (used when no checkpoint gives per-block kernels)
    #: (conv1 kernel, conv2 kernel) of every block; None: from `inflate` with inflate_style 3x1x1
    kernels: list[list[tuple[tuple[int, ...], tuple[int, ...]]]] | None = field(default=None, repr=False)

    def block_kernels(self) -> list[list[tuple[tuple[int, ...], tuple[int, ...]]]]:
        if self.kernels is not None:
            return self.kernels
        return [[((3, 1, 1) if self.inflate[i] else (1, 1, 1), (1, 3, 3)) for _ in range(n)]
                for i, n in enumerate(self.stage_blocks)]

    def feature_shape(self, t: int, h: int, w: int) -> tuple[int, int, int, int]:
        """(C, T', H', W') of the last stage for a (T, H, W) input: every strided conv / pool rounds up."""
        def down(n: int, s: int) -> int:
            return -(-n // s)
        h, w = (down(down(n, self.conv1_stride_s), self.pool1_stride_s if self.with_pool1 else 1) for n in (h, w))
        t = down(down(t, self.conv1_stride_t), self.pool1_stride_t if self.with_pool1 else 1)
        for i in range(len(self.stage_blocks)):
            s = self.spatial_strides[i]
            h, w, t = down(h, s), down(w, s), down(t, self.temporal_strides[i])
            if i == 0 and self.with_pool2:
                t = t // 2
        return self.out_channels, t, h, w

    @property
    def out_channels(self) -> int:
        return self.base_channels * 2 ** (len(self.stage_blocks) - 1) * Bottleneck3d.expansion


#: ResNet3dSlowOnly's own defaults (the RGB SlowOnly configs), for 4-stage files without a config
RGB_SLOWONLY = dict(conv1_stride_s=2, pool1_stride_s=2, spatial_strides=(1, 2, 2, 2), temporal_strides=(1, 1, 1, 1),
                    dilations=(1, 1, 1, 1))
#: pyskl's stem strides, (temporal, spatial) pairs (mmaction2 names them conv1_stride_t / _s, ...)
PYSKL_STRIDES = ("conv1_stride", "pool1_stride")
#: constructor values a checkpoint's `meta.cfg` text may set (read as literals)
CFG_KEYS = ("spatial_strides", "temporal_strides", "dilations", "conv1_stride_s", "conv1_stride_t", "pool1_stride_s",
            "pool1_stride_t", "with_pool1", "with_pool2")


class ConvModule(nn.Module):
    """mmcv ConvModule: conv (no bias) -> BN3d -> optional ReLU."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, ...], stride: tuple[int, ...] = (1, 1, 1),
                 padding: tuple[int, ...] | None = None, act: bool = True):
        super().__init__()
        padding = tuple(k // 2 for k in kernel) if padding is None else padding
        self.conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm3d(cout, eps=BN_EPS)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck3d(nn.Module):
    """mmaction2 Bottleneck3d, style 'pytorch'."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, kernels: tuple[tuple[int, ...], tuple[int, ...]],
                 spatial_stride: int = 1, temporal_stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        k1, k2 = kernels
        pad2 = (k2[0] // 2, dilation, dilation)
        self.conv1 = ConvModule(inplanes, planes, k1)
        self.conv2 = ConvModule(planes, planes, k2, stride=(temporal_stride, spatial_stride, spatial_stride),
                                padding=pad2)
        if dilation != 1:
            self.conv2.conv.dilation = (1, dilation, dilation)
        self.conv3 = ConvModule(planes, planes * self.expansion, (1, 1, 1), act=False)
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


class ResNet3dSlowOnly(nn.Module):
    """The backbone: (N, C_in, T, H, W) -> last stage (N, 32*base... , T', H', W')."""

    def __init__(self, arch: SlowOnlyArch):
        super().__init__()
        a = arch
        self.conv1 = ConvModule(a.in_channels, a.base_channels, a.conv1_kernel,
                                stride=(a.conv1_stride_t, a.conv1_stride_s, a.conv1_stride_s))
        self.maxpool = nn.MaxPool3d((1, 3, 3), stride=(a.pool1_stride_t, a.pool1_stride_s, a.pool1_stride_s),
                                    padding=(0, 1, 1)) if a.with_pool1 else nn.Identity()
        self.pool2 = nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1)) if a.with_pool2 else nn.Identity()
        self.layer_names = []
        inplanes = a.base_channels
        for i, blocks in enumerate(a.block_kernels()):
            planes = a.base_channels * 2 ** i
            s, t, d = a.spatial_strides[i], a.temporal_strides[i], a.dilations[i]
            down = None
            if s != 1 or inplanes != planes * Bottleneck3d.expansion:
                down = ConvModule(inplanes, planes * Bottleneck3d.expansion, (1, 1, 1), stride=(t, s, s), act=False)
            layer = [Bottleneck3d(inplanes, planes, blocks[0], s, t, d, down)]
            inplanes = planes * Bottleneck3d.expansion
            layer += [Bottleneck3d(inplanes, planes, k, 1, 1, d) for k in blocks[1:]]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            self.layer_names.append(f"layer{i + 1}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        for i, name in enumerate(self.layer_names):
            x = getattr(self, name)(x)
            if i == 0:
                x = self.pool2(x)
        return x


class I3DHead(nn.Module):
    """mmaction2 I3DHead in eval: AdaptiveAvgPool3d(1) -> (dropout) -> fc_cls."""

    def __init__(self, num_classes: int, in_channels: int):
        super().__init__()
        self.fc_cls = nn.Linear(in_channels, num_classes)

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.mean(dim=(2, 3, 4))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc_cls(self.pool(feats))


class Recognizer3D(nn.Module):
    """backbone + cls_head, named as mmaction2's Recognizer3D so the keys match."""

    def __init__(self, arch: SlowOnlyArch):
        super().__init__()
        self.arch = arch
        self.backbone = ResNet3dSlowOnly(arch)
        self.cls_head = I3DHead(arch.num_classes, arch.out_channels)


# Files saved without mmcv's ConvModule wrapper (torchvision-style names), renamed to mmaction2's.
RENAMES = (
    (r"^backbone\.conv1\.weight$", "backbone.conv1.conv.weight"),
    (r"^backbone\.bn1\.", "backbone.conv1.bn."),
    (r"(\.layer\d+\.\d+)\.conv(\d)\.weight$", r"\1.conv\2.conv.weight"),
    (r"(\.layer\d+\.\d+)\.bn(\d)\.", r"\1.conv\2.bn."),
    (r"\.downsample\.0\.weight$", ".downsample.conv.weight"),
    (r"\.downsample\.1\.", ".downsample.bn."),
    (r"^cls_head\.fc\.", "cls_head.fc_cls."),
)


def arch_from_state_dict(sd: Mapping[str, Any], path: str | Path) -> SlowOnlyArch:
    """The shapes of a Recognizer3D state dict (mmaction2 names) -> SlowOnlyArch (strides left default).

    Raises UserError naming the file when it is no ResNet3dSlowOnly + I3DHead file."""
    stem = sd.get("backbone.conv1.conv.weight")
    head = sd.get("cls_head.fc_cls.weight")
    if stem is None or head is None or getattr(stem, "ndim", 0) != 5:
        first = ", ".join(list(sd)[:3])
        missing = "backbone.conv1.conv.weight (5-D)" if stem is None or getattr(stem, "ndim", 0) != 5 \
            else "cls_head.fc_cls.weight"
        raise UserError(f"{path} is not a PoseC3D (ResNet3dSlowOnly + I3DHead) checkpoint: no {missing} (its keys "
                        f"start {first}); posec3d takes mmaction2 / pyskl PoseC3D files, e.g. "
                        "slowonly_r50_8xb16-u48-240e_ntu60-xsub-keypoint")
    blocks: dict[int, dict[int, tuple]] = {}
    for key, value in sd.items():
        m = re.fullmatch(r"backbone\.layer(\d+)\.(\d+)\.conv([12])\.conv\.weight", key)
        if m and getattr(value, "ndim", 0) == 5:
            entry = blocks.setdefault(int(m[1]), {}).setdefault(int(m[2]), [None, None])
            entry[int(m[3]) - 1] = tuple(int(k) for k in value.shape[2:])
    stages = sorted(blocks)
    if not stages or stages != list(range(1, len(stages) + 1)):
        raise UserError(f"{path} is not a PoseC3D checkpoint: its backbone has no layer1..layerN of Bottleneck3d "
                        "blocks (conv1/conv2/conv3 ConvModules)")
    # a conv missing from the file gets the plain kernel; the key comparison then names it as missing
    kernels = [[(blocks[s][b][0] or (1, 1, 1), blocks[s][b][1] or (1, 3, 3)) for b in sorted(blocks[s])]
               for s in stages]
    n = len(stages)
    base = {k: v[:n] if isinstance(v, tuple) else v for k, v in asdict(SlowOnlyArch()).items()}
    if n != 3:
        base.update({k: (v if isinstance(v, int) else v[:n]) for k, v in RGB_SLOWONLY.items()})
    base.update(in_channels=int(stem.shape[1]), base_channels=int(stem.shape[0]),
                stage_blocks=tuple(len(k) for k in kernels), num_classes=int(head.shape[0]),
                conv1_kernel=tuple(int(k) for k in stem.shape[2:]), kernels=kernels)
    base["inflate"] = tuple(int(k[0][0][0] > 1 or k[0][1][0] > 1) for k in kernels)
    for key in ("spatial_strides", "temporal_strides", "dilations"):
        base[key] = tuple(base[key]) + (1,) * (n - len(base[key]))
    return SlowOnlyArch(**base)


def _cfg_text(meta: Mapping[str, Any]) -> str | None:
    """A checkpoint's config text (mmengine, mmaction2 1.x: `meta['cfg']`; mmcv 1.x runners, mmaction2 0.x
    and pyskl: `meta['config']`), or None."""
    if not isinstance(meta, Mapping):
        return None
    text = meta.get("cfg") if isinstance(meta.get("cfg"), str) else meta.get("config")
    return text if isinstance(text, str) else None


def config_beside(checkpoint: str | Path) -> Path | None:
    """The config `.py` saved next to a checkpoint: `<stem>.py`, or the model zoo name without its
    `_YYYYMMDD-hash` suffix (slowonly_r50_..._keypoint_20220815-38db104b.pth -> slowonly_r50_..._keypoint.py);
    None when there is none. Only read as text by `settings_from_cfg`, never imported or run."""
    path = Path(checkpoint)
    for stem in dict.fromkeys((path.stem, re.sub(r"_\d{8}-[0-9a-f]{8}$", "", path.stem))):
        candidate = path.with_name(stem + ".py")
        if candidate.is_file():
            return candidate
    return None


def settings_from_cfg(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor and heatmap values written in a checkpoint's config text (`_cfg_text`): `name=value`
    or `'name': value` literals, parsed, never executed. The first occurrence counts."""
    text = _cfg_text(meta)
    if text is None:
        return {}
    found: dict[str, Any] = {}
    for key in CFG_KEYS + PYSKL_STRIDES + ("sigma", "with_limb", "use_score", "clip_len"):
        m = re.search(rf"['\"]?\b{key}['\"]?\s*[=:]\s*(\([^()]*\)|\[[^\[\]]*\]|[\w.+-]+)", text)
        if not m:
            continue
        try:
            value = ast.literal_eval(m[1])
        except (ValueError, SyntaxError):
            continue
        found[key] = tuple(value) if isinstance(value, list) else value
    for key in PYSKL_STRIDES:  # pyskl's (temporal, spatial) pairs -> mmaction2's names
        pair = found.pop(key, None)
        if isinstance(pair, tuple) and len(pair) == 2:
            found.setdefault(f"{key}_t", pair[0])
            found.setdefault(f"{key}_s", pair[1])
    return found


@register_backbone("posec3d")
class PoseC3DBackbone(Backbone):
    """PoseC3D SlowOnly-R50. Options: num_class, base_channels, stage_blocks, in_channels (random weights),
    spatial_strides / temporal_strides (files without a config), limb (heatmaps of limbs, not joints)."""

    input_doc = ("(N, C=17, T, H, W) float32 heatmap volume (mmaction2 NCTHW_Heatmap), or an .npz of mmaction2 "
                 "annotation fields keypoint (M, T, 17, 2), keypoint_score, img_shape, total_frames")
    outputs_doc = {"backbone_features": "(N, 512, T/2, H/8, W/8) last stage", "pooled": "(N, 512) I3DHead average",
                   "cls_scores": "(N, num_class) raw logits",
                   "heatmaps": "(clips, 17, 48, 64, 64) the volume built from an .npz input (only then)"}
    tracks = ("joint", "bone")
    checkpoint_doc = ("an mmaction2 / pyskl PoseC3D file (e.g. slowonly_r50_8xb16-u48-240e_ntu60-xsub-keypoint"
                      "_20220815-38db104b.pth): joint stream = keypoint model, bone stream = limb model")
    input_suffixes = (".npz",)
    run_flags = ("limb",)

    def __init__(self, num_class: int = 60, base_channels: int = 32, stage_blocks: tuple[int, ...] = (4, 6, 3),
                 in_channels: int = 17, spatial_strides: tuple[int, ...] | None = None,
                 temporal_strides: tuple[int, ...] | None = None, limb: bool = False, device: str = "cpu",
                 layout: str | None = None, **options: Any):
        super().__init__(num_class=num_class, base_channels=base_channels, stage_blocks=stage_blocks,
                         in_channels=in_channels, limb=limb, device=device, **options)
        if layout not in (None, "coco-17", "coco"):
            raise UserError(f"posec3d reads COCO-17 keypoints; --layout {layout} does not apply (drop it)")
        self.device = device
        self.overrides = {k: tuple(v) for k, v in (("spatial_strides", spatial_strides),
                                                   ("temporal_strides", temporal_strides)) if v is not None}
        n = len(stage_blocks)
        arch = SlowOnlyArch(in_channels=in_channels, base_channels=base_channels, stage_blocks=tuple(stage_blocks),
                            num_classes=num_class, inflate=((0,) + (1,) * (n - 1)),
                            spatial_strides=(2,) * n, temporal_strides=(1,) * (n - 1) + (2,), dilations=(1,) * n)
        for k, v in self.overrides.items():
            setattr(arch, k, v)
        self.model = Recognizer3D(arch).to(device).eval()
        self.heatmap = HeatmapConfig(limb=bool(limb))
        self.meta: dict = {}
        self.file_settings: dict[str, Any] = {}  # what the checkpoint's config text said
        self.config_file: str | None = None  # the config .py beside the checkpoint that gave them, if any

    @property
    def preprocessing(self) -> dict[str, Any]:
        """Shown by `backbone info` and recorded in the cache: the heatmap recipe and the strides used."""
        a = self.model.arch
        return {"heatmaps": self.heatmap.to_dict(), "layout": "coco-17 (17 keypoints)",
                "strides": {"spatial": list(a.spatial_strides), "temporal": list(a.temporal_strides),
                            "conv1_s": a.conv1_stride_s, "pool1_s": a.pool1_stride_s}}

    def load(self, checkpoint: CheckpointFile | str | Path, trusted: bool = False) -> KeyReport:
        """Load an mmaction2 / pyskl Recognizer3D checkpoint; the architecture follows the file. One-line
        UserError naming the file and the first unmatched keys when it does not fit."""
        ckpt = as_checkpoint(checkpoint, trusted)
        path = ckpt.path
        sd, meta = unwrap_state_dict(ckpt.contents, path)
        sd, renamed = apply_renames({k: None for k in _reference_keys(sd)}, sd, RENAMES)
        arch = arch_from_state_dict(sd, path)
        # the file's own config text first (what it was trained with), else a config saved beside it
        beside = None if _cfg_text(meta) is not None else config_beside(path)
        try:
            cfg = settings_from_cfg({"cfg": beside.read_text(errors="replace")} if beside else meta)
        except OSError as e:
            raise UserError(f"cannot read {beside}, the config beside {path} ({e.strerror}); "
                            "fix its permissions or move it away") from None
        for key in CFG_KEYS:
            if key in cfg:
                setattr(arch, key, cfg[key])
        for k, v in self.overrides.items():
            setattr(arch, k, v)
        model = Recognizer3D(arch)
        sd, _ = fill_batchnorm_counters(model.state_dict(), sd)
        rep = compare_state_dict(model.state_dict(), sd)
        if renamed:
            rep.notes.append(f"renamed {len(renamed)} keys to mmaction2's ConvModule names (e.g. {renamed[0][0]} -> "
                             f"{renamed[0][1]})")
        if cfg:
            where = f"the config beside it, {beside.name}" if beside else "the file's config"
            rep.notes.append(f"read from {where}: " + ", ".join(f"{k}={v}" for k, v in sorted(cfg.items())))
        if not rep.ok:
            raise UserError(f"{path} does not fit posec3d (mmaction2 ResNet3dSlowOnly + I3DHead): {rep.summary()}; "
                            "the closest layout is mmaction2's Recognizer3D (backbone.layerN.B.convK.conv/bn, "
                            "cls_head.fc_cls)")
        model.load_state_dict(sd, strict=True)
        self.model, self.meta, self.file_settings = model.to(self.device).eval(), meta, cfg
        self.config_file = beside.name if beside else None
        self.heatmap = HeatmapConfig(clip_len=int(cfg.get("clip_len", 48)), sigma=float(cfg.get("sigma", 0.6)),
                                     use_score=bool(cfg.get("use_score", True)),
                                     limb=bool(self.options.get("limb") or cfg.get("with_limb", False)))
        self._loaded(ckpt)
        log.info("loaded %s (posec3d): %s", path, rep.summary())
        return rep

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, C, T, H, W) heatmaps on the model's device -> backbone_features, pooled, cls_scores."""
        feats = self.model.backbone(x)
        pooled = self.model.cls_head.pool(feats)
        return {"backbone_features": feats, "pooled": pooled, "cls_scores": self.model.cls_head.fc_cls(pooled)}

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """(N, C, T, H, W) heatmap volume -> backbone_features (N, 512, T', H', W'), pooled, cls_scores."""
        x = np.asarray(x, dtype=np.float32)
        c = self.model.arch.in_channels
        if x.ndim != 5 or x.shape[1] != c:
            raise UserError(f"posec3d input must be a (N, C={c}, T, H, W) heatmap volume, got {x.shape}")
        out = self.forward(torch.from_numpy(x).to(self.device))
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    def run_file(self, path: Path) -> dict[str, np.ndarray]:
        """An .npz of mmaction2 annotation fields -> the heatmap volume (mmaction2's test pipeline, drawn on
        the model's device) and the outputs of `run` on it; the volume is returned as `heatmaps`."""
        try:
            with np.load(path, allow_pickle=False) as z:
                annotation = {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError) as e:
            raise UserError(f"cannot read {path} as an .npz of arrays ({e}); save it with np.savez (no objects)") \
                from None
        kp = check_annotation(annotation, str(path))[0]
        need = len(self.heatmap.skeletons) if self.heatmap.limb else self.model.arch.in_channels
        if (self.heatmap.limb and kp.shape[2] != 17) or (not self.heatmap.limb and kp.shape[2] != need):
            raise UserError(f"{path}: keypoint has {kp.shape[2]} joints; this posec3d model draws "
                            f"{'COCO-17 limbs' if self.heatmap.limb else f'{need} keypoint channels'} (map the "
                            "joints to COCO-17 first, e.g. `migfuse data export-pyskl --layout coco-17`)")
        volume = build_volume(annotation, self.heatmap, device=self.device)
        return {**self.run(volume), "heatmaps": volume}

    def provenance(self) -> dict[str, Any]:
        beside = {"config_beside_checkpoint": self.config_file} if self.config_file else {}
        return {"arch": {k: v for k, v in asdict(self.model.arch).items() if k != "kernels"},
                "heatmaps": self.heatmap.to_dict(), **beside}


def _reference_keys(sd: Mapping[str, Any]) -> list[str]:
    """Targets the renames may produce: the mmaction2 names of the keys a file holds in another naming."""
    out = []
    for key in sd:
        new = key
        for pattern, repl in RENAMES:
            new = re.sub(pattern, repl, new)
        out.append(new)
    return out
