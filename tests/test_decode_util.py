"""Test helpers (no tests here): h264 mp4 files whose frames carry their own index.

Each frame shows its 0-based index as 12 big binary blocks (4 x 3 grid of 32 x 32 pixels, white = 1),
robust to h264 compression, so a test can read back which frame a decoder returned.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

W, H, BLOCK, BITS = 128, 96, 32, 12


def frame_image(index: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) showing `index` in binary blocks (bit b at row b // 4, column b % 4)."""
    img = np.zeros((H, W, 3), np.uint8)
    for b in range(BITS):
        if index >> b & 1:
            r, c = divmod(b, 4)
            img[r * BLOCK:(r + 1) * BLOCK, c * BLOCK:(c + 1) * BLOCK] = 255
    return img


def read_index(frame: np.ndarray) -> int:
    """Inverse of `frame_image` on a decoded frame of any size (H, W, 3): block means > 128 are ones."""
    h, w = frame.shape[:2]
    gray = frame.astype(np.float32).mean(axis=2)
    value = 0
    for b in range(BITS):
        r, c = divmod(b, 4)
        block = gray[r * h // 3:(r + 1) * h // 3, c * w // 4:(c + 1) * w // 4]
        if block[block.shape[0] // 4: -block.shape[0] // 4, block.shape[1] // 4: -block.shape[1] // 4].mean() > 128:
            value |= 1 << b
    return value


def write_video(path: Path, n_frames: int, fps: int = 25, gop: int = 25, bframes: int = 0) -> Path:
    """Write an h264 mp4 of `n_frames` numbered frames (keyframe every `gop` frames, `bframes` B-frames:
    with B-frames, decode order differs from presentation order, as in most real footage)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"crf": "18", "preset": "ultrafast" if not bframes else "fast", "bf": str(bframes)}
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(frame_image(i), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_corrupt(path: Path) -> Path:
    """A file named like a video that holds no video."""
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    return path


def damage_frame(path: Path, index: int) -> Path:
    """Zero the bytes of the packet holding frame `index` (in presentation order), in place, as a bad
    sector or an interrupted copy would: FFmpeg then raises on that packet. Frames before it decode."""
    import av

    with av.open(str(path)) as c:
        packets = sorted((p.pts, p.pos, p.size) for p in c.demux(video=0) if p.size)
    _, pos, size = packets[index]
    data = bytearray(path.read_bytes())
    data[pos:pos + size] = bytes(size)
    path.write_bytes(bytes(data))
    return path
