"""OffsetTracker: what may be committed, through rebuilds and handovers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from detector.core.offsets import OffsetTracker


def test_a_rebuilding_partition_is_never_safe_or_committed_until_its_replay_is_done() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.rewound("p0", start=40, committed=100, beginning=0)
    assert tracker.rebuilding("p0") and not tracker.live("p0", 99) and tracker.live("p0", 100)

    tracker.processed("p0", 80)
    tracker.mark_safe(tracker.safe_point())
    assert tracker.safe == {} and tracker.uncommitted({"p0"}) == {}
    assert tracker.finish_rebuild("p0") is None

    tracker.processed("p0", 100)
    assert tracker.finish_rebuild("p0") == 100 and not tracker.rebuilding("p0")
    assert tracker.take_partial("p0") and not tracker.take_partial("p0")  # asked once
    tracker.processed("p0", 120)
    tracker.mark_safe(tracker.safe_point())
    assert tracker.uncommitted({"p0"}) == {"p0": 120}


def test_committed_offsets_are_not_committed_again_and_unassigned_ones_never() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    for partition, offset in (("p0", 10), ("p1", 20)):
        tracker.processed(partition, offset)
    tracker.mark_safe(tracker.safe_point())
    assert tracker.uncommitted({"p0"}) == {"p0": 10}
    tracker.committed({"p0": 10})
    assert tracker.uncommitted({"p0", "p1"}) == {"p1": 20}


def test_forgetting_a_partition_drops_every_offset_of_it() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.rewound("p0", start=5, committed=10, beginning=0)
    tracker.processed("p0", 7)
    tracker.processed("p1", 3)
    tracker.mark_safe(tracker.safe_point())
    tracker.forget({"p0", "p1"})
    assert tracker.safe == {} and tracker.position("p0") is None
    assert not tracker.rebuilding("p0") and tracker.committed_offsets == {}


def test_the_listener_reads_a_snapshot_that_later_changes_do_not_touch() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.processed("p0", 5)
    tracker.mark_safe(tracker.safe_point())
    seen = tracker.safe
    tracker.processed("p0", 9)
    tracker.mark_safe(tracker.safe_point())
    tracker.forget({"p0"})
    assert seen == {"p0": 5}


@given(
    st.lists(
        st.tuples(st.sampled_from(["p0", "p1", "p2"]), st.integers(0, 50), st.booleans()),
        max_size=60,
    )
)
def test_safe_offsets_never_pass_what_was_processed(steps: list[tuple[str, int, bool]]) -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    position: dict[str, int] = {}
    for partition, advance, checkpoint in steps:
        position[partition] = position.get(partition, 0) + advance
        tracker.processed(partition, position[partition])
        if checkpoint:
            tracker.mark_safe(tracker.safe_point())
        for safe_partition, offset in tracker.safe.items():
            assert offset <= position[safe_partition]
