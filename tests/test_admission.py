"""Admission rules and in-order insertion: what happens to readings that are late, early or gappy."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from detector.core.admission import AdmissionPolicy, Placement, impute_missing
from detector.core.readings import RejectReason
from detector.core.windows import WindowStore, sliding_windows

NOW = 1_700_000_000.0


def test_newer_reading_is_appended() -> None:
    assert AdmissionPolicy().place(NOW - 10, NOW - 11, NOW) is Placement.APPEND


def test_first_reading_of_a_device_is_appended() -> None:
    assert AdmissionPolicy(max_gap_s=5).place(NOW, -np.inf, NOW) is Placement.APPEND


def test_same_timestamp_is_a_duplicate() -> None:
    assert AdmissionPolicy().place(NOW - 5, NOW - 5, NOW) is RejectReason.DUPLICATE


def test_far_future_is_rejected_and_skew_is_tolerated() -> None:
    policy = AdmissionPolicy(max_future_skew_s=60)
    assert policy.place(NOW + 61, NOW - 1, NOW) is RejectReason.FUTURE_TIMESTAMP
    assert policy.place(NOW + 59, NOW - 1, NOW) is Placement.APPEND


def test_out_of_order_within_grace_is_inserted_after_it_is_late() -> None:
    policy = AdmissionPolicy(out_of_order_grace_s=5)
    assert policy.place(NOW - 4, NOW, NOW) is Placement.INSERT
    assert policy.place(NOW - 6, NOW, NOW) is RejectReason.LATE
    assert AdmissionPolicy().place(NOW - 1, NOW, NOW) is RejectReason.LATE


def test_long_gap_resets_the_window() -> None:
    policy = AdmissionPolicy(max_gap_s=30)
    assert policy.place(NOW, NOW - 31, NOW) is Placement.RESET
    assert policy.place(NOW, NOW - 29, NOW) is Placement.APPEND


def test_impute_fills_missing_from_previous_up_to_the_limit() -> None:
    values = np.array([1.0, np.nan, 3.0], dtype=np.float32)
    previous = np.array([9.0, 8.0, 7.0], dtype=np.float32)
    np.testing.assert_array_equal(impute_missing(values, previous, 0, 2), [1.0, 8.0, 3.0])
    assert impute_missing(values, previous, 2, 2) is None
    assert impute_missing(values, None, 0, 2) is None
    complete = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    assert impute_missing(complete, None, 5, 0) is complete


def _store_with(stamps: list[float], length: int = 4) -> tuple[WindowStore, int]:
    store = WindowStore(length, 1)
    slot = store.slot("d")
    for ts in stamps:
        store.append(slot, ts, np.array([ts], np.float32))
    return store, slot


def test_insert_puts_a_late_reading_in_time_order() -> None:
    store, slot = _store_with([1, 2, 4, 5])
    assert store.insert(slot, 3, np.array([3], np.float32))
    np.testing.assert_array_equal(store.window(slot).ravel(), [2, 3, 4, 5])
    assert store.window_span(slot) == (2.0, 5.0)
    assert store.last_timestamp("d") == 5.0


def test_insert_refuses_duplicates_and_readings_older_than_the_window() -> None:
    store, slot = _store_with([1, 2, 4, 5])
    assert not store.insert(slot, 4, np.array([4], np.float32))
    assert store.holds_timestamp(slot, 4)
    assert not store.insert(slot, 0.5, np.array([0.5], np.float32))
    np.testing.assert_array_equal(store.window(slot).ravel(), [1, 2, 4, 5])


@given(
    st.integers(4, 40).flatmap(
        lambda n: st.tuples(st.just(n), st.lists(st.booleans(), min_size=n, max_size=n))
    )
)
def test_adjacent_swaps_are_repaired_into_the_offline_windows(case: tuple[int, list[bool]]) -> None:
    n, swaps = case
    ordered = list(range(n))
    arrival = ordered[:]
    i = 0
    while i < n - 1:  # swap disjoint adjacent pairs: every reading is at most one step late
        if swaps[i]:
            arrival[i], arrival[i + 1] = arrival[i + 1], arrival[i]
            i += 2
        else:
            i += 1
    length = 4
    store = WindowStore(length, 1)
    slot = store.slot("d")
    for seen, ts in enumerate(arrival, start=1):
        value = np.array([ts], np.float32)
        if ts > store.last_timestamp("d"):
            store.append(slot, float(ts), value)
        else:
            assert store.insert(slot, float(ts), value)
        filled = store.window(slot).ravel()[-min(seen, length) :]
        assert np.all(np.diff(filled) > 0)
    offline = sliding_windows(np.asarray(ordered, np.float32)[:, None], length)[-1].ravel()
    np.testing.assert_array_equal(store.window(slot).ravel(), offline)


def test_reset_forgets_history_and_last_timestamp() -> None:
    store, slot = _store_with([1, 2, 3, 4])
    store.reset(slot)
    assert store.last_timestamp("d") == -np.inf
    assert store.newest_values(slot) is None
    assert not store.append(slot, 10, np.array([10], np.float32))


def _outcomes(policy: AdmissionPolicy, stamps: list[float]) -> list[Placement | RejectReason]:
    """Feed one device's timestamps through the policy as the daemon does (streak and newest)."""
    last, streak, outcomes = -np.inf, 0, []
    for ts in stamps:
        outcome = policy.place(ts, last, NOW, late_streak=streak)
        streak = streak + 1 if outcome is RejectReason.LATE else 0
        if outcome in (Placement.APPEND, Placement.RESET, Placement.CLOCK_RESET):
            last = ts
        outcomes.append(outcome)
    return outcomes


def test_a_run_of_late_readings_restarts_the_window_from_the_next() -> None:
    policy = AdmissionPolicy(max_late_readings=3)
    assert policy.place(NOW - 100, NOW, NOW, late_streak=2) is RejectReason.LATE
    assert policy.place(NOW - 100, NOW, NOW, late_streak=3) is Placement.CLOCK_RESET
    # Inside the grace period a reading is inserted, whatever the streak.
    assert AdmissionPolicy(5, max_late_readings=1).place(NOW - 1, NOW, NOW, 9) is Placement.INSERT


def test_late_readings_never_restart_the_window_when_the_limit_is_off() -> None:
    policy = AdmissionPolicy(max_late_readings=None)
    assert policy.place(NOW - 100, NOW, NOW, late_streak=10**9) is RejectReason.LATE


@given(
    before=st.integers(1, 30),
    after=st.integers(1, 80),
    step_back=st.floats(100.0, 1e7),
    limit=st.integers(1, 20),
)
def test_clock_step_back_blinds_a_device_for_at_most_the_limit(
    before: int, after: int, step_back: float, limit: int
) -> None:
    """A clock that steps back by any amount costs ``limit`` readings, then all are accepted."""
    start = NOW - 1e8
    stamps = [start + i for i in range(before)]
    stamps += [stamps[-1] - step_back + i for i in range(after)]
    outcomes = _outcomes(AdmissionPolicy(max_late_readings=limit), stamps)
    late = min(after, limit)
    expected = [Placement.APPEND] * before + [RejectReason.LATE] * late
    if after > limit:
        expected += [Placement.CLOCK_RESET] + [Placement.APPEND] * (after - limit - 1)
    assert outcomes == expected


@given(
    before=st.integers(1, 30),
    ahead=st.integers(2, 1000).map(lambda s: s + 0.5),  # not on the device's 1 s grid
    after=st.integers(1, 80),
    limit=st.integers(1, 20),
)
def test_one_reading_ahead_blinds_a_device_for_at_most_the_limit(
    before: int, ahead: float, after: int, limit: int
) -> None:
    """One reading ahead of the device's clock: at most ``limit`` of the next are rejected."""
    start = NOW - 1e8
    stamps = [start + i for i in range(before)]
    stamps += [stamps[-1] + ahead] + [stamps[-1] + 1 + i for i in range(after)]
    outcomes = _outcomes(AdmissionPolicy(max_late_readings=limit), stamps)
    rejected = [o for o in outcomes[before + 1 :] if isinstance(o, RejectReason)]
    assert rejected == [RejectReason.LATE] * len(rejected)
    assert len(rejected) <= limit


@given(st.lists(st.floats(NOW - 1e6, NOW), max_size=200), st.integers(1, 10))
def test_never_more_late_rejections_in_a_row_than_the_limit(
    stamps: list[float], limit: int
) -> None:
    run = longest = 0
    for outcome in _outcomes(AdmissionPolicy(max_late_readings=limit), stamps):
        run = run + 1 if outcome is RejectReason.LATE else 0
        longest = max(longest, run)
    assert longest <= limit
