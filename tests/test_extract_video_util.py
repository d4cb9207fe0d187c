"""Test helpers (no tests here): a small prepared dataset of numbered videos and a tiny token model.

Dataset (`make_dataset`): 3 good videos with several clips each, plus the bad inputs the runner
must survive: a clip past its video's end, a corrupt file, a video whose file is missing.
`TinyVideoExtractor` is the real `VideoExtractor` (real loaders, decoding, batching, writing) with
MViTv2-S replaced by a per-sample average-pooling "model", so mechanics tests take seconds.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_decode_util import write_corrupt, write_video  # noqa: E402

from migfuse.backbones.mvit import PREPROCESSING  # noqa: E402
from migfuse.backbones.registry import Backbone, register_backbone  # noqa: E402
from migfuse.datasets.manifest import Clip, Manifest, VideoInfo  # noqa: E402
from migfuse.extract.video import VideoExtractor  # noqa: E402

# video id -> (frames in the file, [(start, end), ...] clips)
GOOD = {
    "0001": (120, [(0, 15), (10, 40), (60, 119), (100, 110)]),
    "0002": (90, [(5, 20), (30, 89), (40, 60)]),
    "0003": (200, [(0, 30), (150, 199), (180, 260)]),  # the last clip runs past the end
}
CORRUPT, MISSING = "0004", "0005"
#: this file: `python HELPER_PATH ...` runs one tiny extraction (see `main`)
HELPER_PATH = Path(__file__).resolve()
PAST_END = "0003_2"


def make_dataset(root: Path, good: dict | None = None) -> Path:
    """Write the videos and a PREPARED folder under `root`; return the PREPARED folder.

    `good` replaces GOOD (the bad inputs are always added).
    """
    vids = root / "videos"
    vids.mkdir(parents=True, exist_ok=True)
    clips, videos = [], {}
    for vid, (n, ranges) in (GOOD if good is None else good).items():
        path = write_video(vids / f"{vid}.mp4", n)
        videos[vid] = VideoInfo(vid, video_path=path, n_frames=n)
        clips += [Clip.make(vid, k, s, e, raw_class=1 + k) for k, (s, e) in enumerate(ranges)]
    videos[CORRUPT] = VideoInfo(CORRUPT, video_path=write_corrupt(vids / f"{CORRUPT}.mp4"))
    clips += [Clip.make(CORRUPT, k, s, e, raw_class=2) for k, (s, e) in enumerate([(0, 10), (5, 20)])]
    videos[MISSING] = VideoInfo(MISSING, video_path=vids / f"{MISSING}.mp4")  # never written
    clips += [Clip.make(MISSING, 0, 0, 10, raw_class=3)]
    prepared = root / "prepared"
    Manifest(clips=clips, videos=videos).save(prepared)
    return prepared


def bad_ids() -> set[str]:
    return {PAST_END, f"{CORRUPT}_0", f"{CORRUPT}_1", f"{MISSING}_0"}


@register_backbone("tiny")
class TinyBackbone(Backbone):
    """A video backbone registered from this test file: (B,3,F,224,224) -> (B, 5, 6) tokens.

    Token j, channel c: mean of colour c//2 over frame block j (of 5) and image half c%2 - so the
    tokens depend on which frames were sampled, and each sample's tokens depend on it alone. It has
    MViTv2-S's input recipe, so the real loaders, decoding, batching and writing run unchanged.
    """

    input_doc = "(N, 3, F, 224, 224) float32"
    outputs_doc = {"tokens": "(N, 5, 6) block x half colour means"}
    tracks = ("video", "context")
    preprocessing = PREPROCESSING
    tokens_doc = "5 frame blocks x (colour, image half) means"

    def __init__(self, **options):
        import torch

        super().__init__(**options)
        self.model = torch.nn.Identity()  # nothing to learn: the tokens are a fixed pooling

    def load(self, checkpoint, trusted=False):
        raise NotImplementedError("the tiny test backbone has no checkpoints")

    @property
    def token_shape(self):
        return (5, 6)

    def clip_tokens(self, x):
        import torch

        b, c, f, h, w = x.shape
        blocks = torch.stack([x[:, :, j * f // 5:(j + 1) * f // 5].mean(dim=(2, 3)) for j in range(5)], 1)
        halves = torch.stack([blocks[..., : w // 2].mean(-1), blocks[..., w // 2:].mean(-1)], -1)
        return halves.reshape(b, 5, 6)

    def run(self, x):
        import torch

        return {"tokens": self.clip_tokens(torch.from_numpy(x)).numpy()}


class TinyVideoExtractor(VideoExtractor):
    """The real VideoExtractor with the `tiny` backbone registered above."""

    def __init__(self, manifest, track="video", **kwargs):
        super().__init__(manifest, track, backbone="tiny", **kwargs)


class SlowTinyVideoExtractor(TinyVideoExtractor):
    """TinyVideoExtractor that sleeps `delay` s per forward, so a test can kill it mid-run."""

    def __init__(self, *args, delay: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.delay = delay

    def forward(self, inputs):
        import time

        time.sleep(self.delay)
        return super().forward(inputs)


def main(argv: list[str]) -> int:
    """`python tests/test_extract_video_util.py PREPARED CACHE SHARD WORKERS DELAY [TRACK [BATCH]]`: one tiny
    run through the runner's entry point (`runner.run_extractor`, as the CLI), e.g. under torchrun."""
    from migfuse.extract.interface import RunOptions
    from migfuse.extract.report import format_summary
    from migfuse.extract.runner import run_extractor
    from migfuse.runtime import Runtime

    prepared, cache, shard, workers, delay, *rest = argv
    track = rest[0] if rest else "video"
    batch = int(rest[1]) if len(rest) > 1 else 1
    ex = SlowTinyVideoExtractor(Manifest.load(prepared), track, delay=float(delay))
    runtime = Runtime.resolve(device="cpu", precision="fp32")
    with runtime.process_group("gloo"):
        s = run_extractor(ex, cache, runtime,
                          RunOptions(workers=int(workers), batch_size=batch, shard=shard if shard != "-" else None))
        print(format_summary(s), flush=True)
    return 0 if s.ok else 1


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main(sys.argv[1:]))
