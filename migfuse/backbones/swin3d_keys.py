"""Video Swin checkpoint layouts: mmaction2 keys -> torchvision keys, and the architecture a file holds.

migfuse runs Video Swin as torchvision's `SwinTransformer3d` (see `swin3d.py`). Two published layouts
hold its weights:
  * torchvision `swin3d_t/s/b-*.pth`: a plain state dict with torchvision's key names
    (`patch_embed.proj`, `features.{2i}.{j}.attn.qkv`, `features.{2i+1}.reduction`, `norm`, `head`);
  * mmaction2 Video Swin recognizers (1.x `SwinTransformer3D` + `I3DHead`, and the 0.x
    SwinTransformer/Video-Swin-Transformer release): `meta` + `state_dict` with `backbone.*` and
    `cls_head.*` keys (`backbone.layers.i.blocks.j.*`, `backbone.layers.i.downsample.*`,
    `backbone.norm3` in 1.x / `backbone.norm` in 0.x, `cls_head.fc_cls`).
The maths of the two codes is the same (window clamp, shift, mask, PatchMerging order, LN eps 1e-5,
exact GELU), so loading is renaming. The architecture (patch size, width, depths, heads, window,
MLP ratio, classes) is read from the tensors' shapes, never assumed.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

from migfuse.errors import UserError

# mmaction2 key -> torchvision key; stage i of mmaction2 is features.{2i}, its downsample features.{2i+1}.
_BLOCK = re.compile(r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.(.+)$")
_DOWNSAMPLE = re.compile(r"^backbone\.layers\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)$")
_BLOCK_PARTS = {"mlp.fc1": "mlp.0", "mlp.fc2": "mlp.3"}
_PLAIN_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^backbone\.patch_embed\.(proj|norm)\.(weight|bias)$"), r"patch_embed.\1.\2"),
    (re.compile(r"^backbone\.norm\d*\.(weight|bias)$"), r"norm.\1"),  # norm3 (1.x) or norm (0.x)
    (re.compile(r"^cls_head\.fc_cls\.(weight|bias)$"), r"head.\1"),
]
# Entries of an mmaction2 recognizer that are not weights of the network.
_IGNORED = ("data_preprocessor.",)

TORCHVISION_LAYOUT = "torchvision swin3d_t/s/b state dict (patch_embed.proj, features.N.M.attn.qkv, norm, head)"
MMACTION_LAYOUT = ("mmaction2 Video Swin recognizer (state_dict with backbone.patch_embed.proj, "
                   "backbone.layers.N.blocks.M.attn.qkv, backbone.norm3, cls_head.fc_cls)")


def is_mmaction(sd: Mapping[str, Any]) -> bool:
    """True for an mmaction2 recognizer's state dict (`backbone.*` keys)."""
    return any(k.startswith("backbone.") for k in sd)


def mmaction_to_torchvision(sd: Mapping[str, Any]) -> tuple["OrderedDict[str, Any]", list[str]]:
    """Rename an mmaction2 Video Swin state dict to torchvision's key names.

    Keys no rule knows keep their mmaction2 name, so the key report lists them as unexpected.
    Returns (renamed state dict, notes for the KeyReport).
    """
    out: "OrderedDict[str, Any]" = OrderedDict()
    ignored = 0
    for key, value in sd.items():
        if key.startswith(_IGNORED):
            ignored += 1
            continue
        out[_rename(key)] = value
    notes = [f"renamed {len(out)} mmaction2 keys to torchvision names"]
    if ignored:
        notes.append(f"ignored {ignored} data_preprocessor entries")
    return out, notes


def _rename(key: str) -> str:
    m = _BLOCK.match(key)
    if m:
        stage, block, rest = int(m.group(1)), m.group(2), m.group(3)
        for old, new in _BLOCK_PARTS.items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old):]
        return f"features.{2 * stage}.{block}.{rest}"
    m = _DOWNSAMPLE.match(key)
    if m:
        return f"features.{2 * int(m.group(1)) + 1}.{m.group(2)}.{m.group(3)}"
    for pattern, target in _PLAIN_RULES:
        if pattern.match(key):
            return pattern.sub(target, key)
    return key


def torchvision_to_mmaction(sd: Mapping[str, Any]) -> "OrderedDict[str, Any]":
    """The inverse renaming (torchvision -> mmaction2 1.x names), for tests and for naming the layout
    a misfit file is closest to."""
    out: "OrderedDict[str, Any]" = OrderedDict()
    stages = 1 + max((int(m.group(1)) // 2 for k in sd if (m := re.match(r"^features\.(\d+)\.", k))), default=0)
    for key, value in sd.items():
        m = re.match(r"^features\.(\d+)\.(.+)$", key)
        if m and int(m.group(1)) % 2 == 0:
            block, _, rest = m.group(2).partition(".")
            for old, new in _BLOCK_PARTS.items():
                if rest.startswith(new + "."):
                    rest = old + rest[len(new):]
            key = f"backbone.layers.{int(m.group(1)) // 2}.blocks.{block}.{rest}"
        elif m:
            key = f"backbone.layers.{int(m.group(1)) // 2}.downsample.{m.group(2)}"
        elif key.startswith("patch_embed."):
            key = "backbone." + key
        elif key.startswith("norm."):
            key = f"backbone.norm{stages - 1}." + key[len("norm."):]
        elif key.startswith("head."):
            key = "cls_head.fc_cls." + key[len("head."):]
        out[key] = value
    return out


@dataclass(frozen=True)
class SwinArch:
    """The shape of a Video Swin: what torchvision's `SwinTransformer3d` is built with."""

    patch_size: tuple[int, int, int]
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: tuple[int, int, int]
    mlp_ratio: float = 4.0
    num_classes: int | None = 400  # None: the file has no classifier head
    patch_norm: bool = True  # LayerNorm after the patch embedding (mmaction2 `patch_norm`)
    qkv_bias: bool = True  # bias of the attention's qkv projection (mmaction2 `qkv_bias`)

    @property
    def num_features(self) -> int:
        """Channels of the last stage's tokens."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    def describe(self) -> str:
        extra = "".join(f", {name}" for name, off in (("no patch norm", not self.patch_norm),
                                                      ("no qkv bias", not self.qkv_bias)) if off)
        return (f"patch {list(self.patch_size)}, {self.embed_dim} channels, depths {list(self.depths)}, heads "
                f"{list(self.num_heads)}, window {list(self.window_size)}{extra}")


def window_from_index(index: Any) -> tuple[int, int, int]:
    """The (d, h, w) window of a `relative_position_index` buffer (N, N), N = d*h*w.

    Row 0 of the index is I[0,0] - (dj*(2h-1)*(2w-1) + hj*(2w-1) + wj) for token j = (dj, hj, wj), so
    the first jumps of I[0,0] - I[0,j] give w, then h.
    """
    row = [int(v) for v in index[0].tolist()]
    n = len(row)
    diff = [row[0] - v for v in row]
    w = next((j for j in range(1, n) if diff[j] != j), n)
    h = next((k for k in range(1, n // w) if diff[k * w] != k * (2 * w - 1)), n // w)
    return (n // (h * w), h, w)


def window_from_config(rows: int, default: tuple[int, int, int],
                       config_text: str | None) -> tuple[int, int, int] | None:
    """The window of a file without `relative_position_index`: `default` when its bias table of `rows` =
    (2d-1)(2h-1)(2w-1) rows fits, else the `window_size=(d, h, w)` of the mmengine config text the file
    carries (`meta["cfg"]`) when that fits; None otherwise (the table size alone is ambiguous)."""
    def fits(w: tuple[int, int, int]) -> bool:
        return (2 * w[0] - 1) * (2 * w[1] - 1) * (2 * w[2] - 1) == rows

    if fits(default):
        return default
    m = re.search(r"window_size\s*=\s*[\(\[]\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*[\)\]]", config_text or "")
    found = (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None
    return found if found and fits(found) else None


def read_arch(sd: Mapping[str, Any], default_window: tuple[int, int, int], where: str,
              config_text: str | None = None) -> SwinArch:
    """The architecture of a Video Swin state dict in torchvision naming (after `mmaction_to_torchvision`).

    The window comes from the `relative_position_index` buffers (published files have them), else
    from `window_from_config` (`config_text`: the mmengine config the file carries).

    Raises:
        UserError: the file lacks the keys that define the architecture (not a Video Swin).
    """
    proj = sd.get("patch_embed.proj.weight")
    if getattr(proj, "ndim", 0) != 5:
        raise UserError(f"{where}: no 5-D patch_embed.proj.weight")
    if proj.shape[1] != 3:
        raise UserError(f"{where}: patch_embed.proj.weight takes {proj.shape[1]} input channels, not RGB's 3")
    stages = sorted({int(m.group(1)) // 2 for k in sd if (m := re.match(r"^features\.(\d+)\.\d+\.attn\.qkv\.", k))})
    if not stages or stages != list(range(len(stages))):
        raise UserError(f"{where}: no features.N.M.attn.qkv blocks")
    depths, heads = [], []
    for s in stages:
        blocks = {int(m.group(1)) for k in sd if (m := re.match(rf"^features\.{2 * s}\.(\d+)\.", k))}
        depths.append(len(blocks))
        table = sd.get(f"features.{2 * s}.0.attn.relative_position_bias_table")
        if getattr(table, "ndim", 0) != 2:
            raise UserError(f"{where}: features.{2 * s}.0.attn.relative_position_bias_table is missing")
        heads.append(int(table.shape[1]))
    index = sd.get("features.0.0.attn.relative_position_index")
    rows = int(sd["features.0.0.attn.relative_position_bias_table"].shape[0])
    window = (window_from_index(index) if getattr(index, "ndim", 0) == 2
              else window_from_config(rows, default_window, config_text))
    if window is None:
        raise UserError(f"{where}: the window size cannot be told from a {rows}-row position bias table "
                        "without relative_position_index or a config (meta['cfg']) that says window_size")
    fc1 = sd.get("features.0.0.mlp.0.weight")
    embed = int(proj.shape[0])
    head = sd.get("head.weight")
    return SwinArch(patch_size=tuple(int(s) for s in proj.shape[2:]), embed_dim=embed, depths=tuple(depths),
                    num_heads=tuple(heads), window_size=window,
                    mlp_ratio=float(fc1.shape[0]) / embed if getattr(fc1, "ndim", 0) == 2 else 4.0,
                    num_classes=int(head.shape[0]) if getattr(head, "ndim", 0) == 2 else None,
                    patch_norm="patch_embed.norm.weight" in sd, qkv_bias="features.0.0.attn.qkv.bias" in sd)


def closest_layout(file_keys: list[str], layouts: Mapping[str, set[str]]) -> tuple[str, int, int]:
    """(name, shared keys, keys of that layout) of the known layout sharing most keys with the file."""
    name = max(layouts, key=lambda n: len(layouts[n] & set(file_keys)))
    return name, len(layouts[name] & set(file_keys)), len(layouts[name])
