"""Named extraction recipes (`migfuse extract video|skeleton --preset NAME`): settings pinned together.

A preset pins, per track, the track options (backbone, frames, layout, clip length...), how each
row is pooled, and which published checkpoint FILE the recipe was made with. `apply_preset` turns
the options a user gave into the pinned ones:

* an option the user did not give (None, or the value the preset pins anyway) takes the pinned value;
* an option given with another value is refused in one line (a recipe with one setting changed is
  no longer that recipe, and silently overriding either side would hide it);
* a checkpoint whose file name is not the published one is allowed (fine-tuned weights, a mirror
  copy), said in one warning line and recorded (`preset.weights_as_published`).

The cache group gets the preset's name as a suffix (`video/mvit_v2_s-paper`), so pooled vectors never
mix with the full tokens of the same backbone, and its provenance records the preset (name, version,
what it pins). Torch-free: the CLI resolves presets before any model is built.

The one preset, `paper`, is the seed paper's published extraction: see docs/paper_preset.md for
which parts are the authors' choices and which are migfuse's reconstruction.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from migfuse.errors import UserError

log = logging.getLogger(__name__)

#: pooling name -> what it stores (recorded in the provenance)
POOLINGS = {
    "cls": "the class token after the final norm: the one (D,) vector torchvision's MViTv2-S head classifies; "
           "stored as tokens (1, D)",
    "mean": "mean over time steps and joints, then over persons (mmaction2 GCNHead before its fc); "
            "stored as features (C, 1, 1)",
}


@dataclass(frozen=True)
class TrackRecipe:
    """What a preset pins for one track.

    options: track options (names of `extract`'s keyword arguments) -> the pinned value.
    pool: a name of `POOLINGS`.
    weights: the published checkpoint file name; `weights_prefix` True when only its start is known
        (the file's date and hash are not), so any name starting with it counts as published.
    source: where that file is published (recorded, and printed in the warning).
    """

    options: Mapping[str, Any]
    pool: str
    weights: str
    source: str
    weights_prefix: bool = False

    def is_published(self, checkpoint: str | Path | None) -> bool:
        name = Path(str(checkpoint)).name if checkpoint is not None else ""
        return name.startswith(self.weights) if self.weights_prefix else name == self.weights


@dataclass(frozen=True)
class Preset:
    name: str
    version: int
    description: str
    tracks: Mapping[str, TrackRecipe] = field(default_factory=dict)

    def recipe(self, track: str) -> TrackRecipe:
        """The track's recipe (UserError naming the tracks the preset covers)."""
        if track not in self.tracks:
            raise UserError(f"--preset {self.name} covers the {', '.join(self.tracks)} tracks, not {track}: "
                            f"drop --preset for {track}")
        return self.tracks[track]


_TORCHVISION_MVIT = TrackRecipe(
    options={"backbone": "mvit_v2_s", "frames": 16, "windows": 1}, pool="cls",
    weights="mvit_v2_s-ae3be167.pth",
    source="torchvision MViT_V2_S_Weights.KINETICS400_V1 (https://download.pytorch.org/models/mvit_v2_s-ae3be167.pth)")

#: mmaction2 configs/skeleton/2s-agcn, NTU60-XSub 2-D keypoints (COCO-17), uniform 100 frames
_MMACTION_AGCN = {"backbone": "aagcn", "layout": "coco-17", "length": 100}
_AGCN_SOURCE = "mmaction2 configs/skeleton/2s-agcn (NTU60-XSub, 2-D COCO-17 keypoints, 100 frames)"

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(
        name="paper", version=1,
        description="the seed paper's published extraction: frozen torchvision MViTv2-S (Kinetics-400), one "
                    "768-d vector from 16 frames spread evenly over the clip; mmaction2's NTU60 2-D 2s-AGCN "
                    "(COCO-17), one 256-d vector per stream",
        tracks={
            "video": _TORCHVISION_MVIT,
            "joint": TrackRecipe(_MMACTION_AGCN, pool="mean", source=_AGCN_SOURCE,
                                 weights="2s-agcn_8xb16-joint-u100-80e_ntu60-xsub-keypoint-2d_20221222-4c0ed77e.pth"),
            # the bone file's date and hash are not known to migfuse: its config name is
            "bone": TrackRecipe(_MMACTION_AGCN, pool="mean", source=_AGCN_SOURCE, weights_prefix=True,
                                weights="2s-agcn_8xb16-bone-u100-80e_ntu60-xsub-keypoint-2d"),
        }),
)}

#: the CLI spelling of each pinned option, for the one-line refusal
_FLAGS = {"backbone": "--backbone", "frames": "--frames", "windows": "--windows", "layout": "--layout",
          "length": "--length"}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_group(group: str, preset: Mapping[str, Any] | None) -> str:
    """The cache group of a preset's rows: `video/mvit_v2_s` -> `video/mvit_v2_s-paper`."""
    return f"{group}-{preset['name']}" if preset else group


def apply_preset(name: str, track: str, checkpoint: str | Path | None,
                 options: Mapping[str, Any]) -> dict[str, Any]:
    """The track options with the preset's pins applied, plus `pool` and `preset` (its provenance record).

    Args:
        name: a preset of `PRESETS`.
        track: the track extracted (video, joint, bone).
        checkpoint: the checkpoint given (None: the extractor's own rule, e.g. random weights).
        options: the track options as given (None = not given).
    Returns:
        A new dict: `options` with the pinned values, `pool` (a name of `POOLINGS`) and `preset`
        (JSON-able: name, version, description, pins, pooling, published file, weights_as_published).
    Raises:
        UserError: an unknown preset, a track it does not cover, or an option given with another
            value than the pinned one (one line naming both and the fix).
    """
    preset = get_preset(name)
    recipe = preset.recipe(track)
    out = dict(options)
    for key, pinned in recipe.options.items():
        given = out.get(key)
        if given is not None and given != pinned:
            flag = _FLAGS.get(key, key)
            raise UserError(f"--preset {name} pins {flag} {pinned} ({preset.description.split(':')[0]}); "
                            f"drop {flag} {given}, or drop --preset {name} to choose your own settings")
        out[key] = pinned
    published = recipe.is_published(checkpoint)
    if checkpoint is not None and not published:
        log.warning("--preset %s: %s is not the published file the recipe names (%s%s, from %s); the group records "
                    "that other weights were used", name, Path(str(checkpoint)).name, recipe.weights,
                    "..." if recipe.weights_prefix else "", recipe.source)
    out["pool"] = recipe.pool
    out["preset"] = {
        "name": preset.name, "version": preset.version, "description": preset.description,
        "pins": dict(recipe.options), "pooling": {"name": recipe.pool, "doc": POOLINGS[recipe.pool]},
        "published_weights": recipe.weights + ("*" if recipe.weights_prefix else ""),
        "published_at": recipe.source, "weights_as_published": published,
    }
    return out
