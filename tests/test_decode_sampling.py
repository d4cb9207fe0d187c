"""Frame sampling rules of the video and context tracks."""
from __future__ import annotations

import numpy as np
import pytest

from migfuse.extract.sampling import ClipSampling, ContextSampling, clip_windows, context_windows, uniform_indices


def test_uniform_indices_are_segment_centres_inside_the_clip():
    idx = uniform_indices(100, 163, 16)  # 64 frames -> every 4th, starting at the 2nd
    assert idx.tolist() == list(range(102, 164, 4))
    assert uniform_indices(5, 5, 4).tolist() == [5, 5, 5, 5]  # one-frame clip repeats it
    short = uniform_indices(0, 9, 16)  # shorter than 16: repeats, stays sorted and inside
    assert short.min() == 0 and short.max() == 9 and np.all(np.diff(short) >= 0)
    with pytest.raises(ValueError):
        uniform_indices(10, 9)


def test_clip_windows_split_long_clips_only():
    assert clip_windows(0, 200, max_windows=1).shape == (1, 16)
    w = clip_windows(0, 199, max_windows=4, window_span=64)  # 200 frames -> ceil(200/64) = 4
    assert w.shape == (4, 16)
    assert w[0].min() >= 0 and w[-1].max() <= 199
    assert np.all(w[1:, 0] > w[:-1, -1])  # windows are consecutive, not overlapping
    assert clip_windows(0, 30, max_windows=4).shape == (1, 16)  # a short clip keeps one window
    assert clip_windows(0, 999, max_windows=3).shape == (3, 16)  # capped


def test_context_windows_spread_over_the_video_and_stay_inside():
    idx = context_windows(1000, k=8, frames=16, stride=4)
    assert idx.shape == (8, 16)
    assert np.all(np.diff(idx, axis=1) == 4)
    centres = idx.mean(axis=1)
    assert np.allclose(centres, (np.arange(8) + 0.5) * 1000 / 8, atol=1)
    edge = context_windows(100, k=8)  # windows near the ends are shifted inside
    assert edge.min() == 0 and edge.max() == 99  # first window starts at frame 0, last ends at 99
    tiny = context_windows(10, k=2)  # shorter than one window: clamped to the last frame
    assert tiny.max() == 9 and tiny.min() == 0
    with pytest.raises(ValueError):
        context_windows(0)


def test_sampling_records_are_json_friendly():
    import json

    assert json.loads(json.dumps(ClipSampling(max_windows=2).record()))["max_windows"] == 2
    assert ContextSampling(windows=5).indices(500).shape == (5, 16)
