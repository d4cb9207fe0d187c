"""The skeleton tracks' door: `extract joint|bone` builds the 2s-AGCN family's `SkeletonExtractor`
(joint coordinates) or, for a heatmap backbone (posec3d), the `HeatmapExtractor`."""
from __future__ import annotations

from typing import Any

from migfuse.checkpoint_file import CheckpointFile
from migfuse.data_cache.tracks import tracks_with_layout
from migfuse.errors import UserError
from migfuse.extract.entry import register_track
from migfuse.extract.skeleton.extractor import SkeletonExtractor
from migfuse.extract.skeleton.heatmap_extractor import HeatmapExtractor


@register_track(*tracks_with_layout("pose_features"))
def build_extractor(manifest: Any, track: str, *, checkpoint: CheckpointFile | None = None,
                    layout: str | None = None, length: int | None = None,
                    backbone: str | None = None, pool: str | None = None,
                    preset: dict[str, Any] | None = None) -> SkeletonExtractor:
    """The `joint` or `bone` extractor of a manifest (the track is the stream).

    `backbone`: None, agcn or aagcn: the 2s-AGCN family on joint coordinates (the arch from the
    checkpoint); a heatmap backbone (posec3d): `HeatmapExtractor`, random weights allowed (warned).
    `pool`, `preset`: set by `--preset` (`migfuse.extract.presets`): one pooled vector per clip.

    Loading a clip is cheap (memory-mapped skeletons), so on a CPU `workers=0` (load in the main
    process) is the default, 64 clips per forward; 256 and a worker per core on a GPU.

    Raises:
        UserError: no checkpoint (a skeleton backbone has no meaningful random weights).
    """
    if backbone not in (None, "agcn", "aagcn"):
        if pool or preset:
            raise UserError(f"--preset is for the 2s-AGCN family, not {backbone}: drop --preset")
        if layout or length:
            raise UserError(f"--layout and --length are for agcn/aagcn; {backbone} reads COCO-17 keypoints and takes "
                            "its clip length from the checkpoint (drop them)")
        return HeatmapExtractor(manifest, checkpoint, track, backbone)
    if checkpoint is None and preset:
        raise UserError(f"--preset {preset['name']} needs --checkpoint: the {track}-stream file "
                        f"{preset['published_weights']} ({preset['published_at']})")
    if checkpoint is None:
        raise UserError(f"extract skeleton needs --checkpoint: a {track}-stream best.pt of `migfuse backbone train "
                        "skeleton` (or a published 2s-AGCN / mmaction2 file)")
    return SkeletonExtractor(manifest, checkpoint, track, layout=layout, length=length, arch=backbone, pool=pool,
                             preset=preset)
