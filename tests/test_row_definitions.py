"""Row definitions: what a cached row was made from, compared where rows are reused or read."""
from types import SimpleNamespace

from migfuse.data_cache.tracks import TRACKS, row_definition, same_row
from migfuse.datasets.video_measure import VideoMeasure
from migfuse.extract.runner import _changed_rows


def _manifest(measured):
    return SimpleNamespace(videos={"0001": SimpleNamespace(measured=measured)})


def _measure(frames, header):
    return VideoMeasure(frames=frames, origin=0.0, fps=25.0, width=64, height=48, header_frames=header)


def test_a_video_row_is_defined_by_the_frames_that_decode_and_a_header_that_disagrees():
    context = TRACKS["context"]
    assert row_definition(context, _manifest(_measure(75, 75)), "0001") == "video=0001 frames=0-74"
    assert row_definition(context, _manifest(_measure(75, None)), "0001") == "video=0001 frames=0-74"
    assert row_definition(context, _manifest(_measure(75, 97500)), "0001") == "video=0001 frames=0-74 header=97500"
    assert row_definition(context, _manifest(None), "0001") == "video=0001"  # prepared before measuring


def test_video_rows_stored_before_measuring_are_kept_unless_their_header_was_wrong():
    assert same_row("video=0001", "video=0001 frames=0-74")  # windows placed from a right header
    assert not same_row("video=0001", "video=0001 frames=0-74 header=97500")  # misplaced windows
    assert not same_row("video=0001", "video=0002 frames=0-74")
    assert not same_row("video=0001 frames=0-74", "video=0001 frames=0-99")  # the file changed
    assert not same_row("video=0001 frames=10-40", "video=0001 frames=10-41")
    assert same_row("video=0001 frames=10-40", "video=0001 frames=10-40")


def test_extraction_redoes_exactly_the_rows_whose_definition_changed():
    stored = {"0001": "video=0001", "0002": "video=0002", "0003": "video=0003 frames=0-74", "0004": ""}
    group = SimpleNamespace(name="context/mvit_v2_s", rowdefs=lambda ids: [stored[i] for i in ids])
    now = {"0001": "video=0001 frames=0-74", "0002": "video=0002 frames=0-74 header=97500",
           "0003": "video=0003 frames=0-49", "0004": "video=0004 frames=0-9"}
    assert _changed_rows(group, now, sorted(stored)) == {"0002", "0003"}  # no definition stored: kept
