"""Test helpers (no tests here): a prepared dataset of small videos with a planted class signal.

Each clip's frames are one flat colour per class (4 classes: red, green, blue, grey) with pixel noise,
so a tiny MViT learns the class from the pixels in a few epochs; clips lie back to back in 8 videos
(6 in split_miga train, 2 in validation).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from migfuse.datasets.manifest import Clip, Manifest, VideoInfo

COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [128, 128, 128]], np.uint8)
CLIP_FRAMES = 20


def write_colour_video(path: Path, classes: list[int], seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    """h264 mp4 with CLIP_FRAMES frames per entry of `classes`, each frame its class colour + noise."""
    import av

    rng = np.random.default_rng(seed)
    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "20", "preset": "ultrafast"}
        for c in classes:
            for _ in range(CLIP_FRAMES):
                img = np.clip(COLOURS[c].astype(np.int16) + rng.integers(-40, 41, (h, w, 3)), 0, 255)
                for packet in stream.encode(av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_colour_dataset(root: Path, videos: int = 8, clips_per_video: int = 8, val_videos: int = 2) -> Path:
    """Write the videos and a PREPARED folder under `root`; return the PREPARED folder.

    Raw classes 1..4 (label index 0..3), cycling through the clips of each video, shifted per video.
    """
    vids = root / "videos"
    vids.mkdir(parents=True, exist_ok=True)
    clips, infos = [], {}
    for v in range(1, videos + 1):
        vid = f"{v:04d}"
        classes = [(k + v) % 4 for k in range(clips_per_video)]
        path = write_colour_video(vids / f"{vid}.mp4", classes, seed=v)
        infos[vid] = VideoInfo(vid, video_path=path, n_frames=CLIP_FRAMES * clips_per_video)
        split = "validation" if v > videos - val_videos else "train"
        clips += [Clip.make(vid, k, k * CLIP_FRAMES, (k + 1) * CLIP_FRAMES - 1, raw_class=c + 1, split_miga=split)
                  for k, c in enumerate(classes)]
    prepared = root / "prepared"
    Manifest(clips=clips, videos=infos).save(prepared)
    return prepared
