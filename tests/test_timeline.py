"""The timestamp normaliser: stream quirks seen on real RTSP servers never lose a packet."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from nvr.ingest.timeline import MAX_HELD, StreamTimeline

FRAME = 9000  # 10 fps at 90 kHz
JUMP = 2 * 90000


def feed(
    tl: StreamTimeline, stamps: list[tuple[int | None, int | None]]
) -> list[tuple[int, int, int]]:
    out = []
    for i, (pts, dts) in enumerate(stamps):
        for item, s in tl.push(i, pts, dts, 0):
            assert isinstance(item, int)
            out.append((item, s.pts, s.dts))
    return out


def test_first_packet_without_timestamp_is_kept_one_frame_earlier() -> None:
    tl = StreamTimeline(FRAME, JUMP)
    out = feed(tl, [(None, None), (90000, 90000), (99000, 99000)])
    assert [o[0] for o in out] == [0, 1, 2]
    assert out[0][2] == 90000 - FRAME


def test_backwards_dts_is_nudged_forward() -> None:
    tl = StreamTimeline(FRAME, JUMP)
    out = feed(tl, [(0, 0), (9000, 9000), (8000, 8000), (18000, 18000)])
    dts = [o[2] for o in out]
    assert dts == sorted(dts) and len(set(dts)) == 4


def test_forward_jump_is_reported_and_timeline_continues() -> None:
    tl = StreamTimeline(FRAME, JUMP)
    results = []
    for i, ts in enumerate([0, 9000, 9000 + 3600 * 90000, 18000 + 3600 * 90000]):
        results.extend(tl.push(i, ts, ts, 0))
    jumps = [s.jump_ticks for _, s in results]
    assert jumps[2] == 3600 * 90000 - 0
    assert [s.dts for _, s in results] == [0, 9000, 18000, 27000]


def test_b_frame_stream_start_keeps_presentation_order() -> None:
    """What FFmpeg's RTSP demuxer hands over for a B-frame stream: a keyframe with no
    timestamps, a P-frame with a PTS but no DTS, then B-frames with PTS == DTS."""
    tl = StreamTimeline(FRAME, JUMP)
    out = feed(tl, [(None, None), (3 * FRAME, None), (FRAME, FRAME), (2 * FRAME, 2 * FRAME)])
    assert [o[0] for o in out] == [0, 1, 2, 3]
    pts = {o[0]: o[1] for o in out}
    assert pts[1] == 3 * FRAME and pts[2] == FRAME and pts[3] == 2 * FRAME  # kept
    assert sorted(pts, key=pts.__getitem__) == [0, 2, 3, 1]  # I B B P on screen


def test_b_frames_keep_pts_dts_relation() -> None:
    tl = StreamTimeline(FRAME, JUMP)
    # I P B B in decode order: pts 2,5,3,4 frames; dts 0,1,2,3 frames (shifted by 2 frames)
    pairs = [(2 * FRAME, 0), (5 * FRAME, FRAME), (3 * FRAME, 2 * FRAME), (4 * FRAME, 3 * FRAME)]
    out = feed(tl, [(p, d) for p, d in pairs])
    assert [(o[1], o[2]) for o in out] == pairs


@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(-(10**9), 10**9)),
            st.one_of(st.none(), st.integers(-(10**9), 10**9)),
        ),
        min_size=1,
        max_size=60,
    )
)
def test_any_input_gives_every_packet_once_with_strictly_rising_dts(
    stamps: list[tuple[int | None, int | None]],
) -> None:
    tl = StreamTimeline(FRAME, JUMP)
    out = feed(tl, stamps)
    first_dts = next((i for i, (_p, d) in enumerate(stamps) if d is not None), None)
    if first_dts is not None or len(stamps) >= MAX_HELD:
        assert [o[0] for o in out] == list(range(len(out)))
        assert len(out) >= min(len(stamps), (first_dts or 0) + 1)
    else:
        assert out == []  # held until a packet with a DTS arrives
    dts = [o[2] for o in out]
    assert all(b > a for a, b in itertools.pairwise(dts))
    assert all(p >= d for _, p, d in out)


@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(-(10**6), 10**6)),
            st.one_of(st.none(), st.integers(-(10**6), 10**6)),
        ),
        min_size=1,
        max_size=60,
    ),
    st.booleans(),
)
def test_fast_path_stamps_exactly_as_push_does(
    stamps: list[tuple[int | None, int | None]], regular: bool
) -> None:
    """`advance` (the recorder's per-packet fast path) either declines, leaving the state
    alone, or gives the very timestamps `push` would have given."""
    if regular:  # mostly well-behaved streams, so the fast path is really taken
        stamps = [(None if d is None else d + 2 * FRAME, d) for _, d in stamps]
        stamps = [(p, None if d is None else i * FRAME + d % 7) for i, (p, d) in enumerate(stamps)]
    slow, fast = StreamTimeline(FRAME, JUMP), StreamTimeline(FRAME, JUMP)
    expected = feed(slow, stamps)
    got: list[tuple[int, int, int]] = []
    taken = 0
    for i, (pts, dts) in enumerate(stamps):
        out_dts = fast.advance(pts, dts) if dts is not None else None
        if out_dts is not None:
            taken += 1
            got.append((i, fast.out_pts, out_dts))
            continue
        for item, s in fast.push(i, pts, dts, 0):
            assert isinstance(item, int)
            got.append((item, s.pts, s.dts))
    assert got == expected
    if regular and len(stamps) > 2 and all(d is not None for _, d in stamps):
        assert taken >= len(stamps) - 2  # only the first packets need the full path
