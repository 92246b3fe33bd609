"""Recent scores: the incremental order statistics equal numpy's on the held values, exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.core.recent import RecentScores

# Ties, signed zeros, infinities and NaN drawn often; any other float (subnormals included) too.
values = st.one_of(
    st.sampled_from([-2.0, -0.0, 0.0, 1.0, 1.0, 3.5, math.inf, -math.inf, math.nan]),
    st.floats(allow_nan=True, allow_infinity=True),
)
finite_values = st.one_of(st.sampled_from([-2.0, -0.0, 0.0, 1.0, 3.5]), st.floats(-1e300, 1e300))


def _pushed(size: int, pushed: list[float]) -> RecentScores:
    recent = RecentScores(size)
    for value in pushed:
        recent.push(value)
    return recent


def _partition_median(held: np.ndarray) -> float:
    """The median adaptation computed by partitioning before (NaN ranked last, as here)."""
    middle = len(held) // 2
    if len(held) % 2:
        return float(np.partition(held, middle)[middle])
    lower, upper = np.partition(held, [middle - 1, middle])[middle - 1 : middle + 1]
    return float((lower + upper) / 2)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@settings(max_examples=300, deadline=None)
@given(size=st.integers(2, 50), pushed=st.lists(values, min_size=1, max_size=160))
def test_order_statistics_equal_numpys_after_every_push(size: int, pushed: list[float]) -> None:
    recent = RecentScores(size)
    for value in pushed:
        recent.push(value)
        held = recent.values()
        ordered = np.sort(held)  # NaN last, as ranked() ranks it
        ranked = [recent.ranked(k) for k in range(len(recent))]
        np.testing.assert_array_equal(ranked, ordered)  # NaNs equal, 0.0 == -0.0
        with np.errstate(invalid="ignore"):
            assert _same(recent.median(), _partition_median(held))
            if not np.isnan(held).any():
                assert _same(recent.median(), float(np.median(held)))


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(2, 50),
    pushed=st.lists(finite_values, min_size=1, max_size=160),
    q=st.floats(0.01, 0.99),
)
def test_the_likelihoods_ranks_equal_its_former_partition(
    size: int, pushed: list[float], q: float
) -> None:
    """The lower median and the rounded quantile rank, as the likelihood partitioned them."""
    recent = _pushed(size, pushed)
    held, seen = recent.values(), len(recent)
    middle, spread_at = (seen - 1) // 2, round(q * (seen - 1))
    ordered = np.partition(held, sorted({spread_at, middle}))
    assert recent.ranked(middle) == float(ordered[middle])
    assert recent.ranked(spread_at) == float(ordered[spread_at])


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(2, 50),
    history=st.lists(values, max_size=120),
    last=st.data(),
)
def test_a_replay_of_the_last_size_values_rebuilds_the_statistics_bit_for_bit(
    size: int, history: list[float], last: st.DataObject
) -> None:
    tail = last.draw(st.lists(values, min_size=size, max_size=size))
    everything, replayed = _pushed(size, history + tail), _pushed(size, tail)
    assert everything.complete and replayed.complete
    ranks = range(size)
    full = np.array([everything.ranked(k) for k in ranks]).view(np.uint64)
    again = np.array([replayed.ranked(k) for k in ranks]).view(np.uint64)
    assert full.tolist() == again.tolist()  # bit for bit: signed zeros and NaNs included
    # The rings hold the same values, rotated by how many were pushed before.
    np.testing.assert_array_equal(np.sort(everything.values()), np.sort(replayed.values()))


def test_zeros_are_held_unsigned_whichever_was_evicted() -> None:
    recent = _pushed(2, [-0.0, 0.0, 5.0])  # evicts -0.0 from the ring, some zero from the order
    assert recent.ranked(0) == 0.0 and math.copysign(1.0, recent.ranked(0)) == 1.0
    assert math.copysign(1.0, _pushed(1, [-0.0]).ranked(0)) == 1.0


def test_nan_ranks_last_and_leaves_with_its_window() -> None:
    recent = _pushed(3, [2.0, math.nan, 1.0])
    assert [recent.ranked(k) for k in range(2)] == [1.0, 2.0]
    assert math.isnan(recent.ranked(2))
    assert recent.median() == 2.0
    recent.push(4.0)  # evicts 2.0
    assert math.isnan(recent.ranked(2)) and recent.median() == 4.0
    recent.push(0.5)  # evicts the NaN
    assert [recent.ranked(k) for k in range(3)] == [0.5, 1.0, 4.0]


def test_length_completeness_and_refusals() -> None:
    recent = RecentScores(3)
    assert len(recent) == 0 and not recent.complete
    with pytest.raises(ValueError):
        recent.median()
    recent.push(7.0)
    assert len(recent) == 1 and recent.median() == 7.0
    with pytest.raises(IndexError):
        recent.ranked(1)
    with pytest.raises(IndexError):
        recent.ranked(-1)
    for value in (1.0, 2.0, 3.0):
        recent.push(value)
    assert len(recent) == 3 and recent.complete
    with pytest.raises(ValueError):
        RecentScores(0)


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 20),
    filled=st.lists(values, min_size=20, max_size=40),
    slid=st.lists(values, max_size=60),
)
def test_slide_is_the_median_then_a_push_per_value(
    size: int, filled: list[float], slid: list[float]
) -> None:
    one, many = _pushed(size, filled), _pushed(size, filled)
    expected = []
    for value in slid:
        expected.append(one.median())
        one.push(value)
    medians = many.slide(slid)
    assert len(medians) == len(expected)
    assert all(_same(a, b) for a, b in zip(medians, expected, strict=True))
    assert bytes(many._ring) == bytes(one._ring) and bytes(many._sorted) == bytes(one._sorted)
    assert (many._count, many._nans) == (one._count, one._nans)


def test_slide_needs_a_full_buffer() -> None:
    with pytest.raises(ValueError, match="full"):
        _pushed(3, [1.0]).slide([2.0])
