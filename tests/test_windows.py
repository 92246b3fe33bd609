"""Windowing: offline ``sliding_windows`` and the daemon's ``WindowStore`` must agree exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from detector.core.windows import WindowStore, sliding_windows, window_end_indices


def _rows(n: int, features: int = 2) -> np.ndarray:
    """Rows whose values encode their index, so order mistakes are visible."""
    return np.arange(n * features, dtype=np.float32).reshape(n, features)


def _feed(store: WindowStore, device: str, rows: np.ndarray, ts0: float = 0.0) -> list[bool]:
    slot = store.slot(device)
    return [store.append(slot, ts0 + i, row) for i, row in enumerate(rows)]


def test_window_is_oldest_first_before_wrap_around() -> None:
    store = WindowStore(length=4, n_features=2)
    rows = _rows(4)
    ready = _feed(store, "d", rows)
    assert ready == [False, False, False, True]
    np.testing.assert_array_equal(store.window(store.slot("d")), rows)


def test_window_is_oldest_first_after_wrap_around() -> None:
    store = WindowStore(length=4, n_features=2)
    rows = _rows(7)
    _feed(store, "d", rows)
    np.testing.assert_array_equal(store.window(store.slot("d")), rows[3:7])


def test_window_copies_into_out_buffer() -> None:
    store = WindowStore(length=3, n_features=2)
    rows = _rows(5)
    _feed(store, "d", rows)
    out = np.empty((3, 2), dtype=np.float32)
    returned = store.window(store.slot("d"), out=out)
    np.testing.assert_array_equal(out, rows[2:5])
    assert returned is out


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    length=st.integers(1, 6),
    stride=st.integers(1, 4),
    n_features=st.integers(1, 3),
    n_rows=st.integers(0, 30),
)
def test_store_yields_exactly_the_sliding_windows(
    data: st.DataObject, length: int, stride: int, n_features: int, n_rows: int
) -> None:
    """The daemon's ring buffer and the offline windowing see the same windows (the contract)."""
    values = data.draw(
        arrays(
            np.float32,
            (n_rows, n_features),
            elements=st.floats(-1e6, 1e6, width=32, allow_nan=False),
        )
    )
    timestamps = np.arange(n_rows, dtype=np.float64) * 0.5 + 1_700_000_000.0
    # Capacity 1 plus a second, interleaved device: growth and slot independence are exercised.
    store = WindowStore(length, n_features, stride=stride, initial_capacity=1)
    other = store.slot("other")
    device = store.slot("device")
    windows, spans, ends = [], [], []
    for i in range(n_rows):
        store.append(other, -float(i), -values[i] - 1.0)
        if store.append(device, float(timestamps[i]), values[i]):
            windows.append(store.window(device))
            spans.append(store.window_span(device))
            ends.append(i)

    expected = sliding_windows(values, length, stride)
    assert len(windows) == len(expected)
    if windows:
        np.testing.assert_array_equal(np.stack(windows), expected)
    np.testing.assert_array_equal(ends, window_end_indices(n_rows, length, stride))
    for (start_ts, end_ts), end in zip(spans, ends, strict=True):
        assert start_ts == timestamps[end - length + 1]
        assert end_ts == timestamps[end]


def test_window_span_gives_first_and_last_timestamp() -> None:
    store = WindowStore(length=3, n_features=1)
    slot = store.slot("d")
    for ts in (10.0, 11.0, 12.0, 13.0, 14.0):
        store.append(slot, ts, np.array([ts], np.float32))
    assert store.window_span(slot) == (12.0, 14.0)


def test_growth_beyond_initial_capacity_keeps_earlier_devices() -> None:
    store = WindowStore(length=3, n_features=2, initial_capacity=2)
    per_device = {f"dev-{i}": _rows(5) + 100 * i for i in range(9)}
    # Fill the first two devices before any growth, then add the rest (several doublings).
    for device, rows in per_device.items():
        _feed(store, device, rows, ts0=1000.0 * int(device.split("-")[1]))
    assert len(store) == 9
    assert store.device_ids == list(per_device)
    for device, rows in per_device.items():
        slot = store.slot(device)
        np.testing.assert_array_equal(store.window(slot), rows[2:5])
        assert store.last_timestamp(device) == 1000.0 * int(device.split("-")[1]) + 4
    assert "dev-0" in store
    assert "nope" not in store


def test_growth_keeps_partial_fill_state() -> None:
    """A device that was part-way through filling continues where it was after growth."""
    store = WindowStore(length=3, n_features=1, initial_capacity=1)
    first = store.slot("a")
    assert not store.append(first, 0.0, np.array([1.0], np.float32))
    assert not store.append(first, 1.0, np.array([2.0], np.float32))
    store.slot("b")  # forces growth
    assert store.append(first, 2.0, np.array([3.0], np.float32))
    np.testing.assert_array_equal(store.window(first)[:, 0], [1.0, 2.0, 3.0])


def test_max_devices_raises_overflow_error() -> None:
    store = WindowStore(length=2, n_features=1, initial_capacity=1, max_devices=3)
    for device in ("a", "b", "c"):
        store.slot(device)
    assert store.slot("a") == 0  # known devices are still fine
    with pytest.raises(OverflowError):
        store.slot("d")
    assert len(store) == 3


def test_reset_requires_refilling() -> None:
    store = WindowStore(length=3, n_features=2)
    slot = store.slot("d")
    _feed(store, "d", _rows(4))
    store.reset(slot)
    fresh = _rows(3) + 1000
    ready = [store.append(slot, 100.0 + i, row) for i, row in enumerate(fresh)]
    assert ready == [False, False, True]
    np.testing.assert_array_equal(store.window(slot), fresh)
    assert store.window_span(slot) == (100.0, 102.0)


def test_last_timestamp() -> None:
    store = WindowStore(length=2, n_features=1)
    assert store.last_timestamp("unknown") == -np.inf
    slot = store.slot("d")
    assert store.last_timestamp("d") == -np.inf
    store.append(slot, 5.5, np.zeros(1, np.float32))
    assert store.last_timestamp("d") == 5.5


def test_stride_readiness_pattern() -> None:
    store = WindowStore(length=3, n_features=1, stride=2)
    ready = _feed(store, "d", _rows(9, features=1))
    assert ready == [False, False, True, False, True, False, True, False, True]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"length": 0, "n_features": 1},
        {"length": 2, "n_features": 0},
        {"length": 2, "n_features": 1, "stride": 0},
        {"length": 2, "n_features": 1, "initial_capacity": 0},
    ],
)
def test_store_rejects_bad_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        WindowStore(**kwargs)


def test_sliding_windows_shape_and_contents() -> None:
    values = _rows(10, features=3)
    windows = sliding_windows(values, length=4, stride=3)
    assert windows.shape == (3, 4, 3)
    for window, start in zip(windows, (0, 3, 6), strict=True):
        np.testing.assert_array_equal(window, values[start : start + 4])


def test_sliding_windows_last_window_ends_on_last_complete_row() -> None:
    values = _rows(10, features=1)
    windows = sliding_windows(values, length=4, stride=4)  # starts 0, 4; a start at 8 is incomplete
    assert windows.shape == (2, 4, 1)
    np.testing.assert_array_equal(windows[-1], values[4:8])


@pytest.mark.parametrize("n_rows", [0, 1, 4])
def test_sliding_windows_fewer_rows_than_length(n_rows: int) -> None:
    windows = sliding_windows(_rows(n_rows, features=2), length=5)
    assert windows.shape == (0, 5, 2)
    assert window_end_indices(n_rows, 5).shape == (0,)


def test_sliding_windows_exact_length_gives_one_window() -> None:
    values = _rows(5)
    windows = sliding_windows(values, length=5, stride=3)
    assert windows.shape == (1, 5, 2)
    np.testing.assert_array_equal(window_end_indices(5, 5, 3), [4])


@pytest.mark.parametrize(
    ("values", "length", "stride"),
    [
        (np.zeros((5, 2)), 0, 1),
        (np.zeros((5, 2)), 2, 0),
        (np.zeros(5), 2, 1),
        (np.zeros((5, 2, 1)), 2, 1),
    ],
)
def test_sliding_windows_rejects_bad_arguments(
    values: np.ndarray, length: int, stride: int
) -> None:
    with pytest.raises(ValueError):
        sliding_windows(values, length, stride)


@given(n_rows=st.integers(0, 50), length=st.integers(1, 10), stride=st.integers(1, 5))
def test_window_end_indices_match_sliding_windows(n_rows: int, length: int, stride: int) -> None:
    values = _rows(n_rows, features=1)
    windows = sliding_windows(values, length, stride)
    ends = window_end_indices(n_rows, length, stride)
    assert len(ends) == len(windows)
    for window, end in zip(windows, ends, strict=True):
        assert window[-1, 0] == values[end, 0]
        assert window[0, 0] == values[end - length + 1, 0]


def test_a_removed_device_frees_its_slot_for_the_next_new_one() -> None:
    store = WindowStore(length=2, n_features=1, initial_capacity=2, max_devices=2)
    _feed(store, "a", _rows(2, features=1))
    _feed(store, "b", _rows(2, features=1))
    freed = store.slot("a")
    store.remove("a")
    assert "a" not in store and len(store) == 1 and store.device_ids == ["b"]
    assert store.slot("c") == freed  # at max_devices, but the slot is free again
    assert store.newest_values(freed) is None and store.last_timestamp("c") == -np.inf
    assert store.capacity == 2
    store.remove("nobody")  # forgetting an unknown device is a no-op


def test_churn_of_short_lived_devices_does_not_grow_the_buffers() -> None:
    """A fleet that replaces its devices reuses slots: memory follows the live fleet."""
    store = WindowStore(length=4, n_features=3, initial_capacity=16)
    for i in range(20_000):
        _feed(store, f"dev-{i}", _rows(4, features=3))
        if i >= 10:
            store.remove(f"dev-{i - 10}")
    assert len(store) == 10
    assert store.capacity == 16


def test_idle_lists_devices_last_seen_before_the_cutoff() -> None:
    store = WindowStore(length=2, n_features=1)
    for device, seen in (("a", 10.0), ("b", 20.0), ("c", 30.0)):
        store.touch(store.slot(device), seen)
    store.slot("never-seen")
    assert sorted(store.idle(before=25.0)) == ["a", "b"]
    assert store.idle(before=10.0) == []
    assert store.longest_idle() == ("a", 10.0)
    store.touch(store.slot("a"), 40.0)
    assert store.longest_idle() == ("b", 20.0)
    store.remove("b")
    assert store.longest_idle() == ("c", 30.0)


def test_compact_shrinks_the_buffers_and_keeps_the_survivors_windows() -> None:
    store = WindowStore(length=3, n_features=2, initial_capacity=4)
    for i in range(64):
        _feed(store, f"dev-{i}", _rows(5) + i, ts0=100.0 * i)
        store.touch(store.slot(f"dev-{i}"), float(i))
    assert store.capacity == 64
    for i in range(64):
        if i % 16:
            store.remove(f"dev-{i}")
    assert store.compact()
    assert store.capacity == 8
    assert store.device_ids == ["dev-0", "dev-16", "dev-32", "dev-48"]
    for i in (0, 16, 32, 48):
        slot = store.slot(f"dev-{i}")
        np.testing.assert_array_equal(store.window(slot), (_rows(5) + i)[2:5])
        assert store.last_timestamp(f"dev-{i}") == 100.0 * i + 4
    assert store.longest_idle() == ("dev-0", 0.0)
    assert not store.compact()  # already small


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["add", "remove"]), st.integers(0, 30)),
        max_size=200,
    )
)
def test_store_with_removals_matches_a_dictionary_of_devices(ops: list[tuple[str, int]]) -> None:
    """Whatever devices come and go, each survivor's window is exactly its own readings."""
    store = WindowStore(length=3, n_features=1, initial_capacity=1)
    model: dict[str, list[float]] = {}
    seen: dict[str, float] = {}
    for clock, (op, number) in enumerate(ops):
        device = f"d{number}"
        if op == "remove":
            store.remove(device)
            model.pop(device, None)
            seen.pop(device, None)
            continue
        slot = store.slot(device)
        value = float(clock)
        store.append(slot, value, np.array([value], np.float32))
        store.touch(slot, value)
        model.setdefault(device, []).append(value)
        seen[device] = value
        if clock % 7 == 0:
            store.compact()
    assert sorted(store.device_ids) == sorted(model)
    for device, values in model.items():
        slot = store.slot(device)
        filled = min(len(values), 3)
        np.testing.assert_array_equal(store.window(slot).ravel()[3 - filled :], values[-filled:])
    if seen:
        assert store.longest_idle() == min(seen.items(), key=lambda item: item[1])
        cutoff = sorted(seen.values())[len(seen) // 2]
        assert sorted(store.idle(cutoff)) == sorted(d for d, t in seen.items() if t < cutoff)
    else:
        assert store.longest_idle() is None


def test_a_device_in_a_freed_slot_is_not_taken_for_the_one_it_replaced() -> None:
    """At max_devices each new device replaces the longest-idle one, never the previous new one.

    All seen in the same clock tick: the candidates ranked before must still come first.
    """
    store = WindowStore(length=2, n_features=1)
    for i in range(300):
        store.touch(store.slot(f"old-{i}"), 10.0)
    replaced = []
    for i in range(3):
        candidate = store.longest_idle()
        assert candidate is not None
        oldest = candidate[0]
        replaced.append(oldest)
        store.remove(oldest)
        store.touch(store.slot(f"new-{i}"), 10.0)
    assert all(device.startswith("old-") for device in replaced)
    assert len(set(replaced)) == 3


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(1, 3),
    st.lists(st.integers(0, 3), max_size=8),
    st.lists(st.lists(st.integers(0, 3), max_size=40), min_size=1, max_size=4),
)
def test_append_many_is_append_one_by_one(
    length: int, stride: int, history: list[int], calls: list[list[int]]
) -> None:
    """Windows, spans, readiness and the buffers after many calls equal single appends."""
    one = WindowStore(length, 2, stride=stride, initial_capacity=1)
    many = WindowStore(length, 2, stride=stride, initial_capacity=1)
    clock = 0.0
    for device in history:  # some devices start with a part-filled buffer
        clock += 1.0
        for store in (one, many):
            store.append(store.slot(f"d{device}"), clock, np.array([clock, -clock], np.float32))
    for devices in calls:
        slots, stamps, rows = [], [], []
        expected_ready, expected_windows, expected_spans = [], [], []
        for index, device in enumerate(devices):
            clock += 1.0
            values = np.array([clock, -clock], np.float32)
            slot = one.slot(f"d{device}")
            assert many.slot(f"d{device}") == slot
            if one.append(slot, clock, values):
                expected_ready.append(index)
                expected_windows.append(one.window(slot))
                expected_spans.append(one.window_span(slot))
            slots.append(slot)
            stamps.append(clock)
            rows.append(values)
        ready, windows, spans = many.append_many(
            np.array(slots, np.int64), np.array(stamps), np.array(rows, np.float32).reshape(-1, 2)
        )
        # append_many groups by device; order both by (device, time) to compare.
        expected = sorted(range(len(expected_ready)), key=lambda i: (slots[expected_ready[i]], i))
        assert ready.tolist() == [expected_ready[i] for i in expected]
        for got, i in zip(windows, expected, strict=True):
            np.testing.assert_array_equal(got, expected_windows[i])
        assert [tuple(s) for s in spans.tolist()] == [expected_spans[i] for i in expected]
    for device in set(history) | {d for call in calls for d in call}:
        slot = one.slot(f"d{device}")
        np.testing.assert_array_equal(many.window(slot), one.window(slot))
        assert many.window_span(slot) == one.window_span(slot)
        assert many.last_timestamp(f"d{device}") == one.last_timestamp(f"d{device}")
